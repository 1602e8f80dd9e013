"""The Caltech-scale rehearsal: scan, split, train, evaluate and export on a tree of Caltech-256's size.

    python benchmarks/caltech_scale.py                # 30,607 JPEGs, 257 classes (about an hour on 2 quiet cores)
    python benchmarks/caltech_scale.py --write-docs   # also rewrite the caltech_scale table in docs/performance.md
    python benchmarks/caltech_scale.py --classes 4 --scale 0.02 --image-size 32 --batch-size 2 \\
        --steps 4 --rounds 2 --eval-images 4 --eval-batches 1   # wiring only, in about a minute

The tree (benchmarks/caltech_tree.py) is generated once under ``--cache-dir`` and
reused. For MyCNN at 224 px (configs/caltech256/mycnn_adam.yaml) and ResNet-18 at 128
px (configs/caltech256/resnet18_scratch_11_epochs.yaml, at 128 px), it times a few
hundred steps of each phase of ``train.py``, not whole runs (benchmarks/caltech_phases.py,
benchmarks/caltech_training.py): the first scan and the cached re-scan, the split, each
``data.cache`` mode's first pass and steady-state training throughput of the whole loop
against the bare step (efficiency, goal >= 0.9), the validation pass, test evaluation
plain and 10-crop, and the export; with the peak resident memory of each phase beside
what it should cost. Prints one Markdown table. A benchmark, not a test: nothing
asserts on the numbers.
"""

import argparse
import os
import pathlib
import shutil
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
HERE = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))  # the sibling modules, however this file is run

import caltech_tree  # noqa: E402
import docs_page  # noqa: E402

DOCS_PAGE = HERE.parent / "docs" / "performance.md"
DEFAULT_CACHE_DIR = pathlib.Path("~/.cache/keras_caltech/caltech_scale")
# model -> (image size, the Caltech-256 config it trains with)
MODELS = {"mycnn": (224, HERE.parent / "configs" / "caltech256" / "mycnn_adam.yaml"),
          "resnet18": (128, HERE.parent / "configs" / "caltech256" / "resnet18_scratch_11_epochs.yaml")}


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cache-dir", default=str(DEFAULT_CACHE_DIR),
                        help=f"where the tree is generated once, and scratch files go (default {DEFAULT_CACHE_DIR})")
    parser.add_argument("--classes", type=int, default=caltech_tree.NUM_CLASSES, help="classes (default 257)")
    parser.add_argument("--scale", type=float, default=1.0, help="images per class x this (default 1: 30,607)")
    parser.add_argument("--models", default=",".join(MODELS), help=f"comma-separated, of {', '.join(MODELS)}")
    parser.add_argument("--image-size", type=int, default=0, help="every model at this size (default: 224 MyCNN, "
                                                                    "128 ResNet-18)")
    parser.add_argument("--batch-size", type=int, default=0, help="every model's batch (default: its config's, 64)")
    parser.add_argument("--steps", type=int, default=200, help="timed training steps per contender (default 200)")
    parser.add_argument("--rounds", type=int, default=4, help="rounds the contenders take turns in (default 4)")
    parser.add_argument("--eval-batches", type=int, default=20, help="validation batches timed (default 20)")
    parser.add_argument("--eval-images", type=int, default=1024,
                        help="test images evaluated plain; a fifth of them with 10-crop (default 1024)")
    parser.add_argument("--workers", type=int, default=0, help="generator processes and scan threads (0: per core)")
    parser.add_argument("--no-progress", dest="progress", action="store_false", help="no progress lines")
    parser.add_argument("--write-docs", action="store_true", help="rewrite the table in docs/performance.md")
    args = parser.parse_args(argv)
    unknown = sorted(set(args.models.split(",")) - set(MODELS))
    if unknown:
        parser.error(f"unknown model(s) {', '.join(unknown)}. Valid models: {', '.join(MODELS)}")
    if args.steps < args.rounds or args.rounds < 1:
        parser.error(f"--steps must be at least --rounds (>= 1). Received: --steps {args.steps} --rounds {args.rounds}")
    return args


def gigabytes(value):
    return "-" if value is None else f"{value / 1e9:.1f} GB"


