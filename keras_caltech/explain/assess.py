"""How good are a run's explanations? What ``explain.py --run runs/NAME --evaluate`` measures.

Every score stands beside a baseline that knows nothing about the model:

- **localisation** (datasets with ``boxes.json``, such as the synthetic one; heatmaps
  of the true class): the pointing game (the heatmap's maximum inside the object's box,
  within a tolerance) against a map that always points at the image centre, and the
  share of the heatmap's energy inside the box against a uniform map (whose share is
  the box's area).
- **grid pointing game** (every dataset, the only localisation score for Caltech):
  2x2 mosaics of test images of four classes; each class's heatmap must peak in its
  own tile. Chance is 0.25.
- **faithfulness** (heatmaps of the predicted class): deletion and insertion AUC
  against a random map. Lower deletion and higher insertion than random is better.
  The random map is drawn at the heatmap's own resolution and upsampled like it, so
  that the two differ only in where they point, not in how smooth they are. A
  per-pixel random map is reported too: scattering black (deletion) or sharp
  (insertion) single pixels makes an image unlike any training image, which moves
  the probability whatever the locations, so it is a different, harder baseline.
- **sanity**: cascading model-parameter randomisation from the logits down, for the
  chosen method and for guided backpropagation: the rank correlation between the
  trained and the randomised model's maps at each depth.

The images are a seeded random sample of the test split, read through the training
pipeline and explained 32 at a time.
"""

import dataclasses

import numpy as np
import tensorflow as tf

from keras_caltech.data.pipeline import crop_window
from keras_caltech.data.synthetic import load_boxes
from keras_caltech.errors import UserError
from keras_caltech.explain.gallery import cam_explainer
from keras_caltech.explain.guided import GuidedBackprop
from keras_caltech.explain.runs import CompiledForward, load_split_images, split_dataset
from keras_caltech.explain.sanity import cascading_randomization
from keras_caltech.explain.scoring import (centre_point_baseline, deletion_curve, energy_in_box,
                                           faithfulness, grid_pointing_game, insertion_curve,
                                           make_mosaic, pointing_game, random_heatmap)
from keras_caltech.runs import write_json

SCORES_FILE = "explain_metrics.json"
# Zhang et al. (2016) let the maximum miss the box by 15 px on images of about 224 px;
# the same share of the side at any input size (4.3 px at 64 px).
TOLERANCE_FRACTION = 15 / 224
FAITHFULNESS_STEPS = 32  # the model sees 33 images per curve: one forward pass
SANITY_IMAGES = 16
# A method passes the sanity check when the rank correlation of its maps with the
# trained model's, averaged over every depth of the cascade, is below this: its maps
# depend on the learned weights. Adebayo et al. (2018) judge by eye; a number makes the
# verdict reproducible. Averaging over depths catches a method that ignores the top
# layers (the logits) even if it changes once the first convolutions are random.
SANITY_THRESHOLD = 0.5


def scale_box(entry, image_size, resize_crop=0):
    """Maps a ``boxes.json`` box onto the model's square input.

    Boxes are ``[x0, y0, x1, y1)`` in the saved image's pixels (``x1``, ``y1``
    exclusive), and the pipeline resizes the part of the image the model sees (all of
    it, or a central crop: ``pipeline.crop_window``) to ``image_size`` squared with
    half-pixel centres. Input pixel ``j`` has its centre at ``(j + 0.5) / scale`` in
    that part, so the pixels whose centres lie in the box run from ``x0 * scale - 0.5``
    to ``x1 * scale - 0.5``, ``x0`` measured from the part's left edge.

    Args:
        entry: {"box": [x0, y0, x1, y1], "width": w, "height": h}.
        image_size: side of the model's input.
        resize_crop: the run's ``augment.resize_crop``.

    Returns:
        [x0, y0, x1, y1] float pixel indices of the input, inclusive, as
        ``scoring.pointing_game`` takes them, clipped to the image; None when the box
        lies wholly outside the part the model sees.
    """
    left, top, right, bottom = crop_window(entry["width"], entry["height"], image_size, resize_crop)
    x0, y0, x1, y1 = entry["box"]
    if x1 <= left or x0 >= right or y1 <= top or y0 >= bottom:
        return None
    x_scale, y_scale = image_size / (right - left), image_size / (bottom - top)
    box = [(x0 - left) * x_scale - 0.5, (y0 - top) * y_scale - 0.5,
           (x1 - left) * x_scale - 0.5, (y1 - top) * y_scale - 0.5]
    return [float(np.clip(value, 0, image_size - 1)) for value in box]


