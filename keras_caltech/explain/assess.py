"""How good are a run's explanations? What ``explain.py --run runs/NAME --evaluate`` measures.

Every score stands beside a baseline that knows nothing about the model:

- **localisation** (``localisation_scores``): the pointing game and the energy inside
  the object's box, on datasets with ``boxes.json``, against a centre point and a
  uniform map; and, on every dataset, the grid pointing game on 2x2 mosaics of four
  classes, against chance (0.25).
- **faithfulness** (``faithfulness_scores``): deletion and insertion AUC of heatmaps of
  the predicted class, against a random map at the heatmap's resolution and a
  per-pixel random map.
- **sanity** (here): cascading model-parameter randomisation from the logits down, for
  the chosen method and for guided backpropagation: the rank correlation between the
  trained and the randomised model's maps at each depth.

The images are a seeded random sample of the test split, read through the training
pipeline and explained 32 at a time. This module runs the sections in turn, writes
``explain_metrics.json`` and prints the table.
"""

import dataclasses

import numpy as np
import tensorflow as tf

from keras_caltech.data.synthetic import load_boxes
from keras_caltech.errors import UserError
from keras_caltech.explain.faithfulness_scores import faithfulness_scores, faithfulness_section
from keras_caltech.explain.gallery import cam_explainer
from keras_caltech.explain.guided import GuidedBackprop
from keras_caltech.explain.localisation_scores import (TOLERANCE_FRACTION, box_scores,
                                                       grid_pointing_game_section,
                                                       localisation_section, scale_box)
from keras_caltech.explain.runs import CompiledForward, load_split_images, split_dataset
from keras_caltech.explain.sanity import cascading_randomization
from keras_caltech.runs import write_json

SCORES_FILE = "explain_metrics.json"
SANITY_IMAGES = 16
# A method passes the sanity check when the rank correlation of its maps with the
# trained model's, averaged over every depth of the cascade, is below this: its maps
# depend on the learned weights. Adebayo et al. (2018) judge by eye; a number makes the
# verdict reproducible. Averaging over depths catches a method that ignores the top
# layers (the logits) even if it changes once the first convolutions are random.
SANITY_THRESHOLD = 0.5


@dataclasses.dataclass
class SampleScores:
    """What one pass over the sampled test images gives, gathered batch by batch.

    Attributes:
        boxes: a ``localisation_scores.BoxScores`` per image with a box (datasets with
            ``boxes.json``).
        faithfulness: a ``faithfulness_scores.FaithfulnessScores`` per image.
        predicted_right: images whose predicted class is their true class.
        heatmap_shape: (h, w) of the explainer's heatmaps.
    """

    boxes: list = dataclasses.field(default_factory=list)
    faithfulness: list = dataclasses.field(default_factory=list)
    predicted_right: int = 0
    heatmap_shape: tuple = ()


