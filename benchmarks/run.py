"""Performance of training, input pipeline, Grad-CAM and serving, side by side with PyTorch and xplique.

    pip install -r benchmarks/requirements.txt   # optional extras: CPU torch (and xplique, see there)
    python benchmarks/run.py                     # the full table (about 20 minutes on 2 cores)
    python benchmarks/run.py --sections training,flops --models resnet18 --sizes 224
    python benchmarks/run.py --smoke             # wiring only: 32 px, batch 2, 1 repetition (~30 s)
    python benchmarks/run.py --write-docs        # also rewrite the table in docs/performance.md

Prints machine facts and a Markdown table, and writes benchmarks/results.json. Every
comparison is measured in this run, after warm-up, as the median of several
repetitions, with the contenders taking turns (benchmarks/timing.py). Rows whose
dependency is missing (torch, xplique, bf16 units, benchmarks/serving.py) are printed
as skipped with the reason. The "goal" column holds the target ratio and
whether this run met it. A benchmark, not a test: nothing asserts on the numbers.

Each section is a module of this folder with ``run(options, context) -> list[Row]``;
``context`` carries results between sections (the training step's images/s is the
reference of the FLOP/s and pipeline rows).
"""

import argparse
import contextlib
import datetime
import importlib
import io
import json
import os
import pathlib
import platform
import sys
import traceback

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
# PyTorch's OpenMP threads spin at every barrier by default. On a shared, loaded machine a
# spinning thread that loses its core stalls the other: measured here, PyTorch's step ran
# 2x slower (MyCNN, 128 px) and tiny steps 15x slower than with PASSIVE. TensorFlow's
# oneDNN uses its own thread pool and ignores this variable. Set it to ACTIVE to compare.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
HERE = pathlib.Path(__file__).resolve().parent

import docs_page  # noqa: E402

# Section name -> module in this folder. "serving" belongs to the export work and may be absent.
SECTIONS = {"training": "sections.train_step", "flops": "sections.flops", "pipeline": "sections.input_pipeline",
            "gradcam": "sections.gradcam", "serving": "serving"}
DEFAULT_OUTPUT = HERE / "results.json"
DOCS_PAGE = HERE.parent / "docs" / "performance.md"


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--smoke", action="store_true",
                        help="tiny configuration that checks the wiring: 32 px, batch 2, one repetition")
    parser.add_argument("--sections", default=",".join(SECTIONS),
                        help=f"comma-separated sections (default all: {','.join(SECTIONS)})")
    parser.add_argument("--models", default="mycnn,resnet18", help="training models (default mycnn,resnet18)")
    parser.add_argument("--sizes", default="224,128", help="training image sizes (default 224,128)")
    parser.add_argument("--batch-size", type=int, default=32, help="training batch (default 32)")
    parser.add_argument("--steps", type=int, default=3, help="timed training steps per repetition (default 3)")
    parser.add_argument("--repeats", type=int, default=3, help="repetitions of every timing (default 3)")
    parser.add_argument("--output", default=str(DEFAULT_OUTPUT), help="results JSON (default benchmarks/results.json)")
    parser.add_argument("--write-docs", action="store_true", help="rewrite the table in docs/performance.md")
    args = parser.parse_args(argv)
    unknown = sorted(set(args.sections.split(",")) - set(SECTIONS))
    if unknown:
        parser.error(f"unknown section(s) {', '.join(unknown)}. Valid sections: {', '.join(SECTIONS)}")
    return args


def make_options(args):
    """Every section's settings, from the command line (full run) or the smoke preset."""
    options = argparse.Namespace(
        sections=args.sections.split(","), train_models=args.models.split(","),
        train_sizes=[int(size) for size in args.sizes.split(",")], batch_size=args.batch_size,
        steps=args.steps, repeats=args.repeats,
        matmul_size=4096, matmul_repeats=max(5, args.repeats),
        jpeg_images=640, jpeg_min=180, jpeg_max=380, pipeline_repeats=max(5, args.repeats),
        gradcam_models=["mycnn", "resnet50"], gradcam_size=224, gradcam_batch=32,
        gradcam_repeats=args.repeats, serving_argv=["--image-size", "224", "--source-size", "250"])
    if args.smoke:
        options.__dict__.update(
            train_models=["mycnn"], gradcam_models=["mycnn"], train_sizes=[32], batch_size=2, steps=1, repeats=1, matmul_size=256, matmul_repeats=1,
            jpeg_images=20, jpeg_min=40, jpeg_max=72, pipeline_repeats=1, gradcam_size=32,
            gradcam_batch=2, gradcam_repeats=1, serving_argv=["--image-size", "32", "--repeats", "1",
                                                              "--batch-size", "2"])
    return options


def machine_facts():
    """CPU model, cores, load, library versions, date: what a reader needs to weigh the numbers."""
    import keras
    import tensorflow as tf

    model = platform.processor() or "unknown CPU"
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as cpuinfo:
        model = next((line.split(":", 1)[1].strip() for line in cpuinfo if line.startswith("model name")), model)
    facts = {"date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"), "cpu": model,
             "cores": len(os.sched_getaffinity(0)), "load_average_at_start": os.getloadavg(),
             "python": platform.python_version(), "tensorflow": tf.__version__, "keras": keras.__version__,
             "onednn": os.environ.get("TF_ENABLE_ONEDNN_OPTS", "default (on for x86 Linux)")}
    for package in ("torch", "xplique"):
        with contextlib.suppress(ImportError):
            facts[package] = importlib.import_module(package).__version__
    return facts