def box_share(box, image_size):
    """Share of the input's pixels inside ``box``: the energy of a uniform map."""
    centres = np.arange(image_size)
    columns = ((centres >= box[0]) & (centres <= box[2])).sum()
    rows = ((centres >= box[1]) & (centres <= box[3])).sum()
    return float(rows * columns / image_size ** 2)


def mosaic_groups(labels, max_mosaics, rng):
    """Groups positions into fours of four different classes, each position used once.

    Args:
        labels: (n,) int labels of the candidate images.
        max_mosaics: stop after this many groups.
        rng: a NumPy Generator.

    Returns:
        A list of 4-lists of positions into ``labels``; empty with fewer than 4 classes.
    """
    pools = {int(label): list(rng.permutation(np.flatnonzero(labels == label)))
             for label in np.unique(labels)}
    groups = []
    while len(groups) < max_mosaics:
        available = [label for label, pool in pools.items() if pool]
        if len(available) < 4:
            break
        classes = rng.choice(available, size=4, replace=False)
        groups.append([int(pools[int(label)].pop()) for label in classes])
    return groups


@dataclasses.dataclass(frozen=True)
class BoxScores:
    """How one heatmap of the true class locates the object's box, beside the baselines.

    Attributes:
        pointing_hit: the heatmap's maximum lies in the box, within the tolerance.
        centre_hit: the image centre does (the centre-point baseline).
        energy: share of the heatmap's energy inside the box.
        uniform_energy: that share for a uniform map: the box's share of the pixels.
    """

    pointing_hit: bool
    centre_hit: bool
    energy: float
    uniform_energy: float


@dataclasses.dataclass(frozen=True)
class FaithfulnessScores:
    """Deletion and insertion AUCs of one heatmap of the predicted class, beside random maps.

    Attributes:
        deletion, insertion: AUCs of the heatmap.
        random_deletion, random_insertion: AUCs of a random map drawn at the heatmap's
            resolution and upsampled like it.
        pixel_deletion, pixel_insertion: AUCs of a per-pixel random map.
        empty: the heatmap was empty (the image argues against the class).
    """

    deletion: float
    insertion: float
    random_deletion: float
    random_insertion: float
    pixel_deletion: float
    pixel_insertion: float
    empty: bool