def markdown_table(rows):
    """The rows as a Markdown table: rate and ratio as run.py prints them, then the memory columns."""
    from run import format_value

    lines = ["| Phase | Measurement | Rate | Compared with | Ratio | Goal | Peak memory (at start) | Should add "
             "| Notes |", "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for row in rows:
        reference = (f"{row.reference}: {format_value(row.reference_value, row.unit)}"
                     if row.reference_value is not None else row.reference or "-")
        ratio = f"{row.ratio:.2f}" if row.ratio is not None else "-"
        goal = f">= {row.goal:g}: {row.status}" if row.goal is not None else (row.status or "-")
        memory = f"{gigabytes(row.peak_bytes)} ({gigabytes(row.start_bytes)})" if row.peak_bytes else "-"
        cells = [row.section, row.name, format_value(row.value, row.unit), reference, ratio, goal, memory,
                 row.expected or "-", row.note]
        lines.append("| " + " | ".join(str(cell).replace("|", "/").replace("\n", " ") for cell in cells) + " |")
    return "\n".join(lines)


def header(args, tree, started_load, command):
    """The lines above the table: machine, date, command, load, software and settings."""
    import keras
    import tensorflow as tf

    images = sum(1 for _ in tree.rglob("*.jpg"))
    return "\n".join([
        docs_page.machine_line(command),
        f"Load average {started_load:.1f} at the start, {os.getloadavg()[0]:.1f} at the end. Software: "
        f"tensorflow {tf.__version__}, keras {keras.__version__}. Tree: {images:,} generated JPEGs in "
        f"{args.classes} classes (benchmarks/caltech_tree.py). Training: {args.steps} timed steps per "
        f"contender in {args.rounds} rounds taking turns; rates are images over the summed step gaps."])


def model_rows(name, tree, work_dir, args):
    """Every row of one model: split, statistics, caches, training, validation, evaluation, export."""
    import caltech_phases  # TensorFlow only now: the tree's generator forks its workers before it is loaded
    import caltech_training

    size, config = MODELS[name]
    overrides = [f"data.batch_size={args.batch_size}"] if args.batch_size else []
    caltech_phases.log_line(f"{name}: split, statistics, model")
    setup, rows = caltech_phases.prepare(name, args.image_size or size, config, tree, work_dir / name, overrides)
    train_rows, data = caltech_training.training_rows(setup, args.steps, args.rounds, args.progress)
    rows += train_rows
    caltech_phases.log_line(f"{setup.title}: validation and test evaluation")
    train_batches, val_data = data["none"]
    rows.append(caltech_phases.validation_row(setup, train_batches, val_data, args.eval_batches))
    for mode, share in (("none", 1), ("10crop", 5)):  # 10-crop: a fifth of the images, twice the time
        rows.append(caltech_phases.evaluation_row(setup, mode, max(1, args.eval_images // share), args.progress))
    caltech_phases.log_line(f"{setup.title}: export")
    rows.append(caltech_phases.export_row(setup))
    del data, train_batches, val_data  # a memory cache
    shutil.rmtree(setup.work_dir / "data_cache", ignore_errors=True)  # a disk cache: gigabytes
    return rows


def main(argv=None):
    args = parse_args(argv)
    started, load = time.perf_counter(), os.getloadavg()[0]
    cache_dir = pathlib.Path(args.cache_dir).expanduser()
    tree = caltech_tree.ensure_tree(cache_dir, args.classes, args.scale, workers=args.workers,
                                    log=lambda line: print(line, file=sys.stderr), progress=args.progress)
    import caltech_phases  # TensorFlow only now: the tree's generator forks its workers before it is loaded

    work_dir = cache_dir / f"work-{tree.name}"
    rows, _ = caltech_phases.scan_rows(tree, work_dir, args.workers)
    for name in args.models.split(","):
        rows += model_rows(name, tree, work_dir, args)
    command = "python benchmarks/caltech_scale.py" + (f" {' '.join(argv)}" if argv else "")
    text = "\n".join([header(args, tree, load, command.replace(" --write-docs", "")), "", markdown_table(rows)])
    print(text)
    if args.write_docs:
        docs_page.write_table(DOCS_PAGE, "caltech_scale", text)
    print(f"\n{time.perf_counter() - started:.0f} s in all", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
