"""Shared fixtures: tiny datasets made on the fly, so tests run offline in seconds."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
from PIL import Image  # noqa: E402

from keras_caltech.data.synthetic import generate_dataset  # noqa: E402


@pytest.fixture(scope="session", autouse=True)
def session_in_a_temporary_folder(tmp_path_factory):
    """Session fixtures' relative outputs (runs/, saved_models/, data/) stay out of the repo."""
    previous = os.getcwd()
    os.chdir(tmp_path_factory.mktemp("session_cwd"))
    yield
    os.chdir(previous)


@pytest.fixture(autouse=True)
def run_in_a_temporary_folder(tmp_path, monkeypatch):
    """Each test's relative outputs land in its own temporary folder, never the repo."""
    monkeypatch.chdir(tmp_path)


@pytest.fixture(scope="session")
def tiny_dataset(tmp_path_factory):
    """4 shape classes x 12 small JPEGs, Caltech layout, with boxes.json."""
    root = tmp_path_factory.mktemp("tiny") / "synthetic"
    return generate_dataset(root, images_per_class=12, num_classes=4, seed=1, min_size=40, max_size=72)


def write_bad_files(class_folder):
    """Adds every kind of odd file found in real Caltech downloads to ``class_folder``.

    Returns:
        (usable names, broken names): files that must be kept and files that must be excluded,
        relative to the class folder.
    """
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, size=(40, 50, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(class_folder / "good.jpg")
    Image.fromarray(pixels[..., 0]).save(class_folder / "grayscale.jpg")
    Image.fromarray(pixels).convert("CMYK").save(class_folder / "cmyk.jpg")
    Image.fromarray(np.dstack([pixels, pixels[..., 0]])).save(class_folder / "alpha.png")
    Image.fromarray(pixels).save(class_folder / "animated.gif", save_all=True,
                                 append_images=[Image.fromarray(pixels[::-1])])
    Image.fromarray(pixels).save(class_folder / "bitmap.bmp")
    encoded = (class_folder / "good.jpg").read_bytes()
    (class_folder / "truncated.jpg").write_bytes(encoded[: len(encoded) // 2])
    (class_folder / "zero.jpg").write_bytes(b"")
    (class_folder / "notes.jpg").write_bytes(b"this is text, not a JPEG")
    (class_folder / "RENAME2").write_bytes(b"stray file from the real Caltech-256 download")
    (class_folder / "greg").mkdir()  # the empty nested folder of 056.dog
    usable = ["good.jpg", "grayscale.jpg", "cmyk.jpg", "alpha.png", "animated.gif", "bitmap.bmp"]
    broken = ["truncated.jpg", "zero.jpg", "notes.jpg", "RENAME2"]
    return usable, broken


@pytest.fixture()
def messy_dataset(tmp_path):
    """Two classes: one clean, one holding every kind of odd file, plus a background class."""
    root = tmp_path / "messy"
    generate_dataset(root, images_per_class=6, num_classes=2, seed=2, min_size=40, max_size=64)
    usable, broken = write_bad_files(root / "002.ring")
    (root / "257.clutter").mkdir()
    Image.fromarray(np.zeros((30, 30, 3), np.uint8)).save(root / "257.clutter" / "257_0001.jpg")
    return root, usable, broken


@pytest.fixture(scope="session")
def tiny_runs(tiny_dataset, tmp_path_factory):
    """Two finished one-epoch runs on ``tiny_dataset`` with the same classes and test split.

    Run A is MyCNN at 32 px with ``eval.tta=flip``; run B MyCNN at 40 px with another
    seed. Tests that change a run work on a copy (see ``copy_run``).

    Returns:
        (run A folder, run B folder).
    """
    import train

    base = tmp_path_factory.mktemp("runs")
    tiny = ["--set", "data.batch_size=8", "--set", "train.epochs=1", "--set", "data.cache_dir=",
            "--set", "train.tensorboard=false", "--set", "export.enabled=false", "--set", "model.name=mycnn"]
    for name, extra in (("a", ["--set", "data.image_size=32", "--set", "eval.tta=flip"]),
                        ("b", ["--set", "data.image_size=40", "--set", "train.seed=1"])):
        assert train.main(["--data", str(tiny_dataset), "--output-dir", str(base / name), *tiny, *extra]) == 0
    return base / "a", base / "b"


def copy_run(run_dir, destination, leave_out=()):
    """Copies a run folder, leaving out the named files."""
    import shutil

    return shutil.copytree(run_dir, destination, symlinks=True, ignore=lambda folder, names: [
        name for name in names if name in leave_out])
