r"""AutoAttack wall time and robust accuracy, ours vs the reference (pyautoattack), side by side in one run.

    python benchmarks/autoattack_time.py --mlp                         # trains the main job's model; ~12 min
    python benchmarks/autoattack_time.py --workdir=runs/digits_sat     # a finished launch/train.py run instead
    python benchmarks/autoattack_time.py --quick --output=/tmp/B.md    # tiny settings: the CI smoke run

What is compared, on the same weights and the same points:
- the main job's model: digits_cnn SiLU, adversarially trained by `launch/train.py` (its defaults: PGD-2 at
  L-inf 32/255), on the 360 held-out digits, AutoAttack `standard` L-inf at eps = 32/255, batch 250;
- ours, twice: `sat_tf.evaluation.evaluate_points(..., [AutoAttackRows(eps)])` (what users and train.py run:
  every call traces its stages anew, and re-batches the points still robust between attacks like the
  reference), and the one-graph `tf.function(autoattack)` on all points in one batch (masking, not
  re-batching; its trace is timed apart, see below, and its calls are steady ones);
- the reference, `pyautoattack`'s `run_standard_evaluation` on benchmarks/torch_reference.py's port of the model
  (`DigitsCNN`, cross-checked by tests/test_torch_reference.py), in a worker process with `--torch_threads`
  threads (2: the machine's cores), so neither framework's thread pool competes with the other's and TensorFlow
  sits idle while PyTorch runs (and the reverse).

The three run in interleaved rounds (order reversed every other round, so drift hits them alike); medians are
reported. Per attack: robust accuracy after it (the reference's from its log lines, exact counts), seconds
(the evaluator's per-stage seconds, tracing included; the reference's from its log timestamps), and a
breakdown of ours into trace and run (each attack alone as a tf.function on the points it attacks). The final
per-point flags of each side are compared.

Trace times are "first call minus a steady call" measured on calls that attack no point (`active` all False:
every attack loop exits at once), so a trace of a second is not lost in the noise of a minute-long run; the
timed calls then reuse that graph (same input signature).

Per-iteration cost: `attacks.apgd` (CE, one restart) vs `attacks.pgd` (CE) on the same model and batch, K
steps, both as tf.functions; the model is robust on some of the points, so APGD's loop (which stops once every
point is broken) runs all K steps, which the table checks. One iteration = (time(K_hi) - time(K_lo)) /
(K_hi - K_lo), so the fixed costs (APGD's clean forward and start gradient) cancel. APGD's trace time for
each K in `--trace_ks`.

Optionally (`--mlp`) the same wall-time comparison on tests/aa_reference.py's adversarially trained MLP
(eps 0.1), a model so small that host and per-op overheads dominate.
"""

import argparse
import contextlib
import datetime
import functools
import importlib.util
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import types

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")
HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)

import _report  # noqa: E402

HEADING = "## AutoAttack: ours vs the reference"
MLP_EPS = 0.1  # the budget tests/aa_reference.py's MLP is trained and cross-checked at
BUSY_LOAD = 1.5  # mean 1-minute load per core above which the section warns (the benchmark alone is ~1)
TRACE_REPEATS = 3  # fresh traces of APGD per K
TARGETS = {"speedup": 2.0, "iteration": 1.05, "trace_flat": 1.10, "accuracy": 0.02}
# --quick: every attack of `standard`, each shrunk to seconds; the same settings go to the reference.
QUICK_OPTIONS = {
    "apgd-ce": {"steps": 5},
    "apgd-t": {"steps": 5, "n_target_classes": 2},
    "fab-t": {"steps": 5, "n_target_classes": 2},
    "square": {"queries": 20},
}
DEFAULTS = dict(points=None, rounds=3, iter_ks="10,100", trace_ks="10,100,1000", iter_rounds=10, options=None)
QUICK = dict(points=16, rounds=1, iter_ks="2,4", trace_ks="2,4", iter_rounds=2, options=json.dumps(QUICK_OPTIONS))
QUICK_TRAIN_FLAGS = (
    "--config.schedule.epochs=1",
    "--config.data.limit_train=128",
    "--config.data.limit_test=16",
    "--config.eval.steps=1",
)


# === Models and points ===


def train_model(workdir, quick):
    """Trains the main job's model with launch/train.py into `workdir` (its defaults: digits_cnn SiLU, PGD-2)."""
    cmd = [
        sys.executable,
        os.path.join(ROOT, "launch", "train.py"),
        f"--workdir={workdir}",
        "--config.eval.autoattack=none",
        "--config.export.enabled=false",
        *(QUICK_TRAIN_FLAGS if quick else ()),
    ]
    print(f"training: {' '.join(cmd[1:])}", file=sys.stderr, flush=True)
    done = subprocess.run(cmd, cwd=ROOT, stdout=sys.stderr, stderr=subprocess.STDOUT)
    if done.returncode:
        raise RuntimeError(f"launch/train.py failed with exit code {done.returncode}")


PORTS = {  # our model -> (the torch port's arch in torch_reference, its class name for the report)
    "digits_cnn": ("digits_cnn", "DigitsCNN"),
    "mnist_resnet": ("mnist_resnet", "MnistResNet"),
    "mnist_resnet_fast": ("mnist_resnet", "MnistResNet"),
}


