"""Evaluating finished runs: the evaluate and ensemble commands, their files, and refusals."""

import json

import numpy as np
import pytest
from conftest import copy_run

from keras_caltech.__main__ import main
from keras_caltech.data.pipeline import load_image
from keras_caltech.evaluation.ensemble import evaluate_ensemble
from keras_caltech.evaluation.evaluate import Predictions
from keras_caltech.evaluation.metrics import classification_metrics
from keras_caltech.evaluation.report import mistake_examples
from keras_caltech.models.loading import load_model_safely


def read_metrics(folder):
    return json.loads((folder / "metrics.json").read_text())


def error_lines(capsys):
    return capsys.readouterr().err.strip().splitlines()


def test_training_ends_with_the_shared_evaluation_of_its_configured_tta(tiny_runs):
    run_a, run_b = tiny_runs
    metrics = read_metrics(run_a)  # run A was trained with eval.tta=flip
    assert set(metrics["tta"]) == {"none", "flip"} and set(read_metrics(run_b)["tta"]) == {"none"}
    assert metrics["tta"]["none"]["top1"] == metrics["top1"] and metrics["best_epoch"] == 1
    for name in ("confusion_matrix.png", "per_class.png", "report.html"):
        assert (run_a / name).is_file(), name


def test_evaluate_with_10crop_extends_metrics_json_and_keeps_the_existing_keys(tiny_runs, tmp_path, capsys):
    run = copy_run(tiny_runs[0], tmp_path / "run")
    before = read_metrics(run)
    assert main(["evaluate", str(run), "--tta", "10crop"]) == 0
    out = capsys.readouterr().out
    assert "10crop" in out and "per-class accuracy (TTA 10crop)" in out and "report.html" in out
    after = read_metrics(run)
    assert set(after["tta"]) == {"none", "flip", "10crop"}
    for key in ("top1", "top5", "loss", "mean_per_class_accuracy", "per_class_accuracy", "most_confused",
                "confusion_matrix", "best_epoch", "monitor", "best_monitor_value", "split"):
        assert key in after, key
    # Re-evaluation reproduces training's plain evaluation.
    assert after["top1"] == before["top1"] and after["loss"] == pytest.approx(before["loss"], abs=1e-4)
    crop = after["tta"]["10crop"]
    assert crop["num_examples"] == before["num_examples"]
    assert set(crop["per_class_accuracy"]) == set(before["per_class_accuracy"])
    assert 0.0 <= crop["mean_per_class_accuracy"] <= 1.0 and 0.0 <= crop["top1"] <= crop["top5"] <= 1.0


def test_an_ensemble_of_two_runs_is_the_sum_of_their_logits(tiny_runs, tmp_path):
    run_a, run_b = tiny_runs  # 32 px and 40 px: each model keeps its own input size
    metrics, predictions, output = evaluate_ensemble([run_a, run_b], "none", tmp_path / "ensemble", log=print)
    expected = 0
    for run, image_size in ((run_a, 32), (run_b, 40)):
        model = load_model_safely(run / "best.keras")
        images = np.stack([load_image(path, image_size) for path in predictions.files])
        expected = expected + np.asarray(model(images, training=False))
    np.testing.assert_allclose(predictions.logits, expected, rtol=1e-4, atol=1e-4)
    splits = json.loads((run_a / "splits.json").read_text())
    label_of = {f"{splits['root']}/{relative}": label for relative, label in splits["test"]}
    assert sorted(str(path) for path in predictions.files) == sorted(label_of)
    assert [label_of[str(path)] for path in predictions.files] == list(predictions.labels)
    written = read_metrics(output)
    hand = classification_metrics(expected, predictions.labels, json.loads((run_a / "class_names.json").read_text()))
    assert written["top1"] == hand["top1"] and written["tta_mode"] == "none"
    assert [member["run"] for member in written["members"]] == [str(run_a), str(run_b)]
    for name in ("confusion_matrix.png", "per_class.png", "report.html"):
        assert (output / name).is_file(), name


