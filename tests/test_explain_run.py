"""explain.py on a run folder: images, galleries, mistakes, patches, --evaluate, errors.

The run is a copy of the session's tiny run A (MyCNN, 4 classes, 32 px, 1 epoch, 8 test
images, trained by train.main as a user would), since these commands write into it.
"""

import json
import math
import pathlib
import re

import numpy as np
import pytest
from conftest import copy_run

import explain
from keras_caltech.data.pipeline import crop_window, load_image
from keras_caltech.explain.gallery import choose_sample
from keras_caltech.explain.image_files import read_image
from keras_caltech.explain.localisation_scores import box_share, mosaic_groups, scale_box
from keras_caltech.models.loading import load_model_safely


@pytest.fixture(scope="module")
def run_dir(tiny_runs, tmp_path_factory):
    return copy_run(tiny_runs[0], tmp_path_factory.mktemp("explain_run") / "run")


@pytest.fixture(scope="module")
def run_test_split(run_dir):
    """(absolute paths, labels, the run model's predictions) of the run's test split."""
    splits = json.loads((run_dir / "splits.json").read_text())
    paths = [pathlib.Path(splits["root"]) / relative for relative, _ in splits["test"]]
    labels = np.array([label for _, label in splits["test"]])
    model = load_model_safely(run_dir / "best.keras")
    images = np.stack([load_image(path, 32) for path in paths])
    return paths, labels, np.asarray(model(images, training=False)).argmax(axis=1)