def load_run_model(workdir, points):
    """The model of a launch/train.py run of a ported model (`PORTS`: the main job's digits_cnn or the
    Fashion-MNIST study's mnist_resnet_fast), the first `points` test images of the data set it trained on, and
    what the report says of them: namespace of model, x, y, description, arch and kwargs (the torch port's),
    data, heading."""
    sys.path.insert(0, ROOT)
    from launch import common

    model, config = common.restore_model(workdir)
    if config["model"] not in PORTS:
        raise ValueError(
            f"{workdir} trained {config['model']!r}; the torch ports are of {', '.join(sorted(PORTS))} only"
        )
    run = config["config"]
    dataset = run.data.name
    x, y = common.load_arrays(dataset, "test", data_dir=run.data.data_dir, limit=points)
    kwargs = {
        "activation": model.activation,
        "filters": list(model.filters),
        "num_classes": model.num_classes,
        "in_channels": model.image_shape[-1],
        "bn_epsilon": model.bn_epsilon,
        "preprocessing": _preprocessing_pair(model.preprocessing),
    }
    if config["model"] != "digits_cnn":
        kwargs.update(blocks=model.blocks, strides=list(model.strides), stem_stride=model.stem_stride)
    description = (
        f"{config['model']} {model.activation} trained by `launch/train.py` ({run.schedule.epochs} epochs, "
        f"{run.attack.name}-{run.attack.steps} at {run.attack.eps * 255:g}/255; `{workdir}`)"
    )
    arch, port = PORTS[config["model"]]
    return types.SimpleNamespace(
        model=model,
        x=x,
        y=y,
        description=description,
        arch=arch,
        kwargs=kwargs,
        data=f"{len(y)} {dataset} test images ({port} port)",
        heading=heading_for(config["model"], dataset),
    )


def heading_for(model_name, dataset):
    """The BENCHMARKS.md section: the main job's digits_cnn has `HEADING`; another model a section of its own."""
    return (
        HEADING if model_name == "digits_cnn" else f"## AutoAttack on {dataset}'s {model_name}: ours vs the reference"
    )


def _preprocessing_pair(spec):
    """The model's in-graph preprocessing as one scalar (mean, std), or None (what the torch port takes)."""
    from sat_tf.models import layers

    stats = layers.preprocessing_stats(spec)
    if stats is None:
        return None
    if isinstance(stats["mean"], list) or isinstance(stats["std"], list):
        raise ValueError(f"per-channel preprocessing {spec!r} is not ported (digits are one channel)")
    return [stats["mean"], stats["std"]]


def load_mlp(points):
    """tests/aa_reference.py's adversarially trained MLP (eps 0.1) and its 360 held-out digits."""
    sys.path.insert(0, os.path.join(ROOT, "tests"))
    import aa_reference

    model, _, (x, y) = aa_reference.trained_mlp(0)
    return model, x[:points], y[:points].astype("int32"), "tests/aa_reference.py `trained_mlp(0)` (64-32 ReLU)"


# === Our side ===


class Ours:
    """Our two ways of running AutoAttack on one model and set of points."""

    def __init__(self, model, x, y, *, eps, batch_size, seed, options):
        import tensorflow as tf

        from sat_tf import attacks

        self.x, self.y = x, y
        self.logits_fn = lambda z: model(z, training=False)
        self.rows = attacks.AutoAttackRows(eps=eps, options=options)
        self.specs = self.rows.specs()
        self.eps, self.batch_size, self.seed = eps, batch_size, seed
        # The evaluator's draws for its only row: seed [seed, row index 0]; point ids = positions. The one
        # graph on the whole set with the same seed makes the same draws, so both give the same flags.
        stage_seed = tf.constant([seed, 0], tf.int64)
        # `active` is an input so the trace can be timed on a call that attacks nothing (see `trace_time`).
        self._graph = tf.function(
            lambda a, b, act: (
                attacks.autoattack(self.logits_fn, a, b, eps=eps, seed=stage_seed, options=options, active=act).robust
            )
        )
        self._x, self._y = tf.constant(x), tf.constant(y)
        self._all, self._none = tf.ones(len(y), tf.bool), tf.zeros(len(y), tf.bool)

    def evaluator(self):
        """One `evaluate_points` call: (seconds, {"clean"/attack: accuracy}, {attack: seconds}, final flags)."""
        from sat_tf import evaluation

        start = time.perf_counter()
        out = evaluation.evaluate_points(
            self.logits_fn, self.x, self.y, [self.rows], batch_size=self.batch_size, seed=self.seed
        )
        seconds = time.perf_counter() - start
        names = [spec.name for spec in self.specs]
        rows = out["rows"]
        accuracy = {"clean": rows["clean"]["top1"], **{n: rows[f"autoattack/{n}"]["top1"] for n in names}}
        stage_seconds = {"clean": rows["clean"]["seconds"], **{n: rows[f"autoattack/{n}"]["seconds"] for n in names}}
        flags = {"clean": out["flags"]["clean"], **{n: out["flags"][f"autoattack/{n}"] for n in names}}
        return dict(seconds=seconds, accuracy=accuracy, attack_seconds=stage_seconds, flags=flags)

    def graph_trace(self):
        """Seconds to trace (and optimise) the one graph: `trace_time` on a call attacking no point."""
        return trace_time(self._graph, self._x, self._y, self._none)

    def graph(self):
        """One call of the one-graph `tf.function(autoattack)` on every point: (seconds, accuracy, flags)."""
        start = time.perf_counter()
        robust = {name: np.asarray(flags) for name, flags in self._graph(self._x, self._y, self._all).items()}
        seconds = time.perf_counter() - start
        return dict(seconds=seconds, accuracy={k: float(v.mean()) for k, v in robust.items()}, flags=robust)

    def _stage(self, spec, seed):
        def run(x, y, point_ids, active):
            return spec.run(
                self.logits_fn, x, y, eps=self.eps, norm="linf", seed=seed, point_ids=point_ids, active=active
            )[0]

        return run

    def breakdown(self, flags):
        """Each attack alone as a tf.function on the points it attacked in the evaluator (robust before it), in
        one batch: `{attack: {"points", "trace", "run"}}` (`trace_time`, then one call attacking them)."""
        import tensorflow as tf

        out = {}
        before = flags["clean"]
        stage_seed = tf.constant([self.seed, 0], tf.int64)
        for spec in self.specs:
            ids = np.flatnonzero(before)
            before = flags[spec.name]
            if len(ids) == 0:
                out[spec.name] = dict(points=0, trace=0.0, run=0.0)
                continue
            fn = tf.function(self._stage(spec, stage_seed))
            args = (tf.constant(self.x[ids]), tf.constant(self.y[ids]), tf.constant(ids.astype(np.int32)))
            trace, _ = trace_time(fn, *args, tf.zeros(len(ids), tf.bool))
            start = time.perf_counter()
            fn(*args, tf.ones(len(ids), tf.bool)).numpy()
            out[spec.name] = dict(points=len(ids), trace=trace, run=time.perf_counter() - start)
        return out


