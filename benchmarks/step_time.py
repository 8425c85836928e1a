r"""Steady-state training step time, side by side: clean vs PGD-K, activations, XLA, bf16, PyTorch.

    python benchmarks/step_time.py                      # every group below, ~35 min; updates BENCHMARKS.md
    python benchmarks/step_time.py --groups=ksweep,certify --steps=7
    python benchmarks/step_time.py --groups=quick --output=/tmp/B.md   # seconds: the CI smoke run

Each group builds all of its cases first (TensorFlow in this process, PyTorch in
a worker subprocess from benchmarks/torch_reference.py, so neither framework's
thread pool competes with the other), then runs them in rounds: one call per
case per round, the order reversed every other round, so drift of the machine
(thermal, noisy neighbours) hits every case alike. Round 0 is the first call
(tracing included: reported as "first call"), the next `--warmup - 1` rounds
are discarded, the last `--steps` rounds give the median and min-max.

The bound: a clean step is one forward plus one backward through inputs and
weights (~3 forward-equivalents), an attack step one forward plus an input
gradient (~2), so a PGD-K step should cost at most (2K + 3) / 3 clean steps.
"ours / torch" is the PyTorch step time over ours (a throughput ratio: > 1
means we are faster), at equal precision.

Data are random tensors already in memory, so the numbers are compute only
(benchmarks/imagenet_input_throughput.py measures the input pipeline). The
`memory` group runs K = 1 and K = 10 in fresh processes and compares the
first-call (trace) time, the graph size and the peak RSS.
"""

import argparse
import collections
import contextlib
import dataclasses
import datetime
import importlib.util
import json
import os
import resource
import statistics
import subprocess
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")
HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import _report  # noqa: E402

Built = collections.namedtuple("Built", "run traces nodes")
Case = collections.namedtuple(
    "Case", "framework activation k jit precision per_call fused", defaults=(False, "float32", 1, True)
)
KS = (0, 1, 3, 7, 10)
SMOOTH = ("silu", "gelu", "softplus", "smooth_relu", "sparta")
TARGETS = {"bound": 1.05, "silu": 1.03, "smooth": 1.08, "torch": 1.25, "torch_floor": 1.0, "memory": 1.10}


@dataclasses.dataclass(frozen=True)
class Group:
    title: str
    model: str
    image_shape: tuple
    num_classes: int
    batch: int
    cases: tuple
    kind: str = "train"  # or "certify": noise samples per call, `batch` per forward
    samples: int = 0


R18 = dict(model="resnet18_cifar", image_shape=(32, 32, 3), num_classes=10, batch=128)
GROUPS = {
    "ksweep": Group(
        "PGD-K vs clean, ours vs PyTorch (ResNet-18 CIFAR, batch 128, float32)",
        **R18,
        cases=tuple(Case("tf", a, k) for a in ("relu", "silu") for k in KS)
        + tuple(Case("torch", "relu", k) for k in KS)
        + tuple(Case("torch", "silu", k) for k in (0, 1)),
    ),
    "activations": Group(
        "Smooth activations vs ReLU (ResNet-18 CIFAR, batch 128, float32)",
        **R18,
        cases=tuple(Case("tf", a, k) for a in ("relu", *SMOOTH) for k in (0, 1)),
    ),
    "xla": Group(
        "XLA on vs off (ResNet-18 CIFAR, batch 128, float32)",
        **R18,
        cases=tuple(Case("tf", a, k, jit) for jit in (False, True) for a in ("relu", "silu") for k in (0, 1)),
    ),
    "bf16": Group(
        "bfloat16 vs float32, ours vs PyTorch autocast (ResNet-18 CIFAR, batch 128)",
        **R18,
        cases=tuple(
            Case(f, a, k, False, p)
            for f, acts in (("tf", ("relu", "silu")), ("torch", ("relu",)))
            for p in ("float32", "bfloat16")
            for a in acts
            for k in (0, 1, 3)
        ),
    ),
    "resnet50": Group(
        "ResNet-50, ImageNet shape at 64 px (1000 classes, batch 32, float32)",
        "resnet50",
        (64, 64, 3),
        1000,
        32,
        cases=tuple(Case("tf", a, k) for a in ("relu", "silu") for k in (0, 1, 3)),
    ),
    "fusion": Group(
        "Fused kernels on vs off: batch norm and SiLU (ResNet-18 CIFAR, batch 128, float32)",
        **R18,
        cases=tuple(Case("tf", a, k, fused=f) for f in (True, False) for a in ("relu", "silu") for k in (0, 1)),
    ),
    "host": Group(
        "Host overhead: steps per tf.function call (digits CNN, batch 128)",
        "digits_cnn",
        (8, 8, 1),
        10,
        128,
        cases=tuple(Case("tf", "silu", k, per_call=n) for k in (0, 2) for n in (1, 10)),
    ),
    "certify": Group(
        "Certification sampling, ours vs PyTorch (ResNet-18 CIFAR, σ = 0.25, batch 400)",
        **{**R18, "batch": 400},
        cases=(Case("tf", "relu", 0), Case("torch", "relu", 0)),
        kind="certify",
        samples=800,
    ),
    "fashion": Group(
        "Fashion-MNIST study model, clean vs PGD-5 (mnist_resnet_fast, 28x28x1, batch 128, float32)",
        "mnist_resnet_fast",
        (28, 28, 1),
        10,
        128,
        cases=tuple(Case("tf", a, k) for a in ("relu", "silu") for k in (0, 5)),
    ),
    "fashion_kernels": Group(
        "Fashion-MNIST study model, fused kernels on vs off (mnist_resnet_fast, 28x28x1, batch 128, float32)",
        "mnist_resnet_fast",
        (28, 28, 1),
        10,
        128,
        cases=tuple(
            Case("tf", a, k, fused=f)
            for a in ("relu", "smooth_relu", "silu", "gelu")
            for k in (0, 5)
            for f in (True, False)
        ),
    ),
    "quick": Group(
        "Smoke run (digits CNN, batch 16)",
        "digits_cnn",
        (8, 8, 1),
        10,
        16,
        cases=(
            Case("tf", "silu", 0),
            Case("tf", "silu", 1),
            Case("tf", "silu", 0, per_call=4),
            Case("tf", "silu", 1, fused=False),
        ),
    ),
}
FULL = (
    "ksweep",
    "activations",
    "fusion",
    "xla",
    "bf16",
    "resnet50",
    "host",
    "certify",
    "fashion",
    "fashion_kernels",
    "memory",
)


