"""No stop leaves a run that cannot go on: every state a stopped run folder can be in resumes.

A run folder is written in a fixed order (config.yaml, class_names.json, splits.json,
data_report.json, normalization.json, then per epoch a history row, the training state,
best.keras). A stop after any of them is made here by copying a finished tiny run and
deleting the files written later, as a SIGKILL or Ctrl-C at that moment would leave it.
Files damaged or changed by hand, a full disk and images changed since the scan each end
in one ``error:`` line saying what to do, and the run stays resumable.
"""

import errno
import json
import os
import pathlib
import shutil
import socket
import subprocess
import sys

import keras
import numpy as np
import pytest
from conftest import copy_run

import train
from keras_caltech.__main__ import main as command_main
from keras_caltech.models import create_model
from keras_caltech.training import callbacks, memory
from keras_caltech.training.lock import LOCK_FILE
from keras_caltech.training.resume import STATE_FILE

TINY = ["--set", "data.image_size=32", "--set", "data.batch_size=8", "--set", "data.cache_dir=",
        "--set", "data.cache=none", "--set", "train.tensorboard=false", "--set", "export.enabled=false",
        "--set", "model.name=mycnn"]
# The files of a run in the order training writes them (see trainer.py and resume.py).
WRITE_ORDER = ["config.yaml", "class_names.json", "splits.json", "data_report.json", "normalization.json",
               "history.csv", STATE_FILE, "best.keras"]


def _args(dataset, run_dir, epochs=1):
    return ["--data", str(dataset), "--output-dir", str(run_dir), "--set", f"train.epochs={epochs}", *TINY]


def _error_of(argv, capsys, command=train.main):
    code = command(argv)
    return code, capsys.readouterr().err.strip().splitlines()


def _meta(run_dir):
    with np.load(run_dir / STATE_FILE) as saved:
        return json.loads(str(saved["meta"]))


def _write_state(run_dir, arrays, meta_text):
    with open(run_dir / STATE_FILE, "wb") as handle:
        np.savez(handle, **arrays, meta=np.array(meta_text))


def _rewrite_state(run_dir, change):
    """Rewrites the state file after ``change(arrays, meta)`` edits its arrays and meta dict in place."""
    with np.load(run_dir / STATE_FILE) as saved:
        arrays = {name: saved[name] for name in saved.files}
    meta = json.loads(str(arrays.pop("meta")))
    change(arrays, meta)
    _write_state(run_dir, arrays, json.dumps(meta))


def _stale_lock(run_dir):
    """A lock file left by a killed process, as a SIGKILL leaves it."""
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (run_dir / LOCK_FILE).write_text(f"{dead.pid} {socket.gethostname()}\n")


@pytest.fixture(scope="module")
def two_epoch_run(tiny_dataset, tmp_path_factory):
    """A finished two-epoch tiny run; tests change copies of it."""
    run_dir = tmp_path_factory.mktemp("two_epochs") / "run"
    assert train.main(_args(tiny_dataset, run_dir, epochs=2)) == 0
    return run_dir


# --- 1. A stop after any file ------------------------------------------------------------

@pytest.mark.parametrize("last_written", WRITE_ORDER)
def test_a_run_stopped_after_any_file_it_writes_resumes_to_the_end(tiny_runs, tmp_path, capsys, last_written):
    finished = tiny_runs[0]
    kept = WRITE_ORDER[:WRITE_ORDER.index(last_written) + 1]
    run_dir = copy_run(finished, tmp_path / "run", leave_out=[
        path.name for path in finished.iterdir() if path.name not in kept])
    _stale_lock(run_dir)

    assert train.main(["--resume", str(run_dir)]) == 0, capsys.readouterr().err
    out = capsys.readouterr().out
    assert ("scanning" in out) == (len(kept) < 4), out  # the data split was not saved: split again
    assert ("normalization.json was not saved" in out) == (len(kept) <= 4), out
    for name in ("splits.json", "normalization.json"):  # the same split and statistics as the finished run
        assert json.loads((run_dir / name).read_text()) == json.loads((finished / name).read_text()), name
    assert _meta(run_dir)["epochs_completed"] == 1
    assert len((run_dir / "history.csv").read_text().splitlines()) == 2  # header + one epoch
    assert json.loads((run_dir / "metrics.json").read_text())["num_examples"] > 0
    assert not (run_dir / LOCK_FILE).exists()


