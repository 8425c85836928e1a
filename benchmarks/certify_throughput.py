r"""Noise samples/s of randomized-smoothing Monte Carlo on this machine.

    python benchmarks/certify_throughput.py             # ~6 min on 2 CPU cores
    python benchmarks/certify_throughput.py --quick --output=/tmp/B.md   # smoke run

Times `Smooth.sample` (sat_tf.certification: one tf.function whose
tf.while_loop runs every noise batch) against a Python loop that makes one
call per noise batch, the way the PyTorch reference (`core.py`
`_sample_noise`) loops: once with that call a tf.function, once eager. Models:
the digits CNN (8x8x1) and ResNet-18 CIFAR (32x32x3), untrained (speed does
not depend on the weights). Also the graph loop under a MirroredStrategy over
2 logical CPU devices, the sharded path (on a 2-core CPU the replicas share
the same cores, so it shows correctness of the path, not a speed-up).

Each number is the median of --repeats timed calls after one warm-up call
with the same shapes (so tracing is excluded), with the min-max spread.
Writes (or replaces) the "## Certification throughput" section of
BENCHMARKS.md; other sections are left as they are.
"""

import argparse
import contextlib
import datetime
import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")

import _report  # noqa: E402

ROOT = _report.ROOT
SECTION = "## Certification throughput"
SIGMA = 0.25
MODELS = {  # name -> (registry name, input shape, batches, samples per timed call)
    "digits_cnn": ("digits_cnn", (8, 8, 1), (100, 1000, 10000), 100_000),
    "resnet18_cifar": ("resnet18_cifar", (32, 32, 3), (100, 400), 800),
}
QUICK = {"digits_cnn": ("digits_cnn", (8, 8, 1), (500,), 2_000)}


def _parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=5, help="Timed calls per case (median reported).")
    parser.add_argument("--quick", action="store_true", help="Digits only, tiny sizes, 1 repeat (smoke test).")
    parser.add_argument(
        "--output", default=None, help="Markdown file to update (default: BENCHMARKS.md; with --quick: none)."
    )
    args = parser.parse_args(argv)
    if args.repeats < 1:
        parser.error(f"--repeats must be >= 1, got {args.repeats}")
    if args.quick:
        args.repeats = 1
    elif args.output is None:
        args.output = os.path.join(ROOT, "BENCHMARKS.md")
    return args


def _two_logical_cpus():
    # Must run before TensorFlow initialises its devices.
    import tensorflow as tf

    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)