# === TensorFlow cases ===


def build_tf(group, case):
    """`Built(run, traces, nodes)`: `run()` makes one call of `case` (`case.per_call` steps)."""
    import keras
    import numpy as np
    import tensorflow as tf

    from sat_tf import attacks, certification, models, training
    from sat_tf.activations import fused

    keras.utils.set_random_seed(0)
    keras.mixed_precision.set_global_policy("mixed_bfloat16" if case.precision == "bfloat16" else "float32")
    try:
        model = models.build_model(
            group.model, num_classes=group.num_classes, input_shape=list(group.image_shape), activation=case.activation
        )
    finally:
        keras.mixed_precision.set_global_policy("float32")
    rng = np.random.default_rng(0)
    if group.kind == "certify":
        x = tf.constant(rng.uniform(size=group.image_shape).astype(np.float32))
        smooth = certification.Smooth(
            lambda z: model(z, training=False), group.num_classes, 0.25, batch_size=group.batch
        )
        return Built(lambda: smooth.sample(x, group.samples, 0, certification.ESTIMATION), lambda: None, lambda: None)
    optimizer = keras.optimizers.SGD(0.01, momentum=0.9, nesterov=True)
    attack = (
        attacks.get_attack("none")
        if case.k == 0
        else attacks.get_attack("pgd", eps=8 / 255, step_size=2 / 255, steps=case.k, random_start=True)
    )
    strategy = tf.distribute.get_strategy()
    config = training.StepConfig(
        global_batch_size=group.batch, num_classes=group.num_classes, weight_decay=5e-4, jit_compile=case.jit, seed=0
    )
    train = training.make_train_function(model, optimizer, attack, strategy, config)
    x = tf.constant(rng.uniform(size=(group.batch, *group.image_shape)).astype(np.float32))
    y = tf.constant(rng.integers(0, group.num_classes, group.batch).astype(np.int32))
    iterator = iter(strategy.experimental_distribute_dataset(tf.data.Dataset.from_tensors((x, y)).repeat()))
    per_call = tf.constant(case.per_call)

    def run():
        # The plain-op variant must be traced (its first call) inside fused.disabled().
        with contextlib.nullcontext() if case.fused or train.experimental_get_tracing_count() else fused.disabled():
            return float(train(iterator, per_call)["loss_sum"])  # float(): wait for the step to finish

    return Built(run, train.experimental_get_tracing_count, lambda: graph_nodes(train, iterator, per_call))


# === Driver ===


