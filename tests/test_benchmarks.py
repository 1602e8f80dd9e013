"""Benchmarks are not tests: this only checks their wiring on tiny configurations, never their numbers.

Each smoke run uses 32 px images, batch 2 and one repetition, so it takes seconds; rows
whose optional dependency (torch, xplique) is missing in this environment must say so,
not fail.
"""

import importlib.util
import json
import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
BENCHMARKS = ROOT / "benchmarks"


def load_script(name):
    spec = importlib.util.spec_from_file_location(name, BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_tta_benchmark_prints_a_row_per_mode(capsys):
    benchmark = load_script("evaluate_tta")
    assert benchmark.main(["--images", "4", "--classes", "2", "--image-size", "32", "--repeats", "1"]) == 0
    rows = capsys.readouterr().out.strip().splitlines()[2:]
    assert [row.split()[:3] for row in rows] == [["none", "1", "32"], ["flip", "2", "32"], ["10crop", "10", "37"]]
    assert all(float(row.split()[3]) > 0 for row in rows)  # images/s


def test_the_gradcam_section_gives_speed_rows_and_maps_that_agree_with_the_keras_io_recipe():
    import argparse

    gradcam = importlib.import_module("sections.gradcam")
    # 64 px: the smallest size at which resnet50's conv5 map (2x2) is more than one cell,
    # so that the correlation of the two methods' maps is defined for both models.
    options = argparse.Namespace(gradcam_models=["mycnn", "resnet50"], gradcam_size=64, gradcam_batch=2,
                                 gradcam_repeats=1)
    rows = gradcam.run(options, {})
    for model in ("MyCNN", "ResNet-50"):
        speed = next(row for row in rows if row.name.startswith(model) and "keras-io one image" in row.name)
        assert speed.value > 0 and speed.reference_value > 0
        agreement = next(row for row in rows if row.name.startswith(model) and "keras-io recipe's" in row.name)
        assert agreement.value > 0.99, agreement


def test_the_smoke_run_prints_a_table_with_every_section_and_writes_the_results(tmp_path):
    output = tmp_path / "results.json"
    result = subprocess.run([sys.executable, str(BENCHMARKS / "run.py"), "--smoke", "--output", str(output)],
                            capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "| Section | Measurement | Ours | Compared with | Ratio | Goal | Notes |" in result.stdout
    assert "by `python benchmarks/run.py`" in result.stdout.splitlines()[0]  # the machine and date line
    results = json.loads(output.read_text())
    assert results["smoke"] is True
    rows = results["rows"]
    assert {row["section"] for row in rows} == {"training", "flops", "pipeline", "gradcam", "serving"}
    assert not any("failed" in row["name"] for row in rows)
    serving = [row for row in rows if row["section"] == "serving"]
    assert serving and all(row["status"] != "skipped" and row["value"] > 0 for row in serving)
    ours = next(row for row in rows if row["name"].startswith("MyCNN 32 px, batch 2 fp32: ours"))
    assert ours["value"] > 0
    if importlib.util.find_spec("torch") is None:
        assert "torch is not installed" in ours["note"]
    else:
        assert ours["reference_value"] > 0 and ours["status"] in ("met", "missed")
    xplique = next(row for row in rows if "xplique GradCAM" in row["name"])
    if importlib.util.find_spec("xplique") is None:
        assert xplique["status"] == "skipped" and "xplique is not importable" in xplique["note"]
    pipeline = [row for row in rows if row["section"] == "pipeline"]
    assert len(pipeline) == 2 and all(row["reference_value"] and row["goal"] == 3.0 for row in pipeline)


def test_an_unknown_section_is_refused_with_the_valid_ones():
    result = subprocess.run([sys.executable, str(BENCHMARKS / "run.py"), "--sections", "trainig"],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert "unknown section(s) trainig. Valid sections: training," in result.stderr


def test_the_flop_counter_gives_resnet18s_published_forward_cost():
    from sections.flops import forward_flops

    from keras_caltech.models import create_model

    # ResNet-18 at 224 px with 1000 classes: 1.814 G multiply-adds (torchvision's figure).
    flops = forward_flops(create_model("resnet18", 1000, 224))
    assert flops == pytest.approx(2 * 1.814e9, rel=0.01)


def test_serving_scripts_printed_table_becomes_rows():
    from run import parse_serving_table

    text = ("model mycnn at 32 px\n"
            "path             input                                    batch 1 p50 ms batch 1 p95 ms   batch 32 img/s\n"
            "--------------------------------------------------------------------------------------------------------\n"
            "serving_default  JPEG bytes 64x85                                   3.10           4.20            812.5\n"
            "keras model      float arrays 32x32, pre-decoded                    1.05           1.30           2904.0\n"
            "decode + resize + top-k inside serving_default at batch 32: +0.886 ms per image over the bare model\n")
    rows = parse_serving_table(text)
    assert [row.name for row in rows] == ["serving_default (JPEG bytes 64x85)",
                                          "keras model (float arrays 32x32, pre-decoded)"]
    assert rows[0].value == 812.5 and "p50 3.10 ms, p95 4.20 ms" in rows[0].note


@pytest.mark.parametrize("name", ["textures", "shapes_anywhere", "glyphs", "tiny_classes", "imbalanced",
                                  "many_classes", "mixed_sizes"])
def test_every_generated_recipe_dataset_is_a_tree_the_scan_accepts(name, tmp_path):
    # The scikit-learn datasets need scikit-learn, which the project does not; the rest
    # are generated small here (the bench's own sizes are in recipe_datasets.DATASETS).
    import recipe_datasets

    from keras_caltech.data.scan import scan_dataset

    small = {"textures": {"per_class": 3}, "shapes_anywhere": {"per_class": 3}, "glyphs": {"per_class": 3},
             "tiny_classes": {"per_class": 3}, "imbalanced": {}, "many_classes": {"per_class": 2},
             "mixed_sizes": {"per_class": 3}}[name]
    recipe_datasets.DATASETS[name][0](tmp_path / name, **small)
    scan = scan_dataset(tmp_path / name)
    assert len(scan.class_names) >= 8 and len(scan.files) >= 2 * len(scan.class_names)
    # mixed_sizes holds one corrupt file, which the scan must leave out; no other tree has one.
    assert [pathlib.Path(path).name for path, _ in scan.excluded] == (["broken.jpg"] if name == "mixed_sizes" else [])


def test_the_recipe_bench_trains_both_recipes_on_the_same_split_and_prints_the_table(tmp_path, capsys):
    bench = load_script("recipes")
    assert bench.main(["--smoke", "--work-dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    header, _, row = out.strip().splitlines()[-3:]
    assert "default top-1" in header and "plain_keras top-1" in header and "default / plain" in header
    cells = [cell.strip() for cell in row.strip("|").split("|")]
    assert cells[0] == "glyphs_smoke" and cells[1] == "10" and cells[3:5] == ["32", "1"]
    assert all(cell.endswith("%") for cell in cells[5:7])  # both recipes trained and were scored
    # Plain Keras trains on the default run's training and validation images and is
    # tested on its test images: the same test split, no test image in training.
    runs = tmp_path / "runs" / "glyphs_smoke"
    splits = json.loads((runs / "default" / "splits.json").read_text())
    linked = {part: sorted(f"{path.parent.name}/{path.name}" for path in (runs / "default_plain" / part).glob("*/*"))
              for part in ("train", "test")}
    assert linked["test"] == sorted(path for path, _ in splits["test"])
    assert linked["train"] == sorted(path for path, _ in splits["train"] + splits["val"])


def test_a_docs_table_is_replaced_between_its_markers_and_the_prose_kept(tmp_path):
    docs_page = load_script("docs_page")
    page = tmp_path / "page.md"
    page.write_text("# Title\n\nprose\n<!-- speed table: start -->\nold table\n<!-- speed table: end -->\nmore prose\n")
    docs_page.write_table(page, "speed", "Measured today.\n\n| a |\n|---|")
    assert page.read_text() == ("# Title\n\nprose\n<!-- speed table: start -->\nMeasured today.\n\n| a |\n|---|\n"
                                "<!-- speed table: end -->\nmore prose\n")
    with pytest.raises(ValueError, match="no <!-- other table: start -->"):
        docs_page.write_table(page, "other", "x")


def test_the_docs_pages_hold_the_markers_their_benchmarks_write_between():
    for page, name in (("performance.md", "performance"), ("recipes.md", "recipes")):
        text = (ROOT / "docs" / page).read_text()
        assert f"<!-- {name} table: start -->" in text and f"<!-- {name} table: end -->" in text, page


def test_the_caltech_like_tree_has_caltech_256s_shape():
    import caltech_tree

    plan = caltech_tree.tree_plan()
    counts = [count for _, count in plan]
    assert len(plan) == 257 and sum(counts) == 30_607
    assert min(counts) == 80 and max(counts) == 827 and plan[-1] == ("257.clutter", 827)
    assert ("056.dog", 101) in plan and plan[197][0] == "198.spider"
    assert sorted(counts)[len(counts) // 2] < 120 < sorted(counts)[-20]  # a long tail: most classes small


def test_a_small_caltech_like_tree_keeps_the_oddities_and_is_generated_once(tmp_path):
    import caltech_tree

    from keras_caltech.data.scan import scan_dataset

    tree = caltech_tree.ensure_tree(tmp_path, classes=4, scale=0.02, workers=1, progress=False)
    assert [path.name for path in sorted(tree.iterdir()) if path.is_dir()] == [
        "001.ak47", "056.dog", "198.spider", "257.clutter"]
    assert (tree / "056.dog" / "greg").is_dir() and not any((tree / "056.dog" / "greg").iterdir())
    scan = scan_dataset(tree)
    reasons = {path: reason.split(":")[0] for path, reason in scan.excluded}
    assert reasons == {"198.spider/RENAME2": "not an image file (extension)",
                       "001.ak47/001_0003.jpg": "cannot be decoded", "257.clutter/257_0017.jpg": "cannot be decoded"}
    assert len(scan.files) == sum(count for _, count in caltech_tree.tree_plan(4, 0.02)) - 2
    stamp = (tree / "001.ak47" / "001_0001.jpg").stat().st_mtime_ns
    assert caltech_tree.ensure_tree(tmp_path, classes=4, scale=0.02, workers=1, progress=False) == tree
    assert (tree / "001.ak47" / "001_0001.jpg").stat().st_mtime_ns == stamp  # reused, not generated again
    (tree / caltech_tree.MARKER).write_text('{"generator_version": 0}')  # an older generator's tree
    caltech_tree.ensure_tree(tmp_path, classes=4, scale=0.02, workers=1, progress=False)
    assert (tree / "001.ak47" / "001_0001.jpg").stat().st_mtime_ns != stamp


def test_the_caltech_scale_rehearsal_runs_every_phase_at_a_tiny_size(tmp_path, capsys):
    # Wiring only: 4 classes of a few images, 32 px, batch 2, two timed steps. Nothing asserts on a speed.
    rehearsal = load_script("caltech_scale")
    assert rehearsal.main(["--cache-dir", str(tmp_path), "--classes", "4", "--scale", "0.02", "--models", "mycnn",
                           "--image-size", "32", "--batch-size", "2", "--steps", "2", "--rounds", "1",
                           "--eval-images", "10", "--eval-batches", "1", "--workers", "1"]) == 0
    out = capsys.readouterr().out
    assert "by `python benchmarks/caltech_scale.py --cache-dir" in out.splitlines()[0]
    rows = [line.split(" | ") for line in out.splitlines() if line.startswith("| ") and "---" not in line][1:]
    measured = {(cells[0].strip("| "), cells[1]): cells for cells in rows}
    for phase, name in [("scan", "first scan (decodes every file), 4 classes"), ("scan", "re-scan, cached, 4 classes"),
                        ("cache", "MyCNN 32 px: data.cache=disk, first pass (training split)"),
                        ("train", "MyCNN 32 px, batch 2: bare step (one batch from memory, no callback)"),
                        ("export", "MyCNN 32 px: SavedModel export")]:
        assert measured[(phase, name)][2] != "-", (phase, name)  # a measured value
    for cache in ("none", "disk", "memory"):  # 32 px images fit in memory: every mode is timed
        cells = measured[("train", f"MyCNN 32 px, batch 2: whole loop, data.cache={cache}")]
        assert cells[3].startswith("bare step: ") and cells[5].startswith(">= 0.9: ") and "GB" in cells[6]
    for mode in ("none (1 view(s))", "10crop (10 view(s))"):
        assert measured[("evaluate", f"MyCNN 32 px: test evaluation, TTA {mode}")][4] != "-"
    assert not (tmp_path / "work-caltech256-like-4-classes-scale-0.02" / "mycnn" / "data_cache").exists()


def test_the_performance_page_holds_the_caltech_scale_tables_markers():
    text = (ROOT / "docs" / "performance.md").read_text()
    assert "<!-- caltech_scale table: start -->" in text and "<!-- caltech_scale table: end -->" in text
