"""Hostile input on every path train.py takes, and on the download and model-loading library calls.

Missing files, folders where files are expected (and the reverse), unreadable files,
zero-byte files, huge images and out-of-range numbers each get one ``error:`` line and
exit code 2 from train.py, or a UserError from the library, or (inside a dataset) are
left out of training with the reason in data_report.json. Never a traceback.

Permissions: root reads and writes whatever the mode bits say, so when the tests run as
root the permission checks run in a subprocess as user ``nobody`` (``setpriv``).
"""

import json
import os
import shutil
import subprocess
import sys
import tempfile

import numpy as np
import pytest
from PIL import Image

import train
from keras_caltech.config import Config, load_config
from keras_caltech.data import scan
from keras_caltech.data.download import download_dataset
from keras_caltech.errors import UserError

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = ["--set", "data.image_size=32", "--set", "data.batch_size=8", "--set", "train.epochs=1",
        "--set", "data.cache_dir=", "--set", "train.tensorboard=false", "--set", "export.enabled=false"]


def _error_of(argv, capsys):
    code = train.main(argv)
    err = capsys.readouterr().err.strip().splitlines()
    return code, err


@pytest.mark.parametrize("make, message", [
    (lambda path: path.mkdir(), "--config expects a YAML file, received a directory"),
    (lambda path: path.write_bytes(b"\xff\xd8\xff\xe0 a JPEG, not YAML"), "is not a text file"),
    (lambda path: path.write_text("- a list\n- not a mapping\n"), "config must be a mapping"),
    (lambda path: path.write_text("train: {epochs: [unclosed\n"), "is not valid YAML"),
], ids=["directory", "binary", "list", "broken-yaml"])
def test_a_config_that_is_not_a_yaml_mapping_is_one_error_line(tmp_path, capsys, make, message):
    path = tmp_path / "config.yaml"
    make(path)
    code, err = _error_of(["--config", str(path), "--dry-run"], capsys)
    assert code == 2 and len(err) == 1 and err[0].startswith("error: ") and message in err[0], err


def test_a_zero_byte_config_means_the_defaults(tmp_path):
    """A config lists what differs from the defaults; an empty one lists nothing.
    (A run folder's empty config.yaml is refused instead: see test_resume.py.)"""
    (tmp_path / "empty.yaml").write_bytes(b"")
    assert load_config(tmp_path / "empty.yaml") == Config()


@pytest.mark.parametrize("override, message", [
    ("data.batch_size=0", "data.batch_size must be at least 1. Received: 0"),
    ("train.epochs=-3", "train.epochs must be at least 1, or 0 to choose it from the data. Received: -3"),
    ("data.image_size=-1", "data.image_size must be at least 1, or 0 to choose it from the data"),
    ("data.test_fraction=1.5", "data.test_fraction must be a fraction in [0, 1). Received: 1.5"),
    ("model.dropout=5", "model.dropout must be a fraction in [0, 1). Received: 5"),
    ("train.momentum=1.5", "train.momentum must be a fraction in [0, 1)"),
    ("data.scan_workers=-1", "data.scan_workers must be at least 0. Received: -1"),
    ("data.train_per_class=-1", "data.train_per_class must be at least 0"),
    ("augment.zoom=5", "augment.zoom must be between 0 and 1. Received: 5"),
    ("augment.translation=3", "augment.translation must be between 0 and 1"),
    ("augment.shear=-1", "augment.shear must be between 0 and 1"),
    ("augment.color_jitter=5", "augment.color_jitter must be between 0 and 1"),
    ("train.seed=-1", "train.seed must be between 0 and 4294967295. Received: -1"),
    ("data.split_seed=-7", "data.split_seed must be between 0 and 4294967295. Received: -7"),
    ("data.synthetic_seed=4294967296", "data.synthetic_seed must be between 0 and 4294967295"),
    # Named choices fail before the dataset is scanned or a run folder exists.
    ("data.normalization=zscore", "unknown data.normalization 'zscore'. Valid choices: imagenet, half, dataset"),
    ("data.cache=ram", "unknown data.cache 'ram'. Valid choices: none, memory, disk"),
    ("train.strategy=tpu", "unknown train.strategy 'tpu'. Valid choices: auto, one, mirrored, multiworker"),
    ("train.precision=fp8", "unknown train.precision 'fp8'"),
    ("eval.tta=12crop", "unknown TTA mode '12crop'"),
])
def test_out_of_range_numbers_are_refused_with_their_dotted_path(capsys, override, message):
    code, err = _error_of(["--set", override, "--dry-run"], capsys)
    assert code == 2 and len(err) == 1 and message in err[0], err


