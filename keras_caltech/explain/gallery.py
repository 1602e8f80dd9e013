"""Galleries of a run's explanations on its test split.

- ``--sample AxB``: A random classes x B random images of each (seeded), one grid PNG
  (a row per class; image, heatmap and overlay of each image) and one self-contained
  HTML page (images inlined) of the same explanations; ``--correct-only`` samples only
  the images the model classifies right.
- ``--misclassified N``: the N most confident mistakes, each with the heatmap of its
  true class beside the heatmap of the class the model predicted.
- ``--method patches``: the test images where one unit responds most.

Images are read through the training pipeline at the model's input size and explained
32 at a time by one explainer (one gradient tape per batch).
"""

import cv2
import numpy as np

from keras_caltech.errors import UserError
from keras_caltech.explain.image_files import (CAM_METHODS, Written, class_name, top_classes,
                                               write_patches)
from keras_caltech.explain.runs import load_split_images, predict_split, split_dataset
from keras_caltech.html_page import data_uri, escape, page
from keras_caltech.plotting.explanations import colorize, image_grid, overlay
from keras_caltech.plotting.figures import save_figure

HTML_IMAGE_SIDE = 192  # pixels: small inputs (32-64 px) are upscaled for the page
_SAMPLE_WIDTH = 18  # inches: wide --sample grids get smaller panels, down to 1.1 inches


def cam_explainer(model, method, layer_name):
    """A Grad-CAM family explainer; other methods draw no heatmap to overlay.

    Raises:
        UserError: ``method`` is not a CAM method.
    """
    if method not in CAM_METHODS:
        raise UserError(f"galleries and --evaluate overlay heatmaps: --method must be one of "
                        f"{', '.join(CAM_METHODS)}. Received: {method!r}")
    return CAM_METHODS[method](model, layer_name)


def _test_labels(run):
    return np.array([label for _, label in run.folder.split_pairs("test")], int)


def choose_sample(labels, num_classes, per_class, seed=0, allowed=None):
    """Picks random classes, then random images of each, without repeats.

    Args:
        labels: (n,) int, the label of each test image.
        num_classes: classes wanted; fewer if fewer classes have (allowed) test images.
        per_class: images wanted per class; fewer if a class has fewer.
        seed: the same seed picks the same images.
        allowed: (n,) bool, the images that may be picked (e.g. those the model
            classifies right); None: all. Classes with no allowed image are not picked.

    Returns:
        A list of (class index, sorted positions in ``labels``), classes in label order.
    """
    rng = np.random.default_rng(seed)
    labels = np.asarray(labels)
    allowed = np.ones(len(labels), bool) if allowed is None else np.asarray(allowed, bool)
    present = np.unique(labels[allowed])
    classes = np.sort(rng.choice(present, size=min(num_classes, len(present)), replace=False))
    groups = []
    for label in classes:
        members = np.flatnonzero((labels == label) & allowed)
        picks = rng.choice(members, size=min(per_class, len(members)), replace=False)
        groups.append((int(label), sorted(int(pick) for pick in picks)))
    return groups


def sample_gallery(run, num_classes, per_class, method="gradcam", layer_name=None,
                   class_index=None, seed=0, output_dir=None, correct_only=False):
    """Explains a seeded sample of the test split; writes a grid PNG and an HTML page.

    The grid has a row per class and three panels per image: the image, the heatmap
    alone and the overlay.

    Args:
        run: an ``ExplainedRun``.
        num_classes, per_class: the A and B of ``--sample AxB``.
        method: a CAM method (see ``image_files.CAM_METHODS``).
        layer_name: the 4-D layer; None: the model's declared Grad-CAM layer.
        class_index: the class to explain in every image; None: each one's prediction.
        seed: picks the classes and images.
        output_dir: folder for the files (default: the run's ``explain/``).
        correct_only: sample only test images the model classifies right.

    Returns:
        (list of :class:`Written`, notes: lines about what could not be met).
    """
    output_dir = run.folder.path / "explain" if output_dir is None else output_dir
    explainer = cam_explainer(run.model, method, layer_name)
    labels, allowed = _sample_pool(run, correct_only)
    if allowed is not None and not allowed.any():
        return [], [f"--correct-only: none of the {len(labels)} test images is classified right: "
                    f"nothing written"]
    groups = choose_sample(labels, num_classes, per_class, seed, allowed)
    indices = [index for _, picks in groups for index in picks]
    images, _ = load_split_images(run, "test", indices)  # (n, size, size, 3) 0-255
    result = explainer(images, class_index)
    rows, cards = _sample_figures(run, explainer, groups, indices, images, result)

    stem = f"{method}_sample_{num_classes}x{per_class}" + ("_correct" if correct_only else "")
    which = "correctly classified test images" if correct_only else "test images"
    title = (f"{explainer.method} at {explainer.layer_name}, {run.folder.path.name}: "
             f"{len(indices)} {which} (seed {seed}): image | heatmap | overlay")
    columns = 3 * max(len(picks) for _, picks in groups)
    grid = image_grid(rows, title, cell=min(1.8, max(1.1, _SAMPLE_WIDTH / columns)), group=3)
    grid_path = save_figure(grid, output_dir / f"{stem}.png")
    page_path = output_dir / f"{stem}.html"
    page_path.write_text(_html_page(title, cards))
    correct = int(sum(result.probabilities[position].argmax() == labels[index]
                      for position, index in enumerate(indices)))
    summary = f"{len(groups)} classes x up to {per_class} images, {correct}/{len(indices)} predicted right"
    written = [Written(grid_path, f"grid: {summary}"),
               Written(page_path, "page of the same, images inlined")]
    if allowed is not None:
        return written, _correct_only_notes(allowed, len(indices), num_classes * per_class)
    return written, _sample_notes(groups, num_classes, per_class, run.class_names)


