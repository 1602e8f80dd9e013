"""``python -m keras_caltech export`` and ``python -m keras_caltech predict``.

    export runs/NAME [--version N] [--base-dir saved_models] [--name NAME]
    predict --model saved_models/NAME[/VERSION] IMAGE [IMAGE ...]

Each is ``main(argv) -> exit code``: 0 on success, 2 with ``error: ...`` lines on a user
error. TensorFlow and Keras load only after the arguments parse.
"""

import sys

from keras_caltech.cli import ArgumentParser, import_tensorflow_quietly, run_command


def export_main(argv=None):
    """Exports a finished run's best model for TF Serving."""
    return run_command(_export, argv)


def predict_main(argv=None):
    """Prints the top-5 classes of image files, using only an exported SavedModel."""
    return run_command(_predict, argv)


def _export(argv):
    parser = ArgumentParser(
        prog="python -m keras_caltech export",
        description="Export a run's best.keras as a TF Serving SavedModel in BASE_DIR/NAME/VERSION/ "
                    "(signatures serving_default, predict_images, gradcam).")
    parser.add_argument("run_dir", help="a run folder written by train.py (runs/NAME)")
    parser.add_argument("--version", type=int, help="integer version to write, 1 to 2**63 - 1 (TF Serving reads "
                                                    "int64; default: the next free one); an existing version is "
                                                    "never overwritten")
    parser.add_argument("--base-dir", default="saved_models",
                        help="folder of served models (default: saved_models)")
    parser.add_argument("--name", help="served model name (default: the run folder's name)")
    args = parser.parse_args(argv)
    import_tensorflow_quietly()  # after the flags: --help and flag errors need no TensorFlow
    from keras_caltech.export.saved_model import export_run

    version_dir = export_run(args.run_dir, args.base_dir, name=args.name, version=args.version)
    print(f"exported {args.run_dir} to {version_dir}")
    print(f"inspect: saved_model_cli show --dir {version_dir} --all")
    return 0


def _predict(argv):
    parser = ArgumentParser(
        prog="python -m keras_caltech predict",
        description="Classify image files with an exported SavedModel (its serving_default signature).")
    parser.add_argument("--model", required=True,
                        help="saved_models/NAME (highest version) or saved_models/NAME/VERSION")
    parser.add_argument("images", nargs="+", metavar="IMAGE",
                        help="JPEG, PNG, GIF, BMP or WebP files; one whose header declares more pixels than the "
                             "limit is refused before decoding")
    args = parser.parse_args(argv)
    import_tensorflow_quietly()  # after the flags: --help and flag errors need no TensorFlow
    from keras_caltech.export.predict import SavedModelClassifier

    classifier = SavedModelClassifier(args.model)
    failures = 0
    for prediction in classifier.predict_files(args.images):
        if prediction.error:
            failures += 1
            print(f"error: {prediction.path}: {prediction.error}", file=sys.stderr)  # the batch goes on
            continue
        print(prediction.path)
        for rank, (name, score) in enumerate(zip(prediction.names, prediction.scores), start=1):
            print(f"  {rank}. {score:7.2%}  {name}")
    return 2 if failures else 0
