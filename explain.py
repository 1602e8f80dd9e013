"""Explain a trained classifier's decision on images.

    python explain.py --image photo.jpg --model saved_models/mycnn.keras \\
        [--class NAME|INDEX] [--method gradcam] [--layer NAME] [--output-dir DIR]

Class names come from ``class_names.json`` beside the model file, if present. Without
``--class``, each image's predicted class is explained. ``--method patches`` scans all
given images for the strongest responses of a class (``--class``) or of a channel
(``--layer`` and ``--channel``).
"""

import argparse
import sys

from keras_caltech.errors import UserError
from keras_caltech.explain.report import METHODS, explain_images, load_model, resolve_class


class _Parser(argparse.ArgumentParser):
    """Reports a bad command line as a UserError: one line, exit code 2."""

    def error(self, message):
        raise UserError(message)


def parse_args(argv):
    parser = _Parser(description=__doc__.split("\n")[0])
    parser.add_argument("--image", nargs="+", required=True, help="image file(s), RGB or grey")
    parser.add_argument("--model", required=True, help="a .keras model saved by train.py")
    parser.add_argument("--class", dest="class_", help="class to explain: a name or an index "
                                                        "(default: the predicted class)")
    parser.add_argument("--method", default="gradcam", choices=METHODS)
    parser.add_argument("--layer", help="4-D layer to explain; nested: backbone/layer "
                                        "(default: the model's declared Grad-CAM layer)")
    parser.add_argument("--channel", type=int, help="with --method patches: a channel of --layer")
    parser.add_argument("--output-dir", default="explanations", help="folder for the figures")
    return parser.parse_args(argv)


def main(argv=None):
    """Runs the command line; returns the exit code (2 for a user error)."""
    try:
        args = parse_args(argv)
        model, class_names = load_model(args.model)
        class_index = resolve_class(args.class_, class_names, model.outputs[0].shape[-1])
        written = explain_images(model, args.image, args.method, class_index, args.layer,
                                 args.channel, class_names, args.output_dir)
    except UserError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    for figure in written:
        print(f"{figure.path}: {figure.summary}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