def label(case):
    extras = ([f"{case.per_call} steps/call"] if case.per_call > 1 else []) + ([] if case.fused else ["plain ops"])
    return " ".join(
        [case.framework, case.activation, f"K={case.k}", "xla" if case.jit else "", case.precision, *extras]
    ).replace("  ", " ")


def run_group(group, warmup, steps, worker_factory):
    """Builds every case, then times them in interleaved rounds; returns one dict per case."""
    runners, traces, worker = {}, {}, None
    if importlib.util.find_spec("torch") is None and any(c.framework == "torch" for c in group.cases):
        print(
            "PyTorch is not installed (pip install -e '.[crosscheck]'): timing without the PyTorch cases",
            file=sys.stderr,
            flush=True,
        )
        group = dataclasses.replace(group, cases=tuple(c for c in group.cases if c.framework != "torch"))
    for case in group.cases:
        if case.framework == "tf":
            built = build_tf(group, case)
            runners[case], traces[case] = built.run, built.traces
            continue
        worker = worker or worker_factory()
        spec = (
            dict(kind="certify", batch=group.batch, num=group.samples, sigma=0.25)
            if group.kind == "certify"
            else dict(kind="train", k=case.k, batch=group.batch, precision=case.precision)
        )
        worker.request(op="build", id=label(case), activation=case.activation, seed=0, **spec)
        runners[case] = lambda case=case: worker.request(op="time", id=label(case), n=1)["times"][0]  # noqa: B023 (worker is fixed)
    times = {case: [] for case in group.cases}
    first = {}
    try:
        for round_ in range(warmup + steps):
            order = group.cases if round_ % 2 == 0 else group.cases[::-1]
            for case in order:
                start = time.perf_counter()
                reported = runners[case]()
                elapsed = reported if case.framework == "torch" else time.perf_counter() - start
                if round_ == 0:
                    first[case] = elapsed
                elif round_ >= warmup:
                    times[case].append(elapsed / case.per_call)
                print(
                    f"  [{round_ + 1}/{warmup + steps}] {label(case)}: {elapsed / case.per_call:.3f} s",
                    file=sys.stderr,
                    flush=True,
                )
    finally:
        if worker is not None:
            worker.close()
    rows = []
    for case in group.cases:
        median = statistics.median(times[case])
        rows.append(
            dict(
                case=case,
                median=median,
                low=min(times[case]),
                high=max(times[case]),
                first=first[case],
                traces=traces[case]() if case in traces else None,
            )
        )
    return group, rows


def derive(group, rows):
    """Adds ratios: to the clean step, to the bound, to ReLU, ours over PyTorch."""
    by_case = {r["case"]: r for r in rows}
    for r in rows:
        case = r["case"]
        clean = by_case.get(case._replace(k=0))
        r["x_clean"] = r["median"] / clean["median"] if clean and group.kind == "train" else None
        r["bound"] = (2 * case.k + 3) / 3
        r["x_bound"] = r["x_clean"] / r["bound"] if r["x_clean"] else None
        relu = by_case.get(case._replace(activation="relu"))
        r["x_relu"] = r["median"] / relu["median"] if relu and case.activation != "relu" else None
        torch = by_case.get(case._replace(framework="torch"))
        r["ours_vs_torch"] = torch["median"] / r["median"] if torch and case.framework == "tf" else None
    return rows


def verdicts(group, rows):
    """(target, measured, holds) lines for the issue's targets that this group measures."""
    out = []
    for r in rows:
        case = r["case"]
        if case.framework != "tf":
            continue
        if case.k > 0 and r["x_bound"] is not None and not case.jit and case.per_call == 1:
            out.append(
                (
                    f"{label(case)}: step ≤ {TARGETS['bound']} × (2K+3)/3 clean",
                    f"{r['x_bound']:.2f} × bound",
                    r["x_bound"] <= TARGETS["bound"],
                )
            )
        if r["x_relu"] is not None and case.k == 1 and not case.jit and case.precision == "float32":
            limit = TARGETS["silu"] if case.activation == "silu" else TARGETS["smooth"]
            out.append((f"{label(case)}: ≤ {limit} × relu", f"{r['x_relu']:.3f}", r["x_relu"] <= limit))
        if r["ours_vs_torch"] is not None:
            out.append(
                (
                    f"{label(case)}: ours ≥ {TARGETS['torch']}× PyTorch (floor {TARGETS['torch_floor']}×)",
                    f"{r['ours_vs_torch']:.2f}×",
                    "yes"
                    if r["ours_vs_torch"] >= TARGETS["torch"]
                    else "floor only"
                    if r["ours_vs_torch"] >= TARGETS["torch_floor"]
                    else False,
                )
            )
    return out