# === The reference side (a worker process) ===


class Reference:
    """pyautoattack on the torch port, in a torch_reference worker process."""

    def __init__(self, worker, model, x, y, *, arch, arch_kwargs, eps, batch_size, seed, options, tmp):
        import torch_reference

        # The worker reads the weights and the points (NCHW, the reference's layout) from files.
        weights_path, points_path = os.path.join(tmp, f"{arch}_weights.npz"), os.path.join(tmp, f"{arch}_points.npz")
        torch_reference.save_layer_weights(weights_path, torch_reference.keras_layer_weights(model))
        np.savez(points_path, x=np.ascontiguousarray(x.transpose(0, 3, 1, 2)), y=y.astype(np.int64))
        self.worker = worker
        self.request = dict(
            op="autoattack",
            arch=arch,
            arch_kwargs=arch_kwargs,
            weights=weights_path,
            points=points_path,
            eps=eps,
            version="standard",
            seed=seed,
            batch_size=batch_size,
            options=options,
        )

    def run(self):
        reply = self.worker.request(**self.request)
        return dict(
            seconds=reply["seconds"],
            accuracy=reply["accuracy"],
            attack_seconds=reply["attack_seconds"],
            flags={"final": np.asarray(reply["robust"], bool)},
        )


def reference_available():
    return all(importlib.util.find_spec(name) is not None for name in ("torch", "pyautoattack"))


# === Timing ===


def trace_time(fn, *args, repeats=3):
    """(trace seconds, first-call seconds) of a fresh tf.function `fn` called on `args` that attack no point
    (`active` all False: every attack loop exits at once): its first call minus the median of `repeats` later
    calls. Timing the trace on such calls keeps it apart from the noise of a long attack run; the graph is the
    one the real calls then reuse (same input signature)."""
    import tensorflow as tf

    times = []
    for _ in range(1 + repeats):
        start = time.perf_counter()
        tf.nest.map_structure(lambda t: t.numpy(), fn(*args))  # wait for every output
        times.append(time.perf_counter() - start)
    return times[0] - statistics.median(times[1:]), times[0]


def interleaved(cases, rounds, label):
    """Runs `cases` ({name: fn() -> dict with "seconds"}) in `rounds` rounds, the order reversed every other
    round; returns {name: [result per round]}."""
    results = {name: [] for name in cases}
    names = list(cases)
    for round_ in range(rounds):
        for name in names if round_ % 2 == 0 else names[::-1]:
            result = cases[name]()
            results[name].append(result)
            print(f"  [{label} {round_ + 1}/{rounds}] {name}: {result['seconds']:.2f} s", file=sys.stderr, flush=True)
    return results


def summary(results):
    """Median, min, max seconds over rounds, and the last round's result (accuracy and flags are the same in
    every round: every side is seeded)."""
    seconds = [r["seconds"] for r in results]
    return dict(
        median=statistics.median(seconds),
        low=min(seconds),
        high=max(seconds),
        runs=len(seconds),
        last=results[-1],
        attack_seconds=_median_per_key([r.get("attack_seconds") for r in results]),
    )


def _median_per_key(dicts):
    if not dicts or dicts[0] is None:
        return None
    return {key: statistics.median(d[key] for d in dicts) for key in dicts[0]}


