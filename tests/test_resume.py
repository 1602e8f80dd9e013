"""Surviving faults: SIGKILL mid-epoch or mid-save, Ctrl-C, NaN, and two runs on one folder.

Real training runs in a subprocess (tests/train_driver.py injects the fault at an
exact point), is killed, and is resumed with ``train.main(["--resume", ...])``.

Determinism: a resumed run must end *bit for bit* where an uninterrupted run with the
same seed ends (weights, optimizer state, history, metrics), so the comparisons below
are exact. That holds because every input to an epoch is restored or is a function of
(seed, epoch), and the ops used here are deterministic on CPU (two separate processes
agree exactly). On a GPU, set ``train.deterministic=true`` for the same guarantee.
"""

import csv
import json
import os
import signal
import stat
import subprocess
import sys
import time

import numpy as np
import pytest

import train
from keras_caltech.errors import UserError
from keras_caltech.training import callbacks
from keras_caltech.training import lock as lock_module
from keras_caltech.training.resume import STATE_FILE

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DRIVER = os.path.join(REPO, "tests", "train_driver.py")
# Two epochs, a learning rate that halves every epoch (so the schedule's position
# matters), flips (keyed augmentation) and dropout (a seed generator in the model).
RUN = ["--set", "data.image_size=32", "--set", "data.batch_size=8", "--set", "data.cache_dir=",
       "--set", "train.tensorboard=false", "--set", "train.epochs=2", "--set", "train.schedule=step",
       "--set", "train.step_epochs=1",
       "--set", "train.step_gamma=0.5", "--set", "export.enabled=false"]


def _args(dataset, run_dir):
    return ["--data", str(dataset), "--output-dir", str(run_dir), *RUN]


class Faulted:
    """A training subprocess with a fault injected (see train_driver.py), its run folder and logs."""

    def __init__(self, fault, dataset, folder):
        folder.mkdir()
        self.run_dir, self.marker, self.stderr_path = folder / "run", folder / "marker", folder / "stderr.txt"
        with open(folder / "stdout.txt", "w") as stdout, open(self.stderr_path, "w") as stderr:
            self.process = subprocess.Popen(
                [sys.executable, DRIVER, fault, str(self.marker), "--", *_args(dataset, self.run_dir)],
                cwd=REPO, stdout=stdout, stderr=stderr, text=True)

    def stderr(self):
        return self.stderr_path.read_text()

    def wait_for_marker(self, timeout=600):
        deadline = time.monotonic() + timeout
        while not self.marker.exists():
            if self.process.poll() is not None:
                pytest.fail(f"training exited with {self.process.returncode} before the fault point:\n"
                            + self.stderr()[-3000:])
            if time.monotonic() > deadline:
                pytest.fail("training did not reach the fault point in time")
            time.sleep(0.2)

    def wait(self, timeout=600):
        return self.process.wait(timeout=timeout)


@pytest.fixture(scope="module")
def faulted(tiny_dataset, tmp_path_factory):
    """The faulted runs, started together so they train while the reference run does."""
    folder = tmp_path_factory.mktemp("faulted")
    runs = {name: Faulted(fault, tiny_dataset, folder / name) for name, fault in
            (("sigkill", "pause"), ("kill_in_save", "kill-in-save"))}
    yield runs
    for run in runs.values():
        if run.process.poll() is None:
            run.process.kill()
            run.process.wait()


@pytest.fixture(scope="module")
def reference(faulted, tiny_dataset, tmp_path_factory):
    """An uninterrupted run with the same seed, in this process."""
    run_dir = tmp_path_factory.mktemp("reference") / "run"
    assert train.main(_args(tiny_dataset, run_dir)) == 0
    return run_dir


def _state(run_dir):
    with np.load(run_dir / STATE_FILE) as saved:
        return {name: saved[name] for name in saved.files}


def _history(run_dir):
    with open(run_dir / "history.csv", newline="") as handle:
        return list(csv.DictReader(handle))


