"""``python -m keras_caltech evaluate`` and ``ensemble``: thin commands over the evaluation.

Each is ``main(argv) -> exit code``: 0 done, 2 a user error (one line starting ``error:``
on stderr, no traceback), 130 interrupted.
"""

from keras_caltech.cli import ArgumentParser, import_tensorflow_quietly, run_command
from keras_caltech.config import check_choice
from keras_caltech.errors import UserError

DATA_HELP = ("the dataset folder, if it moved since training (default: the folder in the run's "
             "splits.json)")
TTA_HELP = "test-time augmentation: none | flip (image + mirror) | 10crop (corners + centre + mirrors)"


def _check_flags(args):
    """Refuses a bad --tta or --batch-size before TensorFlow loads. --tta is an eval.tta for this evaluation."""
    if args.tta is not None:
        check_choice("eval.tta", args.tta)
    if args.batch_size is not None and args.batch_size < 1:
        raise UserError(f"--batch-size must be at least 1. Received: {args.batch_size}")


def _print_metrics(results):
    """Prints one line per TTA mode, then the per-class accuracy of the last mode."""
    print(f"{'TTA':<8}{'top-1':>8}{'top-5':>8}{'mean/class':>12}{'loss':>8}")
    for mode, result in results.items():
        print(f"{mode:<8}{result['top1']:>8.2%}{result['top5']:>8.2%}{result['mean_per_class_accuracy']:>12.2%}"
              f"{result['loss']:>8.3f}")
    mode, result = list(results.items())[-1]
    present = sorted((value, name) for name, value in result["per_class_accuracy"].items() if value is not None)
    shown = present if len(present) <= 20 else present[:10]
    heading = "per-class accuracy" if len(shown) == len(present) else f"worst {len(shown)} of {len(present)} classes"
    print(f"{heading} (TTA {mode}): " + ", ".join(f"{name} {value:.0%}" for value, name in shown))


def _evaluate(argv):
    parser = ArgumentParser(prog="python -m keras_caltech evaluate",
                     description="Re-evaluate a run's best.keras on its saved test split; updates the run's "
                                 "metrics.json, confusion_matrix.png, per_class.png and report.html.")
    parser.add_argument("run", help="run folder, e.g. runs/default-20260101-120000")
    parser.add_argument("--tta", help=f"{TTA_HELP} (default: the run's eval.tta, normally none)")
    parser.add_argument("--batch-size", type=int, help="views per forward pass (default: the run's data.batch_size)")
    parser.add_argument("--data", help=DATA_HELP)
    parser.add_argument("--split", choices=("test", "val", "train"), default="test",
                        help="the split to evaluate (default test); train and val write metrics_SPLIT.json, "
                             "confusion_matrix_SPLIT.png and per_class_SPLIT.png")
    args = parser.parse_args(argv)
    _check_flags(args)
    import_tensorflow_quietly()  # after the flags: --help and flag errors need no TensorFlow
    from keras_caltech.data.splits import TRAIN_VAL_NOTE, held_out_name
    from keras_caltech.evaluation.evaluate import evaluate_run
    from keras_caltech.runs import open_run

    mode = args.tta or open_run(args.run).config.eval.tta
    metrics = evaluate_run(args.run, mode, split=args.split, batch_size=args.batch_size, data=args.data)
    split = held_out_name(metrics.get("protocol")) if args.split == "test" else args.split
    print(f"{args.run}: {metrics['num_examples']} {split} images, {len(metrics['per_class_accuracy'])} classes")
    if split != args.split:
        print(f"({TRAIN_VAL_NOTE})")
    _print_metrics({name: metrics["tta"][name] for name in ("none", mode)})
    written = ("metrics.json, confusion_matrix.png, per_class.png, report.html" if args.split == "test" else
               f"metrics_{args.split}.json, confusion_matrix_{args.split}.png, per_class_{args.split}.png")
    print(f"wrote {written} in {args.run}")
    return 0


def _ensemble(argv):
    parser = ArgumentParser(prog="python -m keras_caltech ensemble",
                     description="Sum the logits of several runs on their shared test split and evaluate the sum.")
    parser.add_argument("runs", nargs="+", help="two or more run folders with the same classes and test split")
    parser.add_argument("--tta", default="none", help=f"{TTA_HELP}, for every member (default: none)")
    parser.add_argument("--output", help="new folder for metrics.json, the figures and report.html "
                                         "(default: runs/ensemble-DATE-TIME)")
    parser.add_argument("--batch-size", type=int, help="views per forward pass (default: each run's data.batch_size)")
    parser.add_argument("--data", help=DATA_HELP.replace("the run's", "each run's"))
    args = parser.parse_args(argv)
    _check_flags(args)
    import_tensorflow_quietly()  # after the flags: --help and flag errors need no TensorFlow
    from keras_caltech.evaluation.ensemble import evaluate_ensemble

    metrics, _, output_dir = evaluate_ensemble(args.runs, args.tta, args.output, batch_size=args.batch_size, data=args.data)
    print(f"{'run':<40}{'top-1':>8}{'mean/class':>12}")
    for member in metrics["members"]:
        print(f"{member['run']:<40}{member['top1']:>8.2%}{member['mean_per_class_accuracy']:>12.2%}")
    print(f"{'ensemble (sum of logits, TTA ' + args.tta + ')':<40}{metrics['top1']:>8.2%}"
          f"{metrics['mean_per_class_accuracy']:>12.2%}   top-5 {metrics['top5']:.2%}")
    print(f"wrote metrics.json, confusion_matrix.png, per_class.png, report.html in {output_dir}")
    return 0


def evaluate_main(argv=None):
    """``evaluate RUN [--tta MODE] [--batch-size N]``; returns the exit code."""
    return run_command(_evaluate, argv)


def ensemble_main(argv=None):
    """``ensemble RUN RUN [...] [--tta MODE] [--output DIR] [--batch-size N]``; returns the exit code."""
    return run_command(_ensemble, argv)
