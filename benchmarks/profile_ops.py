r"""Where a training step's time goes, per TensorFlow op type: ReLU vs SiLU (or any activations).

    python benchmarks/profile_ops.py                         # ResNet-18 CIFAR, batch 128, PGD-1; ~2 min
    python benchmarks/profile_ops.py --activations=relu,softplus --k=3 --output=/tmp/P.md

Profiles `--steps` steady-state train steps of `benchmarks/step_time.py`'s
ResNet-18 case with the TensorFlow profiler and sums the host op events of
the trace by op type (seconds per step, summed over the threads that ran
them, so the total exceeds the step's wall time on a multi-core machine).
XLA launch events (the fused activation kernels, `sat_tf.activations.fused`) are summed
as `XLA kernels`. Writes (or replaces) the "## Op profile" section of
BENCHMARKS.md.
"""

import argparse
import collections
import datetime
import glob
import os
import sys
import tempfile

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import _report  # noqa: E402

HEADING = "## Op profile"
XLA_EVENTS = ("Start", "Done", "ExecuteAsyncOnStream")


def op_seconds(xspace_bytes, steps):
    """{op type: seconds per step} from a serialized XSpace's host planes."""
    from tensorflow.tsl.profiler.protobuf import xplane_pb2

    space = xplane_pb2.XSpace()
    space.ParseFromString(xspace_bytes)
    totals = collections.Counter()
    for plane in space.planes:
        if not plane.name.startswith("/host:CPU"):
            continue
        names = {key: meta.name for key, meta in plane.event_metadata.items()}
        for line in plane.lines:
            for event in line.events:
                name = names.get(event.metadata_id, "")
                seconds = event.duration_ps / 1e12 / steps
                if name.rsplit(":", 1)[-1] in XLA_EVENTS:
                    totals["XLA kernels"] += seconds
                    continue
                if name.count(":") != 1:  # op events are "op_name:OpType"; skip executor-level events
                    continue
                op_type = name.split(":")[1].strip()
                if op_type and not op_type.startswith("__inference"):  # a function call's ops count themselves
                    totals[op_type] += seconds
    return totals


def profile(activation, k, steps):
    import step_time
    import tensorflow as tf

    run = step_time.build_tf(step_time.GROUPS["ksweep"], step_time.Case("tf", activation, k)).run
    run()
    run()
    logdir = tempfile.mkdtemp(prefix="sat_tf_profile_")
    tf.profiler.experimental.start(logdir)
    for _ in range(steps):
        run()
    tf.profiler.experimental.stop()
    (path,) = glob.glob(os.path.join(logdir, "**", "*.xplane.pb"), recursive=True)
    with open(path, "rb") as f:
        return op_seconds(f.read(), steps)


def markdown(results, args, top):
    import tensorflow as tf

    cpu, cores = _report.machine()
    acts = list(results)
    keys = sorted(set().union(*results.values()), key=lambda key: -sum(r[key] for r in results.values()))
    lines = [
        f"{HEADING} ({datetime.date.today().isoformat()})",
        "",
        f"ResNet-18 CIFAR, batch 128, PGD-{args.k} train step; {cpu}, {cores} cores, TensorFlow {tf.__version__}.",
        "",
        "```bash",
        f"python benchmarks/profile_ops.py --activations={args.activations} --k={args.k} --steps={args.steps}",
        "```",
        "",
        "Seconds per step by op type, summed over the threads that ran them (so totals exceed wall time).",
        "",
        "| op type | " + " | ".join(f"{a} s/step" for a in acts) + " |",
        "|---|" + "---|" * len(acts),
    ]
    for key in keys[:top]:
        lines.append(f"| {key} | " + " | ".join(f"{results[a][key]:.3f}" for a in acts) + " |")
    lines.append("| all ops | " + " | ".join(f"{sum(results[a].values()):.3f}" for a in acts) + " |")
    return "\n".join(lines) + "\n"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--activations", default="relu,silu")
    parser.add_argument("--k", type=int, default=1, help="PGD steps (0: clean step)")
    parser.add_argument("--steps", type=int, default=3, help="profiled steps (after 2 warm-up steps)")
    parser.add_argument("--top", type=int, default=16, help="op types listed")
    parser.add_argument("--output", default=_report.BENCHMARKS_MD)
    args = parser.parse_args(argv)
    if args.k < 0 or args.steps < 1:
        parser.error(f"--k must be >= 0 and --steps >= 1, got {args.k} and {args.steps}")
    results = {a: profile(a, args.k, args.steps) for a in args.activations.split(",")}
    section = markdown(results, args, args.top)
    print(section)
    if args.output:
        _report.update_section(args.output, HEADING, section)
    return results


if __name__ == "__main__":
    main()