def test_the_ensemble_command_prints_members_and_ensemble_and_writes_its_folder(tiny_runs, tmp_path, capsys):
    output = tmp_path / "ensemble"
    assert main(["ensemble", *map(str, tiny_runs), "--tta", "flip", "--output", str(output)]) == 0
    out = capsys.readouterr().out
    assert str(tiny_runs[0]) in out and "ensemble (sum of logits, TTA flip)" in out and str(output) in out
    assert read_metrics(output)["tta_mode"] == "flip"


def test_runs_with_different_class_lists_are_refused(tiny_runs, tmp_path, capsys):
    other = copy_run(tiny_runs[1], tmp_path / "other")
    class_names = json.loads((other / "class_names.json").read_text())
    (other / "class_names.json").write_text(json.dumps(class_names[:-1] + ["004.hexagon"]))
    assert main(["ensemble", str(tiny_runs[0]), str(other), "--output", str(tmp_path / "e")]) == 2
    err = error_lines(capsys)
    assert len(err) == 1 and "different class lists" in err[0] and "004.hexagon" in err[0], err
    assert not (tmp_path / "e").exists()


def test_runs_with_different_test_splits_are_refused(tiny_runs, tmp_path, capsys):
    other = copy_run(tiny_runs[1], tmp_path / "other")
    splits = json.loads((other / "splits.json").read_text())
    splits["train"].append(splits["test"].pop())  # one test image moved to training
    (other / "splits.json").write_text(json.dumps(splits))
    assert main(["ensemble", str(tiny_runs[0]), str(other), "--output", str(tmp_path / "e")]) == 2
    err = error_lines(capsys)
    assert len(err) == 1 and "different test splits" in err[0] and "data.split_seed" in err[0], err


@pytest.mark.parametrize("split", ["train", "val"])
def test_evaluate_split_writes_that_splits_own_files_and_leaves_the_test_results_alone(tiny_runs, tmp_path,
                                                                                       capsys, split):
    run = copy_run(tiny_runs[1], tmp_path / "run")
    before = (run / "metrics.json").read_bytes(), (run / "confusion_matrix.png").read_bytes()
    assert main(["evaluate", str(run), "--split", split]) == 0
    out = capsys.readouterr().out
    splits = json.loads((run / "splits.json").read_text())
    assert f"{len(splits[split])} {split} images" in out and f"metrics_{split}.json" in out
    metrics = json.loads((run / f"metrics_{split}.json").read_text())
    assert metrics["split"] == split and metrics["num_examples"] == len(splits[split])
    # The counts of its confusion matrix are the split's own labels, class by class.
    expected = np.bincount([label for _, label in splits[split]], minlength=len(metrics["per_class_accuracy"]))
    np.testing.assert_array_equal(np.array(metrics["confusion_matrix"]).sum(axis=1), expected)
    assert (run / f"confusion_matrix_{split}.png").is_file() and (run / f"per_class_{split}.png").is_file()
    assert ((run / "metrics.json").read_bytes(), (run / "confusion_matrix.png").read_bytes()) == before


def test_a_run_whose_split_is_empty_is_refused_by_evaluate_and_explain_alike(tiny_runs, tmp_path, capsys):
    import explain

    run = copy_run(tiny_runs[1], tmp_path / "run")
    splits = json.loads((run / "splits.json").read_text())
    splits["test"] = []
    (run / "splits.json").write_text(json.dumps(splits))
    expected = f"error: the test split of run {run} holds no images ({run / 'splits.json'})"
    assert main(["evaluate", str(run)]) == 2
    assert error_lines(capsys) == [expected]
    assert explain.main(["--run", str(run), "--sample", "2x1", "--output-dir", str(tmp_path / "x")]) == 2
    assert error_lines(capsys) == [expected]


@pytest.mark.parametrize("case, message", [
    ("missing", "error: run folder not found"),
    ("no_best_model", "has no best.keras"),
    ("bad_tta", "error: unknown TTA mode '12crop'. Valid modes: none, flip, 10crop"),
    ("bad_option", "error: unrecognized arguments: --crops"),
])
def test_evaluate_user_errors_are_one_error_line_and_exit_code_2(tiny_runs, tmp_path, capsys, case, message):
    run = tmp_path / "missing"
    extra = []
    if case == "no_best_model":
        run = copy_run(tiny_runs[0], tmp_path / "run", leave_out=("best.keras",))
    elif case in ("bad_tta", "bad_option"):
        run = tiny_runs[0]
        extra = ["--tta", "12crop"] if case == "bad_tta" else ["--crops", "10"]
    assert main(["evaluate", str(run), *extra]) == 2
    err = error_lines(capsys)
    assert len(err) == 1 and err[0].startswith("error: ") and message in err[0], err