def test_a_run_stopped_before_its_config_says_to_start_again_and_the_same_folder_can(
        tiny_dataset, tmp_path, capsys):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    _stale_lock(run_dir)  # stopped between locking the new folder and writing config.yaml
    (run_dir / ".config.yaml.x.tmp.yaml").write_text("name: half")  # and a write cut short
    code, err = _error_of(["--resume", str(run_dir)], capsys)
    assert code == 2 and len(err) == 1 and "nothing was trained" in err[0] and "Start the run again" in err[0], err
    assert train.main(_args(tiny_dataset, run_dir)) == 0
    assert _meta(run_dir)["epochs_completed"] == 1 and not list(run_dir.glob(".*.tmp*"))


# --- 2. A damaged or lost best.keras --------------------------------------------------------

def _damage(path, how):
    if how == "deleted":
        path.unlink()
    else:
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


@pytest.mark.parametrize("how", ["deleted", "truncated"])
def test_evaluate_on_a_run_whose_best_keras_is_lost_names_the_file_and_the_command_that_rebuilds_it(
        tiny_runs, tmp_path, capsys, how):
    run_dir = copy_run(tiny_runs[0], tmp_path / "run")
    _damage(run_dir / "best.keras", how)
    code, err = _error_of(["evaluate", str(run_dir)], capsys, command_main)
    what = "has no best.keras, though it trained" if how == "deleted" else "best.keras is damaged"
    assert code == 2 and len(err) == 1 and what in err[0], err
    assert f"python train.py --resume {run_dir}" in err[0] and "first epoch" not in err[0], err


@pytest.mark.parametrize("how", ["deleted", "truncated"])
def test_resume_replaces_a_lost_best_keras_with_the_last_epoch_and_says_the_best_one_is_lost(
        two_epoch_run, tmp_path, capsys, how):
    run_dir = copy_run(two_epoch_run, tmp_path / "run")
    _rewrite_state(run_dir, lambda arrays, meta: meta.update(best_epoch=1))  # epoch 1 was the best
    _damage(run_dir / "best.keras", how)

    assert train.main(["--resume", str(run_dir)]) == 0, capsys.readouterr().err
    out = capsys.readouterr().out
    assert "the weights of epoch 1, the best so far, are lost; saving those of epoch 2" in out, out
    assert json.loads((run_dir / "metrics.json").read_text())["best_epoch"] == 2
    assert _meta(run_dir)["best_epoch"] == 2  # the state agrees: a later resume says nothing more
    assert command_main(["evaluate", str(run_dir)]) == 0
    assert train.main(["--resume", str(run_dir)]) == 0 and "are lost" not in capsys.readouterr().out


# --- 3. Images changed after the scan ---------------------------------------------------------

def _change_an_image_in_epoch_2(monkeypatch, run_dir, how):
    """Deletes, or overwrites with text, a training image when epoch 2 begins; returns a list that gets its path."""
    changed = []
    original = callbacks.StopOnNonFiniteLoss.on_epoch_begin

    def on_epoch_begin(self, epoch, logs=None):
        original(self, epoch, logs)
        if epoch == 1 and not changed:
            splits = json.loads((run_dir / "splits.json").read_text())
            path = f"{splits['root']}/{splits['train'][0][0]}"
            shutil.copy(path, f"{path}.saved")
            if how == "deleted":
                os.remove(path)
            else:
                with open(path, "wb") as handle:
                    handle.write(b"not an image any more")
            changed.append(path)

    monkeypatch.setattr(callbacks.StopOnNonFiniteLoss, "on_epoch_begin", on_epoch_begin)
    return changed