def assess_run(run, method="gradcam", layer_name=None, max_images=200, seed=0,
               sanity_images=SANITY_IMAGES, log=None):
    """Scores a run's explanations on a seeded sample of its test split.

    Args:
        run: an ``ExplainedRun``.
        method: a CAM method (``gradcam``, ``gradcam++``, ``scorecam``).
        layer_name: the 4-D layer; None: the model's declared Grad-CAM layer.
        max_images: test images for localisation and faithfulness; the grid pointing
            game uses up to ``max_images // 4`` mosaics of them.
        seed: picks the images, mosaics, random maps and random weights.
        sanity_images: images for the (costly) randomisation check.
        log: called with a progress line per section, or None.

    Returns:
        The scores dict written to ``explain_metrics.json`` (see :func:`write_scores`).
    """
    if max_images < 1:
        raise UserError(f"--max-images must be at least 1. Received: {max_images}")
    log = log or (lambda line: None)
    explainer = cam_explainer(run.model, method, layer_name)
    size = run.image_size
    labels = np.array([label for _, label in run.folder.split_pairs("test")], int)
    rng = np.random.default_rng(seed)
    chosen = np.sort(rng.permutation(len(labels))[:max_images])

    log(f"localisation and faithfulness on {len(chosen)} test images ...")
    tolerance = TOLERANCE_FRACTION * size
    sample = score_sample(run, explainer, chosen, tolerance)
    scores = {
        "run": str(run.folder.path), "model": run.model.name, "method": method,
        "layer": explainer.layer_name, "heatmap_size": list(sample.heatmap_shape), "image_size": size,
        "split": "test", "seed": seed, "num_images": len(chosen),
        "accuracy_on_images": round(sample.predicted_right / len(chosen), 6),
        "localisation": localisation_section(sample.boxes, tolerance),
        "grid_pointing_game": None, "faithfulness": faithfulness_section(sample.faithfulness), "sanity": None,
    }
    log("grid pointing game on 2x2 mosaics ...")
    scores["grid_pointing_game"] = grid_pointing_game_section(run, explainer, chosen, labels[chosen],
                                                              max(1, len(chosen) // 4), rng)
    log(f"sanity check: cascading randomisation on {min(sanity_images, len(chosen))} images ...")
    images, _ = load_split_images(run, "test", chosen[:sanity_images])
    scores["sanity"] = _sanity(run.model, explainer, method, images, seed)
    return scores


def score_sample(run, explainer, chosen, tolerance):
    """Localisation and faithfulness of the explanations of some test images.

    Args:
        run: an ``ExplainedRun``.
        explainer: a CAM explainer of ``run.model``.
        chosen: sorted positions in the test split's file list.
        tolerance: pointing-game tolerance in input pixels.

    Returns:
        A :class:`SampleScores`; heatmaps of the true class are scored against boxes,
        heatmaps of the predicted class for faithfulness.
    """
    size = run.image_size
    test = run.folder.splits["test"]
    boxes = load_boxes(run.folder.root)
    forward = CompiledForward(run.model)
    sample = SampleScores()
    offset = 0
    for images, batch_labels in split_dataset(run, "test", chosen):
        images, batch_labels = images.numpy(), batch_labels.numpy()
        for_true = explainer(images, batch_labels)
        for_predicted = explainer(images)
        sample.heatmap_shape = for_true.heatmaps.shape[1:]
        sample.predicted_right += int((for_predicted.class_indices == batch_labels).sum())
        for item, image in enumerate(images):
            index = int(chosen[offset + item])  # its position in the test split seeds the random maps
            entry = boxes.get(test[index][0])
            box = scale_box(entry, size, run.resize_crop) if entry is not None else None
            if box is not None:
                sample.boxes.append(box_scores(for_true.heatmaps[item], box, size, tolerance))
            sample.faithfulness.append(faithfulness_scores(
                forward, image, for_predicted.heatmaps[item], int(for_predicted.class_indices[item]),
                bool(for_predicted.empty[item]), seed=index))
        offset += len(images)
    return sample


def _mean(values):
    return round(float(np.mean(values)), 6)


def _sanity(model, explainer, method, images, seed):
    """Cascading randomisation for the CAM method and for guided backpropagation."""
    classes = explainer(images).class_indices  # the trained model's predictions, kept fixed
    cam_type, layer_name = type(explainer), explainer.layer_name

    def guided(copy):
        backprop = GuidedBackprop(copy)  # a fresh explainer on each randomised copy
        # |gradient|, strongest colour channel: (batch, h, w)
        return lambda batch, indices: np.abs(backprop(batch, indices)).max(axis=-1)

    makers = {method: lambda copy: cam_type(copy, layer_name), "guided-backprop": guided}
    results = {}
    logger = tf.get_logger()
    previous_level = logger.level
    # A fresh explainer per randomised copy is the point of the check, so TensorFlow's
    # warning about functions traced again and again is expected here.
    logger.setLevel("ERROR")
    try:
        for name, make_explainer in makers.items():
            steps = cascading_randomization(model, images, classes, make_explainer, seed=seed)
            cascade = [{"randomized_down_to": step.layer_name, "depth": depth,
                        "mean_rank_correlation": _mean(step.correlations),
                        "std": round(float(np.std(step.correlations)), 6)}
                       for depth, step in enumerate(steps, start=1)]
            correlations = [step["mean_rank_correlation"] for step in cascade] or [1.0]
            results[name] = {"cascade": cascade, "mean_over_depths": _mean(correlations),
                             "all_layers_random": correlations[-1],
                             "passes": bool(np.mean(correlations) < SANITY_THRESHOLD)}
    finally:
        logger.setLevel(previous_level)
    return {"num_images": len(images), "explained": "trained model's predicted class",
            "pass_threshold": SANITY_THRESHOLD, "methods": results}


def write_scores(run, scores):
    """Writes ``explain_metrics.json`` in the run folder; returns its path."""
    path = run.folder.path / SCORES_FILE
    write_json(path, scores)
    return path


def format_table(scores):
    """The printed summary of :func:`assess_run`: one score per line, baseline beside it."""
    lines = [f"{scores['method']} at {scores['layer']} ({'x'.join(map(str, scores['heatmap_size']))} "
             f"map, {scores['image_size']} px input) on {scores['num_images']} test images of "
             f"{scores['run']} (top-1 on them {scores['accuracy_on_images']:.1%})",
             f"{'score':<46}{'ours':>8}  baseline"]

    def row(name, ours, baseline, baseline_name):
        lines.append(f"{name:<46}{ours:>8.3f}  {baseline:.3f} ({baseline_name})")

    local = scores["localisation"]
    if "skipped" in local:
        lines.append(f"localisation: skipped, {local['skipped']}")
    else:
        row(f"pointing game ({local['num_images']} boxes, tol {local['tolerance_px']:.1f} px)",
            local["pointing_game"], local["centre_baseline"], "centre point")
        row("energy in box", local["energy_in_box"], local["uniform_baseline"], "uniform map")
    grid = scores["grid_pointing_game"]
    if "skipped" in grid:
        lines.append(f"grid pointing game: skipped, {grid['skipped']}")
    else:
        row(f"grid pointing game ({grid['num_mosaics']} 2x2 mosaics)", grid["accuracy"],
            grid["chance"], "chance")
    faith = scores["faithfulness"]
    size = "x".join(map(str, scores["heatmap_size"]))
    for curve, better in (("deletion", "lower"), ("insertion", "higher")):
        row(f"{curve} AUC ({better} is better)", faith[f"{curve}_auc"],
            faith[f"random_{curve}_auc"], f"random {size} map")
        lines.append(f"{'':<46}{'':>8}  {faith[f'pixel_random_{curve}_auc']:.3f} (per-pixel random map)")
    verdict = {True: "beats", False: "does NOT beat"}
    lines.append("  " + "; ".join(
        f"{curve} {verdict[faith['beats_random'][curve]]} the random {size} map, "
        f"{verdict[faith['beats_pixel_random'][curve]]} the per-pixel one"
        for curve in ("deletion", "insertion")))
    sanity = scores["sanity"]
    names = list(sanity["methods"])
    lines.append(f"sanity: rank correlation with the trained model's maps ({sanity['num_images']} images), "
                 f"layers randomised from the logits down to:")
    lines.append(f"  {'layer':<24}" + "".join(f"{name:>18}" for name in names))
    cascades = [sanity["methods"][name]["cascade"] for name in names]
    for steps in zip(*cascades):
        lines.append(f"  {steps[0]['randomized_down_to']:<24}"
                     + "".join(f"{step['mean_rank_correlation']:>18.3f}" for step in steps))
    for name in names:
        result = sanity["methods"][name]
        outcome = "passes" if result["passes"] else "FAILS"
        lines.append(f"  {name} {outcome}: mean correlation over depths {result['mean_over_depths']:.3f} "
                     f"(pass: below {sanity['pass_threshold']}), {result['all_layers_random']:.3f} "
                     f"with every layer random")
    return "\n".join(lines)