def test_a_synthetic_dataset_folder_that_cannot_be_written_is_one_error_line(tmp_path, capsys):
    (tmp_path / "a_file").write_text("x")
    target = tmp_path / "a_file" / "synthetic"
    code, err = _error_of(["--set", f"data.synthetic_dir={target}", "--dry-run"], capsys)
    assert code == 2 and len(err) == 1, err
    assert err[0].startswith(f"error: cannot write the synthetic dataset to {target}") and "data.synthetic_dir" in err[0]


def test_data_and_output_paths_of_the_wrong_kind_are_one_error_line(tiny_dataset, tmp_path, capsys):
    a_file = tmp_path / "file.txt"
    a_file.write_text("x")
    code, err = _error_of(["--data", str(a_file), "--output-dir", str(tmp_path / "r"), *TINY], capsys)
    assert code == 2 and len(err) == 1 and "dataset path is not a folder" in err[0], err
    code, err = _error_of(["--data", str(tiny_dataset), "--output-dir", str(a_file), *TINY], capsys)
    assert code == 2 and len(err) == 1 and "is a file, not a folder" in err[0], err
    code, err = _error_of(["--resume", str(a_file)], capsys)
    assert code == 2 and len(err) == 1 and "received a file" in err[0], err


def _write_huge_images(folder):
    """A 10000x10000 JPEG and PNG (100 MP each, written in about a second) and a zero-byte JPEG."""
    huge = Image.new("L", (10_000, 10_000), 128)
    huge.save(folder / "huge.jpg", quality=50)
    huge.save(folder / "huge.png", compress_level=1)
    (folder / "zero.jpg").write_bytes(b"")


def test_huge_and_empty_images_are_refused_before_decoding_and_training_goes_on(tiny_dataset, tmp_path, capsys):
    root = tmp_path / "data"
    shutil.copytree(tiny_dataset, root)
    _write_huge_images(root / "001.circle")
    reasons = {name: scan.check_image(root / "001.circle" / name) for name in ("huge.jpg", "huge.png", "zero.jpg")}
    assert reasons["huge.jpg"].startswith(f"too large (10000x10000 pixels; limit {scan.MAX_PIXELS} pixels")
    assert "MAX_PIXELS in keras_caltech/data/pixel_limit.py" in reasons["huge.png"]
    assert reasons["zero.jpg"] == "empty file (0 bytes)"

    run_dir = tmp_path / "run"
    assert train.main(["--data", str(root), "--output-dir", str(run_dir), *TINY]) == 0
    report = json.loads((run_dir / "data_report.json").read_text())
    excluded = {entry["path"]: entry["reason"] for entry in report["excluded"]}
    assert set(excluded) == {"001.circle/huge.jpg", "001.circle/huge.png", "001.circle/zero.jpg"}
    assert "3 files excluded" in capsys.readouterr().out


def test_download_refuses_a_destination_that_is_a_file(tmp_path):
    (tmp_path / "data").write_text("x")
    with pytest.raises(UserError, match="download folder .* is a file"):
        download_dataset("caltech101", tmp_path / "data", url="http://127.0.0.1:9/never-contacted")


