r"""FAB's L-inf projection: Newton's method (ours now) against the sort-and-bisect version, side by side in one run.

    python benchmarks/fab_projection.py --workdir=runs/fmnist_study/activations/relu/seed3   # ~10 min
    python benchmarks/fab_projection.py --quick --output=/tmp/B.md                             # smoke run

FAB projects two points per image onto a linearised decision boundary in every iteration, so AutoAttack's FAB-T
(9 targets x 100 iterations) makes 900 projections of `2 x batch` rows of `D` coordinates. `attacks.fab`'s
`project_linf` computed the reference's bisection on sorted distances until 2026-12-05 (kept below as
`sorted_project_linf`, the code of commit eeba66c); it now runs Newton's method on the same one-dimensional
equation, no sort. This script measures both, in interleaved rounds:

1. the projection alone on `--rows` random rows (tests/test_fab.py's generator: faces, zeros, every case) at
   `--dims` coordinates: seconds per call (median), Newton's steps, and the largest difference between the two
   (and to the reference `pyautoattack.fab_projections.projection_linf`, if installed);
2. with `--workdir` (a finished launch/train.py run on `--dataset`, e.g. a Fashion-MNIST study run): FAB-T as AutoAttack
   `standard` runs it (9 targets, 100 steps, L-inf `--eps`) on the first `--images` test images the model
   classifies correctly, as a `tf.function`, once with each projection: seconds and the points broken.
"""

import argparse
import datetime
import importlib
import os
import statistics
import sys
import time

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)

import _report  # noqa: E402

