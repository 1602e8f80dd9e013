"""report.html: self-contained, complete, and rendered by a real browser with every image loaded."""

import re
import shutil
import subprocess

import numpy as np
import pytest
from conftest import copy_run
from PIL import Image

from keras_caltech.plotting import charts
from keras_caltech.__main__ import main

BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")

# Added to a copy of the page: once everything has loaded, record how many <img> decoded.
RENDER_CHECK = """<script>
window.addEventListener("load", function () {
  var images = Array.from(document.images);
  var loaded = images.filter(function (image) { return image.complete && image.naturalWidth > 0; });
  var marker = document.createElement("div");
  marker.id = "render-check";
  marker.textContent = "loaded " + loaded.length + " of " + images.length;
  document.body.appendChild(marker);
});
</script>"""


@pytest.fixture(scope="module")
def browser():
    for name in BROWSERS:
        path = shutil.which(name)
        if path:
            return path
    pytest.skip("no Chromium on this machine (CI installs it with `apt-get install chromium`); "
                "the report cannot be rendered here")


def render(browser, report_path, work_dir):
    """Opens a copy of the report in headless Chromium; returns (images loaded, images on the page)."""
    page = work_dir / "page.html"
    page.write_text(report_path.read_text().replace("</body>", RENDER_CHECK + "</body>"))
    result = subprocess.run(
        [browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run", f"--user-data-dir={work_dir / 'profile'}",
         "--virtual-time-budget=10000", "--dump-dom", page.as_uri()],
        capture_output=True, text=True, timeout=180)
    found = re.search(r'<div id="render-check">loaded (\d+) of (\d+)</div>', result.stdout)
    assert found, f"the page did not finish loading in Chromium; stderr ends: {result.stderr[-500:]}"
    return int(found.group(1)), int(found.group(2))


def image_sources(html):
    return re.findall(r'<img[^>]*\ssrc="([^"]*)"', html)


def write_explanations(run):
    """Two PNGs where the explanation code puts its figures."""
    gallery = run / "explain" / "gallery"
    gallery.mkdir(parents=True)
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (40, 60, 3), dtype=np.uint8)).save(gallery / "gradcam_001.png")
    Image.fromarray(rng.integers(0, 256, (30, 30, 3), dtype=np.uint8)).save(run / "explain" / "overview.png")


def test_the_report_renders_in_chromium_with_every_image_loaded(tiny_runs, tmp_path, browser):
    run = copy_run(tiny_runs[0], tmp_path / "run")
    write_explanations(run)
    assert main(["evaluate", str(run), "--tta", "10crop"]) == 0
    html = (run / "report.html").read_text()
    sources = image_sources(html)
    # Self-contained: every image inline, nothing fetched from anywhere.
    assert len(sources) >= 5 and all(source.startswith("data:image/") for source in sources)
    assert not re.search(r'(src|href)="(https?:|file:|/)', html)
    for heading in ("Configuration", "Test metrics", "Training curves", "Confusion matrix (TTA 10crop)",
                    "Worst classes (TTA 10crop)", "Most-confused pairs (TTA 10crop)", "Grad-CAM gallery"):
        assert f"<h2>{heading}</h2>" in html, heading
    assert "gallery/gradcam_001.png" in html and "overview.png" in html
    assert re.search(r"<tr class=\"current\"><td>10crop</td>", html)  # the analysed mode is highlighted
    loaded, total = render(browser, run / "report.html", tmp_path)
    assert (loaded, total) == (len(sources), len(sources))


def test_the_render_check_notices_an_image_that_does_not_decode(tiny_runs, tmp_path, browser):
    broken = tmp_path / "broken.html"
    html = (tiny_runs[1] / "report.html").read_text()
    broken.write_text(html.replace("<h1>", '<img src="data:image/png;base64,AAAA" alt="broken"><h1>', 1))
    loaded, total = render(browser, broken, tmp_path)
    assert total == len(image_sources(html)) + 1 and loaded == total - 1


def test_the_gallery_section_is_left_out_when_the_run_has_no_explanations(tiny_runs):
    html = (tiny_runs[1] / "report.html").read_text()
    assert "Grad-CAM gallery" not in html and "<h2>Confusion matrix (TTA none)</h2>" in html


@pytest.mark.parametrize("num_classes", [3, 257])
def test_the_confusion_matrix_figure_draws_from_3_to_257_classes(tmp_path, num_classes):
    rng = np.random.default_rng(0)
    labels = rng.integers(0, num_classes, 20 * num_classes)
    predictions = np.where(rng.random(labels.shape) < 0.6, labels, rng.integers(0, num_classes, labels.shape))
    matrix = np.zeros((num_classes, num_classes), int)
    np.add.at(matrix, (labels, predictions), 1)
    path = charts.plot_confusion_matrix(matrix, [f"{index:03d}.class" for index in range(num_classes)],
                                        tmp_path / "matrix.png")
    pixels = np.asarray(Image.open(path).convert("L"))
    assert pixels.std() > 10  # not blank
    if num_classes == 257:
        assert min(pixels.shape) >= 1000  # at least ~4 px per class


def test_the_per_class_table_lists_every_one_of_257_classes_worst_first_with_its_label_index():
    from keras_caltech.evaluation.report import per_class_table

    names = [f"{index + 1:03d}.class{index}" for index in range(257)]
    rng = np.random.default_rng(0)
    matrix = rng.integers(0, 5, (257, 257)) + np.diag(rng.integers(1, 30, 257))
    accuracy = {name: float(matrix[index, index] / matrix[index].sum()) for index, name in enumerate(names)}
    html = per_class_table({"confusion_matrix": matrix.tolist(), "per_class_accuracy": accuracy}, names)
    rows = re.findall(r"<tr><td class=\"number\">(\d+)</td><td>([^<]+)</td>", html)
    assert len(rows) == 257 and {int(index) for index, _ in rows} == set(range(257))
    assert all(names[int(index)] == name for index, name in rows)  # the index is the matrix's label
    shown = [accuracy[name] for _, name in rows]
    assert shown == sorted(shown)  # worst first