def assert_same_run(run_dir, reference):
    resumed, expected = _state(run_dir), _state(reference)
    meta = json.loads(str(resumed.pop("meta")))
    assert meta["epochs_completed"] == 2
    assert json.loads(str(expected.pop("meta")))["best_epoch"] == meta["best_epoch"]
    assert sorted(resumed) == sorted(expected)
    for name in expected:  # every weight, BatchNorm statistic, seed state and optimizer slot
        np.testing.assert_array_equal(resumed[name], expected[name], err_msg=name)
    assert _history(run_dir) == _history(reference)  # two rows, the interrupted epoch not duplicated
    metrics, expected_metrics = (json.loads((path / "metrics.json").read_text()) for path in (run_dir, reference))
    assert metrics["top1"] == expected_metrics["top1"] and metrics["best_epoch"] == expected_metrics["best_epoch"]


def _error_of(argv, capsys):
    code = train.main(argv)
    return code, capsys.readouterr().err.strip().splitlines()


def test_a_run_killed_mid_epoch_resumes_exactly_and_its_folder_is_locked_while_it_runs(
        faulted, reference, tiny_dataset, capsys):
    run = faulted["sigkill"]
    run_dir, process = run.run_dir, run.process
    run.wait_for_marker()  # epoch 1 saved, epoch 2 one batch in

    # A second process on the same folder is refused while the first lives, resuming or not.
    code, err = _error_of(["--resume", str(run_dir)], capsys)
    assert code == 2 and f"in use by process {process.pid}" in err[0], err
    code, err = _error_of(_args(tiny_dataset, run_dir), capsys)
    assert code == 2 and "already holds files" in err[0] and "--resume" in err[0], err

    process.send_signal(signal.SIGKILL)
    assert run.wait() == -signal.SIGKILL
    assert (run_dir / lock_module.LOCK_FILE).exists()  # left behind by the dead process: stale
    assert len(_history(run_dir)) == 1

    assert train.main(["--resume", str(run_dir)]) == 0
    out = capsys.readouterr().out
    assert "resuming" in out and "after epoch 1" in out
    assert not (run_dir / lock_module.LOCK_FILE).exists()
    assert_same_run(run_dir, reference)

    # Resuming a finished run trains nothing more and duplicates no history row.
    assert train.main(["--resume", str(run_dir)]) == 0
    assert "after epoch 2" in capsys.readouterr().out
    assert_same_run(run_dir, reference)


def test_a_kill_during_a_save_leaves_the_previous_state_which_the_resume_uses(faulted, reference, capsys):
    run = faulted["kill_in_save"]
    run_dir = run.run_dir
    assert run.wait() == -signal.SIGKILL and run.marker.exists(), run.stderr()[-3000:]
    assert len(_history(run_dir)) == 2  # epoch 2's row was written before its state save was cut
    partial = list(run_dir.glob(f".{STATE_FILE}.*"))
    assert len(partial) == 1 and 0 < partial[0].stat().st_size < (run_dir / STATE_FILE).stat().st_size
    assert json.loads(str(_state(run_dir)["meta"]))["epochs_completed"] == 1  # the complete, older state

    assert train.main(["--resume", str(run_dir)]) == 0
    out = capsys.readouterr().out
    assert "deleted 1 partial file" in out and "after epoch 1" in out
    assert not list(run_dir.glob(".*.tmp*"))
    assert_same_run(run_dir, reference)


def _interrupt_in_epoch_2(monkeypatch):
    """Makes the run send itself a real SIGINT after epoch 2's first batch (Python raises KeyboardInterrupt)."""
    original = callbacks.StopOnNonFiniteLoss.on_train_batch_end

    def interrupt_in_epoch_2(self, batch, logs=None):
        original(self, batch, logs)
        if self._epoch == 1 and batch == 0:
            os.kill(os.getpid(), signal.SIGINT)

    monkeypatch.setattr(callbacks.StopOnNonFiniteLoss, "on_train_batch_end", interrupt_in_epoch_2)


