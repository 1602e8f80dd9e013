"""Where a training step's time goes: TensorFlow ops and oneDNN primitives, slowest first.

    python benchmarks/profile_step.py                          # ResNet-18, 128 px, batch 32
    python benchmarks/profile_step.py --model mycnn --image-size 224 --jit

Runs our training step (benchmarks/sections/train_step.py: train.py's loop) for a few warm-up
steps, then traces ``--steps`` steps with the TensorFlow profiler and sums the host-side
op events of the trace by op type. With ``--onednn`` it re-runs itself under ``ONEDNN_VERBOSE=1`` and
sums oneDNN's own per-primitive timings (convolution, reorder, batch_normalization ...)
over the traced steps, so layout conversions (reorders) show up by name.
"""

import argparse
import collections
import os
import pathlib
import subprocess
import sys
import tempfile

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

MARKER = "=== traced steps start ==="


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="resnet18", help="registered model name (default resnet18)")
    parser.add_argument("--image-size", type=int, default=128, help="input side (default 128)")
    parser.add_argument("--batch-size", type=int, default=32, help="batch (default 32)")
    parser.add_argument("--steps", type=int, default=2, help="traced steps (default 2)")
    parser.add_argument("--top", type=int, default=25, help="rows to print (default 25)")
    parser.add_argument("--onednn", action="store_true", help="also sum ONEDNN_VERBOSE primitive timings")
    parser.add_argument("--jit", action="store_true", help="compile the step with XLA (jit_compile=True)")
    parser.add_argument("--precision", default="float32", choices=("float32", "mixed_bfloat16"),
                        help="Keras dtype policy of the model (default float32)")
    parser.add_argument("--inter-op", type=int, default=0,
                        help="TensorFlow inter-op threads (default 0: TensorFlow's choice)")
    return parser.parse_args(argv)


def op_times(logdir):
    """Sums the op events ("name:OpType") of a profiler trace's host plane: {op type: (ms, count)}."""
    from tensorflow.tsl.profiler.protobuf import xplane_pb2

    totals = collections.defaultdict(lambda: [0.0, 0])
    for path in pathlib.Path(logdir).rglob("*.xplane.pb"):
        space = xplane_pb2.XSpace()
        space.ParseFromString(path.read_bytes())
        for plane in space.planes:
            if not plane.name.startswith("/host:CPU"):
                continue
            names = {key: metadata.name for key, metadata in plane.event_metadata.items()}
            for line in plane.lines:
                for event in line.events:
                    name = names.get(event.metadata_id, "")
                    # Ops are "layer/op_name:OpType"; runtime frames ("ExecutorState::Process",
                    # function calls) are not ops and would count their ops' time twice.
                    op_type = name.rsplit(":", 1)[-1].strip()
                    if ":" not in name or "::" in name or op_type.startswith("__inference"):
                        continue
                    totals[op_type][0] += event.duration_ps / 1e9
                    totals[op_type][1] += 1
    return totals


def onednn_times(text):
    """Sums ONEDNN_VERBOSE exec lines after MARKER: {(primitive, implementation): (ms, count)}."""
    totals = collections.defaultdict(lambda: [0.0, 0])
    started = False
    for line in text.splitlines():
        if MARKER in line:
            started = True
        if not started or not line.startswith("onednn_verbose") or ",exec," not in line:
            continue
        fields = line.split(",")
        try:
            primitive = fields[fields.index("exec") + 2]
            implementation = fields[fields.index("exec") + 3]
            milliseconds = float(fields[-1])
        except (ValueError, IndexError):
            continue
        totals[(primitive, implementation)][0] += milliseconds
        totals[(primitive, implementation)][1] += 1
    return totals


def print_table(totals, top, steps, title):
    grand = sum(milliseconds for milliseconds, _ in totals.values())
    print(f"\n{title}: {grand / steps:.0f} ms per step in total")
    for key, (milliseconds, count) in sorted(totals.items(), key=lambda item: -item[1][0])[:top]:
        label = key if isinstance(key, str) else " / ".join(key)
        print(f"  {label:<60} {milliseconds / steps:9.1f} ms/step {100 * milliseconds / grand:5.1f}%"
              f" {count // steps:6d} calls/step")


def main(argv=None):
    args = parse_args(argv)
    if args.onednn and os.environ.get("ONEDNN_VERBOSE") != "1":
        command = [sys.executable, __file__, *(argv if argv is not None else sys.argv[1:])]
        result = subprocess.run(command, env={**os.environ, "ONEDNN_VERBOSE": "1"},
                                capture_output=True, text=True)
        print("\n".join(line for line in result.stdout.splitlines() if not line.startswith("onednn_verbose")))
        print_table(onednn_times(result.stdout), args.top, args.steps + 1, "oneDNN primitives (ONEDNN_VERBOSE)")
        return result.returncode

    import tensorflow as tf

    import train_step

    if args.inter_op:  # before TensorFlow starts its thread pools
        tf.config.threading.set_inter_op_parallelism_threads(args.inter_op)

    run, model = train_step.keras_contender(args.model, args.image_size, args.batch_size, args.steps,
                                            policy=args.precision, jit_compile=args.jit)
    run()  # warm-up: tracing and first allocations
    seconds = run()
    print(f"{args.model} {args.image_size} px batch {args.batch_size}: "
          f"{args.batch_size * len(seconds) / sum(seconds):.1f} img/s untraced "
          "(ops run on 2+ threads at once, so their times add up to more than a step)", flush=True)
    print(MARKER, flush=True)
    with tempfile.TemporaryDirectory() as logdir:
        tf.profiler.experimental.start(logdir)
        run()
        tf.profiler.experimental.stop()
        print("=== traced steps end ===", flush=True)
        if os.environ.get("ONEDNN_VERBOSE") != "1":
            print_table(op_times(logdir), args.top, args.steps + 1, "TensorFlow ops (profiler trace)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