@pytest.mark.parametrize("case, message", [
    ("one_run", "needs at least 2 run folders"),
    ("same_run_twice", "listed twice"),
    ("bad_tta", "Valid modes: none, flip, 10crop"),
    ("used_output", "already holds files; pick another --output (refusing"),
    ("file_output", "--output {file} is a file, not a folder"),
])
def test_ensemble_user_errors_are_one_error_line_and_exit_code_2(tiny_runs, tmp_path, capsys, case, message):
    run_a, run_b = map(str, tiny_runs)
    a_file = tmp_path / "file.txt"
    a_file.write_text("x")
    argv = {"one_run": [run_a], "same_run_twice": [run_a, run_a], "bad_tta": [run_a, run_b, "--tta", "3crop"],
            "used_output": [run_a, run_b, "--output", run_a], "file_output": [run_a, run_b, "--output", str(a_file)]}[case]
    assert main(["ensemble", *argv]) == 2
    err = error_lines(capsys)
    assert len(err) == 1 and err[0].startswith("error: ") and message.format(file=a_file) in err[0], err


def test_mistake_examples_are_the_images_of_each_pair_most_confident_first():
    # Classes a, b, c; images 0-2 are a's, 3 is b's. Images 0 and 2 are a->b mistakes, 2 the surer one.
    logits = np.array([[1.0, 2.0, 0.0], [3.0, 0.0, 0.0], [0.0, 5.0, 0.0], [0.0, 0.0, 1.0]])
    predictions = Predictions(logits=logits, labels=np.array([0, 0, 0, 1]), files=["i0", "i1", "i2", "i3"])
    pairs = classification_metrics(logits, predictions.labels, ["a", "b", "c"])["most_confused"]
    assert [(pair["true"], pair["predicted"], pair["count"]) for pair in pairs] == [("a", "b", 2), ("b", "c", 1)]
    assert mistake_examples(predictions, ["a", "b", "c"], pairs) == [[("i2", 5.0), ("i0", 1.0)], [("i3", 1.0)]]


def test_a_train_val_protocol_run_selects_and_reports_on_one_split_and_says_so(tiny_dataset, tiny_runs, tmp_path,
                                                                                capsys):
    import train

    run = tmp_path / "reports"
    assert train.main(["--data", str(tiny_dataset), "--output-dir", str(run), "--set", "data.protocol=train_val",
                       "--set", "data.batch_size=8", "--set", "train.epochs=1", "--set", "data.cache_dir=",
                       "--set", "data.image_size=32", "--set", "train.tensorboard=false",
                       "--set", "export.enabled=false", "--set", "model.name=mycnn"]) == 0
    out = capsys.readouterr().out
    assert "validation top-1" in out and "test top-1" not in out and "same images selected the checkpoint" in out
    splits = json.loads((run / "splits.json").read_text())
    assert splits["val"] == splits["test"] and not {tuple(pair) for pair in splits["train"]} & {
        tuple(pair) for pair in splits["val"]}
    default_splits = json.loads((tiny_runs[0] / "splits.json").read_text())
    assert splits["test"] == default_splits["test"]  # the same held-out 20%; training gets the rest
    assert len(splits["train"]) == len(default_splits["train"]) + len(default_splits["val"])
    metrics = read_metrics(run)
    assert (metrics["protocol"], metrics["reported_as"]) == ("train_val", "validation")
    assert (read_metrics(tiny_runs[0])["reported_as"]) == "test"
    assert "Validation metrics" in (run / "report.html").read_text()
    assert main(["evaluate", str(run)]) == 0
    assert f"{metrics['num_examples']} validation images" in capsys.readouterr().out
