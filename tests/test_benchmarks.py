"""Benchmarks are not tests: this only checks that their wiring runs on a tiny configuration."""

import importlib.util
import math
import pathlib

BENCHMARKS = pathlib.Path(__file__).resolve().parents[1] / "benchmarks"


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


def test_the_gradcam_benchmark_prints_a_row_per_model_with_agreeing_maps(capsys):
    benchmark = load_script("gradcam")
    assert benchmark.main(["--size", "32", "--batch", "2", "--repeats", "1"]) == 0
    rows = capsys.readouterr().out.strip().splitlines()[3:]
    assert [row.split()[0] for row in rows] == ["mycnn", "resnet50"]
    for row in rows:
        ours, recipe, _, correlation = (float(value.rstrip("x")) for value in row.split()[3:7])
        assert ours > 0 and recipe > 0
        assert math.isnan(correlation) or correlation > 0.99  # nan: every map constant
