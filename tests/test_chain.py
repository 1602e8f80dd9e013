"""A chain of runs (progressive pretraining): each stage starts from the previous one, and
the same command continues a stopped chain without redoing a finished stage."""

import os
import pathlib
import signal

import pytest
import yaml

import train
from keras_caltech.data.synthetic import generate_dataset
from keras_caltech.training import callbacks

# Small and quick: every stage 2 epochs of MyCNN at 32 px, no export or TensorBoard.
STAGE = {"data": {"image_size": 32, "batch_size": 8, "cache_dir": ""},
         "model": {"name": "mycnn"}, "train": {"epochs": 2, "tensorboard": False},
         "export": {"enabled": False}}


def write_chain(folder, roots):
    """Writes one stage config per dataset root, named 1_..., 2_..., in that order."""
    folder.mkdir()
    for number, root in enumerate(roots, 1):
        stage = {**STAGE, "name": f"stage{number}", "data": {**STAGE["data"], "root": str(root)}}
        (folder / f"{number}_stage.yaml").write_text(yaml.safe_dump(stage))
    return folder


@pytest.fixture
def chain(tiny_dataset, tmp_path):
    """Three stages: 4 classes, then 3 other classes (a new head), then the 4 again."""
    three = generate_dataset(tmp_path / "three", images_per_class=10, num_classes=3, seed=5,
                             min_size=40, max_size=64)
    return write_chain(tmp_path / "chain", [tiny_dataset, three, tiny_dataset])


def _interrupt_once_in_epoch_2_of(stage_name, monkeypatch):
    """Sends this process one real SIGINT after the named stage's epoch 2 starts (Python raises KeyboardInterrupt)."""
    from keras_caltech import chain as chain_module

    seen = {"stage": None, "sent": False}
    original_stage = chain_module._run_stage
    original_batch_end = callbacks.StopOnNonFiniteLoss.on_train_batch_end

    def run_stage(path, run_dir, *args, **kwargs):
        seen["stage"] = run_dir.name
        return original_stage(path, run_dir, *args, **kwargs)

    def batch_end(self, batch, logs=None):
        original_batch_end(self, batch, logs)
        if seen["stage"] == stage_name and self._epoch == 1 and batch == 0 and not seen["sent"]:
            seen["sent"] = True
            os.kill(os.getpid(), signal.SIGINT)

    monkeypatch.setattr(chain_module, "_run_stage", run_stage)
    monkeypatch.setattr(callbacks.StopOnNonFiniteLoss, "on_train_batch_end", batch_end)


def test_a_stopped_chain_continues_where_it_stopped_and_never_redoes_a_finished_stage(
        chain, tmp_path, capsys, monkeypatch):
    runs = tmp_path / "runs"
    _interrupt_once_in_epoch_2_of("2_stage", monkeypatch)
    assert train.main(["--chain", str(chain), "--output-dir", str(runs)]) == 130
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].endswith(f"python train.py --chain {chain} --output-dir {runs}"), err
    assert (runs / "1_stage" / "metrics.json").is_file() and not (runs / "2_stage" / "metrics.json").exists()
    first_model = (runs / "1_stage" / "best.keras").stat().st_mtime_ns

    assert train.main(["--chain", str(chain), "--output-dir", str(runs)]) == 0
    out = capsys.readouterr().out
    assert "stage 1 of 3 (1_stage.yaml): finished earlier" in out
    assert "stage 2 of 3 (2_stage.yaml): continuing the stopped run" in out and "after epoch 1" in out
    assert f"stage 3 of 3 (3_stage.yaml): starting {runs / '3_stage'} from {runs / '2_stage'}" in out
    assert (runs / "1_stage" / "best.keras").stat().st_mtime_ns == first_model
    for stage, previous in (("2_stage", "1_stage"), ("3_stage", "2_stage")):
        config = yaml.safe_load((runs / stage / "config.yaml").read_text())
        assert config["model"]["init_from"] == str((runs / previous).resolve())
    assert out.count("test top-1") == 2  # the two stages trained by this call

    assert train.main(["--chain", str(chain), "--output-dir", str(runs)]) == 0
    assert capsys.readouterr().out.count("finished earlier") == 3


@pytest.mark.parametrize("case, message", [
    ("with_data", "cannot be combined with --data"),
    ("empty", "holds no .yaml stage config"),
    ("missing", "not a folder"),
    ("own_init", "sets model.init_from, but a chain starts each stage after the first from the previous"),
    ("no_data", "names no data: set data.dataset"),
])
def test_chain_mistakes_are_one_error_line(case, message, tiny_dataset, tmp_path, capsys):
    folder = write_chain(tmp_path / "chain", [tiny_dataset, tiny_dataset])
    extra = []
    if case == "with_data":
        extra = ["--data", str(tiny_dataset)]
    elif case == "empty":
        for path in folder.glob("*.yaml"):
            path.unlink()
    elif case == "missing":
        folder = tmp_path / "nowhere"
    elif case == "own_init":
        config = yaml.safe_load((folder / "2_stage.yaml").read_text())
        config["model"]["init_from"] = str(tmp_path)
        (folder / "2_stage.yaml").write_text(yaml.safe_dump(config))
    elif case == "no_data":
        config = yaml.safe_load((folder / "1_stage.yaml").read_text())
        del config["data"]["root"]
        (folder / "1_stage.yaml").write_text(yaml.safe_dump(config))
    assert train.main(["--chain", str(folder), "--output-dir", str(tmp_path / "runs"), *extra]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and message in err[0], err
    assert not (tmp_path / "runs").exists()  # refused before any stage trained


def test_the_shipped_progressive_chain_dry_runs_every_stage_without_data(capsys):
    chain = pathlib.Path(__file__).resolve().parent.parent / "configs" / "progressive"
    assert train.main(["--chain", str(chain), "--dry-run"]) == 0
    out = capsys.readouterr().out
    for stage, (classes, size) in enumerate([(200, 64), (100, 64), (101, 224)], 1):
        assert f"stage {stage} of 3" in out and f"{classes} classes, {size} px input" in out
    assert out.count("resnet50: ") == 3 and "would start from" in out
    assert not pathlib.Path("runs").exists()  # a dry run writes nothing