@pytest.mark.parametrize("how, reason", [("overwritten", "cannot be decoded"), ("deleted", "cannot be read")])
def test_an_image_changed_during_training_is_named_and_the_run_resumes_once_it_is_restored(
        tiny_dataset, tmp_path, capsys, monkeypatch, how, reason):
    data = shutil.copytree(tiny_dataset, tmp_path / "data")
    run_dir = tmp_path / "run"
    changed = _change_an_image_in_epoch_2(monkeypatch, run_dir, how)
    code, err = _error_of(_args(data, run_dir, epochs=2), capsys)
    monkeypatch.undo()
    assert code == 2 and len(err) == 1, err
    assert err[0].startswith(f"error: image {changed[0]} changed since the dataset was scanned ({reason}"), err
    assert f"python train.py --resume {run_dir}" in err[0]
    assert _meta(run_dir)["epochs_completed"] == 1

    if how == "overwritten":  # still there, so the resume reaches it again and names it
        code, err = _error_of(["--resume", str(run_dir)], capsys)
        assert code == 2 and len(err) == 1 and f"image {changed[0]} changed" in err[0], err
    shutil.move(f"{changed[0]}.saved", changed[0])
    assert train.main(["--resume", str(run_dir)]) == 0
    assert _meta(run_dir)["epochs_completed"] == 2


def test_evaluate_names_a_test_image_that_no_longer_decodes(tiny_runs, tiny_dataset, tmp_path, capsys):
    run_dir = copy_run(tiny_runs[0], tmp_path / "run")
    data = shutil.copytree(tiny_dataset, tmp_path / "data")
    relative = json.loads((run_dir / "splits.json").read_text())["test"][0][0]
    (data / relative).write_bytes(b"\xff\xd8 garbage")
    code, err = _error_of(["evaluate", str(run_dir), "--data", str(data)], capsys, command_main)
    assert code == 2 and len(err) == 1, err
    assert err[0].startswith(f"error: image {data / relative} changed since the dataset was scanned (cannot be "
                             "decoded"), err


def test_evaluate_refuses_a_test_image_replaced_by_a_decompression_bomb_before_decoding_it(
        tiny_runs, tiny_dataset, tmp_path):
    """Under an address-space limit: decoded, the 48 KB PNG would take 1.2 GB per copy."""
    import image_bombs

    run_dir = copy_run(tiny_runs[0], tmp_path / "run")
    data = shutil.copytree(tiny_dataset, tmp_path / "data")
    relative = json.loads((run_dir / "splits.json").read_text())["test"][0][0]
    (data / relative).write_bytes(image_bombs.blank_png(20000, 20000))
    repo = str(pathlib.Path(__file__).resolve().parent.parent)
    result = image_bombs.run_limited(["-m", "keras_caltech", "evaluate", str(run_dir), "--data", str(data)],
                                     env={**os.environ, "PYTHONPATH": repo, "TF_CPP_MIN_LOG_LEVEL": "3"})
    assert result.returncode == 2, result.stderr[-2000:]
    assert result.stderr.strip().splitlines()[-1].startswith(
        f"error: image {data / relative} changed since the dataset was scanned (too large ("), result.stderr[-2000:]


# --- 4. Everything else that used to end in a traceback ------------------------------------

def test_a_config_that_now_plans_fewer_epochs_than_were_trained_is_one_error_line(two_epoch_run, tmp_path, capsys):
    run_dir = copy_run(two_epoch_run, tmp_path / "run")
    config = (run_dir / "config.yaml").read_text()
    (run_dir / "config.yaml").write_text(config.replace("epochs: 2\n", "epochs: 1\n", 1))
    code, err = _error_of(["--resume", str(run_dir)], capsys)
    assert code == 2 and len(err) == 1 and "already trained 2 epochs, more than the 1" in err[0], err
    assert "Set it back to 2 or more" in err[0]


def _no_space(*args, **kwargs):
    raise OSError(errno.ENOSPC, "No space left on device")