def _sample_pool(run, correct_only):
    """The test labels (n,), and with ``correct_only`` which test images the model gets right.

    Returns:
        (labels int (n,), allowed bool (n,) or None).
    """
    if not correct_only:
        return _test_labels(run), None
    probabilities, labels = predict_split(run, "test")
    return labels, probabilities.argmax(axis=1) == labels


def _correct_only_notes(allowed, shown, asked):
    """One line when the correctly classified images could not fill ``--sample AxB``."""
    if shown >= asked:
        return []
    return [f"--correct-only: {int(allowed.sum())} of {len(allowed)} test images are classified "
            f"right; showing {shown} of them, not the {asked} asked"]


def _sample_notes(groups, num_classes, per_class, names):
    """Lines saying where the test split had fewer classes or images than ``--sample`` asked."""
    notes = []
    if len(groups) < num_classes:
        notes.append(f"the test split has {len(groups)} classes: showing {len(groups)}, not {num_classes}")
    short = [class_name(label, names) for label, picks in groups if len(picks) < per_class]
    if short:
        notes.append(f"fewer than {per_class} test images in {', '.join(short)}: showing all of them")
    return notes


def _sample_figures(run, explainer, groups, indices, images, result):
    """The grid's rows (per class, three panels per image: image, heatmap, overlay) and the page's cards.

    Args:
        run: an ``ExplainedRun``.
        explainer: the CAM explainer that gave ``result``.
        groups: (class index, positions) pairs from :func:`choose_sample`.
        indices: those positions, flattened in the same order.
        images: (n, size, size, 3) RGB 0-255, one per position.
        result: the explainer's ``CamResult`` for ``images``.

    Returns:
        (rows for ``plotting.explanations.image_grid``, HTML figure strings).
    """
    names = run.class_names
    rows, cards, item = [], [], 0
    for label, picks in groups:
        row = []
        for _ in picks:
            relative = run.folder.splits["test"][indices[item]][0]
            probabilities = result.probabilities[item]
            predicted, explained = int(probabilities.argmax()), int(result.class_indices[item])
            heat_label = f"predicted {class_name(predicted, names)} {probabilities[predicted]:.0%}"
            if explained != predicted:
                heat_label += f"\n{explainer.method} for {class_name(explained, names)}"
            elif result.empty[item]:
                heat_label += "\nempty map"
            image_label = f"{relative.rsplit('/', 1)[-1]}\ntrue {class_name(label, names)}"
            heatmap = result.heatmaps[item]
            overlay_label = "overlay" if predicted == label else "overlay\nmisclassified"
            row += [(images[item], image_label),
                    (colorize(heatmap, images[item].shape[:2]), heat_label),
                    (overlay(images[item], heatmap), overlay_label)]
            cards.append(_card(images[item], heatmap, [
                relative, f"true: {class_name(label, names)}",
                heat_label.replace("\n", "; "), f"top-5: {top_classes(probabilities, names)}"]))
            item += 1
        rows.append(row)
    return rows, cards