HEADING = "## FAB-T: the L-inf projection without a sort"


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__)
    parser.add_argument("--workdir", default="", help="a finished Fashion-MNIST launch/train.py run (its model.keras)")
    parser.add_argument("--dataset", default="fashion_mnist", help="the run's data set (registered in sat_tf.data)")
    parser.add_argument("--images", type=int, default=500, help="test images for the whole-attack timing")
    parser.add_argument("--eps", type=float, default=0.1, help="FAB-T's L-inf budget")
    parser.add_argument("--steps", type=int, default=100, help="FAB-T iterations per target")
    parser.add_argument("--rows", type=int, default=2000, help="rows per projection call (2 x the batch)")
    parser.add_argument("--dims", default="784,3072", help="coordinates per row (Fashion-MNIST, CIFAR-10)")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved timing rounds")
    parser.add_argument("--quick", action="store_true", help="tiny settings: the CI smoke run")
    parser.add_argument("--output", default=_report.BENCHMARKS_MD, help="markdown file to update")
    args = parser.parse_args(argv)
    if args.quick:
        args.rows, args.dims, args.rounds, args.images, args.steps = 64, "64", 2, 16, 3
    for name in ("images", "steps", "rows", "rounds"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be >= 1, got {getattr(args, name)}")
    if args.workdir and not os.path.exists(os.path.join(args.workdir, "model.keras")):
        parser.error(f"--workdir={args.workdir} has no model.keras: give a finished launch/train.py run")
    return args


def sorted_project_linf(points, w, b):
    """`attacks.fab.project_linf` up to commit eeba66c: the reference's sort of the distances to the faces and
    bisection on how many saturate."""
    import tensorflow as tf

    fab = importlib.import_module("sat_tf.attacks.fab")
    t, w, b = fab._as_rows(points, w, b)
    sign = tf.where(tf.reduce_sum(w * t, 1) - b >= 0, 1.0, -1.0)
    w, b = w * sign[:, None], b * sign
    moves = tf.not_equal(w, 0.0)
    a = tf.cast(w < 0, tf.float32)
    d = tf.where(moves, a - t, 0.0)
    p = a - t * (2.0 * a - 1.0)
    order = tf.argsort(p, axis=1, direction="DESCENDING")
    w_sorted = tf.gather(w, order, batch_dims=1)
    p_sorted = tf.gather(p, order, batch_dims=1)
    wd_sorted = tf.gather(w * d, order, batch_dims=1)
    b = b - tf.reduce_sum(w * t, 1)
    b0 = tf.reduce_sum(w * d, 1)
    s = fab._cumsum(tf.abs(w_sorted))
    sb = fab._cumsum(-wd_sorted) + b0[:, None]

    def reached(k):
        k = k[:, None]
        return b - (fab._take(sb, k) - fab._take(s, k) * fab._take(p_sorted, k)) > 0

    num = int(w.shape[1])
    no_saturation = b - (sb[:, -1] - s[:, -1] * p_sorted[:, -1]) > 0
    feasible = tf.logical_and(b - b0 > 0, tf.logical_not(no_saturation))
    k = fab._bisect(reached, tf.shape(b), low=0, high=num - 1, steps=fab._bisection_steps(num))
    lam = tf.maximum((b - fab._take(sb, k[:, None])) / -fab._take(s, k[:, None]), 0.0)[:, None]
    d_feasible = tf.minimum(lam, d) * a + tf.maximum(-lam, d) * (1.0 - a)
    lam_free = tf.maximum((b - sb[:, -1]) / -s[:, -1], 0.0)[:, None]
    d_free = (2.0 * a - 1.0) * lam_free
    d = tf.where(no_saturation[:, None], d_free, tf.where(feasible[:, None], d_feasible, d))
    return tf.where(moves, d, 0.0)


def _timed(fn, *args):
    start = time.perf_counter()
    out = fn(*args)
    np.asarray(out)  # wait for the result
    return time.perf_counter() - start, out


def projections(args):
    """Rows of (dim, ours s, sorted s, ours vs sorted max diff, ours vs reference max diff or None)."""
    import tensorflow as tf

    sys.path.insert(0, os.path.join(ROOT, "tests"))
    from test_fab import _hyperplane_rows

    fab = importlib.import_module("sat_tf.attacks.fab")
    try:
        import torch
        from pyautoattack import fab_projections
    except ImportError:
        fab_projections = None
    ours, before = tf.function(fab.project_linf), tf.function(sorted_project_linf)
    rows = []
    for dim in (int(d) for d in args.dims.split(",")):
        t, w, b = _hyperplane_rows(args.rows, dim, seed=dim)
        got, old = ours(t, w, b).numpy(), before(t, w, b).numpy()  # traces
        seconds = {"ours": [], "sorted": []}
        for r in range(args.rounds):
            for name, fn in (("ours", ours), ("sorted", before))[:: 1 if r % 2 == 0 else -1]:
                seconds[name].append(_timed(fn, t, w, b)[0])
        reference = None
        if fab_projections is not None:
            want = fab_projections.projection_linf(torch.from_numpy(t), torch.from_numpy(w), torch.from_numpy(b))
            reference = float(np.abs(got - want.numpy()).max())
        rows.append((dim, seconds["ours"], seconds["sorted"], float(np.abs(got - old).max()), reference))
        print(
            f"  D={dim}: ours {statistics.median(seconds['ours']):.4f} s, sorted "
            f"{statistics.median(seconds['sorted']):.4f} s",
            flush=True,
        )
    return rows


def whole_fab_t(args):
    """(images, {name: (seconds, broken)}, clean accuracy) of FAB-T with each projection on the run's model."""
    import tensorflow as tf

    from sat_tf import data, export

    fab = importlib.import_module("sat_tf.attacks.fab")
    logits, _ = export.load_any_model(os.path.join(args.workdir, "model.keras"))  # safe_mode, inference mode
    x, y = data.get_dataset(args.dataset).eval_arrays(limit=4 * args.images)
    correct = np.concatenate([np.argmax(logits(x[i : i + 500]), -1) for i in range(0, len(x), 500)]) == y
    x, y = x[correct][: args.images], y[correct][: args.images]

    results = {}
    for name, project in (("ours", fab.project_linf), ("sorted", sorted_project_linf)):
        fab.PROJECTIONS["linf"] = project
        try:
            attack = tf.function(lambda a, b: fab.fab(logits, a, b, eps=args.eps, steps=args.steps, seed=0))
            attack(x[:1], y[:1])  # trace on a 1-image batch; the timed call retraces for its shape
            seconds, x_adv = _timed(attack, x, y)
        finally:
            fab.PROJECTIONS["linf"] = fab.project_linf
        broken = np.abs(np.asarray(x_adv) - x).reshape(len(x), -1).max(1) > 0
        results[name] = (seconds, broken)
        print(f"  FAB-T {name}: {seconds:.1f} s, broken {int(broken.sum())}/{len(x)}", flush=True)
    return len(x), results, float(correct.mean())


def main(argv=None):
    args = parse_args(argv)
    import tensorflow as tf

    projection_rows = projections(args)
    whole = whole_fab_t(args) if args.workdir else None
    model, cores = _report.machine()
    defaults = vars(parse_args([]))
    command = "python benchmarks/fab_projection.py" + "".join(
        f" --{k}={v}" for k, v in vars(args).items() if k not in ("output", "quick") and v != defaults[k]
    )
    if args.quick:
        command = "python benchmarks/fab_projection.py --quick"
    lines = [
        f"{HEADING} ({datetime.date.today().isoformat()})",
        "",
        f"Machine: {model}, {cores} cores; TensorFlow {tf.__version__}.",
        "",
        "```bash",
        command,
        "```",
        "",
        f"`attacks.fab.project_linf` (Newton's method, no sort) against the sort-and-bisect version it replaced "
        f"(`sorted_project_linf` in the script), on {args.rows} rows (tests/test_fab.py's random hyperplanes: "
        f"every case), as tf.functions; median (min-max) seconds per call over {args.rounds} interleaved rounds. "
        "Max diff: the largest coordinate difference between the two results (and to the reference "
        "`pyautoattack` projection, where installed).",
        "",
        "| D | ours (Newton) s | sorted s | sorted / ours | max diff ours vs sorted | max diff ours vs reference |",
        "|---|---|---|---|---|---|",
    ]
    for dim, ours, before, diff, reference in projection_rows:
        ref = "—" if reference is None else f"{reference:.1e}"
        lines.append(
            f"| {dim} | {statistics.median(ours):.4f} ({min(ours):.4f}-{max(ours):.4f}) | "
            f"{statistics.median(before):.4f} ({min(before):.4f}-{max(before):.4f}) | "
            f"{statistics.median(before) / statistics.median(ours):.2f} | {diff:.1e} | {ref} |"
        )
    if whole is not None:
        images, results, clean = whole
        (s_ours, b_ours), (s_sorted, b_sorted) = results["ours"], results["sorted"]
        lines += [
            "",
            f"FAB-T as AutoAttack `standard` runs it (9 targets, {args.steps} steps, L-inf eps {args.eps:g}) on the "
            f"first {images} correctly classified {args.dataset} test images of `{os.path.relpath(args.workdir, ROOT)}` "
            f"(clean accuracy {clean:.1%} on the first {4 * args.images}), one batch, one timed call each:",
            "",
            "| projection | seconds | points broken |",
            "|---|---|---|",
            f"| ours (Newton) | {s_ours:.1f} | {int(b_ours.sum())} |",
            f"| sorted | {s_sorted:.1f} | {int(b_sorted.sum())} |",
            "",
            f"sorted / ours: {s_sorted / s_ours:.2f}; the same points broken: {bool(np.all(b_ours == b_sorted))}.",
        ]
    section = "\n".join(lines) + "\n"
    print(section)
    _report.update_section(args.output, HEADING, section)
    print(f"updated {args.output}")
    return projection_rows, whole


if __name__ == "__main__":
    main()