def test_a_full_disk_while_saving_the_training_state_leaves_a_run_that_resumes(tiny_dataset, tmp_path, capsys,
                                                                               monkeypatch):
    run_dir = tmp_path / "run"
    savez, calls = np.savez, []

    def savez_then_full(handle, **arrays):
        calls.append(1)
        return savez(handle, **arrays) if len(calls) < 2 else _no_space()

    monkeypatch.setattr(np, "savez", savez_then_full)
    code, err = _error_of(_args(tiny_dataset, run_dir, epochs=2), capsys)
    monkeypatch.undo()
    assert code == 2 and len(err) == 1, err
    assert f"cannot write {run_dir / STATE_FILE}: No space left on device" in err[0], err
    assert f"continue with: python train.py --resume {run_dir}" in err[0]
    assert _meta(run_dir)["epochs_completed"] == 1 and not list(run_dir.glob(".*.tmp*"))
    assert train.main(["--resume", str(run_dir)]) == 0
    assert _meta(run_dir)["epochs_completed"] == 2


def test_a_full_disk_while_saving_best_keras_leaves_a_run_that_resumes(tiny_dataset, tmp_path, capsys,
                                                                       monkeypatch):
    run_dir = tmp_path / "run"
    monkeypatch.setattr(keras.Model, "save", _no_space)
    code, err = _error_of(_args(tiny_dataset, run_dir), capsys)
    monkeypatch.undo()
    assert code == 2 and len(err) == 1 and f"cannot write {run_dir / 'best.keras'}" in err[0], err
    assert f"--resume {run_dir}" in err[0] and not (run_dir / "best.keras").exists()
    assert train.main(["--resume", str(run_dir)]) == 0  # the state of epoch 1 records it as the best
    assert (run_dir / "best.keras").is_file() and (run_dir / "metrics.json").is_file()


def test_a_full_disk_while_exporting_is_one_error_line_with_the_retry_command(tiny_dataset, tmp_path, capsys,
                                                                              monkeypatch):
    run_dir = tmp_path / "run"
    # keras.export.ExportArchive() returns an instance of the backend's subclass: patch that.
    monkeypatch.setattr(type(keras.export.ExportArchive()), "write_out", _no_space)
    args = [*_args(tiny_dataset, run_dir), "--set", "export.enabled=true",
            "--set", f"export.base_dir={tmp_path / 'served'}"]
    code, err = _error_of(args, capsys)
    assert code == 2 and len(err) == 1 and "No space left on device" in err[0], err
    assert f"python -m keras_caltech export {run_dir}" in err[0]


def test_a_nul_byte_in_a_run_folders_name_is_one_error_line(tiny_dataset, tmp_path, capsys):
    code, err = _error_of(_args(tiny_dataset, f"{tmp_path}/run\0x"), capsys)
    assert code == 2 and len(err) == 1 and "--output-dir must not contain a NUL byte" in err[0], err
    code, err = _error_of(["--resume", f"{tmp_path}/run\0x"], capsys)
    assert code == 2 and len(err) == 1 and "--resume must not contain a NUL byte" in err[0], err
    config = tmp_path / "named.yaml"
    config.write_text('name: "run\\0x"\n')
    code, err = _error_of(["--config", str(config), "--data", str(tiny_dataset), *TINY], capsys)
    assert code == 2 and len(err) == 1 and err[0].startswith("error: name ") and "'run\\x00x'" in err[0], err


def test_history_csv_with_bytes_that_are_not_utf8_is_repaired_on_resume(two_epoch_run, tmp_path, capsys):
    run_dir = copy_run(two_epoch_run, tmp_path / "run")
    with open(run_dir / "history.csv", "ab") as handle:
        handle.write(b"2,\xff\xfe\x00 garbage from a failing disk\n")
    assert train.main(["--resume", str(run_dir)]) == 0, capsys.readouterr().err
    assert "dropped 1 damaged row(s)" in capsys.readouterr().out
    rows = (run_dir / "history.csv").read_text(encoding="utf-8").splitlines()
    assert len(rows) == 3 and (run_dir / "curves.png").is_file()