def compare_sides(model, x, y, *, eps, options, batch_size, seed, rounds, reference, breakdown, label):
    """Ours (evaluator, one graph) and, given, the reference (`reference(model, x, y, eps) -> Reference`) on one
    model: timings, accuracies, agreements and (`breakdown`) our per-attack trace/run split."""
    ours = Ours(model, x, y, eps=eps, batch_size=batch_size, seed=seed, options=options)
    trace, first = ours.graph_trace()
    print(
        f"  [{label}] one graph: trace {trace:.2f} s (first call on no points {first:.2f} s)",
        file=sys.stderr,
        flush=True,
    )
    cases = {"evaluator": ours.evaluator, "graph": ours.graph}
    if reference is not None:
        cases = {"reference": reference(model, x, y, eps).run, **cases}
    out = {name: summary(results) for name, results in interleaved(cases, rounds, label).items()}
    out["graph_trace"] = trace
    out["attacks"] = [spec.name for spec in ours.specs]
    final = {name: out[name]["last"]["flags"][out["attacks"][-1]] for name in ("evaluator", "graph")}
    out["evaluator_vs_graph"] = float(np.mean(final["evaluator"] == final["graph"]))
    if "reference" in out:
        theirs = out["reference"]["last"]["flags"]["final"]
        out["agreement"] = {name: float(np.mean(flags == theirs)) for name, flags in final.items()}
    if breakdown:
        out["breakdown"] = ours.breakdown(out["evaluator"]["last"]["flags"])
    return out


def iteration_costs(model, x, y, *, eps, iter_ks, trace_ks, rounds):
    """PGD vs APGD (CE) seconds per call at each K of `iter_ks` (a warm-up round, then `rounds` interleaved
    rounds), and APGD's trace time at each K of `trace_ks` (median of `TRACE_REPEATS` fresh traces): `{"cases":
    {(attack, K): summary}, "traces": {K: {"trace", "low", "high"}}, "never_broken": points APGD left unbroken at
    the largest K (> 0: it ran all K steps)}`."""
    import tensorflow as tf

    from sat_tf import attacks

    logits_fn = lambda z: model(z, training=False)  # noqa: E731
    x_t, y_t = tf.constant(x), tf.constant(y)
    everyone, no_one = tf.ones(len(y), tf.bool), tf.zeros(len(y), tf.bool)
    apgd = {
        k: tf.function(
            lambda a, b, act, k=k: attacks.apgd(logits_fn, a, b, eps=eps, loss="ce", steps=k, seed=0, active=act)
        )
        for k in sorted(set(iter_ks) | set(trace_ks))
    }
    traces = {k: [] for k in trace_ks}
    for round_ in range(TRACE_REPEATS):  # fresh functions, K interleaved: one trace is a single noisy sample
        for k in trace_ks:
            fresh = apgd[k] if round_ == 0 else tf.function(apgd[k].python_function)
            traces[k].append(trace_time(fresh, x_t, y_t, no_one)[0])
            print(
                f"  [trace {round_ + 1}/{TRACE_REPEATS}] apgd K={k}: {traces[k][-1]:.2f} s", file=sys.stderr, flush=True
            )
    traces = {k: dict(trace=statistics.median(t), low=min(t), high=max(t)) for k, t in traces.items()}
    fns = {("apgd", k): functools.partial(apgd[k], x_t, y_t, everyone) for k in iter_ks}
    for k in iter_ks:
        pgd = tf.function(lambda a, b, k=k: attacks.pgd(logits_fn, a, b, eps=eps, step_size=eps / 4, steps=k, seed=0))
        fns[("pgd", k)] = functools.partial(pgd, x_t, y_t)

    def timed(fn):
        def run():
            start = time.perf_counter()
            fn().numpy()
            return {"seconds": time.perf_counter() - start}

        return run

    runs = interleaved({f"{a} K={k}": timed(fn) for (a, k), fn in fns.items()}, 1 + rounds, "iteration")
    cases = {key: summary(results[1:]) for key, results in zip(fns, runs.values())}  # round 1: warm-up (traces)
    x_adv = fns[("apgd", max(iter_ks))]()
    pred = np.argmax(model(x_adv, training=False).numpy(), -1)
    clean = np.argmax(model(x_t, training=False).numpy(), -1)
    return {"cases": cases, "traces": traces, "never_broken": int(np.sum((pred == y) & (clean == y)))}


def derive_iteration(costs, iter_ks):
    """Seconds per iteration of each attack (slope between the smallest and largest K) and APGD / PGD."""
    lo, hi = min(iter_ks), max(iter_ks)
    per = {}
    for attack in ("pgd", "apgd"):
        cases = costs["cases"]
        per[attack] = (cases[(attack, hi)]["median"] - cases[(attack, lo)]["median"]) / (hi - lo)
    per["ratio"] = per["apgd"] / per["pgd"] if per["pgd"] > 0 else float("inf")
    # The same from the fastest calls: on a VM whose speed drifts, the least disturbed estimate of the cost.
    fastest = {
        a: (costs["cases"][(a, hi)]["low"] - costs["cases"][(a, lo)]["low"]) / (hi - lo) for a in ("pgd", "apgd")
    }
    per["ratio_fastest"] = fastest["apgd"] / fastest["pgd"] if fastest["pgd"] > 0 else float("inf")
    per["ratio_at_hi"] = costs["cases"][("apgd", hi)]["median"] / costs["cases"][("pgd", hi)]["median"]
    return per


