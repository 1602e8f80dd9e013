import json

import numpy as np
from PIL import Image

from keras_caltech.data import synthetic


def test_generation_is_deterministic_for_a_seed(tmp_path):
    first = synthetic.generate_dataset(tmp_path / "a", images_per_class=3, num_classes=3, seed=5)
    second = synthetic.generate_dataset(tmp_path / "b", images_per_class=3, num_classes=3, seed=5)
    other = synthetic.generate_dataset(tmp_path / "c", images_per_class=3, num_classes=3, seed=6)
    files = sorted(path.relative_to(first) for path in first.rglob("*.jpg"))
    assert len(files) == 9
    assert all((first / f).read_bytes() == (second / f).read_bytes() for f in files)
    assert any((first / f).read_bytes() != (other / f).read_bytes() for f in files)


def test_layout_is_caltech_style_with_varied_sizes_and_boxes(tiny_dataset):
    folders = sorted(path.name for path in tiny_dataset.iterdir() if path.is_dir())
    assert folders == ["001.circle", "002.ring", "003.triangle", "004.square"]
    assert sorted(p.name for p in (tiny_dataset / "002.ring").iterdir())[0] == "002_0001.jpg"
    boxes = json.loads((tiny_dataset / "boxes.json").read_text())
    assert len(boxes) == 48
    sizes = set()
    for relative, entry in boxes.items():
        with Image.open(tiny_dataset / relative) as image:
            assert image.size == (entry["width"], entry["height"])
            sizes.add(image.size)
        x0, y0, x1, y1 = entry["box"]
        assert 0 <= x0 < x1 <= entry["width"] and 0 <= y0 < y1 <= entry["height"]
    assert len(sizes) > 10


def test_box_encloses_the_drawn_object_and_nothing_of_the_shape_lies_outside():
    # The background is drawn first from the same generator, so redrawing it alone and
    # differencing finds the pixels the object changed, independently of how the box is made.
    for name in synthetic.SHAPE_NAMES:
        for seed in range(4):
            height, width = 120 + 20 * seed, 160
            image, box = synthetic.render_image(name, np.random.default_rng([seed]), height, width)
            assert image.shape == (height, width, 3) and image.dtype == np.uint8
            background = synthetic._cluttered_background(np.random.default_rng([seed]), height, width)
            changed = np.abs(image.astype(int) - background.astype(int)).sum(axis=2) > 30
            rows, columns = np.nonzero(changed)
            x0, y0, x1, y1 = box
            # Nothing of the object outside the box (2 px of anti-aliasing allowed: a faint
            # edge pixel, left out of the box, still differs on a strongly contrasting colour) ...
            assert x0 - 2 <= columns.min() and columns.max() < x1 + 2, (name, seed)
            assert y0 - 2 <= rows.min() and rows.max() < y1 + 2, (name, seed)
            # ... and the box is tight: the object reaches each of its sides.
            assert columns.min() <= x0 + 2 and columns.max() >= x1 - 3, (name, seed)
            assert rows.min() <= y0 + 2 and rows.max() >= y1 - 3, (name, seed)
            # The object covers a real share of its box (a crescent, the thinnest, about a fifth).
            assert changed[y0:y1, x0:x1].mean() > 0.15, (name, seed)


def test_objects_are_placed_anywhere_in_the_frame_and_often_miss_the_image_centre():
    # Objects anywhere: every cell of a 3x3 grid over the image holds some object centres
    # (a quadrant layout leaves the middle row and column empty). The pointing game's
    # centre baseline is only a baseline if the centre misses most boxes.
    covers_centre, cells = [], set()
    for index in range(300):
        rng = np.random.default_rng([3, index])
        height, width = int(rng.integers(120, 301)), int(rng.integers(120, 301))
        _, (x0, y0, x1, y1) = synthetic.render_image(synthetic.SHAPE_NAMES[index % 10], rng, height, width)
        centre_x, centre_y = (x0 + x1) / 2 / width, (y0 + y1) / 2 / height
        cells.add((int(centre_x * 3), int(centre_y * 3)))
        covers_centre.append(x0 <= width / 2 < x1 and y0 <= height / 2 < y1)
    assert cells == {(column, row) for column in range(3) for row in range(3)}
    assert np.mean(covers_centre) < 0.25


def test_the_class_is_not_given_away_by_colour():
    # Mean colour of objects per class should not separate classes: compare class means.
    means = []
    for class_index, name in enumerate(("circle", "star")):
        colours = [synthetic.render_image(name, np.random.default_rng([9, class_index, i]), 80, 80)[0]
                   .reshape(-1, 3).mean(axis=0) for i in range(40)]
        means.append(np.mean(colours, axis=0))
    assert np.abs(means[0] - means[1]).max() < 25


def test_ensure_dataset_generates_once_then_reuses(tmp_path, monkeypatch):
    root = tmp_path / "syn"
    synthetic.ensure_dataset(root, images_per_class=2, seed=0)
    calls = []
    monkeypatch.setattr(synthetic, "generate_dataset", lambda *a, **k: calls.append(1))
    synthetic.ensure_dataset(root, images_per_class=2, seed=0)
    assert calls == []
    synthetic.ensure_dataset(root, images_per_class=3, seed=0)  # different size: regenerate
    assert calls == [1]
    # A dataset made by the previous generator (its marker had no version) is regenerated.
    (root / synthetic.COMPLETE_MARKER).write_text(json.dumps({"images_per_class": 2, "seed": 0}))
    synthetic.ensure_dataset(root, images_per_class=2, seed=0)
    assert calls == [1, 1]