@pytest.mark.parametrize("change, message", [
    (lambda arrays, meta: meta.clear() or meta.update(format=1), "epochs_completed is None"),
    (lambda arrays, meta: meta.update(epochs_completed="two"), "epochs_completed is 'two'"),
    (lambda arrays, meta: meta.update(best_epoch=7), "best_epoch is 7, not an epoch from 1 to 1"),
    (lambda arrays, meta: meta.pop("variables"), "list of saved variables is missing"),
    (lambda arrays, meta: arrays.pop("model_00000"), "array model_00000 is missing"),
    (lambda arrays, meta: arrays.update(model_00000=np.full(arrays["model_00000"].shape, "x")),
     "array model_00000 holds <U1, not numbers"),
    (lambda arrays, meta: arrays.update(model_00000=np.zeros((3, 3))), "saved from a different model"),
], ids=["no-meta-keys", "epochs-not-a-number", "best-epoch-out-of-range", "no-variable-list", "array-missing",
        "array-of-text", "array-of-another-shape"])
def test_a_hand_edited_training_state_is_one_error_line(tiny_runs, tmp_path, capsys, change, message):
    run_dir = copy_run(tiny_runs[0], tmp_path / "run")
    _rewrite_state(run_dir, change)
    code, err = _error_of(["--resume", str(run_dir)], capsys)
    assert code == 2 and len(err) == 1 and message in err[0], err
    assert str(run_dir / STATE_FILE) in err[0]


def test_a_state_whose_meta_is_not_an_object_is_one_error_line(tiny_runs, tmp_path, capsys):
    run_dir = copy_run(tiny_runs[0], tmp_path / "run")
    with np.load(run_dir / STATE_FILE) as saved:
        arrays = {name: saved[name] for name in saved.files if name != "meta"}
    _write_state(run_dir, arrays, "[1, 2]")
    code, err = _error_of(["--resume", str(run_dir)], capsys)
    assert code == 2 and len(err) == 1 and "is damaged (its meta is not a JSON object)" in err[0], err


def test_a_lock_that_is_a_folder_is_one_error_line(tiny_runs, tmp_path, capsys):
    run_dir = copy_run(tiny_runs[0], tmp_path / "run")
    (run_dir / LOCK_FILE).mkdir()
    code, err = _error_of(["--resume", str(run_dir)], capsys)
    assert code == 2 and len(err) == 1 and f"holds a folder named {LOCK_FILE}" in err[0], err


def test_an_image_size_too_large_for_memory_is_refused_before_training_with_a_size_that_fits(
        tiny_dataset, tmp_path, capsys):
    run_dir = tmp_path / "run"
    code, err = _error_of([*_args(tiny_dataset, run_dir), "--set", "data.image_size=20000"], capsys)
    assert code == 2 and len(err) == 1, err
    assert "data.image_size=20000 with data.batch_size=8 needs about" in err[0] and "GB available" in err[0], err
    suggested = int(err[0].split("use data.image_size=")[1].split()[0])
    assert 16 <= suggested < 20000 and suggested % 16 == 0
    assert not run_dir.exists()  # refused before the run folder was made, or an image decoded at that size


def test_the_memory_estimate_passes_resnet50_at_224_px_batch_64_on_a_24_gb_machine():
    model = create_model("resnet50", 257, 224)
    estimate = memory.training_memory_bytes(model, 64)
    # Measured peak on CPU: about 1.0 x the layer outputs (9.7 GB here); the estimate adds a margin.
    assert 9.7e9 < estimate < 20e9
    memory.check_training_memory(model, 224, 64, available=20 * 2 ** 30)  # what a 24 GB machine has free
    with pytest.raises(memory.UserError, match=r"use data.image_size=(\d+) or less"):
        memory.check_training_memory(model, 224, 64, available=4 * 2 ** 30)