# Run as user nobody when we are root: every case prints the error it got.
_AS_NOBODY = r'''
import contextlib, io, json, sys
import train
from keras_caltech.config import load_config
from keras_caltech.data.download import download_dataset
from keras_caltech.data.scan import check_image, discover_classes
from keras_caltech.errors import UserError
from keras_caltech.models.loading import load_model_safely
from keras_caltech.runs import create_run_folder

results = {}
def record(name, call):
    try:
        call()
        results[name] = "no error"
    except UserError as error:
        results[name] = "UserError: " + str(error)
    except Exception as error:  # a bug: the test shows it
        results[name] = f"BUG {type(error).__name__}: {error}"

record("config", lambda: load_config(ROOT + "/locked.yaml"))
record("data_folder", lambda: discover_classes(ROOT + "/locked_data"))
results["image"] = check_image(ROOT + "/data/locked.jpg")
record("output_dir", lambda: create_run_folder(ROOT + "/readonly/run"))
record("model", lambda: load_model_safely(ROOT + "/locked.keras"))
record("download", lambda: download_dataset("caltech101", ROOT + "/readonly/data", url="http://127.0.0.1:9/x"))
stderr = io.StringIO()
with contextlib.redirect_stderr(stderr):
    results["train_code"] = train.main(["--config", ROOT + "/locked.yaml"])
results["train_stderr"] = stderr.getvalue()
print(json.dumps(results))
'''


def _as_nobody(command):
    """Prefixes ``command`` to run as user nobody when we are root; None if that is impossible."""
    if os.geteuid() != 0:
        return command
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        return None
    return [setpriv, "--reuid=65534", "--regid=65534", "--clear-groups", *command]


def test_unreadable_and_unwritable_paths_are_user_errors_not_tracebacks():
    command = _as_nobody([sys.executable, "-c"])
    if command is None:
        pytest.skip("running as root without setpriv: root ignores permission bits, so nothing here "
                    "can be made unreadable")
    root = tempfile.mkdtemp(prefix="hostile-")  # not under pytest's 0700 tmp folder: nobody must reach it
    try:
        os.chmod(root, 0o755)
        for name in ("locked.yaml", "locked.keras"):
            with open(os.path.join(root, name), "w") as handle:
                handle.write("train: {epochs: 1}\n")
        os.mkdir(os.path.join(root, "locked_data"))
        os.mkdir(os.path.join(root, "data"))
        Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(os.path.join(root, "data", "locked.jpg"))
        os.mkdir(os.path.join(root, "readonly"))
        for path in ("locked.yaml", "locked.keras", "locked_data", "data/locked.jpg"):
            os.chmod(os.path.join(root, path), 0)
        os.chmod(os.path.join(root, "readonly"), 0o555)
        os.chmod(os.path.join(root, "data"), 0o755)
        script = _AS_NOBODY.replace("REPO", repr(REPO)).replace("ROOT", repr(root))
        completed = subprocess.run([*command, script], capture_output=True, text=True, timeout=600,
                                   env={**os.environ, "HOME": root}, cwd=root)
        assert completed.returncode == 0, completed.stderr[-3000:]
        results = json.loads(completed.stdout.strip().splitlines()[-1])
    finally:
        for directory, folders, files in os.walk(root):
            for name in folders + files:
                os.chmod(os.path.join(directory, name), 0o700)
        shutil.rmtree(root)
    assert "cannot read config file" in results["config"] and "permission denied" in results["config"]
    assert "cannot read dataset folder (permission denied)" in results["data_folder"]
    assert results["image"] == "cannot be read: permission denied"
    assert "cannot create run folder" in results["output_dir"] and "permission denied" in results["output_dir"]
    assert "cannot read model file" in results["model"] and "permission denied" in results["model"]
    assert "cannot create the download folder" in results["download"]
    assert results["train_code"] == 2
    lines = results["train_stderr"].strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: cannot read config file"), lines
