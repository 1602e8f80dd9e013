"""Train a classifier: ``python train.py [--config FILE] [--data DIR] [--set section.key=value ...]``.

With no arguments it generates the built-in synthetic dataset (once, under data/),
trains configs/quickstart.yaml and prints the test accuracy and the run folder. With
``--data DIR`` (or ``--dataset``) and no ``--config`` it trains configs/default.yaml,
the recipe for a user's own data, at an image size and epoch count chosen from the data.
``python train.py --resume runs/NAME`` continues a stopped run from its last completed epoch.
"""

import argparse
import os
import sys

from keras_caltech.cli import ArgumentParser, import_tensorflow_quietly, run_command  # light: no TensorFlow
from keras_caltech.config import DATASET_CLASSES, describe_fields, load_config  # light too

DOWNLOAD_DIR = "data"
CONFIG_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "configs")
DEFAULT_CONFIG = os.path.join(CONFIG_DIR, "default.yaml")  # the recipe for a user's own data
QUICKSTART_CONFIG = os.path.join(CONFIG_DIR, "quickstart.yaml")  # the same recipe on the synthetic data


def parse_args(argv):
    parser = ArgumentParser(
        description="Train a CNN image classifier on a folder-per-class dataset\n"
                    "(your own, a published one by --dataset, or the built-in synthetic one).",
        epilog=describe_fields() + "\n\nWhat each field means: keras_caltech/config.py.",
        formatter_class=argparse.RawDescriptionHelpFormatter)  # keeps the field list one per line
    parser.add_argument("--config",
                        help="YAML config listing what differs from the defaults (default: "
                             "configs/default.yaml with --data or --dataset, else configs/quickstart.yaml)")
    parser.add_argument("--data", help="dataset folder with one subfolder per class (overrides data.root); "
                                       "default: the built-in synthetic dataset. With --resume: the "
                                       "dataset's new folder, if it moved since the run started")
    parser.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                        help="override one config field, e.g. --set train.epochs=3 (repeatable)")
    parser.add_argument("--dataset", choices=tuple(DATASET_CLASSES),  # the names data/download.py knows
                        help="download (once, with checksum) and train on a published dataset, kept "
                             "under data/ as a folder per class (overrides --data)")
    parser.add_argument("--output-dir", help="run folder to create (default: runs/NAME-DATE-TIME)")
    parser.add_argument("--init-from", metavar="RUN",
                        help="start from another run's weights (a run folder's best.keras, or a .keras "
                             "file), with a new head if the class count differs (sets model.init_from)")
    parser.add_argument("--dry-run", action="store_true",
                        help="build the model, print its summary and parameter count, train nothing "
                             "(pretrained weights are neither loaded nor downloaded)")
    parser.add_argument("--resume", metavar="RUN_DIR",
                        help="continue a stopped or killed run from its last completed epoch, with the "
                             "config saved in RUN_DIR/config.yaml")
    parser.add_argument("--chain", metavar="FOLDER",
                        help="train the folder's configs in file-name order, each stage starting from the "
                             "previous one's weights (e.g. configs/progressive); run it again to continue "
                             "after a stop. Run folders: --output-dir/STAGE (default runs/FOLDER/STAGE)")
    parser.add_argument("--strategy", metavar="NAME",
                        help="auto | one | mirrored (all GPUs of this machine) | multiworker (machines "
                             "listed in TF_CONFIG); overrides train.strategy, also with --resume")
    return parser.parse_args(argv)


# Flags that would change what a resumed run trains; its config.yaml decides instead.
_NOT_WITH_RESUME = ("config", "set", "dataset", "output_dir", "init_from", "dry_run", "chain")
# A chain's stage configs name their data and starting weights.
_NOT_WITH_CHAIN = ("config", "data", "dataset", "init_from", "resume")


def main(argv=None):
    """Runs training; returns the process exit code (0 ok, 2 user error, 130 stopped by Ctrl-C)."""
    return run_command(_train_command, argv)


