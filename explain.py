"""Explain a trained classifier's decisions.

    python explain.py --image photo.jpg [more.jpg ...] (--run runs/NAME | --model FILE.keras)
        [--class NAME|INDEX] [--method gradcam] [--layer NAME] [--output-dir DIR]
    python explain.py --run runs/NAME --sample 5x2 [--seed 0] [--correct-only]  # grid PNG + HTML
    python explain.py --run runs/NAME --misclassified 8          # true vs predicted class
    python explain.py --run runs/NAME --method patches --class NAME   # over the test split
    python explain.py --run runs/NAME --method patches --layer L --channel C
    python explain.py --run runs/NAME --image photo.jpg --method guided-backprop --layer L --channel C
    python explain.py --run runs/NAME --evaluate [--max-images 200]   # explain_metrics.json

With --run, the model is the run's best.keras, the class names its class_names.json,
and figures go to the run's explain/ folder; with --model, class names come from a
class_names.json beside the file, and figures go to explanations/. Without --class,
each image's predicted class is explained.
"""

import argparse
import re
import sys
from pathlib import Path

from keras_caltech.cli import ArgumentParser, import_tensorflow_quietly, run_command
from keras_caltech.errors import UserError

import_tensorflow_quietly()
from keras_caltech.explain import assess, gallery, image_files, runs  # noqa: E402
from keras_caltech.runs import make_output_folder  # noqa: E402


def grid_shape(text):
    """Parses ``--sample AxB`` (A classes x B images) into (A, B)."""
    match = re.fullmatch(r"\s*(\d+)\s*[xX]\s*(\d+)\s*", text)
    if not match or min(int(match[1]), int(match[2])) < 1:
        raise argparse.ArgumentTypeError(
            f"expected CLASSESxIMAGES with both >= 1, e.g. 5x2. Received: {text!r}")
    return int(match[1]), int(match[2])


def parse_args(argv):
    parser = ArgumentParser(description=__doc__.split("\n")[0])
    source = parser.add_argument_group("model (one of)")
    source.add_argument("--run", help="a run folder written by train.py (uses its best.keras)")
    source.add_argument("--model", help="a .keras model file")
    source.add_argument("--data", help="with --run: the dataset folder, if it moved since training "
                                       "(default: the folder in the run's splits.json)")
    action = parser.add_argument_group("what to explain (one of)")
    action.add_argument("--image", nargs="+", help="image file(s), RGB or grey")
    action.add_argument("--sample", type=grid_shape, metavar="AxB",
                        help="with --run: A random classes x B random test images, one grid + HTML "
                             "(image | heatmap | overlay each)")
    action.add_argument("--misclassified", type=int, metavar="N",
                        help="with --run: the N most confident test mistakes, true vs predicted class")
    action.add_argument("--evaluate", action="store_true",
                        help="with --run: score the explanations, write explain_metrics.json")
    parser.add_argument("--class", dest="class_", help="class to explain: a name or an index "
                                                        "(default: the predicted class)")
    parser.add_argument("--method", default="gradcam", choices=image_files.METHODS)
    parser.add_argument("--layer", help="4-D layer to explain; nested: backbone/layer "
                                        "(default: the model's declared Grad-CAM layer)")
    parser.add_argument("--channel", type=int,
                        help="a channel of --layer to explain instead of a class: with --method "
                             "patches its strongest image patches, with --method guided-backprop the "
                             "guided gradient of its strongest unit in each image")
    parser.add_argument("--correct-only", action="store_true",
                        help="with --sample: only test images the model classifies right")
    parser.add_argument("--output-dir", help="folder for the figures (default: the run's explain/ "
                                             "with --run, else explanations/)")
    parser.add_argument("--seed", type=int, default=0, help="picks --sample and --evaluate images")
    parser.add_argument("--max-images", type=int, default=200, help="--evaluate: test images scored")
    return parser.parse_args(argv)


def check_args(args):
    """Refuses combinations that cannot work, before anything heavy is loaded."""
    if (args.run is None) == (args.model is None):
        raise UserError("give exactly one model: --run runs/NAME (a train.py run folder) or "
                        "--model FILE.keras" + (". Received both" if args.run else ""))
    actions = [flag for flag, given in (("--image", args.image is not None),
                                        ("--sample", args.sample is not None),
                                        ("--misclassified", args.misclassified is not None),
                                        ("--evaluate", args.evaluate)) if given]
    if len(actions) > 1:
        raise UserError(f"give one of --image, --sample, --misclassified, --evaluate. "
                        f"Received: {', '.join(actions)}")
    if args.data is not None and args.run is None:
        raise UserError("--data says where a run's dataset moved to: use it with --run")
    if args.model is not None and actions and actions[0] != "--image":
        raise UserError(f"{actions[0]} reads a run's test split: pass --run runs/NAME instead of --model")
    if not actions and not (args.run and args.method == "patches"):
        raise UserError("nothing to explain: give --image FILE, or with --run one of --sample AxB, "
                        "--misclassified N, --evaluate, --method patches")
    if args.misclassified is not None and args.misclassified < 1:
        raise UserError(f"--misclassified takes a number of images >= 1. Received: {args.misclassified}")
    if args.max_images < 1:
        raise UserError(f"--max-images must be at least 1. Received: {args.max_images}")
    if args.class_ is not None and (args.misclassified is not None or args.evaluate):
        raise UserError(f"{actions[0]} chooses the classes it explains: drop --class")
    if args.correct_only and args.sample is None:
        raise UserError("--correct-only picks the images of --sample AxB: use it with --sample")
    image_files.check_unit_choice(args.method, args.class_ is not None, args.layer is not None,
                                  args.channel)


def explain(args):
    """Does what the arguments ask; returns (written files, note lines)."""
    run = runs.open_explained_run(args.run, args.data) if args.run else None
    model, class_names = (run.model, run.class_names) if run else runs.load_model_file(args.model)
    class_index = image_files.resolve_class(args.class_, class_names, model.outputs[0].shape[-1])
    if args.evaluate:  # writes into the run folder, no figures
        scores = assess.assess_run(run, args.method, args.layer, args.max_images, args.seed,
                                   log=lambda line: print(line, file=sys.stderr))
        path = assess.write_scores(run, scores)
        return [image_files.Written(path, "explanation scores")], [assess.format_table(scores)]
    if run is not None and not args.image:
        run.folder.split_files("test")  # a moved dataset fails before any folder is made
    output_dir = make_output_folder(args.output_dir or (Path(args.run) / "explain" if run else "explanations"),
                                    "--output-dir")
    if args.image:
        return image_files.explain_images(model, args.image, args.method, class_index, args.layer,
                                          args.channel, class_names, output_dir,
                                          run.resize_crop if run else runs.resize_crop_beside(args.model)), []
    if args.sample:
        return gallery.sample_gallery(run, *args.sample, args.method, args.layer, class_index,
                                      args.seed, output_dir, args.correct_only)
    if args.misclassified is not None:
        return gallery.misclassified_gallery(run, args.misclassified, args.method, args.layer,
                                             output_dir)
    return [gallery.split_patches(run, class_index, args.layer, args.channel, output_dir)], []


def _explain_command(argv):
    args = parse_args(argv)
    check_args(args)
    written, notes = explain(args)
    for note in notes:
        print(note)
    for item in written:
        print(f"{item.path}: {item.summary}")
        for line in item.details:
            print(f"  {line}")
    return 0


def main(argv=None):
    """Runs the command line; returns the exit code (2 for a user error)."""
    return run_command(_explain_command, argv)


if __name__ == "__main__":
    sys.exit(main())