def serving_section(options, context):
    """Rows of benchmarks/serving.py (the export benchmark), run through its main()."""
    from timing import Row, skipped

    module = importlib.import_module("serving")
    # A stand-alone script: run its main() and turn its printed table into rows.
    output = io.StringIO()
    try:
        with contextlib.redirect_stdout(output):
            code = module.main(options.serving_argv)
    except SystemExit as error:  # argparse refused our arguments
        code = error.code
    text = output.getvalue()
    context["serving_output"] = text
    if code not in (0, None):
        return [skipped("serving", "exported SavedModel latency and throughput",
                        f"benchmarks/serving.py {' '.join(options.serving_argv)} exited with {code}")]
    return parse_serving_table(text) or [Row("serving", "benchmarks/serving.py output", note=text.strip())]


def parse_serving_table(text):
    """Rows from serving.py's fixed-width table: name, input, p50 ms, p95 ms, images/s."""
    from timing import Row

    rows, in_table = [], False
    for line in text.splitlines():
        if set(line.strip()) == {"-"}:
            in_table = True
            continue
        fields = [field for field in line.split("  ") if field.strip()]
        if not in_table or len(fields) < 4:
            in_table = in_table and bool(fields)
            continue
        try:
            p50, p95, throughput = (float(field) for field in fields[-3:])
        except ValueError:
            continue
        rows.append(Row("serving", f"{fields[0].strip()} ({' '.join(fields[1:-3]).strip()})", throughput,
                        "img/s", note=f"batch 1 latency p50 {p50:.2f} ms, p95 {p95:.2f} ms"))
    return rows


def run_sections(options):
    """Runs the chosen sections in order; a failing section becomes a row, not a crash."""
    from timing import Row

    context, rows, failed = {}, [], []
    for section in options.sections:
        print(f"[{datetime.datetime.now():%H:%M:%S}] {section} ...", file=sys.stderr, flush=True)
        try:
            if section == "serving":
                rows += serving_section(options, context)
            else:
                rows += importlib.import_module(SECTIONS[section]).run(options, context)
        except Exception as error:  # report it, keep the other sections' results
            traceback.print_exc()
            failed.append(section)
            rows.append(Row(section, f"section {section} failed", note=f"error: {type(error).__name__}: {error}"))
    return rows, context, failed


def format_value(value, unit):
    if value is None:
        return "-"
    digits = 3 if abs(value) < 10 else 1 if abs(value) < 1000 else 0
    return f"{value:,.{digits}f} {unit}".strip()


def markdown_table(rows):
    """The results as a Markdown table, one section after the other."""
    lines = ["| Section | Measurement | Ours | Compared with | Ratio | Goal | Notes |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    for row in rows:
        reference = f"{row.reference}: {format_value(row.reference_value, row.unit)}" \
            if row.reference_value is not None else row.reference
        ratio = f"{row.ratio:.2f}x" if row.ratio is not None else "-"
        goal = f">= {row.goal:g}x: {row.status}" if row.goal is not None else (row.status or "-")
        note = row.note.replace("|", "/").replace("\n", " ")
        lines.append(f"| {row.section} | {row.name} | {format_value(row.value, row.unit)} | {reference or '-'} "
                     f"| {ratio} | {goal} | {note} |")
    return "\n".join(lines)


def main(argv=None):
    args = parse_args(argv)
    options = make_options(args)
    facts = machine_facts()
    rows, context, failed = run_sections(options)
    facts["load_average_at_end"] = os.getloadavg()
    text = "\n".join([
        docs_page.machine_line("python benchmarks/run.py"),
        f"Load average {facts['load_average_at_start'][0]:.1f} at the start, "
        f"{facts['load_average_at_end'][0]:.1f} at the end. Software: "
        + ", ".join(f"{name} {facts[name]}" for name in ("tensorflow", "keras", "torch", "xplique") if name in facts)
        + f". Settings: {'smoke (wiring only) ' if args.smoke else ''}batch {options.batch_size}, "
        f"{options.steps} timed steps x {options.repeats} repetitions per training row, medians.",
        "", markdown_table(rows)])
    print(text)
    if args.write_docs:
        docs_page.write_table(DOCS_PAGE, "performance", text)
    if context.get("serving_output"):
        print("\nbenchmarks/serving.py printed:\n" + context["serving_output"])
    results = {"machine": facts, "smoke": args.smoke, "options": vars(options),
               "rows": [row.to_dict() for row in rows], "serving_output": context.get("serving_output")}
    pathlib.Path(args.output).write_text(json.dumps(results, indent=1, default=str))
    print(f"\nwrote {args.output}")
    if failed:
        print(f"error: section(s) failed: {', '.join(failed)} (tracebacks above)", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