def run_explain(argv, capsys):
    code = explain.main([str(part) for part in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


# --- One image, with the run's model and class names ---------------------------------

def test_an_image_is_explained_with_the_runs_model_into_its_explain_folder(run_dir, run_test_split, capsys):
    paths, _, predictions = run_test_split
    code, out, _ = run_explain(["--run", run_dir, "--image", paths[0]], capsys)
    assert code == 0
    figure = run_dir / "explain" / f"{paths[0].stem}_gradcam.png"
    assert figure.read_bytes()[:4] == b"\x89PNG"
    class_names = json.loads((run_dir / "class_names.json").read_text())
    assert f"predicted {class_names[predictions[0]]} (" in out
    top = re.search(r"top-4: (.*)", out).group(1).split(", ")
    assert len(top) == 4 and top[0].startswith(class_names[predictions[0]])
    assert sorted(name.rsplit(" ", 1)[0] for name in top) == sorted(class_names)


def test_a_bare_caltech_name_selects_the_class_and_a_typo_suggests_the_full_name(run_dir, run_test_split,
                                                                                tmp_path, capsys):
    paths, _, _ = run_test_split
    code, out, _ = run_explain(["--run", run_dir, "--image", paths[0], "--class", "ring",
                                "--output-dir", tmp_path], capsys)
    assert code == 0 and "explained 002.ring" in out
    code, _, err = run_explain(["--run", run_dir, "--image", paths[0], "--class", "rnig"], capsys)
    assert code == 2 and err.startswith("error: unknown class 'rnig'. Did you mean 002.ring?")


def test_images_are_read_by_the_training_pipeline_and_keep_their_original(run_test_split):
    paths, _, _ = run_test_split
    image = read_image(paths[0], 32)
    np.testing.assert_array_equal(image.pixels, load_image(paths[0], 32))
    from PIL import Image
    with Image.open(paths[0]) as opened:
        assert image.original.shape == (opened.height, opened.width, 3)
    assert image.original.dtype == np.uint8
    cropped = read_image(paths[0], 32, resize_crop=40)  # a run trained on crops: its central crop
    np.testing.assert_array_equal(cropped.pixels, load_image(paths[0], 32, resize_crop=40))
    x0, y0, x1, y1 = np.round(crop_window(opened.width, opened.height, 32, 40)).astype(int)
    np.testing.assert_array_equal(cropped.original, image.original[y0:y1, x0:x1])


# --- Galleries -----------------------------------------------------------------------

def test_sample_picks_distinct_seeded_classes_and_images_within_each_class():
    labels = np.repeat(np.arange(6), [5, 1, 4, 4, 0, 3])
    first = choose_sample(labels, 3, 2, seed=4)
    assert first == choose_sample(labels, 3, 2, seed=4)
    assert len({label for label, _ in first}) == 3
    for label, picks in first:
        assert all(labels[pick] == label for pick in picks)
        assert len(picks) == min(2, int((labels == label).sum())) and len(set(picks)) == len(picks)
    assert [label for label, _ in choose_sample(labels, 9, 1)] == sorted(set(labels.tolist()))


def test_sample_picks_only_allowed_images_and_skips_classes_without_any():
    labels = np.repeat(np.arange(4), 5)
    allowed = np.zeros(len(labels), bool)
    allowed[[0, 1, 2, 7, 15, 16]] = True  # class 2 has no allowed image
    groups = choose_sample(labels, 4, 5, seed=2, allowed=allowed)
    assert [label for label, _ in groups] == [0, 1, 3]
    assert sorted(pick for _, picks in groups for pick in picks) == [0, 1, 2, 7, 15, 16]
    assert choose_sample(labels, 4, 2, seed=3, allowed=np.ones(len(labels), bool)) == \
        choose_sample(labels, 4, 2, seed=3)  # all allowed: the same draw as no filter


@pytest.fixture()
def drawn_grids(monkeypatch):
    """The rows and figures ``gallery.image_grid`` draws during a test."""
    from keras_caltech.explain import gallery

    drawn, draw = [], gallery.image_grid

    def recording(rows, title, **options):
        figure = draw(rows, title, **options)
        drawn.append((rows, figure))
        return figure

    monkeypatch.setattr(gallery, "image_grid", recording)
    return drawn


def test_the_sample_grid_shows_image_heatmap_and_overlay_of_each_image(run_dir, tmp_path, capsys, drawn_grids):
    code, _, _ = run_explain(["--run", run_dir, "--sample", "3x2", "--output-dir", tmp_path], capsys)
    assert code == 0
    [(rows, figure)] = drawn_grids
    assert len(rows) == 3 and all(len(row) == 6 for row in rows)  # 2 images x 3 panels per class
    assert sum(1 for axes in figure.axes if axes.images) == 18
    for row in rows:
        for (image, image_label), (heatmap, heat_label), (blend, overlay_label) in zip(*[iter(row)] * 3):
            assert "\ntrue 00" in image_label and heat_label.startswith("predicted 00")
            assert overlay_label.startswith("overlay")
            assert image.shape == heatmap.shape == blend.shape == (32, 32, 3)
            assert not np.array_equal(heatmap, blend)


def test_correct_only_samples_only_images_the_model_classifies_right(run_dir, run_test_split, tmp_path,
                                                                    capsys, drawn_grids):
    from keras_caltech.explain import gallery, runs

    _, labels, predictions = run_test_split
    pool_labels, allowed = gallery._sample_pool(runs.open_explained_run(run_dir), correct_only=True)
    np.testing.assert_array_equal(pool_labels, labels)
    np.testing.assert_array_equal(allowed, predictions == labels)
    code, out, _ = run_explain(["--run", run_dir, "--sample", "4x2", "--correct-only", "--output-dir",
                                tmp_path], capsys)
    assert code == 0
    correct = int(allowed.sum())
    if correct == 0:
        assert "none of the 8 test images is classified right: nothing written" in out and not drawn_grids
        return
    [(rows, _)] = drawn_grids
    assert sum(len(row) for row in rows) == 3 * correct  # at most 2 per class: the split has 2
    assert not any("misclassified" in label for row in rows for _, label in row)
    assert (tmp_path / "gradcam_sample_4x2_correct.png").is_file()
    if correct < 8:
        assert f"--correct-only: {correct} of 8 test images are classified right; showing {correct} " \
               f"of them, not the 8 asked" in out


def test_sample_writes_one_grid_png_and_a_self_contained_html_page(run_dir, capsys):
    code, out, _ = run_explain(["--run", run_dir, "--sample", "3x2", "--seed", "1"], capsys)
    assert code == 0
    grid = run_dir / "explain" / "gradcam_sample_3x2.png"
    page = run_dir / "explain" / "gradcam_sample_3x2.html"
    assert grid.read_bytes()[:4] == b"\x89PNG"
    text = page.read_text()
    # 3 classes x 2 images (each test class has 2), 3 pictures each, all inlined.
    assert text.count('src="data:image/png;base64,') == 18
    assert not re.search(r'(src|href)="(?!data:)', text)
    assert "true: 00" in text and "top-5:" in text
    assert str(grid) in out and str(page) in out


def test_asking_for_more_classes_and_images_than_the_test_split_has_says_so(run_dir, tmp_path, capsys):
    code, out, _ = run_explain(["--run", run_dir, "--sample", "9x5", "--output-dir", tmp_path], capsys)
    assert code == 0
    assert "the test split has 4 classes: showing 4, not 9" in out
    assert "fewer than 5 test images in" in out
    assert (tmp_path / "gradcam_sample_9x5.html").read_text().count("data:image/png") == 8 * 3


def test_misclassified_draws_each_mistake_and_reports_when_there_are_fewer(run_dir, run_test_split,
                                                                          tmp_path, capsys):
    _, labels, predictions = run_test_split
    mistakes = int((predictions != labels).sum())
    code, out, _ = run_explain(["--run", run_dir, "--misclassified", 1000, "--output-dir", tmp_path],
                               capsys)
    assert code == 0
    assert f"{mistakes} of {len(labels)} test images are misclassified" in out
    if mistakes == 0:
        assert "no mistakes to explain" in out and not list(tmp_path.iterdir())
        return
    assert f"only {mistakes} mistakes, fewer than the 1000 asked" in out
    assert f"{mistakes} misclassified test images" in out
    code, out, _ = run_explain(["--run", run_dir, "--misclassified", 1, "--output-dir", tmp_path],
                               capsys)
    assert code == 0 and "1 misclassified test images" in out and "fewer than" not in out
    assert (tmp_path / "gradcam_misclassified.png").read_bytes()[:4] == b"\x89PNG"


def test_patches_scan_the_whole_test_split_of_a_run(run_dir, run_test_split, tmp_path, capsys):
    paths, _, _ = run_test_split
    code, out, _ = run_explain(["--run", run_dir, "--method", "patches", "--layer", "block3_relu",
                                "--channel", 5, "--output-dir", tmp_path], capsys)
    assert code == 0 and f"from {len(paths)} image(s)" in out
    assert (tmp_path / "patches_block3_relu_channel5.png").is_file()  # the layer in the name: another stays


# --- --evaluate ----------------------------------------------------------------------

def test_boxes_are_scaled_from_the_saved_image_to_the_square_input():
    # A 200 x 100 image resized to 32 px: x shrinks 6.25 times, y 3.125 times.
    box = scale_box({"box": [0, 0, 100, 50], "width": 200, "height": 100}, 32)
    assert box == [0.0, 0.0, 15.5, 15.5]  # input pixels 0-15 have their centres inside
    assert box_share(box, 32) == pytest.approx(0.25)
    assert scale_box({"box": [50, 0, 200, 100], "width": 200, "height": 100}, 32)[::2] == [7.5, 31.0]


def test_boxes_follow_the_central_crop_of_a_run_trained_on_crops():
    # 200 x 100 seen through crop_window (20, 10, 180, 90): 160 x 80 pixels -> 32 px.
    entry = {"box": [20, 10, 100, 50], "width": 200, "height": 100}
    assert scale_box(entry, 32, resize_crop=40) == [0.0, 0.0, 15.5, 15.5]
    assert scale_box({"box": [0, 0, 15, 100], "width": 200, "height": 100}, 32, resize_crop=40) is None


def test_mosaics_take_four_different_classes_and_never_reuse_an_image():
    labels = np.array([0, 0, 0, 1, 1, 2, 2, 3, 3, 3, 4])
    groups = mosaic_groups(labels, 10, np.random.default_rng(0))
    used = [position for group in groups for position in group]
    assert len(groups) == 2 and len(set(used)) == len(used) == 8  # then only 3 classes remain
    assert all(len({labels[position] for position in group}) == 4 for group in groups)
    assert mosaic_groups(labels[:7], 10, np.random.default_rng(0)) == []  # 3 classes


def numbers_in(value):
    """Every int and float in a JSON value, booleans left out."""
    if isinstance(value, dict):
        return [number for item in value.values() for number in numbers_in(item)]
    if isinstance(value, list):
        return [number for item in value for number in numbers_in(item)]
    return [value] if isinstance(value, (int, float)) and not isinstance(value, bool) else []


def test_evaluate_writes_every_section_with_finite_numbers_and_prints_the_table(run_dir, capsys):
    code, out, _ = run_explain(["--run", run_dir, "--evaluate", "--max-images", 8], capsys)
    assert code == 0
    metrics = json.loads((run_dir / "explain_metrics.json").read_text())
    assert metrics["layer"] == "block4_relu" and metrics["num_images"] == 8
    assert all(math.isfinite(number) for number in numbers_in(metrics))
    local = metrics["localisation"]
    assert local["num_images"] == 8 and local["tolerance_px"] == pytest.approx(32 * 15 / 224, abs=1e-3)
    for key in ("pointing_game", "centre_baseline", "energy_in_box", "uniform_baseline"):
        assert 0 <= local[key] <= 1
    grid = metrics["grid_pointing_game"]
    assert grid["num_mosaics"] == 2 and 0 <= grid["accuracy"] <= 1 and grid["chance"] == 0.25
    faith = metrics["faithfulness"]
    for key in ("deletion_auc", "random_deletion_auc", "insertion_auc", "random_insertion_auc"):
        assert 0 <= faith[key] <= 1
    assert faith["beats_random"]["deletion"] == (faith["deletion_auc"] < faith["random_deletion_auc"])
    assert 0 <= faith["pixel_random_insertion_auc"] <= 1 and "beats_pixel_random" in faith
    sanity = metrics["sanity"]["methods"]
    assert set(sanity) == {"gradcam", "guided-backprop"}
    for result in sanity.values():
        # MyCNN's weighted layers, from the logits down to the first convolution.
        assert [step["randomized_down_to"] for step in result["cascade"]][::9] == ["logits", "block1_conv"]
        assert len(result["cascade"]) == 10
        assert all(-1 <= step["mean_rank_correlation"] <= 1 for step in result["cascade"])
    for text in ("pointing game", "energy in box", "grid pointing game", "deletion AUC",
                 "insertion AUC", "guided-backprop", "explain_metrics.json"):
        assert text in out


def test_evaluate_without_boxes_skips_localisation_but_keeps_the_grid_pointing_game(
        run_dir, monkeypatch):
    from keras_caltech.explain import assess, runs
    monkeypatch.setattr(assess, "load_boxes", lambda root: {})  # as for Caltech
    monkeypatch.setattr(assess, "_sanity", lambda *args: {"skipped in this test": True})
    scores = assess.assess_run(runs.open_explained_run(run_dir), max_images=8)
    assert "skipped" in scores["localisation"] and "grid_pointing_game" in scores["localisation"]["skipped"]
    assert scores["grid_pointing_game"]["num_mosaics"] == 2


# --- Errors: one line, exit code 2 ---------------------------------------------------

@pytest.fixture()
def bad_images(tmp_path):
    (tmp_path / "empty.jpg").write_bytes(b"")
    (tmp_path / "notes.jpg").write_text("not an image")
    (tmp_path / "folder").mkdir()
    return tmp_path


@pytest.mark.parametrize("arguments, message", [
    (["--run", "{tmp}/none", "--sample", "2x2"], "error: run folder not found: {tmp}/none"),
    (["--run", "{tmp}/folder", "--sample", "2x2"], "error: {tmp}/folder is not a run folder (no config.yaml)"),
    (["--run", "{run}", "--model", "{run}/best.keras", "--image", "{tmp}/x.jpg"],
     "error: give exactly one model: --run runs/NAME (a train.py run folder) or --model FILE.keras. "
     "Received both"),
    (["--image", "{tmp}/x.jpg"], "error: give exactly one model"),
    (["--run", "{run}", "--sample", "5by2"], "error: argument --sample: expected CLASSESxIMAGES"),
    (["--run", "{run}", "--sample", "0x2"], "error: argument --sample: expected CLASSESxIMAGES"),
    (["--model", "{run}/best.keras", "--evaluate"], "error: --evaluate reads a run's test split: pass --run"),
    (["--run", "{run}"], "error: nothing to explain"),
    (["--run", "{run}", "--evaluate", "--sample", "2x2"], "error: give one of --image, --sample"),
    (["--run", "{run}", "--misclassified", "0"], "error: --misclassified takes a number of images >= 1"),
    (["--run", "{run}", "--misclassified", "2", "--correct-only"],
     "error: --correct-only picks the images of --sample AxB: use it with --sample"),
    (["--run", "{run}", "--sample", "2x2", "--channel", "3"],
     "error: --channel picks a neuron for --method patches or guided-backprop. Received: --method gradcam"),
    (["--run", "{run}", "--evaluate", "--max-images", "0"], "error: --max-images must be at least 1"),
    (["--run", "{run}", "--evaluate", "--method", "guided-backprop"], "error: galleries and --evaluate"),
    (["--run", "{run}", "--sample", "2x2", "--layer", "fc1"], "error: layer 'fc1' of model 'mycnn' is not spatial"),
    (["--run", "{run}", "--sample", "2x2", "--layer", "block4_rel"],
     "error: model 'mycnn' has no layer 'block4_rel'. Did you mean block4_relu"),
    (["--run", "{run}", "--image", "{tmp}/missing.jpg"], "error: image file not found: {tmp}/missing.jpg"),
    (["--run", "{run}", "--image", "{tmp}/folder"], "error: --image {tmp}/folder is a folder"),
    (["--run", "{run}", "--image", "{tmp}/empty.jpg"], "error: image file {tmp}/empty.jpg is empty (0 bytes)"),
    (["--run", "{run}", "--image", "{tmp}/notes.jpg"], "error: cannot decode {tmp}/notes.jpg as an image"),
])
def test_user_errors_are_one_line_with_exit_code_2(run_dir, bad_images, capsys, arguments, message):
    def fill(text):
        return text.format(tmp=bad_images, run=run_dir)

    code, out, err = run_explain([fill(part) for part in arguments], capsys)
    assert code == 2 and err.startswith(fill(message)) and err.count("\n") == 1, err
    assert "Traceback" not in err and out == ""


def test_a_model_file_in_a_run_folder_is_explained_on_that_runs_central_crop(tmp_path):
    from keras_caltech.explain.runs import resize_crop_beside

    assert resize_crop_beside(tmp_path / "best.keras") == 0  # no config beside: the whole image
    (tmp_path / "config.yaml").write_text("data:\n  image_size: 32\naugment:\n  resize_crop: 40\n")
    assert resize_crop_beside(tmp_path / "best.keras") == 40
