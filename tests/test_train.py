"""End-to-end: train.main on a tiny dataset writes a complete run folder; bad input exits 2."""

import csv
import json

import numpy as np
import pytest

import train
from keras_caltech.models.loading import load_model_safely

TINY = ["--set", "data.image_size=32", "--set", "data.batch_size=8", "--set", "train.epochs=1",
        "--set", "data.cache_dir=", "--set", "train.tensorboard=false",
        "--set", "export.enabled=false"]  # tests that export point export.base_dir to tmp_path


def test_one_epoch_run_writes_the_whole_run_folder(tiny_dataset, tmp_path, capsys):
    run_dir = tmp_path / "run"
    code = train.main(["--data", str(tiny_dataset), "--output-dir", str(run_dir), *TINY,
                       "--set", "train.epochs=2", "--set", "data.cache=memory", "--set", "eval.tta=flip"])
    assert code == 0
    out = capsys.readouterr().out
    assert "test top-1" in out and str(run_dir) in out
    # Trained with eval.tta: its figure is printed first, then the single-view one.
    tta_line, plain_line = [line for line in out.splitlines() if line.startswith("test top-1")]
    assert tta_line.endswith("with flip testing") and "one view each" in plain_line
    for name in ("config.yaml", "class_names.json", "splits.json", "normalization.json", "data_report.json",
                 "best.keras", "history.csv", "metrics.json", "curves.png"):
        assert (run_dir / name).is_file(), name
    class_names = json.loads((run_dir / "class_names.json").read_text())
    assert class_names == ["001.circle", "002.ring", "003.triangle", "004.square"]
    metrics = json.loads((run_dir / "metrics.json").read_text())
    splits = json.loads((run_dir / "splits.json").read_text())
    assert metrics["num_examples"] == len(splits["test"]) > 0
    assert f"{metrics['tta']['flip']['top1']:.2%} " in tta_line and f"{metrics['top1']:.2%} " in plain_line
    assert 0.0 <= metrics["top1"] <= metrics["top5"] <= 1.0
    assert set(metrics["per_class_accuracy"]) == set(class_names)
    with open(run_dir / "history.csv") as handle:
        assert len(list(csv.DictReader(handle))) == 2
    normalization = json.loads((run_dir / "normalization.json").read_text())
    assert normalization["mode"] == "dataset" and all(0 < value < 1 for value in normalization["std"])

    # The saved model reloads in safe mode and reproduces the reported test accuracy.
    from keras_caltech.data.pipeline import load_image
    model = load_model_safely(run_dir / "best.keras")
    images = np.stack([load_image(f"{splits['root']}/{path}", 32) for path, _ in splits["test"]])
    predictions = np.asarray(model(images, training=False)).argmax(axis=1)
    accuracy = float(np.mean(predictions == np.array([label for _, label in splits["test"]])))
    assert abs(accuracy - metrics["top1"]) < 1e-6


def test_dry_run_prints_the_model_without_training(tiny_dataset, capsys):
    assert train.main(["--data", str(tiny_dataset), "--dry-run", *TINY]) == 0
    out = capsys.readouterr().out
    assert "conv5_block1_out" in out and "parameters" in out  # the default recipe's CompactResNet


def _error_of(argv, capsys):
    code = train.main(argv)
    err = capsys.readouterr().err.strip().splitlines()
    return code, err


@pytest.mark.parametrize("extra, message", [
    (["--set", "train.epochs=many"], "error: train.epochs must be int"),
    (["--set", "train.nonsense=1"], "error: unknown config key 'train.nonsense'"),
    (["--set", "model.name=resnet9000"], "error: unknown model 'resnet9000'"),
    (["--set", "train.optimizer=adagrad"], "error: unknown train.optimizer 'adagrad'. Valid optimizers: adam, adamw, sgd"),
    (["--config", "no/such/config.yaml"], "error: config file not found: no/such/config.yaml"),
    (["--bogus"], "error: unrecognized arguments: --bogus"),
    (["--output-dir", "/proc/no-runs-here/run"], "error: cannot create run folder /proc/no-runs-here/run"),
])
def test_bad_options_get_one_error_line_and_exit_code_2(tiny_dataset, tmp_path, capsys, extra, message):
    code, err = _error_of(["--data", str(tiny_dataset), "--output-dir", str(tmp_path / "r"), *TINY, *extra], capsys)
    assert code == 2 and len(err) == 1 and err[0].startswith(message), err


@pytest.mark.parametrize("layout", ["missing", "empty", "one_class", "no_images"])
def test_bad_data_folders_get_one_error_line_and_exit_code_2(tmp_path, capsys, layout):
    root = tmp_path / "data"
    if layout != "missing":
        root.mkdir()
    if layout in ("one_class", "no_images"):
        (root / "001.a").mkdir()
    if layout == "no_images":
        (root / "002.b").mkdir()
        (root / "002.b" / "notes.txt").write_text("x")
    code, err = _error_of(["--data", str(root), "--output-dir", str(tmp_path / "r"), *TINY], capsys)
    assert code == 2 and len(err) == 1 and err[0].startswith("error: ") and str(root) in err[0], err


def test_a_run_folder_that_holds_files_is_refused(tiny_dataset, tmp_path, capsys):
    (tmp_path / "r").mkdir()
    (tmp_path / "r" / "metrics.json").write_text("{}")
    code, err = _error_of(["--data", str(tiny_dataset), "--output-dir", str(tmp_path / "r"), *TINY], capsys)
    assert code == 2 and "already holds files" in err[0]


def test_a_loss_that_becomes_nan_stops_with_the_epoch_and_checkpoint_named(tiny_dataset, tmp_path, capsys):
    code, err = _error_of(["--data", str(tiny_dataset), "--output-dir", str(tmp_path / "r"), *TINY,
                           "--set", "train.optimizer=sgd", "--set", "train.learning_rate=1e30",
                           "--set", "train.schedule=constant"], capsys)
    assert code == 2 and len(err) == 1
    assert "NaN or infinite in epoch 1" in err[0] and "learning_rate" in err[0]