def _train_command(argv):
    args = parse_args(argv)
    import_tensorflow_quietly()
    from keras_caltech.errors import UserError
    from keras_caltech.training.dry_run import dry_run
    from keras_caltech.training.resume import load_run_config
    from keras_caltech.workflow import train_evaluate_export

    strategy = [f"train.strategy={args.strategy}"] if args.strategy else []
    if args.chain:
        return _chain_command(args, strategy)
    if args.resume:
        flags = _flags_given(args, _NOT_WITH_RESUME)
        if flags:
            raise UserError(f"--resume continues a run with the config saved in its folder; it cannot be "
                            f"combined with {flags}. Received: --resume {args.resume} {flags}")
        config = load_run_config(args.resume, strategy)
        summary = train_evaluate_export(config, args.resume, resume=True, moved_data=args.data)
    else:
        overrides = list(args.set) + ([f"data.root={args.data}"] if args.data else []) + strategy
        if args.init_from:
            overrides.append(f"model.init_from={args.init_from}")
        own_data = args.data or args.dataset or any(item.strip().startswith("data.root=") for item in args.set)
        config_path = args.config or (DEFAULT_CONFIG if own_data else QUICKSTART_CONFIG)
        config = load_config(config_path, overrides)
        if args.dataset:  # checked against the config before a download of a gigabyte
            from keras_caltech.data.download import download_dataset

            if config.data.dataset and config.data.dataset != args.dataset:
                raise UserError(f"{config_path} is for {config.data.dataset}, not --dataset {args.dataset}")
            config = load_config(config_path, overrides + [f"data.root={download_dataset(args.dataset, DOWNLOAD_DIR)}"])
        if args.dry_run:
            dry_run(config)
            return 0
        if config.data.dataset and not config.data.root:
            from keras_caltech.data.download import SOURCES

            raise UserError(f"{config_path} trains on {config.data.dataset}: give your copy with --data "
                            f"path/to/{SOURCES[config.data.dataset].root_name}, or download it with "
                            f"--dataset {config.data.dataset}")
        summary = train_evaluate_export(config, args.output_dir)
    _print_summary(summary)
    return 0


def _flags_given(args, names):
    """The flags among ``names`` (argparse destinations) given on the command line, as "--a, --b"; "" if none."""
    return ", ".join("--" + name.replace("_", "-") for name in names if getattr(args, name))


def _chain_command(args, strategy):
    from keras_caltech.chain import run_chain
    from keras_caltech.errors import UserError

    flags = _flags_given(args, _NOT_WITH_CHAIN)
    if flags:
        raise UserError(f"--chain trains the stage configs in its folder, which name their data and "
                        f"weights; it cannot be combined with {flags}")
    for summary in run_chain(args.chain, args.output_dir, overrides=[*args.set, *strategy],
                             download_dir=DOWNLOAD_DIR, dry_run=args.dry_run):
        _print_summary(summary)
    return 0


def _print_summary(summary):
    """Prints a finished run's figures, the TTA ones first when the config tests that way."""
    name = summary["reported_as"]  # test, or validation under the train_val protocol
    if summary["tta"] != "none":  # the figure to compare with a report that tested this way
        tta = summary["tta_metrics"]
        print(f"{name} top-1 {tta['top1']:.2%}  top-5 {tta['top5']:.2%}  with {summary['tta']} testing")
    print(f"{name} top-1 {summary['top1']:.2%}  top-5 {summary['top5']:.2%}  "
          f"mean per-class {summary['mean_per_class_accuracy']:.2%}  ({summary['num_test']} {name} images, "
          f"{summary['num_excluded']} files excluded{', one view each' if summary['tta'] != 'none' else ''})")
    if name != "test":
        from keras_caltech.data.splits import TRAIN_VAL_NOTE

        print(f"({TRAIN_VAL_NOTE})")
    print(f"best epoch {summary['best_epoch']} of {summary['epochs_run']}, {summary['seconds']:.0f} s; "
          f"run folder: {summary['run_dir']}")
    if summary["export_dir"]:
        print(f"SavedModel for TF Serving: {summary['export_dir']}")


if __name__ == "__main__":
    sys.exit(main())
