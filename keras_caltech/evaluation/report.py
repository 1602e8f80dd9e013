"""The evaluation's figures and ``report.html``: the one page people look at after a run.

The page is self-contained (``keras_caltech.html_page``): figures and thumbnails are
inlined as base64 ``data:`` URIs and the styles sit in the page, with no script and no
external request, so the file can be mailed, attached to an issue or opened offline.
Sections: the config summary, the metrics of every TTA mode evaluated, training curves,
the confusion matrix, the worst classes (and a folded table of every class), the
most-confused pairs with thumbnails of the test images behind each mistake, and a
gallery of the run's ``explain/`` PNGs when there are any.
"""

import pathlib
import time

import numpy as np
import tensorflow as tf
import yaml

from keras_caltech.plotting import charts
from keras_caltech.config import TTA_MODES, config_to_dict
from keras_caltech.data.splits import TRAIN_VAL_NOTE, held_out_name
from keras_caltech.evaluation.tta import TTA_VIEWS
from keras_caltech.html_page import data_uri, escape, file_data_uri, page
from keras_caltech.runs import write_atomically

REPORT = "report.html"
CONFUSION_MATRIX = "confusion_matrix.png"
PER_CLASS = "per_class.png"
EXAMPLES_PER_PAIR = 4  # thumbnails per most-confused pair
THUMBNAIL_SIDE = 96  # px, longer side
GALLERY_MAX_IMAGES = 48  # explanation PNGs inlined; the rest are counted, not shown

_STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1200px; padding: 0 1em; color: #222; }
h1 { margin-bottom: 0.2em; } h2 { border-bottom: 1px solid #ccc; padding-bottom: 0.2em; margin-top: 2em; }
.subtitle { color: #666; margin-top: 0; }
table { border-collapse: collapse; margin: 0.5em 0; }
th, td { border: 1px solid #ddd; padding: 0.3em 0.6em; text-align: left; vertical-align: middle; }
th { background: #f4f4f4; } td.number { text-align: right; font-variant-numeric: tabular-nums; }
tr.current { font-weight: bold; background: #fff8dc; }
figure { margin: 0.5em 0; } figure img { max-width: 100%; height: auto; border: 1px solid #eee; }
.thumbs img { height: 72px; width: auto; margin: 2px; border: 1px solid #ccc; }
.gallery { display: flex; flex-wrap: wrap; gap: 1em; }
.gallery figure { width: 280px; } .gallery figcaption { font-size: 0.8em; color: #555; word-break: break-all; }
pre { background: #f7f7f7; padding: 1em; overflow-x: auto; font-size: 0.85em; }
"""


def write_figures(folder, result, class_names, mode, split="test"):
    """Writes ``confusion_matrix.png`` and ``per_class.png`` of one evaluation into ``folder``.

    A split other than the test split gets its own files: ``confusion_matrix_train.png``.

    Args:
        folder: a run (or ensemble) folder.
        result: :func:`classification_metrics` output of the evaluation to draw.
        class_names: names in label order.
        mode: the TTA mode of ``result``, named in the titles.
    """
    folder = pathlib.Path(folder)
    suffix = "" if split == "test" else f"_{split}"
    charts.plot_confusion_matrix(np.array(result["confusion_matrix"]), class_names,
                                 folder / CONFUSION_MATRIX.replace(".png", f"{suffix}.png"),
                                 title=f"Confusion matrix, row-normalised ({split} split, TTA {mode})")
    charts.plot_per_class_accuracy(result["per_class_accuracy"], folder / PER_CLASS.replace(".png", f"{suffix}.png"),
                                   title=f"Worst classes ({split} split, TTA {mode})")


def thumbnail_data_uri(path, side=THUMBNAIL_SIDE):
    """A small JPEG of an image file as a ``data:`` URI, aspect ratio kept; None if unreadable.

    It is decoded as the model's input is (``tf.io.decode_image``, 3 channels, first
    frame), so the thumbnail shows the pixels the model saw, only smaller.
    """
    try:
        image = tf.io.decode_image(tf.io.read_file(str(path)), channels=3, expand_animations=False)
    except (tf.errors.OpError, ValueError):
        return None
    small = tf.image.resize(image, (side, side), preserve_aspect_ratio=True, antialias=True)
    encoded = tf.io.encode_jpeg(tf.cast(tf.clip_by_value(tf.round(small), 0, 255), tf.uint8), quality=85)
    return data_uri(encoded.numpy(), "image/jpeg")


def mistake_examples(predictions, class_names, pairs, per_pair=EXAMPLES_PER_PAIR):
    """The test images behind each most-confused pair, most confident mistakes first.

    Args:
        predictions: an evaluation's Predictions (logits, labels, files).
        class_names: names in label order.
        pairs: ``most_confused`` entries ({"true", "predicted", ...}).
        per_pair: images kept per pair.

    Returns:
        One list per pair of (file path, margin), margin = predicted logit - true logit.
    """
    index = {name: position for position, name in enumerate(class_names)}
    predicted = predictions.logits.argmax(axis=1)
    examples = []
    for pair in pairs:
        true_index, predicted_index = index[pair["true"]], index[pair["predicted"]]
        rows = np.flatnonzero((predictions.labels == true_index) & (predicted == predicted_index))
        margins = predictions.logits[rows, predicted_index] - predictions.logits[rows, true_index]
        order = np.argsort(-margins, kind="stable")[:per_pair]
        examples.append([(predictions.files[rows[position]], float(margins[position])) for position in order])
    return examples


def _table(header, rows, current_row=None):
    """An HTML table; numbers are right-aligned; ``current_row`` is highlighted; header None: none."""
    head = "".join(f"<th>{escape(cell)}</th>" for cell in header or ())
    body = []
    for position, row in enumerate(rows):
        cells = "".join(f'<td class="number">{escape(cell)}</td>' if isinstance(cell, (int, float))
                        or (isinstance(cell, str) and cell.endswith("%")) else f"<td>{escape(cell)}</td>"
                        for cell in row)
        attribute = ' class="current"' if position == current_row else ""
        body.append(f"<tr{attribute}>{cells}</tr>")
    thead = f"<thead><tr>{head}</tr></thead>" if head else ""
    return f"<table>{thead}<tbody>{''.join(body)}</tbody></table>"


def _figure(path, caption):
    path = pathlib.Path(path)
    if not path.is_file():
        return ""
    return (f'<figure><img src="{file_data_uri(path)}" alt="{escape(caption)}">'
            f"<figcaption>{escape(caption)}</figcaption></figure>")


def _percent(value):
    return "n/a" if value is None else f"{value:.2%}"


def metrics_table(metrics, mode):
    """Rows for every TTA mode in ``metrics["tta"]`` (the plain top level if absent)."""
    results = metrics.get("tta") or {"none": metrics}
    modes = [name for name in TTA_MODES if name in results]
    rows = [[name, TTA_VIEWS[name], _percent(results[name]["top1"]), _percent(results[name]["top5"]),
             _percent(results[name]["mean_per_class_accuracy"]), round(results[name]["loss"], 4),
             results[name]["num_examples"]] for name in modes]
    current = modes.index(mode) if mode in modes else None
    return _table(["TTA", "views", "top-1", "top-5", "mean per-class", "loss", "test images"], rows, current)


def confused_pairs_section(result, predictions, class_names, root=None):
    """The most-confused pairs with thumbnails of the images behind each mistake."""
    pairs = result["most_confused"]
    if not pairs:
        return "<p>No mistakes on the test split.</p>"
    rows = []
    for pair, examples in zip(pairs, mistake_examples(predictions, class_names, pairs)):
        thumbnails = []
        for path, margin in examples:
            uri = thumbnail_data_uri(path)
            if uri is None:
                continue
            shown = _relative_to(path, root)
            thumbnails.append(f'<img src="{uri}" alt="{escape(shown)}" '
                              f'title="{escape(shown)} (logit margin {margin:.2f})">')
        rows.append(f"<tr><td>{escape(pair['true'])}</td><td>{escape(pair['predicted'])}</td>"
                    f"<td class=\"number\">{pair['count']}</td><td class=\"number\">{pair['rate']:.1%}</td>"
                    f"<td class=\"thumbs\">{''.join(thumbnails)}</td></tr>")
    return ("<p>Each row: test images of the true class that the model labelled as the predicted one; "
            "rate is their share of the true class. Thumbnails: the most confident such mistakes "
            "(hover for the file).</p><table><thead><tr><th>true class</th><th>predicted as</th>"
            "<th>count</th><th>rate</th><th>examples</th></tr></thead><tbody>" + "".join(rows) +
            "</tbody></table>")


def per_class_table(result, class_names):
    """Every class's test images, accuracy and most frequent wrong answer, worst first, folded away.

    Beyond a few dozen classes the confusion matrix's axes show label indices, not names,
    and the figure names only the worst classes: this table maps every index to its
    name, and is where a class of Caltech-256's 257 is looked up.
    """
    matrix = np.asarray(result["confusion_matrix"])  # (classes, classes): rows true, columns predicted
    mistakes = matrix - np.diag(np.diag(matrix))
    accuracy = result["per_class_accuracy"]
    # Classes without test images last; then worst first, ties by name.
    order = sorted(range(len(class_names)), key=lambda index: (accuracy[class_names[index]] is None,
                                                               accuracy[class_names[index]] or 0.0,
                                                               class_names[index]))
    rows = []
    for index in order:
        wrong = int(mistakes[index].argmax())
        confused = f"{class_names[wrong]} ({mistakes[index, wrong]})" if mistakes[index, wrong] else "-"
        rows.append([index, class_names[index], int(matrix[index].sum()), _percent(accuracy[class_names[index]]),
                     confused])
    table = _table(["label index", "class", "test images", "accuracy", "most often taken for (images)"], rows)
    return (f"<details><summary>All {len(class_names)} classes, worst first (label index as on the confusion "
            f"matrix's axes)</summary>{table}</details>")


def gallery_section(folder):
    """Every PNG under ``folder`` (e.g. a run's ``explain/``) as a gallery, or "" if none."""
    folder = pathlib.Path(folder)
    images = sorted(folder.rglob("*.png")) if folder.is_dir() else []
    if not images:
        return ""
    shown = images[:GALLERY_MAX_IMAGES]
    items = "".join(f'<figure><img src="{file_data_uri(path)}" alt="{escape(path.relative_to(folder))}">'
                    f"<figcaption>{escape(path.relative_to(folder))}</figcaption></figure>" for path in shown)
    more = (f"<p>{len(images) - len(shown)} more PNG(s) in {escape(folder)} are not shown.</p>"
            if len(images) > len(shown) else "")
    return f'<div class="gallery">{items}</div>{more}'


def render_page(title, subtitle, sections):
    """The whole HTML page; ``sections`` is a list of (heading, inner HTML), empty ones skipped."""
    body = "".join(f"<section><h2>{escape(heading)}</h2>{inner}</section>" for heading, inner in sections
                   if inner)
    return page(title, _STYLE, f'<h1>{escape(title)}</h1><p class="subtitle">{escape(subtitle)}</p>{body}',
                head='<meta name="viewport" content="width=device-width, initial-scale=1">')


def _relative_to(path, root):
    try:
        return pathlib.Path(path).relative_to(root).as_posix() if root else str(path)
    except ValueError:
        return str(path)


def _run_summary(run, metrics):
    config = run.config
    augment = [f"{key}={value}" for key, value in config_to_dict(config)["augment"].items()
               if value not in (False, 0, 0.0) and key != "crop_area_min"]
    rows = [
        ["model", f"{config.model.name}, {config.data.image_size} px input, dropout {config.model.dropout}"],
        ["dataset", f"{run.root} ({len(run.class_names)} classes)"],
        ["images train / val / test",
         " / ".join(str(len(run.splits[name])) for name in ("train", "val", "test"))],
        ["protocol", TRAIN_VAL_NOTE if config.data.protocol == "train_val" else
                     f"{config.data.protocol}: checkpoint selected on val, figures on the unseen test split"],
        ["training", f"{config.train.epochs} epochs, {config.train.optimizer} at learning rate "
                     f"{config.train.learning_rate}, {config.train.schedule} schedule, seed {config.train.seed}"],
        ["best checkpoint", f"epoch {metrics.get('best_epoch', '?')} by {metrics.get('monitor', '?')}"],
        ["normalization", config.data.normalization],
        ["augmentation", ", ".join(augment) or "none"],
    ]
    full = yaml.safe_dump(config_to_dict(config), sort_keys=False)
    return (_table(None, rows) + "<details><summary>full config.yaml</summary>"
            f"<pre>{escape(full)}</pre></details>")


def write_run_report(run, metrics, mode, predictions):
    """Writes ``report.html`` into a run folder.

    Args:
        run: the RunFolder.
        metrics: the run's metrics.json dict (with ``tta[mode]``).
        mode: the TTA mode the confusion analysis shows.
        predictions: that mode's Predictions, for the mistake thumbnails.

    Returns:
        The report's path.
    """
    result = metrics["tta"][mode]
    sections = [
        ("Configuration", _run_summary(run, metrics)),
        (f"{held_out_name(run.config.data.protocol).capitalize()} metrics", metrics_table(metrics, mode) + _TTA_NOTE),
        ("Training curves", _figure(run.path / "curves.png", "loss and top-1 accuracy per epoch")),
        *_analysis_sections(run.path, result, predictions, run.class_names, mode, run.root),
        ("Grad-CAM gallery", gallery_section(run.path / "explain")),
    ]
    path = run.path / REPORT
    write_atomically(path, render_page(f"Run {run.path.name}", _generated(), sections))
    return path


def write_ensemble_report(folder, members, metrics, mode, predictions, class_names, root):
    """Writes ``report.html`` for an ensemble: its members, metrics and confusion analysis.

    Args:
        folder: the ensemble's output folder.
        members: one dict per member run: run, model, image_size, top1, mean_per_class_accuracy.
        metrics: the ensemble's metrics dict.
        mode: its TTA mode.
        predictions: the ensemble's Predictions (summed logits).
        class_names: shared class names.
        root: the shared dataset folder.
    """
    folder = pathlib.Path(folder)
    member_rows = [[member["run"], member["model"], member["image_size"], _percent(member["top1"]),
                    _percent(member["mean_per_class_accuracy"])] for member in members]
    ensemble_row = [["ensemble (sum of logits)", "", "", _percent(metrics["top1"]),
                     _percent(metrics["mean_per_class_accuracy"])]]
    sections = [
        ("Members", _table(["run", "model", "input px", "top-1", "mean per-class"], member_rows + ensemble_row,
                           current_row=len(member_rows))
         + f"<p>Test split shared by all members: {metrics['num_examples']} images, TTA {escape(mode)}.</p>"),
        *_analysis_sections(folder, metrics, predictions, class_names, mode, root),
    ]
    path = folder / REPORT
    write_atomically(path, render_page(f"Ensemble of {len(members)} runs", _generated(), sections))
    return path


_TTA_NOTE = ("<p>TTA: <b>none</b> the image at the model's size; <b>flip</b> plus its mirror; "
             "<b>10crop</b> four corners and centre of a larger resize, plus mirrors; logits averaged. "
             "The highlighted row is analysed below.</p>")


def _analysis_sections(folder, result, predictions, class_names, mode, root):
    return [
        (f"Confusion matrix (TTA {mode})", _figure(folder / CONFUSION_MATRIX, "row-normalised confusion matrix")),
        (f"Worst classes (TTA {mode})", _figure(folder / PER_CLASS, "accuracy of the worst classes")
         + per_class_table(result, class_names)),
        (f"Most-confused pairs (TTA {mode})", confused_pairs_section(result, predictions, class_names, root)),
    ]


def _generated():
    return f"generated {time.strftime('%Y-%m-%d %H:%M:%S')} by keras_caltech"