def test_ctrl_c_stops_cleanly_says_how_to_resume_and_exits_130(tiny_dataset, tmp_path, capsys, monkeypatch):
    _interrupt_in_epoch_2(monkeypatch)
    run_dir = tmp_path / "run"
    code, err = _error_of(_args(tiny_dataset, run_dir), capsys)
    assert code == 130 and len(err) == 1, err
    assert err[0].startswith("stopped: interrupted") and err[0].endswith(f"python train.py --resume {run_dir}")
    assert not (run_dir / lock_module.LOCK_FILE).exists()  # released on the way out
    assert json.loads(str(_state(run_dir)["meta"]))["epochs_completed"] == 1
    assert len(_history(run_dir)) == 1


def test_the_folder_stays_locked_through_evaluation_and_ctrl_c_there_says_how_to_resume(
        tiny_dataset, tmp_path, capsys, monkeypatch):
    from keras_caltech import workflow

    run_dir = tmp_path / "run"
    seen = []

    def interrupted_evaluation(folder, *args, **kwargs):
        seen.append(lock_module.RunLock(folder).owner())
        raise KeyboardInterrupt

    monkeypatch.setattr(workflow, "evaluate_run", interrupted_evaluation)
    code, err = _error_of(_args(tiny_dataset, run_dir), capsys)
    assert seen and seen[0][0] == os.getpid()  # evaluation ran with this process holding the lock
    assert code == 130 and err[0].endswith(f"python train.py --resume {run_dir}"), err
    assert not (run_dir / lock_module.LOCK_FILE).exists()


def test_a_run_of_two_phases_resumes_exactly_in_the_phase_it_stopped_in(tiny_dataset, tmp_path, capsys,
                                                                        monkeypatch):
    """Progressive resizing (epoch 1 at 32 px, epoch 2 at 40 px), with RandAugment, MixUp and
    class weights as sample weights, stopped in epoch 2: the resume restores the 32 px
    stage's state, rebuilds the 40 px model from it and trains epoch 2 as the reference did."""
    recipe = ["--set", "data.image_size=40", "--set", "train.progressive_sizes=[32, 40]",
              "--set", "train.progressive_epochs=[1, 1]", "--set", "augment.rand_augment_ops=1",
              "--set", "augment.mixup_alpha=0.4", "--set", "train.class_weight=balanced"]
    reference = tmp_path / "reference"
    assert train.main([*_args(tiny_dataset, reference), *recipe]) == 0
    run_dir = tmp_path / "run"
    _interrupt_in_epoch_2(monkeypatch)
    assert train.main([*_args(tiny_dataset, run_dir), *recipe]) == 130
    monkeypatch.undo()
    capsys.readouterr()

    assert train.main(["--resume", str(run_dir)]) == 0
    assert "after epoch 1" in capsys.readouterr().out
    assert_same_run(run_dir, reference)


def test_a_nan_loss_is_never_saved_as_a_resume_point_and_a_resume_names_the_same_epoch(
        tiny_dataset, tmp_path, capsys):
    run_dir = tmp_path / "run"
    diverging = [*_args(tiny_dataset, run_dir), "--set", "train.optimizer=sgd", "--set", "train.learning_rate=1e30",
                 "--set", "train.schedule=constant"]
    code, err = _error_of(diverging, capsys)
    assert code == 2 and "NaN or infinite in epoch 1" in err[0] and "no checkpoint was saved" in err[0]
    assert not (run_dir / STATE_FILE).exists()
    code, err = _error_of(["--resume", str(run_dir)], capsys)
    assert code == 2 and len(err) == 1 and "NaN or infinite in epoch 1" in err[0], err


def test_a_stale_lock_of_a_dead_process_is_taken_over_and_a_live_one_is_refused(tmp_path):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    lock_path = tmp_path / lock_module.LOCK_FILE
    lock_path.write_text(f"{dead.pid} {lock_module.socket.gethostname()}\n")
    lock = lock_module.RunLock(tmp_path).acquire()
    assert lock_path.read_text().split()[0] == str(os.getpid())
    lock.release()
    assert not lock_path.exists()

    lock_path.write_text(f"{os.getppid()} {lock_module.socket.gethostname()}\n")  # our parent: alive
    with pytest.raises(lock_module.UserError, match=f"in use by process {os.getppid()}"):
        lock_module.RunLock(tmp_path).acquire()
    lock_path.write_text("4242 some-other-host\n")
    with pytest.raises(lock_module.UserError, match="on host some-other-host.*delete"):
        lock_module.RunLock(tmp_path).acquire()