def fmt(value, spec=".2f"):
    return "–" if value is None else format(value, spec)


def markdown(name, group, rows, args, load=None):
    unit = "s/call" if group.kind == "certify" else "s/step"
    # The machine is shared: the 1-minute load average before and after says how much of it the run had.
    busy = f" 1-minute load average {load[0]:.2f} before, {load[1]:.2f} after." if load else ""
    lines = [
        f"## Step time: {name} ({datetime.date.today().isoformat()})",
        "",
        f"**{group.title}.** {machine_line()}.{busy}",
        "",
        "```bash",
        f"python benchmarks/step_time.py --groups={name} --warmup={args.warmup} --steps={args.steps}",
        "```",
        "",
        f"Median of {args.steps} interleaved rounds after {args.warmup} warm-up round(s); "
        "first call = tracing + one call.",
        "",
    ]
    if group.kind == "certify":
        lines += [
            "| framework | samples/s (median) | min–max | first call (s) | ours / torch |",
            "|---|---|---|---|---|",
        ]
        for r in rows:
            n = group.samples
            lines.append(
                f"| {r['case'].framework} | {n / r['median']:,.0f} | {n / r['high']:,.0f}–{n / r['low']:,.0f} "
                f"| {r['first']:.1f} | {fmt(r['ours_vs_torch'])} |"
            )
    else:
        lines += [
            f"| framework | activation | XLA | precision | BN/act kernels | K | steps/call | {unit} (median) | "
            "images/s | min–max | first call (s) | traces | × clean | bound (2K+3)/3 | × bound | × relu | "
            "ours / torch |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        for r in rows:
            c = r["case"]
            lines.append(
                f"| {c.framework} | {c.activation} | {'on' if c.jit else 'off'} | {c.precision} | "
                f"{'–' if c.framework == 'torch' else 'fused' if c.fused else 'plain'} | {c.k} | "
                f"{c.per_call} | {r['median']:.3f} | {group.batch / r['median']:,.0f} | "
                f"{r['low']:.3f}–{r['high']:.3f} | {r['first']:.1f} | "
                f"{fmt(r['traces'], 'd')} | {fmt(r['x_clean'])} | {r['bound']:.2f} | {fmt(r['x_bound'])} | "
                f"{fmt(r['x_relu'], '.3f')} | {fmt(r['ours_vs_torch'])} |"
            )
    checks = verdicts(group, rows)
    if checks:
        lines += ["", "| target | measured | holds |", "|---|---|---|"]
        lines += [f"| {t} | {m} | {'yes' if ok is True else ok or 'NO'} |" for t, m, ok in checks]
    return "\n".join(lines) + "\n"


def machine_line():
    import keras
    import tensorflow as tf

    cpu, cores = _report.machine()
    line = f"{cpu}, {cores} cores, TensorFlow {tf.__version__}, Keras {keras.__version__}"
    try:
        from importlib.metadata import version

        line += f", PyTorch {version('torch')}"
    except Exception:  # noqa: BLE001  (torch is optional: the [crosscheck] extra)
        pass
    return line


# === Memory / trace probe (fresh process per K) ===


def probe(spec):
    """Child process: one ResNet-18 train function with PGD-K; prints trace, graph size and RSS as JSON."""
    activation, k = spec.split(",")
    group = GROUPS["ksweep"]
    case = Case("tf", activation, int(k))
    before = peak_rss_mb()
    run, traces, nodes = build_tf(group, case)
    built = peak_rss_mb()
    start = time.perf_counter()
    graph_size = nodes()  # traces the train function (no execution)
    trace = time.perf_counter() - start
    first = _timed(run)  # graph optimisation + kernel set-up + one step
    steady = statistics.median(_timed(run) for _ in range(3))
    peak = peak_rss_mb()
    print(
        json.dumps(
            dict(
                k=int(k),
                trace=trace,
                first=first,
                steady=steady,
                rss_import=before,
                rss_built=built,
                rss_peak=peak,
                graph_nodes=graph_size,
                traces=traces(),
            )
        )
    )


def peak_rss_mb():
    """This process's resident-set high-water mark. /proc's VmHWM, because ru_maxrss survives fork + exec
    on Linux and would report the parent's peak."""
    try:
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) / 1024 for line in f if line.startswith("VmHWM:"))
    except (OSError, StopIteration):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _timed(fn):
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def graph_nodes(train, *args):
    """Nodes of the traced train function's graph, every function it calls included."""
    graph_def = train.get_concrete_function(*args).graph.as_graph_def()
    return len(graph_def.node) + sum(len(f.node_def) for f in graph_def.library.function)


