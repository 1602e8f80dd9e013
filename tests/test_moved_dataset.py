"""A run whose dataset moved (or that was copied to another machine) is still usable with --data.

splits.json names the dataset folder the run was trained on. When it is gone, evaluate,
ensemble and explain.py say so on one line and point at --data; with --data they read
the same relative files from the new place and give the same answers.
"""

import json
import shutil

import pytest
from conftest import copy_run

import explain
from keras_caltech.__main__ import main


@pytest.fixture(scope="module")
def moved(tiny_runs, tiny_dataset, tmp_path_factory):
    """Copies of both tiny runs whose dataset is gone from where they saw it, and its new place."""
    base = tmp_path_factory.mktemp("moved")
    new_place = shutil.copytree(tiny_dataset, base / "new_place")
    runs = []
    for run in tiny_runs:
        copy = copy_run(run, base / run.name)
        splits = json.loads((copy / "splits.json").read_text())
        splits["root"] = str(base / "old_place")  # never created: the dataset moved away
        (copy / "splits.json").write_text(json.dumps(splits))
        runs.append(copy)
    return runs, new_place


def one_error_line(capsys):
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: "), err
    return err


def test_evaluate_names_the_missing_folder_and_then_reads_the_new_place(moved, tiny_runs, capsys):
    (run, _), new_place = moved
    assert main(["evaluate", str(run)]) == 2
    err = one_error_line(capsys)
    assert "old_place" in err and "--data" in err
    assert main(["evaluate", str(run), "--data", str(new_place)]) == 0
    again = json.loads((run / "metrics.json").read_text())
    original = json.loads((tiny_runs[0] / "metrics.json").read_text())
    assert again["top1"] == original["top1"] and again["loss"] == pytest.approx(original["loss"], abs=1e-4)


def test_a_relative_data_path_works_from_the_current_folder(moved, monkeypatch, capsys):
    (run, _), new_place = moved
    monkeypatch.chdir(new_place.parent)
    assert main(["evaluate", str(run), "--data", new_place.name]) == 0  # resolved against the current folder


def test_ensemble_with_data_still_refuses_runs_tested_on_different_datasets(moved, tmp_path, capsys):
    (run_a, run_b), new_place = moved
    other = copy_run(run_b, tmp_path / "other")
    splits = json.loads((other / "splits.json").read_text())
    splits["root"] = str(tmp_path / "another_dataset")
    (other / "splits.json").write_text(json.dumps(splits))
    assert main(["ensemble", str(run_a), str(other), "--data", str(new_place), "--output", str(tmp_path / "e")]) == 2
    assert "different dataset folders" in one_error_line(capsys)


def test_missing_images_in_the_new_place_are_counted_and_named(moved, tmp_path, capsys):
    (run, _), new_place = moved
    partial = shutil.copytree(new_place, tmp_path / "partial")
    test_file = json.loads((run / "splits.json").read_text())["test"][0][0]
    (partial / test_file).unlink()
    assert main(["evaluate", str(run), "--data", str(partial)]) == 2
    err = one_error_line(capsys)
    assert "1 of the" in err and test_file in err


def test_data_must_be_a_folder(moved, tmp_path, capsys):
    (run, _), _ = moved
    assert main(["evaluate", str(run), "--data", str(tmp_path / "nowhere")]) == 2
    assert "is not a folder" in one_error_line(capsys)


def test_an_ensemble_of_moved_runs_reads_the_new_place(moved, tmp_path, capsys):
    runs, new_place = moved
    assert main(["ensemble", *map(str, runs), "--output", str(tmp_path / "e")]) == 2
    assert "old_place" in one_error_line(capsys)
    assert not (tmp_path / "e").exists()
    assert main(["ensemble", *map(str, runs), "--data", str(new_place), "--output", str(tmp_path / "e")]) == 0
    assert (tmp_path / "e" / "metrics.json").is_file()


def test_explain_on_a_moved_dataset_is_one_error_line_not_a_traceback(moved, tmp_path, capsys):
    (run, _), new_place = moved
    assert explain.main(["--run", str(run), "--sample", "1x1"]) == 2
    assert "old_place" in one_error_line(capsys)
    assert not (run / "explain").exists()  # a failed call leaves no empty figure folder
    argv = ["--run", str(run), "--sample", "1x1", "--output-dir", str(tmp_path)]
    assert explain.main([*argv, "--data", str(new_place)]) == 0
    assert list(tmp_path.glob("*.png"))


def test_explain_data_needs_a_run(moved, tmp_path, capsys):
    _, new_place = moved
    assert explain.main(["--model", "m.keras", "--image", "x.jpg", "--data", str(new_place)]) == 2
    assert "use it with --run" in one_error_line(capsys)
