r"""The in-memory input pipeline with and without tf.data's autotuner: throughput and the epoch-end stall.

    python benchmarks/input_pipeline.py                      # digits + Fashion-MNIST, ~9 min; updates BENCHMARKS.md
    python benchmarks/input_pipeline.py --datasets=digits --epochs=2 --output=/tmp/B.md

The trainer builds one iterator per epoch (`sat_tf.training.loop.fit`: an epoch's batches are a pure function
of the seed and the epoch, so a resumed run replays them exactly) and drops it at the epoch's end. With the
autotuner on, dropping it waits for the autotuner's background thread, on TF 2.21 for up to tens of seconds
(12-50 s at about half of the Fashion-MNIST study's epoch ends). `sat_tf.data.load_split` therefore turns the
autotuner off for the in-memory data sets, and the trainer destroys every epoch's iterator on a thread of its
own (`sat_tf.training.loop.BackgroundRelease`), for the pipelines that keep the autotuner (streamed TFRecords).
This script measures both, side by side in one run, the three pipelines alternating (as built; autotuner on;
autotuner on, released in the background):

- images/s of one full pass over the training split as fast as the pipeline goes (median of --passes);
- the seconds the main thread spends dropping the iterator at the end of an epoch consumed at a training step's
  pace (a TensorFlow matmul chain on the main thread, calibrated to --step_ms; 85 ms is the study's PGD-5 step
  on one core), `num_train // batch_size` batches, as the trainer takes them (it never asks past an epoch's
  last batch); for the background pipeline also the seconds its destruction took on the release thread.
  The stall is random: it depends on where the autotuner's thread is when the iterator goes.
"""

import argparse
import datetime
import os
import statistics
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import _report  # noqa: E402

