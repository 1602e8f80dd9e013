"""The default recipe for a user's own data: settings chosen from the data, and the configs that use it."""

import pathlib

import cv2
import numpy as np
import pytest
import yaml

import train
from keras_caltech.config import config_to_dict, load_config
from keras_caltech.data import pipeline
from keras_caltech.errors import UserError
from keras_caltech.models import create_model
from keras_caltech.models.blocks import BATCH_NORM_MOMENTUM
from keras_caltech.training import auto

CONFIGS = pathlib.Path(__file__).resolve().parent.parent / "configs"
TINY = ["--set", "data.batch_size=8", "--set", "data.cache_dir=", "--set", "train.tensorboard=false",
        "--set", "export.enabled=false"]


def _images(folder, sides, extension=".png"):
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for index, (width, height) in enumerate(sides):
        path = folder / f"{index:03d}{extension}"
        cv2.imwrite(str(path), np.full((height, width, 3), 100, np.uint8))
        paths.append(path)
    return paths


def test_the_auto_image_size_is_the_median_shorter_side_rounded_down_to_16(tmp_path):
    paths = _images(tmp_path, [(100, 90), (90, 300), (95, 95), (500, 40), (30, 97)], ".jpg")
    # Shorter sides 90, 90, 95, 40, 30: median 90, rounded down to 80.
    assert auto.typical_image_side(paths) == 90
    assert auto.auto_image_size(paths, 224)[0] == 80


@pytest.mark.parametrize("sides, expected", [
    ([(8, 8)] * 3, auto.MIN_AUTO_IMAGE_SIZE),  # tiny scans are not shrunk below the minimum
    ([(4000, 3000)] * 3, auto.MAX_AUTO_IMAGE_SIZE),  # photographs are capped for a CPU
])
def test_the_auto_image_size_stays_within_its_bounds(tmp_path, sides, expected):
    size, why = auto.auto_image_size(_images(tmp_path, sides), 224)
    assert size == expected
    assert ("capped" in why) == (expected == auto.MAX_AUTO_IMAGE_SIZE)


def test_files_without_a_readable_header_are_left_out_and_the_model_size_is_used(tmp_path):
    (tmp_path / "a.jpg").write_bytes(b"\xff\xd8\xff\xe0 truncated")
    (tmp_path / "b.webp").write_bytes(b"RIFF\x00\x00\x00\x00WEBPVP8L")
    (tmp_path / "gone.png").write_bytes(b"")
    paths = sorted(tmp_path.iterdir()) + [tmp_path / "deleted.png"]
    assert auto.typical_image_side(paths) is None
    assert auto.auto_image_size(paths, 96) == (96, "no image size could be read from the files' headers")


@pytest.mark.parametrize("num_images, batch_size, expected", [
    (40, 32, auto.MAX_AUTO_EPOCHS),  # 2 steps per epoch: capped
    (3600, 32, 27),  # 113 steps per epoch: ceil(3000 / 113)
    (30000, 32, auto.MIN_AUTO_EPOCHS),  # 938 steps per epoch: at least the minimum
])
def test_auto_epochs_aim_at_a_number_of_steps_within_bounds(num_images, batch_size, expected):
    assert auto.auto_epochs(num_images, batch_size)[0] == expected


def test_the_auto_cache_is_memory_when_it_fits_else_disk_when_half_the_free_space_holds_it():
    gigabyte = 1024**3
    assert auto.auto_cache(1000, 64, free_disk_bytes=0)[0] == "memory"  # 47 MiB of float32 images
    mode, why = auto.auto_cache(30000, 224, free_disk_bytes=40 * gigabyte)  # 16.8 GiB
    assert mode == "disk" and "16.8 GB of decoded images" in why and "40 GB free" in why
    mode, why = auto.auto_cache(30000, 224, free_disk_bytes=30 * gigabyte)  # more than half of it
    assert mode == "none" and "every epoch decodes the images again" in why


def test_free_space_of_a_run_folder_not_made_yet_is_its_nearest_parents(tmp_path):
    assert auto.free_bytes(tmp_path / "runs" / "a" / "b") == auto.free_bytes(tmp_path) > 0
    assert not (tmp_path / "runs").exists()