class LoadSampler:
    """The 1-minute load average, sampled every `period` seconds in a thread while the benchmark runs."""

    def __init__(self, period=10.0):
        self.samples = [os.getloadavg()[0]]
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(period,), daemon=True)

    def _run(self, period):
        while not self._stop.wait(period):
            self.samples.append(os.getloadavg()[0])

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc_info):
        self._stop.set()
        self._thread.join()
        self.samples.append(os.getloadavg()[0])

    def describe(self):
        s = self.samples
        return f"{min(s):.2f}–{max(s):.2f} (mean {statistics.mean(s):.2f}, {len(s)} samples)"


# === Report ===


def verdicts(main, per_iteration, costs, trace_ks):
    """(target, measured, holds) lines against the goals."""
    out = []
    if "reference" in main:
        last = main["attacks"][-1]
        ref_acc = main["reference"]["last"]["accuracy"][last]
        for name, label in (("evaluator", "evaluate_points"), ("graph", "tf.function(autoattack), steady")):
            speedup = main["reference"]["median"] / main[name]["median"]
            acc = main[name]["last"]["accuracy"][last]
            same = abs(acc - ref_acc) <= TARGETS["accuracy"]
            out.append(
                (
                    f"ours ({label}) ≥ {TARGETS['speedup']:g}× faster than the reference at equal robust "
                    "accuracy "
                    f"(within {100 * TARGETS['accuracy']:g} points)",
                    f"{speedup:.2f}×; robust accuracy {100 * acc:.2f} vs {100 * ref_acc:.2f} %",
                    speedup >= TARGETS["speedup"] and same,
                )
            )
    if per_iteration is not None:
        out.append(
            (
                f"one APGD iteration ≤ {TARGETS['iteration']} × one PGD iteration (CE, same model and batch)",
                f"{per_iteration['ratio']:.3f} (whole calls: {per_iteration['ratio_at_hi']:.3f})",
                per_iteration["ratio"] <= TARGETS["iteration"],
            )
        )
        # Flat = no growth with K (a graph loop, not K unrolled steps): the largest K against the smallest.
        traces = [costs["traces"][k]["trace"] for k in trace_ks]
        growth = traces[-1] / traces[0] if traces[0] > 0 else float("inf")
        out.append(
            (
                f"APGD trace time flat in K: K = {trace_ks[-1]} ≤ {TARGETS['trace_flat']} × K = {trace_ks[0]} "
                f"(K = {', '.join(map(str, trace_ks))})",
                " / ".join(f"{t:.2f}" for t in traces) + f" s ({growth:.2f})",
                growth <= TARGETS["trace_flat"],
            )
        )
    return out


def _pct(value):
    return "–" if value is None else f"{100 * value:.2f}"


def wall_table(main):
    last = main["attacks"][-1]
    lines = [
        "| run | seconds (median) | min–max | runs | reference / ours | robust accuracy (%) | "
        "same final flags as the reference |",
        "|---|---|---|---|---|---|---|",
    ]
    ref = main.get("reference")
    labels = (
        ("reference", "reference (pyautoattack, PyTorch worker)"),
        ("evaluator", "ours: `evaluate_points` + `AutoAttackRows`"),
        ("graph", "ours: `tf.function(autoattack)`, steady call"),
    )
    for name, label in labels:
        if name not in main:
            continue
        r = main[name]
        ratio = f"{ref['median'] / r['median']:.2f}" if ref and name != "reference" else "–"
        same = f"{100 * main['agreement'][name]:.2f} %" if ref and name != "reference" else "–"
        lines.append(
            f"| {label} | {_seconds(r['median'])} | {_seconds(r['low'])}–{_seconds(r['high'])} | "
            f"{r['runs']} | {ratio} | "
            f"{_pct(r['last']['accuracy'][last])} | {same} |"
        )
    first = main["graph_trace"] + main["graph"]["median"]
    ratio = f"{ref['median'] / first:.2f}" if ref else "–"
    lines.append(
        f"| ours: `tf.function(autoattack)`, first call = trace ({_seconds(main['graph_trace'])} s) + "
        f"steady call | {_seconds(first)} | – | – | {ratio} | "
        f"{_pct(main['graph']['last']['accuracy'][last])} | – |"
    )
    return lines


def accuracy_table(main):
    names = ["clean", *main["attacks"]]
    lines = ["| run | " + " | ".join(names) + " |", "|---" * (len(names) + 1) + "|"]
    for name, label in (("reference", "reference"), ("evaluator", "ours, evaluator"), ("graph", "ours, one graph")):
        if name in main:
            acc = main[name]["last"]["accuracy"]
            lines.append(f"| {label} | " + " | ".join(_pct(acc.get(n)) for n in names) + " |")
    return lines


def _seconds(value):
    """Seconds with two decimals below 10 s, one above."""
    if value is None:
        return "–"
    return f"{value:.2f}" if abs(value) < 10 else f"{value:.1f}"