def memory_group(args):
    """K = 1 and K = 10 in fresh processes; the targets are K=10 within 10 % of K=1."""
    results = []
    for k in (1, 10):
        out = subprocess.run(
            [sys.executable, os.path.abspath(__file__), f"--probe=relu,{k}"],
            check=True,
            stdout=subprocess.PIPE,
            text=True,
        ).stdout
        results.append(json.loads(out.strip().splitlines()[-1]))
        print(f"  memory K={k}: {results[-1]}", file=sys.stderr, flush=True)
    one, ten = results
    lines = [
        f"## Step time: memory ({datetime.date.today().isoformat()})",
        "",
        f"**Trace time and peak memory, PGD-1 vs PGD-10 (ResNet-18 CIFAR, batch 128, relu).** {machine_line()}.",
        "",
        "```bash",
        "python benchmarks/step_time.py --groups=memory",
        "```",
        "",
        "Each K in a fresh process. Trace = tracing the train function (`get_concrete_function`, no execution); "
        "first call = the first execution (graph optimisation, kernel set-up, one step); peak RSS = the "
        "process's high-water mark after four steps; step increment = peak minus the RSS after building the "
        "model; traces = tracing count at the end (1 = never retraced).",
        "",
        "| K | trace (s) | first call (s) | steady step (s) | graph nodes | traces | peak RSS (MB) | "
        "step increment (MB) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        lines.append(
            f"| {r['k']} | {r['trace']:.2f} | {r['first']:.1f} | {r['steady']:.2f} | {r['graph_nodes']} | "
            f"{r['traces']} | {r['rss_peak']:.0f} | "
            f"{r['rss_peak'] - r['rss_built']:.0f} |"
        )
    trace_ratio, rss_ratio = ten["trace"] / one["trace"], ten["rss_peak"] / one["rss_peak"]
    lines += [
        "",
        "| target | measured | holds |",
        "|---|---|---|",
        f"| trace time K=10 ≤ {TARGETS['memory']} × K=1 | {trace_ratio:.2f} | "
        f"{'yes' if trace_ratio <= TARGETS['memory'] else 'NO'} |",
        f"| peak RSS K=10 ≤ {TARGETS['memory']} × K=1 | {rss_ratio:.2f} | "
        f"{'yes' if rss_ratio <= TARGETS['memory'] else 'NO'} |",
        f"| graph nodes K=10 = K=1 | {ten['graph_nodes']} vs {one['graph_nodes']} | "
        f"{'yes' if ten['graph_nodes'] == one['graph_nodes'] else 'NO'} |",
    ]
    return results, "\n".join(lines) + "\n"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--groups", default=",".join(FULL), help=f"comma list of {sorted(GROUPS)} and memory")
    parser.add_argument("--warmup", type=int, default=2, help="rounds before timing; round 1 includes tracing")
    parser.add_argument("--steps", type=int, default=5, help="timed rounds (median reported)")
    parser.add_argument("--torch_threads", type=int, default=None, help="PyTorch threads (default: all cores)")
    parser.add_argument("--output", default=_report.BENCHMARKS_MD, help="markdown file whose sections are updated")
    parser.add_argument("--probe", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.probe:
        return probe(args.probe)
    names = [g.strip() for g in args.groups.split(",") if g.strip()]
    unknown = sorted(set(names) - set(GROUPS) - {"memory"})
    if unknown:
        parser.error(f"--groups: unknown {unknown}; choose from {sorted(GROUPS) + ['memory']}")
    if args.warmup < 1 or args.steps < 1:
        parser.error(f"--warmup and --steps must be >= 1, got {args.warmup} and {args.steps}")

    def worker_factory():
        import torch_reference

        return torch_reference.Worker(threads=args.torch_threads)

    results = {}
    for name in names:
        print(f"== {name}", file=sys.stderr, flush=True)
        if name == "memory":
            results[name], section = memory_group(args)
            heading = "## Step time: memory"
        else:
            group = GROUPS[name]
            load_before = os.getloadavg()[0]
            group, rows = run_group(group, args.warmup, args.steps, worker_factory)
            results[name] = derive(group, rows)
            load = (load_before, os.getloadavg()[0])
            section, heading = markdown(name, group, results[name], args, load), f"## Step time: {name}"
        print(section)
        if args.output:
            _report.update_section(args.output, heading, section)
    return results


if __name__ == "__main__":
    main()