def test_an_auto_disk_cache_trains_and_is_removed_when_training_ends(tiny_dataset, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(auto, "MEMORY_CACHE_BYTES", 0)  # the tiny dataset "does not fit in memory"
    made = []
    real_cached = pipeline._cached
    monkeypatch.setattr(pipeline, "_cached", lambda dataset, cache, path: made.append((cache, path))
                        or real_cached(dataset, cache, path))
    run_dir = tmp_path / "run"
    assert train.main(["--data", str(tiny_dataset), "--output-dir", str(run_dir), *TINY,
                       "--set", "data.image_size=32", "--set", "train.epochs=2"]) == 0
    out = capsys.readouterr().out
    assert "data.cache disk, chosen from the data" in out
    disk_paths = [str(path) for cache, path in made if cache == "disk"]
    assert len(disk_paths) == 2 and all(path.startswith(str(run_dir / "cache")) for path in disk_paths)  # train, val
    assert "memory" not in {cache for cache, _ in made}
    assert "removed the training cache from the run folder" in out
    assert not (run_dir / "cache").exists() and (run_dir / "best.keras").is_file()


def test_progressive_resizing_needs_an_explicit_size_and_epochs():
    with pytest.raises(UserError, match=r"progressive resizing .* needs an explicit data.image_size; "
                                        r"0 means chosen from the data. Set --set data.image_size=N"):
        load_config(None, ["data.image_size=0", "train.progressive_sizes=[32,64]",
                           "train.progressive_epochs=[1,1]", "train.epochs=2"])
    with pytest.raises(UserError, match=r"needs an explicit data.image_size and train.epochs; .* "
                                        r"Set --set data.image_size=N --set train.epochs=N"):
        load_config(None, ["data.image_size=0", "train.epochs=0", "train.progressive_sizes=[32,64]",
                           "train.progressive_epochs=[1,1]"])


def test_data_without_a_config_trains_the_default_recipe_with_settings_chosen_from_the_data(
        tiny_dataset, tmp_path, capsys):
    run_dir = tmp_path / "run"
    assert train.main(["--data", str(tiny_dataset), "--output-dir", str(run_dir), *TINY,
                       "--set", "train.epochs=2"]) == 0
    out = capsys.readouterr().out.splitlines()
    # The first line names the recipe; the size chosen, and why, follows the scan.
    assert out[0].startswith("recipe default: compact_resnet; adamw, one-cycle")
    # Images of 40-72 px a side: median shorter side 5x px, rounded down to 48.
    assert any(line.startswith("image size 48 px, chosen from the data (median image side 5") for line in out)
    saved = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert saved["model"]["name"] == "compact_resnet" and saved["data"]["image_size"] == 48
    assert saved["data"]["cache"] == "memory" and saved["train"]["epochs"] == 2
    with open(run_dir / "history.csv") as handle:
        assert len(handle.read().splitlines()) == 1 + 2


def test_a_dry_run_chooses_what_the_run_chooses_and_a_resumed_run_keeps_it(tiny_dataset, tmp_path, capsys,
                                                                           monkeypatch):
    # Few epochs for a test: the bounds are module settings, read when the choice is made.
    monkeypatch.setattr(auto, "MIN_AUTO_EPOCHS", 1)
    monkeypatch.setattr(auto, "MAX_AUTO_EPOCHS", 2)

    def chosen(argv):
        assert train.main(argv) == 0
        out = capsys.readouterr().out
        return out, [line for line in out.splitlines() if "chosen from the data" in line]

    dry_out, dry_choices = chosen(["--data", str(tiny_dataset), "--dry-run", *TINY])
    assert "conv5_block1_out" in dry_out  # the default recipe's model
    run_dir = tmp_path / "run"
    _, run_choices = chosen(["--data", str(tiny_dataset), "--output-dir", str(run_dir), *TINY])
    # The tiny dataset's training split: 36 images, 5 steps of 8 per epoch; capped at 2 epochs.
    assert run_choices == dry_choices
    assert [line.split(" (")[0] for line in run_choices] == [
        "image size 48 px, chosen from the data", "2 epochs, chosen from the data",
        "data.cache memory, chosen from the data"]
    assert "36 training images, 5 steps per epoch" in run_choices[1]
    saved = (run_dir / "config.yaml").read_text()

    # Resuming the finished run reuses the saved choices: nothing is chosen again.
    monkeypatch.setattr(auto, "MAX_AUTO_EPOCHS", 5)
    _, resumed_choices = chosen(["--resume", str(run_dir)])
    assert resumed_choices == [] and (run_dir / "config.yaml").read_text() == saved
    assert yaml.safe_load(saved)["train"]["epochs"] == 2


@pytest.mark.parametrize("model_name, expected", [("vgg5", 224), ("improved_cnn", 64)])
def test_the_auto_image_size_is_never_below_the_models_minimum(tmp_path, model_name, expected):
    from keras_caltech.models import get_model_entry

    entry = get_model_entry(model_name)
    size, why = auto.auto_image_size(_images(tmp_path, [(48, 48)] * 3), entry.default_image_size,
                                     entry.min_image_size)
    assert size == expected == entry.min_image_size and "raised to the model's minimum" in why


def test_the_quick_start_is_the_default_recipe_with_only_its_data_and_epochs_set():
    default = config_to_dict(load_config(CONFIGS / "default.yaml"))
    quickstart = config_to_dict(load_config(CONFIGS / "quickstart.yaml"))
    differences = {(section, key) for section, values in default.items() if isinstance(values, dict)
                   for key in values if values[key] != quickstart[section][key]}
    assert differences == {("data", "image_size"), ("train", "epochs")}
    assert default["data"]["image_size"] == 0 and default["train"]["epochs"] == 0


def test_mycnn_starts_from_pytorchs_initialization_and_batchnorm():
    model = create_model("mycnn", 10, 64)
    for name in ("block2_conv", "fc1", "logits"):
        kernel = np.asarray(model.get_layer(name).kernel)
        fan_in = int(np.prod(kernel.shape[:-1]))
        bound = np.sqrt(1 / fan_in)  # kaiming_uniform_(a=sqrt(5))
        assert np.abs(kernel).max() <= bound and np.abs(kernel).max() > 0.9 * bound, name
    assert model.get_layer("block1_bn").momentum == BATCH_NORM_MOMENTUM == 0.9
    assert model.get_layer("block1_bn").epsilon == 1e-5