@pytest.mark.parametrize("layout, message", [
    ("missing", "run folder not found"),
    ("file", "expects a run folder, received a file"),
    ("empty_folder", "is not a run folder (no config.yaml)"),
    ("empty_config", "config.yaml is empty"),
])
def test_resuming_something_that_is_not_a_run_folder_is_one_error_line(tmp_path, capsys, layout, message):
    target = tmp_path / "run"
    if layout == "file":
        target.write_text("x")
    elif layout in ("empty_folder", "empty_config"):
        target.mkdir()
        if layout == "empty_config":
            (target / "config.yaml").write_bytes(b"")
    code, err = _error_of(["--resume", str(target)], capsys)
    assert code == 2 and len(err) == 1 and message in err[0], err


def test_resume_refuses_flags_that_would_change_the_run(tmp_path, capsys):
    code, err = _error_of(["--resume", str(tmp_path), "--set", "train.epochs=9", "--config", "x.yaml"], capsys)
    assert code == 2 and "cannot be combined with --config, --set" in err[0]


def test_a_run_whose_dataset_moved_resumes_with_data_pointing_at_the_new_folder(
        reference, tiny_dataset, tmp_path, capsys):
    import shutil

    run_dir = shutil.copytree(reference, tmp_path / "copy", symlinks=True)
    splits = json.loads((run_dir / "splits.json").read_text())
    splits["root"] = str(tmp_path / "old_place")  # never created: the dataset moved away
    (run_dir / "splits.json").write_text(json.dumps(splits))
    code, err = _error_of(["--resume", str(run_dir)], capsys)
    assert code == 2 and len(err) == 1 and "old_place" in err[0] and "--data" in err[0], err
    # Checked when the folder is reopened, before any epoch (not only by the final evaluation).
    from keras_caltech.training.resume import reopen_run_folder
    with pytest.raises(UserError, match="old_place.*--data"):
        lock_module.holds_run_folder(reopen_run_folder)(run_dir)  # released however it ends, as in training

    new_place = shutil.copytree(tiny_dataset, tmp_path / "new_place")
    assert train.main(["--resume", str(run_dir), "--data", str(new_place)]) == 0
    assert json.loads((run_dir / "splits.json").read_text())["root"] == str(new_place.resolve())
    metrics, expected = (json.loads((path / "metrics.json").read_text()) for path in (run_dir, reference))
    assert metrics["top1"] == expected["top1"] and metrics["num_examples"] == expected["num_examples"]


def test_a_damaged_training_state_is_refused_not_trusted(reference, tmp_path, capsys):
    import shutil

    run_dir = tmp_path / "copy"
    shutil.copytree(reference, run_dir, symlinks=True)
    (run_dir / STATE_FILE).write_bytes(b"")  # e.g. a disk that filled up
    code, err = _error_of(["--resume", str(run_dir)], capsys)
    assert code == 2 and len(err) == 1 and f"{run_dir / STATE_FILE} is damaged" in err[0], err


def test_run_folder_files_written_atomically_get_the_usual_permissions_not_private_ones(tmp_path):
    from keras_caltech.runs import write_json

    umask = os.umask(0)
    os.umask(umask)
    write_json(tmp_path / "metrics.json", {"top1": 0.5})
    (tmp_path / "plain.txt").write_text("")  # what any new file gets
    modes = [stat.S_IMODE((tmp_path / name).stat().st_mode) for name in ("metrics.json", "plain.txt")]
    assert modes[0] == modes[1] == 0o666 & ~umask and modes[0] != 0o600
    assert not list(tmp_path.glob(".*.tmp*"))