def misclassified_gallery(run, count, method="gradcam", layer_name=None, output_dir=None):
    """Draws the ``count`` most confident mistakes on the test split.

    Each row: the image, the heatmap of its true class, the heatmap of the predicted
    class. Most confident first (highest probability of the wrong class).

    Returns:
        (list of :class:`Written`, notes): notes say how many mistakes there were, and
        when there were fewer than ``count`` (nothing is written when there are none).
    """
    if count < 1:
        raise UserError(f"--misclassified takes a number of images >= 1. Received: {count}")
    output_dir = run.folder.path / "explain" if output_dir is None else output_dir
    explainer = cam_explainer(run.model, method, layer_name)
    probabilities, labels = predict_split(run, "test")
    predicted = probabilities.argmax(axis=1)
    wrong = np.flatnonzero(predicted != labels)
    notes = [f"{len(wrong)} of {len(labels)} test images are misclassified"]
    if not len(wrong):
        notes.append("no mistakes to explain: nothing written")
        return [], notes
    if len(wrong) < count:
        notes.append(f"only {len(wrong)} mistakes, fewer than the {count} asked: showing all {len(wrong)}")
    confidence = probabilities[wrong, predicted[wrong]]
    chosen = wrong[np.argsort(-confidence, kind="stable")][:count]
    images, _ = load_split_images(run, "test", chosen)
    # One batch stream: every image twice, explained for its true then its predicted class.
    result = explainer(np.concatenate([images, images]),
                       np.concatenate([labels[chosen], predicted[chosen]]))
    names, rows = run.class_names, []
    for item, index in enumerate(chosen):
        true_label, wrong_label = int(labels[index]), int(predicted[index])
        true_map, wrong_map = item, item + len(chosen)
        rows.append([
            (images[item], run.folder.splits["test"][index][0].rsplit("/", 1)[-1]),
            (overlay(images[item], result.heatmaps[true_map]),
             f"true {class_name(true_label, names)} {probabilities[index, true_label]:.0%}"
             + ("\nempty map" if result.empty[true_map] else "")),
            (overlay(images[item], result.heatmaps[wrong_map]),
             f"predicted {class_name(wrong_label, names)} {probabilities[index, wrong_label]:.0%}"
             + ("\nempty map" if result.empty[wrong_map] else "")),
        ])
    title = (f"{explainer.method} at {explainer.layer_name}, {run.folder.path.name}: "
             f"true class | predicted class")
    path = save_figure(image_grid(rows, title), output_dir / f"{method}_misclassified.png")
    return [Written(path, f"{len(chosen)} misclassified test images, most confident first")], notes


def split_patches(run, class_index=None, layer_name=None, channel=None, output_dir=None):
    """The test images (or image patches) where a class logit or a channel responds most."""
    output_dir = run.folder.path / "explain" if output_dir is None else output_dir
    count = len(_test_labels(run))
    return write_patches(run.model, split_dataset(run, "test"), count, class_index, layer_name,
                         channel, run.class_names, output_dir)


def _png_data_uri(picture):
    """A data: URI of an RGB uint8 picture as PNG, for an HTML page with nothing beside it."""
    ok, encoded = cv2.imencode(".png", cv2.cvtColor(picture, cv2.COLOR_RGB2BGR))
    if not ok:
        raise RuntimeError("OpenCV could not encode a PNG")
    return data_uri(encoded.tobytes(), "image/png")


def _card(image, heatmap, lines):
    """One HTML figure: the image and its overlay, upscaled, with caption lines."""
    side = max(HTML_IMAGE_SIDE, image.shape[0])
    large = cv2.resize(np.clip(image, 0, 255).astype(np.uint8), (side, side),
                       interpolation=cv2.INTER_CUBIC)
    pictures = [large, colorize(heatmap, (side, side)), overlay(large, heatmap)]
    images = "".join(f'<img src="{_png_data_uri(picture)}" alt="">' for picture in pictures)
    caption = "<br>".join(escape(line) for line in lines)
    return f"<figure>{images}<figcaption>{caption}</figcaption></figure>"


def _html_page(title, cards):
    style = ("body{font-family:sans-serif;margin:1.5em}figure{display:inline-block;margin:0 1em 1.5em 0;"
             "vertical-align:top}img{margin-right:2px}figcaption{font-size:0.8em;max-width:600px}")
    intro = ("<p>Each figure: the test image as the model takes it, the heatmap (JET colours: red "
             "is strongest), and the overlay.</p>")
    return page(title, style, f"<h1>{escape(title)}</h1>\n{intro}\n" + "\n".join(cards) + "\n")
