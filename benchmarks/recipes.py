"""Training recipes compared on a bench of varied datasets: accuracy and time per dataset.

    pip install scikit-learn                       # the bench's real images (digits, two photographs)
    python benchmarks/recipes.py                   # every dataset, default recipe vs plain Keras (~25 min on 2 cores)
    python benchmarks/recipes.py --datasets glyphs,textures --recipes default,plain_keras,mycnn
    python benchmarks/recipes.py --write-docs      # also rewrite the table in docs/recipes.md
    python benchmarks/recipes.py --smoke           # wiring only: 6 glyphs per class, 32 px, 1 epoch

The datasets (benchmarks/recipe_datasets.py) are generated once under ``--work-dir``
(outside the repository). Every recipe trains on the same images at the same image size
for the same number of epochs, and is scored on the same test images: the 20% test
split that ``train.py`` draws (its ``splits.json``).

- ``default``: ``python train.py --data DIR`` with configs/default.yaml, size and epochs set.
- ``mycnn``: the previous quick-start recipe (MyCNN's dense head, Adam 5e-4, dropout
  0.2, x0.1 at 80% of the epochs, flips only), through ``train.py`` too.
- ``plain_keras``: what a 30-line Keras script does: 4 conv blocks (32-256 filters) with
  BatchNorm and max pooling, global average pooling, Adam 1e-3, flips and a 10%
  translation, ``image_dataset_from_directory``; trained on the run's training and
  validation images (80%), so it sees more data than ``default`` (72%).

Prints a Markdown table: test top-1 per dataset and recipe, the ratio to plain Keras,
and seconds per run. Every recipe runs in its own process, so each time includes
starting TensorFlow; ``train.py``'s also include its scan, evaluation and plots. A
benchmark, not a test: nothing asserts on the numbers.
"""

import argparse
import json
import os
import pathlib
import shutil
import subprocess
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
HERE = pathlib.Path(__file__).resolve().parent
ROOT = HERE.parent

import docs_page  # noqa: E402
import recipe_datasets  # noqa: E402

RECIPES = ("default", "mycnn", "plain_keras")
# The previous quick start, with its decay moved to 80% of whatever epochs run.
MYCNN_OVERRIDES = ("model.name=mycnn", "model.dropout=0.2", "train.optimizer=adam", "train.learning_rate=5e-4",
                   "train.weight_decay=0", "train.schedule=step", "train.label_smoothing=0",
                   "augment.zoom=0", "augment.translation=0")
DOCS_PAGE = ROOT / "docs" / "recipes.md"


def ensure_dataset(work_dir, name, generate):
    """Generates dataset ``name`` under ``work_dir`` once with ``generate(folder)``; returns its folder."""
    folder = work_dir / "datasets" / name
    marker = folder / ".complete"
    if not marker.is_file():
        generate(folder)
        marker.write_text("1")
    return folder


def train_with_script(data_dir, run_dir, size, epochs, overrides=()):
    """Runs ``python train.py --data`` with the default config; returns (test top-1, seconds)."""
    shutil.rmtree(run_dir, ignore_errors=True)  # a run folder must start empty
    command = [sys.executable, str(ROOT / "train.py"), "--data", str(data_dir), "--output-dir", str(run_dir),
               "--set", f"data.image_size={size}", "--set", f"train.epochs={epochs}",
               "--set", "export.enabled=false", "--set", "train.tensorboard=false",
               "--set", f"data.cache_dir={run_dir.parent / 'scan_cache'}"]
    for override in overrides:
        command += ["--set", override]
    started = time.time()
    finished = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
    seconds = time.time() - started
    if finished.returncode != 0:
        raise RuntimeError(f"train.py failed ({finished.returncode}): {finished.stderr.strip()[-2000:]}")
    return json.loads((run_dir / "metrics.json").read_text())["top1"], seconds