def _python_loop(logits_fn, shape, batch, compiled):
    """counts(x, num): one call per noise batch from Python, like the reference."""
    import numpy as np
    import tensorflow as tf

    def step(x, seed):
        noise = tf.random.stateless_normal((batch, *shape), seed=seed)
        logits = logits_fn(x[tf.newaxis] + SIGMA * noise)
        return tf.math.bincount(tf.argmax(logits, -1, output_type=tf.int32), minlength=10, maxlength=10)

    step = tf.function(step) if compiled else step

    def counts(x, num):
        assert num % batch == 0, (num, batch)
        total = np.zeros(10, np.int64)
        for k in range(num // batch):
            total += step(x, tf.constant([0, k])).numpy()  # the reference's per-batch .cpu()
        return total

    return counts


def _time(fn, repeats):
    """(median, min, max) seconds of `repeats` calls after one warm-up call."""
    import numpy as np

    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return float(np.median(times)), min(times), max(times)


PATHS = {
    "graph": "graph loop (`Smooth.sample`)",
    "function": "Python loop, tf.function per batch",
    "eager": "Python loop, eager per batch",
    "mirrored": "graph loop, MirroredStrategy 2 logical CPUs",
}


def _cases(table):
    """Yields (model name, path key, per-replica batch)."""
    for name, (_, _, batches, _) in table.items():
        for batch in batches:
            for key in ("graph", "function", "eager"):
                yield name, key, batch
        yield name, "mirrored", batches[len(batches) // 2]


def _sampler(key, logits_fn, x, batch, num, mirrored):
    """A no-argument callable that draws `num` noise samples around x by path `key`."""
    from sat_tf import certification

    if key in ("graph", "mirrored"):
        strategy = mirrored if key == "mirrored" else None
        smooth = certification.Smooth(logits_fn, 10, SIGMA, batch_size=batch, strategy=strategy)
        return lambda: smooth.sample(x, num, 0, certification.ESTIMATION)
    counts = _python_loop(logits_fn, tuple(x.shape), batch, compiled=key == "function")
    return lambda: counts(x, num)


def run(args):
    import numpy as np
    import tensorflow as tf

    from sat_tf import distribute, models

    mirrored = distribute.make_strategy("mirrored")
    assert mirrored.num_replicas_in_sync == 2, mirrored.num_replicas_in_sync
    table = QUICK if args.quick else MODELS
    built, results = {}, []
    for name, key, batch in _cases(table):
        registry, shape, _, num = table[name]
        sharded = key == "mirrored"
        if (name, sharded) not in built:
            # Single-device paths get a plain model; the sharded one mirrored variables.
            with mirrored.scope() if sharded else contextlib.nullcontext():
                model = models.build_model(registry, num_classes=10, input_shape=list(shape), activation="silu")
            built[name, sharded] = lambda z, m=model: m(z, training=False)
        x = tf.constant(np.random.default_rng(0).uniform(size=shape).astype(np.float32))
        median, low, high = _time(_sampler(key, built[name, sharded], x, batch, num, mirrored), args.repeats)
        label = f"{batch}/replica" if sharded else str(batch)
        results.append((name, PATHS[key], label, num / median, num / high, num / low))
        print(
            f"{name:15s} {PATHS[key]:45s} batch {label:>13s}: {num / median:10,.0f} samples/s "
            f"({num / high:,.0f}-{num / low:,.0f})",
            flush=True,
        )
    return results


def machine():
    return _report.machine()


def markdown(results, args):
    import tensorflow as tf

    cpu, cores = machine()
    command = "python benchmarks/certify_throughput.py" + (" --quick" if args.quick else "")
    lines = [
        f"{SECTION} ({datetime.date.today().isoformat()})",
        "",
        f"Machine: {cpu}, {cores} cores, no GPU; TensorFlow {tf.__version__}.",
        "",
        "```bash",
        command,
        "```",
        "",
        f"Noise samples per second of randomized-smoothing Monte Carlo (σ = {SIGMA}, untrained models, "
        f"float32); median of {args.repeats} timed calls after a warm-up call, min–max in brackets. "
        "`Smooth.sample` runs all noise batches in one tf.function (`tf.while_loop`); the Python loops "
        "make one call per batch as the PyTorch reference does.",
        "",
        "| model | path | batch | samples/s (median) | min–max |",
        "|---|---|---|---|---|",
    ]
    for name, path, batch, median, low, high in results:
        lines.append(f"| {name} | {path} | {batch} | {median:,.0f} | {low:,.0f}–{high:,.0f} |")
    graph = {(r[0], r[2]): r[3] for r in results if r[1] == PATHS["graph"]}
    notes = []
    if ("digits_cnn", "1000") in graph:
        notes.append(
            f"digits CERTIFY with the reference's N0 = 100, N = 100 000, batch 1000: "
            f"{100_100 / graph[('digits_cnn', '1000')]:.2f} s per image"
        )
    if ("resnet18_cifar", "400") in graph:
        notes.append(
            f"ResNet-18 CIFAR, batch 400: {100_100 / graph[('resnet18_cifar', '400')] / 60:.1f} "
            "min per image (use a GPU/TPU)"
        )
    if notes:
        lines += ["", "At these rates: " + "; ".join(notes) + "."]
    loop = {(r[0], r[2]): r[3] for r in results if r[1] == PATHS["function"]}
    ratios = [
        f"{name} batch {batch}: {rate / loop[name, batch]:.2f}x"
        for (name, batch), rate in graph.items()
        if (name, batch) in loop
    ]
    lines += ["", "Graph loop over the Python loop with a tf.function per batch: " + ", ".join(ratios) + "."]
    return "\n".join(lines) + "\n"


def main(argv=None):
    args = _parse_args(argv)
    _two_logical_cpus()
    results = run(args)
    section = markdown(results, args)
    print("\n" + section)
    if args.output:
        _report.update_section(args.output, SECTION, section)
        print(f"updated {args.output}")


if __name__ == "__main__":
    main()
