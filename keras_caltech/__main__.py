"""``python -m keras_caltech COMMAND ...``: the commands that work on finished runs.

    evaluate runs/NAME [--tta none|flip|10crop]   re-evaluate a run on its saved test split
    ensemble runs/A runs/B [...] [--tta ...]      sum the logits of several runs
    export runs/NAME [--version N]                write a TF Serving SavedModel
    predict --model saved_models/NAME IMAGE...    top-5 classes from a SavedModel

Training is ``python train.py`` and explanations ``python explain.py``.
"""

import importlib
import sys


# command -> (module, function); each function is main(argv) -> exit code. Imported
# lazily so that `--help` and a mistyped command answer without loading TensorFlow.
COMMANDS = {
    "evaluate": ("keras_caltech.evaluation.cli", "evaluate_main"),
    "ensemble": ("keras_caltech.evaluation.cli", "ensemble_main"),
    "export": ("keras_caltech.export.cli", "export_main"),
    "predict": ("keras_caltech.export.cli", "predict_main"),
}


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__)
        return 0 if argv else 2
    command, rest = argv[0], argv[1:]
    if command not in COMMANDS:
        print(f"error: unknown command {command!r}. Valid commands: {', '.join(COMMANDS)}", file=sys.stderr)
        return 2
    module_name, function_name = COMMANDS[command]
    return getattr(importlib.import_module(module_name), function_name)(rest)


if __name__ == "__main__":
    sys.exit(main())