def plain_keras_in_process(run_dir, size, epochs):
    """Runs :func:`train_plain_keras` in a new process, as the other recipes run; returns (top-1, seconds)."""
    started = time.time()
    finished = subprocess.run([sys.executable, __file__, "--plain-keras", str(run_dir), str(size), str(epochs)],
                              capture_output=True, text=True)
    if finished.returncode != 0:
        raise RuntimeError(f"plain Keras failed ({finished.returncode}): {finished.stderr.strip()[-2000:]}")
    return float(finished.stdout.strip().splitlines()[-1]), time.time() - started


def _linked_split(root, entries, folder):
    """A new folder-per-class tree of symbolic links to the split's files, for image_dataset_from_directory."""
    shutil.rmtree(folder, ignore_errors=True)  # no link of an earlier split may stay behind
    for path, _ in entries:
        source = pathlib.Path(root) / path
        target = folder / source.parent.name / source.name
        target.parent.mkdir(parents=True, exist_ok=True)
        target.symlink_to(source)


def train_plain_keras(run_dir, size, epochs, seed=0):
    """The plain Keras script, on the train+val and test files of the ``default`` run in ``run_dir``.

    Returns:
        Test top-1 accuracy.
    """
    import keras
    import tensorflow as tf

    splits = json.loads((run_dir / "splits.json").read_text())
    class_names = json.loads((run_dir / "class_names.json").read_text())
    plain_dir = run_dir.parent / (run_dir.name + "_plain")
    _linked_split(splits["root"], splits["train"] + splits["val"], plain_dir / "train")
    _linked_split(splits["root"], splits["test"], plain_dir / "test")
    keras.utils.set_random_seed(seed)
    options = dict(image_size=(size, size), class_names=class_names, seed=seed, verbose=False)
    # Decoded once and cached unbatched, then reshuffled every epoch (caching the loader's
    # own shuffled batches would replay one order in every epoch).
    train = keras.utils.image_dataset_from_directory(plain_dir / "train", batch_size=None, shuffle=False, **options)
    test = keras.utils.image_dataset_from_directory(plain_dir / "test", batch_size=32, shuffle=False, **options)
    augment = keras.Sequential([keras.layers.RandomFlip("horizontal"), keras.layers.RandomTranslation(0.1, 0.1)])
    train = (train.cache().shuffle(len(splits["train"]) + len(splits["val"]), seed=seed).batch(32)
             .map(lambda x, y: (augment(x, training=True), y)).prefetch(tf.data.AUTOTUNE))

    inputs = keras.Input((size, size, 3))
    x = keras.layers.Rescaling(1 / 255)(inputs)
    for filters in (32, 64, 128, 256):
        x = keras.layers.Conv2D(filters, 3, padding="same", use_bias=False)(x)
        x = keras.layers.BatchNormalization()(x)
        x = keras.layers.ReLU()(x)
        x = keras.layers.MaxPooling2D()(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    model = keras.Model(inputs, keras.layers.Dense(len(class_names))(x))
    model.compile(keras.optimizers.Adam(1e-3), keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  metrics=["accuracy"])
    model.fit(train, epochs=epochs, verbose=0)
    _, accuracy = model.evaluate(test, verbose=0)
    return float(accuracy)


# --smoke: one tiny dataset, for the tests.
SMOKE_DATASETS = {"glyphs_smoke": (lambda root: recipe_datasets.glyphs(root, per_class=6, size=32), 32, 1)}


def run_bench(work_dir, datasets, recipes, catalogue=recipe_datasets.DATASETS, log=print):
    """Trains every recipe on every dataset of ``catalogue``; returns rows of results."""
    rows = []
    for name in datasets:
        generate, size, epochs = catalogue[name]
        data_dir = ensure_dataset(work_dir, name, generate)
        runs = work_dir / "runs" / name
        results = {}
        default_run = runs / "default"
        for recipe in recipes:
            if recipe == "plain_keras":
                if not (default_run / "splits.json").is_file():
                    results[recipe] = (None, None)  # its split comes from the default run
                    continue
                results[recipe] = plain_keras_in_process(default_run, size, epochs)
            else:
                overrides = MYCNN_OVERRIDES + (f"train.step_epochs={max(1, round(0.8 * epochs))}",) \
                    if recipe == "mycnn" else ()
                results[recipe] = train_with_script(data_dir, runs / recipe, size, epochs, overrides)
            accuracy, seconds = results[recipe]
            log(f"{name:16s} {recipe:12s} top-1 {accuracy:.3f} in {seconds:.0f} s")
        splits = json.loads((default_run / "splits.json").read_text()) if default_run.exists() else {}
        rows.append({"dataset": name, "classes": len(set(label for _, label in splits.get("test", []))),
                     "train_images": len(splits.get("train", [])) + len(splits.get("val", [])),
                     "test_images": len(splits.get("test", [])), "size": size, "epochs": epochs,
                     "results": results})
        (work_dir / "results.json").write_text(json.dumps(rows, indent=1))  # kept if a later dataset fails
    return rows


def table(rows, recipes):
    """Markdown table of the rows, with the ratio of each recipe to plain Keras."""
    header = ["dataset", "classes", "train+val / test", "px", "epochs"]
    header += [f"{recipe} top-1" for recipe in recipes]
    if "plain_keras" in recipes:
        header += [f"{recipe} / plain" for recipe in recipes if recipe != "plain_keras"]
    header += [f"{recipe} s" for recipe in recipes]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows:
        results = row["results"]
        cells = [row["dataset"], str(row["classes"]), f"{row['train_images']} / {row['test_images']}",
                 str(row["size"]), str(row["epochs"])]
        cells += [f"{results[recipe][0]:.1%}" if results[recipe][0] is not None else "-" for recipe in recipes]
        if "plain_keras" in recipes:
            plain = results["plain_keras"][0]
            cells += [f"{results[recipe][0] / plain:.2f}x" if plain and results[recipe][0] is not None else "-"
                      for recipe in recipes if recipe != "plain_keras"]
        cells += [f"{results[recipe][1]:.0f}" if results[recipe][1] is not None else "-" for recipe in recipes]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work-dir", default=os.path.join(os.path.expanduser("~"), ".cache", "keras_caltech_bench"),
                        help="where datasets and runs go (outside the repository)")
    parser.add_argument("--datasets", default=",".join(recipe_datasets.DATASETS),
                        help="comma-separated: " + ", ".join(recipe_datasets.DATASETS))
    parser.add_argument("--recipes", default="default,plain_keras", help="comma-separated: " + ", ".join(RECIPES))
    parser.add_argument("--smoke", action="store_true", help="wiring only: one tiny dataset, one epoch")
    parser.add_argument("--write-docs", action="store_true", help=f"rewrite the table in {DOCS_PAGE.relative_to(ROOT)}")
    parser.add_argument("--plain-keras", nargs=3, metavar=("RUN_DIR", "SIZE", "EPOCHS"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.plain_keras:  # one plain Keras run, in its own process (see plain_keras_in_process)
        run_dir, size, epochs = args.plain_keras
        print(train_plain_keras(pathlib.Path(run_dir), int(size), int(epochs)))
        return 0
    catalogue = SMOKE_DATASETS if args.smoke else recipe_datasets.DATASETS
    datasets = list(SMOKE_DATASETS) if args.smoke else [name for name in args.datasets.split(",") if name]
    recipes = [name for name in args.recipes.split(",") if name]
    unknown = [name for name in datasets if name not in catalogue] + \
              [name for name in recipes if name not in RECIPES]
    if unknown:
        parser.error(f"unknown dataset(s) or recipe(s): {', '.join(unknown)}")
    if "plain_keras" in recipes:  # it reuses the default run's split
        recipes = [name for name in recipes if name != "plain_keras"] + ["plain_keras"]
        if "default" not in recipes:
            recipes.insert(0, "default")
    work_dir = pathlib.Path(args.work_dir).resolve()  # train.py runs from the repository's folder
    rows = run_bench(work_dir, datasets, recipes, catalogue)
    text = docs_page.machine_line("python benchmarks/recipes.py") + "\n\n" + table(rows, recipes)
    print(text)
    if args.write_docs:
        docs_page.write_table(DOCS_PAGE, "recipes", text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