@dataclasses.dataclass
class SampleScores:
    """What one pass over the sampled test images gives, gathered batch by batch.

    Attributes:
        boxes: a :class:`BoxScores` per image with a box (datasets with ``boxes.json``).
        faithfulness: a :class:`FaithfulnessScores` per image.
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
    labels = np.array([label for _, label in run.folder.splits["test"]], int)
    if not len(labels):
        raise UserError(f"the test split of run {run.folder.path} holds no images")
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
        "localisation": _localisation(sample.boxes, tolerance),
        "grid_pointing_game": None, "faithfulness": _faithfulness(sample.faithfulness), "sanity": None,
    }
    log("grid pointing game on 2x2 mosaics ...")
    scores["grid_pointing_game"] = _grid_pointing_game(run, explainer, chosen, labels[chosen],
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


def box_scores(heatmap, box, image_size, tolerance):
    """The :class:`BoxScores` of one heatmap; ``box`` as :func:`scale_box` returns it."""
    shape = (image_size, image_size)
    return BoxScores(pointing_hit=pointing_game(heatmap, box, shape, tolerance),
                     centre_hit=centre_point_baseline(box, shape, tolerance),
                     energy=energy_in_box(heatmap, box, shape), uniform_energy=box_share(box, image_size))


def faithfulness_scores(forward, image, heatmap, class_index, empty, seed):
    """The :class:`FaithfulnessScores` of one heatmap, explaining ``class_index``.

    Args:
        forward: the model's compiled forward pass.
        image: (size, size, 3) RGB 0-255.
        heatmap: (h, w) in [0, 1].
        class_index: the explained class.
        empty: whether the heatmap is empty.
        seed: seeds both random maps.
    """
    curve = dict(steps=FAITHFULNESS_STEPS, batch_size=FAITHFULNESS_STEPS + 1)  # one pass per curve
    scores = faithfulness(forward, image, heatmap, class_index, seed=seed, **curve)  # per-pixel random map
    coarse_random = random_heatmap(heatmap.shape, seed=seed)  # at the heatmap's resolution
    return FaithfulnessScores(
        deletion=scores.deletion, insertion=scores.insertion,
        random_deletion=deletion_curve(forward, image, coarse_random, class_index, **curve).auc,
        random_insertion=insertion_curve(forward, image, coarse_random, class_index, **curve).auc,
        pixel_deletion=scores.random_deletion, pixel_insertion=scores.random_insertion, empty=empty)


def _mean(values):
    return round(float(np.mean(values)), 6)


def _localisation(located, tolerance):
    """The ``localisation`` section from a list of :class:`BoxScores`."""
    if not located:
        return {"skipped": "no boxes.json entry for these images (Caltech has no boxes): "
                           "see grid_pointing_game"}
    return {
        "explained": "true class", "num_images": len(located),
        "tolerance_px": round(tolerance, 3),
        "pointing_game": _mean([scores.pointing_hit for scores in located]),
        "centre_baseline": _mean([scores.centre_hit for scores in located]),
        "energy_in_box": _mean([scores.energy for scores in located]),
        "uniform_baseline": _mean([scores.uniform_energy for scores in located]),
    }


def _faithfulness(faithful):
    """The ``faithfulness`` section from a list of :class:`FaithfulnessScores`."""
    def column(name):
        return np.array([getattr(scores, name) for scores in faithful])

    deletion, insertion = column("deletion"), column("insertion")
    random_deletion, random_insertion = column("random_deletion"), column("random_insertion")
    pixel_deletion, pixel_insertion = column("pixel_deletion"), column("pixel_insertion")
    return {
        "explained": "predicted class", "num_images": len(faithful), "steps": FAITHFULNESS_STEPS,
        "deletion_auc": _mean(deletion), "random_deletion_auc": _mean(random_deletion),
        "insertion_auc": _mean(insertion), "random_insertion_auc": _mean(random_insertion),
        "beats_random": {"deletion": bool(deletion.mean() < random_deletion.mean()),
                         "insertion": bool(insertion.mean() > random_insertion.mean())},
        "pixel_random_deletion_auc": _mean(pixel_deletion),
        "pixel_random_insertion_auc": _mean(pixel_insertion),
        "beats_pixel_random": {"deletion": bool(deletion.mean() < pixel_deletion.mean()),
                               "insertion": bool(insertion.mean() > pixel_insertion.mean())},
        "empty_maps": int(column("empty").sum()),
    }


def _grid_pointing_game(run, explainer, positions, labels, max_mosaics, rng):
    """Hit rate of each class's map peaking in its tile of 2x2 mosaics."""
    groups = mosaic_groups(labels, max_mosaics, rng)
    if not groups:
        return {"skipped": f"needs test images of 4 classes; the sample has {len(np.unique(labels))}"}
    tiles, tile_labels = load_split_images(run, "test", positions[np.ravel(groups)])
    tiles = tiles.reshape(len(groups), 4, *tiles.shape[1:])  # (mosaics, 4, size, size, 3)
    tile_labels = tile_labels.reshape(len(groups), 4)
    mosaics = np.stack([make_mosaic(four) for four in tiles])  # (mosaics, size, size, 3)
    # Each mosaic explained once per class in it, all in one batched stream.
    maps = explainer(np.repeat(mosaics, 4, axis=0), tile_labels.ravel()).heatmaps
    maps = maps.reshape(len(groups), 4, *maps.shape[1:])
    hits = []
    for four, classes, mosaic_maps in zip(tiles, tile_labels, maps):
        def precomputed(_images, _classes, mosaic_maps=mosaic_maps):
            return mosaic_maps
        hits.append(grid_pointing_game(precomputed, four, classes))
    return {"explained": "each tile's true class", "num_mosaics": len(groups),
            "accuracy": _mean(np.concatenate(hits)), "chance": 0.25}


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