def attack_table(main):
    """Per-attack seconds: the reference's, the evaluator's (trace included), and ours split by the breakdown."""
    breakdown = main.get("breakdown", {})
    ref = main["reference"]["attack_seconds"] if "reference" in main else {}
    ours = main["evaluator"]["attack_seconds"]
    lines = [
        "| attack | points attacked (ours) | reference s | ours: evaluator s | reference / evaluator | "
        "ours alone: trace s | ours alone: run s |",
        "|---|---|---|---|---|---|---|",
    ]
    for name in ["clean", *main["attacks"]]:
        b = breakdown.get(name, {})
        r = ref.get(name)
        ratio = f"{r / ours[name]:.2f}" if r is not None and ours[name] > 0 else "–"
        lines.append(
            f"| {name} | {b.get('points', '–')} | {_seconds(r)} | {_seconds(ours[name])} | {ratio} | "
            f"{_seconds(b.get('trace'))} | {_seconds(b.get('run'))} |"
        )
    total_ref = sum(ref.values()) if ref else None
    total_b = {key: sum(v[key] for v in breakdown.values()) for key in ("trace", "run")} if breakdown else {}
    lines.append(
        f"| all | – | {_seconds(total_ref)} | {_seconds(sum(ours.values()))} | "
        f"{f'{total_ref / sum(ours.values()):.2f}' if total_ref else '–'} | "
        f"{_seconds(total_b.get('trace'))} | {_seconds(total_b.get('run'))} |"
    )
    return lines


def time_shares(main):
    """Sentences: each side's largest attack share, and what tracing costs us."""
    parts = []
    for name, label in (("reference", "The reference"), ("evaluator", "our evaluator")):
        if name in main:
            seconds = main[name]["attack_seconds"]
            top = max(seconds, key=seconds.get)
            parts.append(f"{label} spends {100 * seconds[top] / max(sum(seconds.values()), 1e-9):.0f} % in {top}")
    text = "; ".join(parts) + (
        f". Tracing the one graph takes {_seconds(main['graph_trace'])} s, once per process and input shape."
    )
    breakdown = main.get("breakdown")
    if breakdown:
        traces = sum(b["trace"] for b in breakdown.values())
        text += (
            f" Traced alone, the attacks take {_seconds(traces)} s in all; the evaluator pays that on every "
            "call, once per stage and chunk shape."
        )
    return text


def iteration_table(costs, per_iteration, iter_ks):
    lines = ["| attack | K | s/call (median) | min–max |", "|---|---|---|---|"]
    for (attack, k), r in sorted(costs["cases"].items()):
        lines.append(f"| {attack} | {k} | {r['median']:.3f} | {r['low']:.3f}–{r['high']:.3f} |")
    lo, hi = min(iter_ks), max(iter_ks)
    lines += [
        "",
        f"One iteration = (s/call at K = {hi} − at K = {lo}) / {hi - lo}: PGD "
        f"{1000 * per_iteration['pgd']:.2f} ms, APGD {1000 * per_iteration['apgd']:.2f} ms, APGD / PGD "
        f"{per_iteration['ratio']:.3f} (whole calls at K = {hi}: {per_iteration['ratio_at_hi']:.3f}; from the "
        f"fastest calls instead of the medians: {per_iteration['ratio_fastest']:.3f}). "
        + (
            f"APGD at K = {hi} left {costs['never_broken']} points unbroken, so its loop ran all K steps."
            if costs["never_broken"]
            else f"APGD at K = {hi} broke every point, so its loop may have stopped early: use a smaller --eps."
        ),
        "",
        f"APGD's trace (first call − median of 3 later calls, on calls attacking no point; median of "
        f"{TRACE_REPEATS} fresh traces):",
        "",
        "| K | trace (s) | min–max |",
        "|---|---|---|",
    ]
    lines += [
        f"| {k} | {t['trace']:.2f} | {t['low']:.2f}–{t['high']:.2f} |" for k, t in sorted(costs["traces"].items())
    ]
    return lines


def contention_warning(load):
    """A warning line when other processes shared the CPU: the reference's OpenMP threads slow down far more than
    TensorFlow when a core is taken away (a run at mean load 4.6 on 2 cores timed the reference at 451–742 s, a quiet
    one at 34–43 s, while ours went from 69 to 42 s), so such a run says nothing about the ratio."""
    cores = os.cpu_count() or 1
    if statistics.mean(load.samples) <= BUSY_LOAD * cores:
        return []
    return [
        f"**Warning: the machine was busy (mean load {statistics.mean(load.samples):.1f} on {cores} cores, this "
        "benchmark itself accounting for about one per core). Contention slows the reference's OpenMP threads far "
        "more than ours: rerun on a quiet machine before reading the ratios.**",
        "",
    ]