PIPELINES = ("as built (autotuner off)", "autotuner on", "autotuner on, released in the background")
BACKGROUND = PIPELINES[2]  # what `fit` does with every epoch's iterator


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__)
    parser.add_argument("--datasets", default="digits,fashion_mnist", help="registered in-memory data sets")
    parser.add_argument("--batch_size", type=int, default=128)
    parser.add_argument("--passes", type=int, default=3, help="timed full passes per pipeline (throughput)")
    parser.add_argument("--epochs", type=int, default=4, help="epochs per pipeline consumed at --step_ms")
    parser.add_argument("--step_ms", type=float, default=85.0, help="simulated training step (ms)")
    parser.add_argument("--output", default=_report.BENCHMARKS_MD, help="markdown file to update")
    args = parser.parse_args(argv)
    for name in ("batch_size", "passes", "epochs"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be >= 1, got {getattr(args, name)}")
    if args.step_ms <= 0:
        parser.error(f"--step_ms must be > 0, got {args.step_ms}")
    return args


def pipeline(entry, epoch, batch_size, autotune):
    """The trainer's epoch pipeline; `autotune` turns tf.data's autotuner back on."""
    import tensorflow as tf

    ds = entry.train_dataset(epoch, batch_size=batch_size, seed=0)
    if autotune:
        options = tf.data.Options()
        options.autotune.enabled = True
        ds = ds.with_options(options)
    return ds


def simulated_step(step_ms):
    """A callable that keeps the main thread's TensorFlow busy for about `step_ms`."""
    import tensorflow as tf

    a = tf.random.normal([256, 256])

    @tf.function
    def chain(x, n):
        for _ in tf.range(n):
            x = tf.tanh(tf.matmul(x, a) * 0.01)
        return x

    chain(a, tf.constant(10)).numpy()
    start = time.perf_counter()
    chain(a, tf.constant(200)).numpy()
    per = (time.perf_counter() - start) / 200
    n = tf.constant(max(1, round(step_ms / 1000 / per)))
    return lambda: chain(a, n).numpy()


def measure(name, args, step):
    from sat_tf import data
    from sat_tf.training.loop import BackgroundRelease

    entry = data.get_dataset(name)
    passes = {p: [] for p in PIPELINES}
    for k in range(args.passes):
        for p in PIPELINES if k % 2 == 0 else PIPELINES[::-1]:
            start, images = time.perf_counter(), 0
            for x, _ in pipeline(entry, k, args.batch_size, p != PIPELINES[0]):
                images += int(x.shape[0])
            passes[p].append(images / (time.perf_counter() - start))
    steps = entry.info().num_train // args.batch_size
    stalls, epoch_seconds, cpu = ({p: [] for p in PIPELINES} for _ in range(3))
    release = BackgroundRelease("benchmark-release")
    for k in range(args.epochs):
        for p in PIPELINES if k % 2 == 0 else PIPELINES[::-1]:
            iterator = iter(pipeline(entry, k, args.batch_size, p != PIPELINES[0]))
            start = time.perf_counter()
            for _ in range(steps):  # as the trainer: its steps per epoch, never the end of the sequence
                next(iterator)
                step()
            dropped, cpu_dropped = time.perf_counter(), time.process_time()
            if p == BACKGROUND:
                finished = [iterator]
                del iterator
                release.release(finished)
            else:
                del iterator
            stalls[p].append(time.perf_counter() - dropped)
            cpu[p].append(time.process_time() - cpu_dropped)
            epoch_seconds[p].append(dropped - start)
            print(f"  {name} epoch {k} {p}: {epoch_seconds[p][-1]:.1f} s, drop {stalls[p][-1]:.2f} s", flush=True)
    release.wait()
    return passes, stalls, epoch_seconds, cpu, release.seconds


def main(argv=None):
    args = parse_args(argv)
    from sat_tf import data

    step = simulated_step(args.step_ms)
    rows = []
    for name in args.datasets.split(","):
        try:
            data.get_dataset(name).arrays("train")
        except data.DatasetNotFoundError as err:
            print(f"skipping {name}: {err}", flush=True)
            continue
        passes, stalls, epochs, cpu, released = measure(name, args, step)
        for p in PIPELINES:
            rows.append((name, p, passes[p], stalls[p], epochs[p], cpu[p], released if p == BACKGROUND else None))
    model, cores = _report.machine()
    defaults = vars(parse_args([]))
    command = "python benchmarks/input_pipeline.py" + "".join(
        f" --{k}={v}" for k, v in vars(args).items() if k != "output" and v != defaults[k]
    )
    lines = [
        f"## Input pipeline: the autotuner and the epoch-end stall ({datetime.date.today().isoformat()})",
        "",
        f"Machine: {model}, {cores} cores; TensorFlow {__import__('tensorflow').__version__}.",
        "",
        "```bash",
        command,
        "```",
        "",
        f"The trainer's epoch pipeline (`load_split`, batch {args.batch_size}) as built, with tf.data's "
        "autotuner off, and the same with it on. Throughput: one full pass as fast as the pipeline goes, "
        f"median (min-max) of {args.passes}. Drop: the seconds the main thread spends dropping the iterator after "
        f"an epoch consumed at a simulated {args.step_ms:g} ms training step, over {args.epochs} epochs per "
        "pipeline: `del iterator`, or (released in the background, as `sat_tf.training.loop.fit` does) handing it "
        "to `BackgroundRelease`, whose thread then destroys it while the next epoch runs (its seconds: last column). "
        "Drop CPU: the process's CPU seconds (all threads) during the main thread's drop.",
        "",
        "| data | pipeline | images/s | drop: median (max) | drop: sum | drop CPU: sum | epoch seconds (median) "
        "| destruction on the release thread: sum (max) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, p, tp, st, ep, cp, released in rows:
        behind = "—" if released is None else f"{sum(released):.1f} s ({max(released):.2f} s)"
        lines.append(
            f"| {name} | {p} | {statistics.median(tp):,.0f} ({min(tp):,.0f}-{max(tp):,.0f}) | "
            f"{statistics.median(st):.2f} s ({max(st):.2f} s) | {sum(st):.1f} s | {sum(cp):.2f} s | "
            f"{statistics.median(ep):.1f} | "
            f"{behind} |"
        )
    section = "\n".join(lines) + "\n"
    print(section)
    _report.update_section(args.output, "## Input pipeline: the autotuner and the epoch-end stall", section)
    print(f"updated {args.output}")
    return rows


if __name__ == "__main__":
    main()