def markdown(results, args, command, machine, load):
    """The BENCHMARKS.md section (`load`: the run's `LoadSampler`)."""
    main, setup = results["digits"], results["setup"]
    lines = [
        f"{setup.get('heading', HEADING)} ({datetime.date.today().isoformat()})",
        "",
        f"{machine}. 1-minute load average during the run: {load.describe()}.",
        "",
        *contention_warning(load),
        "```bash",
        command,
        "```",
        "",
        f"**Setup.** {setup['model']}; {setup['data']}, clean accuracy "
        f"{_pct(main['evaluator']['last']['accuracy']['clean'])} %; AutoAttack `standard`, L-inf eps = "
        f"{setup['eps_255']:g}/255, batch {args.batch_size}, seed {args.seed}"
        + (f", options `{json.dumps(setup['options'])}`" if setup["options"] else "")
        + ". "
        + (
            f"The reference is pyautoattack {setup['reference_version']} on the PyTorch port "
            f"(benchmarks/torch_reference.py, same weights) in a worker process with "
            f"{args.torch_threads} torch threads."
            if "reference" in main
            else "The reference did not run (`pip install -e '.[crosscheck]'` for torch and pyautoattack)."
        )
        + f" Medians of {args.rounds} interleaved round(s).",
        "",
        "### Wall time, whole AutoAttack",
        "",
        *wall_table(main),
        "",
        "### Robust accuracy (%) after each attack",
        "",
        *accuracy_table(main),
        "",
        f"The evaluator and the one graph make the same draws: same final flags on "
        f"{100 * main['evaluator_vs_graph']:.2f} % of the points.",
        "",
        "### Seconds per attack",
        "",
        "The evaluator's stage seconds include tracing (each call of `evaluate_points` traces every stage, once per "
        'chunk shape); "ours alone" runs each attack by itself as a tf.function on the points it attacked, in '
        "one batch: trace = first call − median of 3 later calls, all attacking no point (`active` all false, so "
        "the attack loops exit at once and the difference is tracing and graph optimisation, not run-time noise); "
        "run = one call on the points. The reference's are the gaps between its log lines (clean = its model "
        "checks and clean pass).",
        "",
        *attack_table(main),
        "",
        time_shares(main),
        "",
    ]
    if results.get("iteration"):
        it = results["iteration"]
        lines += [
            f"### Per iteration: APGD vs PGD (CE, {it['batch']} points, same model)",
            "",
            *iteration_table(it["costs"], it["per_iteration"], it["iter_ks"]),
            "",
        ]
    if results.get("mlp"):
        mlp = results["mlp"]
        lines += [
            f"### Second model: {results['mlp_model']}, eps = {MLP_EPS:g}",
            "",
            *wall_table(mlp),
            "",
            *accuracy_table(mlp),
            "",
        ]
    checks = verdicts(
        main,
        results.get("iteration", {}).get("per_iteration"),
        results.get("iteration", {}).get("costs"),
        results.get("iteration", {}).get("trace_ks"),
    )
    if checks:
        lines += ["### Against the goals", "", "| target | measured | holds |", "|---|---|---|"]
        lines += [f"| {t} | {m} | {'yes' if ok else 'NO'} |" for t, m, ok in checks]
    return "\n".join(lines) + "\n"


def machine_line():
    import keras
    import tensorflow as tf

    cpu, cores = _report.machine()
    line = f"{cpu}, {cores} cores, TensorFlow {tf.__version__}, Keras {keras.__version__}"
    for package, name in (("torch", "PyTorch"), ("pyautoattack", "pyautoattack")):
        with contextlib.suppress(Exception):  # the [crosscheck] extra is optional
            from importlib.metadata import version

            line += f", {name} {version(package)}"
    return line


# === Driver ===


def parse_args(argv):
    """The flags; `--quick` changes the defaults of the `DEFAULTS` flags (flags given explicitly win)."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    later = argparse.SUPPRESS  # absent unless given: filled from DEFAULTS or QUICK below

    def default(key):
        return f"(default {DEFAULTS[key]}; --quick: {QUICK[key]})"

    parser.add_argument(
        "--workdir",
        default=None,
        help="a launch/train.py run of digits_cnn or mnist_resnet(_fast) (default: train the main job's digits_cnn)",
    )
    parser.add_argument(
        "--points", type=int, default=later, help="first N test images (default: all 360 digits; --quick: 16)"
    )
    parser.add_argument("--eps", type=float, default=32.0, help="L-inf budget on the 0-255 scale (the main job's)")
    parser.add_argument("--batch_size", type=int, default=250, help="AutoAttack batch (the reference's default)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--options",
        default=later,
        help='per-attack settings for both sides as JSON, e.g. \'{"square": {"queries": 100}}\' '
        "(default: none, the version's settings; --quick: every attack shrunk)",
    )
    parser.add_argument(
        "--rounds",
        type=int,
        default=later,
        help=f"interleaved rounds of reference / evaluator / one graph {default('rounds')}",
    )
    parser.add_argument("--iter_ks", default=later, help=f"K_lo,K_hi of APGD vs PGD {default('iter_ks')}")
    parser.add_argument("--trace_ks", default=later, help=f"K values of APGD's trace time {default('trace_ks')}")
    parser.add_argument(
        "--iter_rounds",
        type=int,
        default=later,
        help=f"steady rounds of the per-iteration cases {default('iter_rounds')}",
    )
    parser.add_argument("--no_iteration", action="store_true", help="skip the per-iteration and trace part")
    parser.add_argument("--no_breakdown", action="store_true", help="skip the per-attack trace/run breakdown")
    parser.add_argument("--mlp", action="store_true", help="also compare on tests/aa_reference.py's MLP")
    parser.add_argument("--torch_threads", type=int, default=2, help="threads of the reference's worker")
    parser.add_argument(
        "--quick",
        action="store_true",
        help="smoke settings (see the defaults above) and a one-epoch training run (unless --workdir)",
    )
    parser.add_argument("--output", default=_report.BENCHMARKS_MD, help="markdown file whose section is updated")
    args = parser.parse_args(argv)
    for key, value in (QUICK if args.quick else DEFAULTS).items():
        if not hasattr(args, key):
            setattr(args, key, value)
    try:
        args.iter_ks = sorted({int(k) for k in args.iter_ks.split(",")})
        args.trace_ks = sorted({int(k) for k in args.trace_ks.split(",")})
    except ValueError:
        parser.error(f"--iter_ks and --trace_ks take comma-separated ints, got {args.iter_ks!r}, {args.trace_ks!r}")
    if len(args.iter_ks) != 2 or min(args.iter_ks + args.trace_ks) < 1:
        parser.error(f"--iter_ks needs two different K >= 1 and --trace_ks K >= 1, got {args.iter_ks}, {args.trace_ks}")
    counts = dict(
        rounds=args.rounds,
        iter_rounds=args.iter_rounds,
        batch_size=args.batch_size,
        torch_threads=args.torch_threads,
        points=args.points or 1,
    )
    if min(counts.values()) < 1:
        parser.error(f"--{', --'.join(counts)} must be >= 1, got {counts}")
    try:
        args.options = json.loads(args.options) if args.options else None
        from sat_tf import attacks

        attacks.AutoAttackRows(eps=args.eps / 255, options=args.options)  # validates the options now
    except ValueError as err:
        parser.error(f"--options: {err}")
    return args


def command_line(argv):
    return "python benchmarks/autoattack_time.py" + "".join(f" {a}" for a in argv if not a.startswith("--output"))


def run(args, tmp):
    """Every measurement; returns the results dict `markdown` reads."""
    from importlib.metadata import version

    workdir = args.workdir
    if workdir is None:
        workdir = os.path.join(tmp, "train")
        train_model(workdir, args.quick)
    run_model = load_run_model(workdir, args.points)
    model, x, y, arch, arch_kwargs = run_model.model, run_model.x, run_model.y, run_model.arch, run_model.kwargs
    eps = args.eps / 255
    worker = None
    if reference_available():
        import torch_reference

        worker = torch_reference.Worker(threads=args.torch_threads)
    else:
        print("torch or pyautoattack is not installed: timing ours only", file=sys.stderr, flush=True)

    def reference_for(arch, kwargs):
        if worker is None:
            return None
        return lambda m, a, b, e: Reference(
            worker,
            m,
            a,
            b,
            arch=arch,
            arch_kwargs=kwargs,
            eps=e,
            batch_size=args.batch_size,
            seed=args.seed,
            options=args.options,
            tmp=tmp,
        )

    common = dict(options=args.options, batch_size=args.batch_size, seed=args.seed)
    results = {
        "setup": {
            "model": run_model.description,
            "data": run_model.data,
            "heading": run_model.heading,
            "points": len(y),
            "eps_255": args.eps,
            "options": args.options,
            "reference_version": version("pyautoattack") if worker else None,
        }
    }
    try:
        print(f"== {arch}: ours vs the reference", file=sys.stderr, flush=True)
        results["digits"] = compare_sides(
            model,
            x,
            y,
            eps=eps,
            rounds=args.rounds,
            label=arch,
            reference=reference_for(arch, arch_kwargs),
            breakdown=not args.no_breakdown,
            **common,
        )
        if not args.no_iteration:
            print("== per iteration: APGD vs PGD", file=sys.stderr, flush=True)
            batch = min(args.batch_size, len(y))
            costs = iteration_costs(
                model,
                x[:batch],
                y[:batch],
                eps=eps,
                iter_ks=args.iter_ks,
                trace_ks=args.trace_ks,
                rounds=args.iter_rounds,
            )
            results["iteration"] = dict(
                costs=costs,
                per_iteration=derive_iteration(costs, args.iter_ks),
                iter_ks=args.iter_ks,
                trace_ks=args.trace_ks,
                batch=batch,
            )
        if args.mlp:
            print("== MLP: ours vs the reference", file=sys.stderr, flush=True)
            mlp, mx, my, results["mlp_model"] = load_mlp(len(y))
            results["mlp"] = compare_sides(
                mlp,
                mx,
                my,
                eps=MLP_EPS,
                rounds=args.rounds,
                label="mlp",
                reference=reference_for("mlp", {"activation": "relu"}),
                breakdown=False,
                **common,
            )
    finally:
        if worker is not None:
            worker.close()
    return results


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="autoattack_time_") as tmp, LoadSampler() as load:
        results = run(args, tmp)
    section = markdown(results, args, command_line(argv), machine_line(), load)
    print(section)
    if args.output:
        _report.update_section(args.output, results["setup"]["heading"], section)
    results["section"] = section
    return results


if __name__ == "__main__":
    main()
