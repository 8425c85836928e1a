"""Certification logs and their analysis: TSV rows, certified accuracy, plots.

The TSV is Cohen et al.'s `code/certify.py` format, byte for byte, so logs
from the reference repositories (locuslab/smoothing, SmoothAdv) and ours
are read and plotted by the same code:

    idx	label	predict	radius	correct	time
    0	3	3	0.457	1	0:00:14.172309
    7	6	-1	0.0	0	0:00:15.063022

The radius is printed with `{:.3}` (3 significant digits), an abstention is
predict -1 with radius 0.0 and correct 0, and time is
`str(datetime.timedelta(seconds=elapsed))`. Certified accuracy at radius r
is the reference's `ApproximateAccuracy`: the mean over ALL rows of
(correct == 1 and radius >= r), so abstentions count as wrong. Reference:
https://arxiv.org/abs/1902.02918 (locuslab/smoothing `code/analyze.py`).

Example:
    rows = read_tsv("runs/digits_noise/certify/noise_0.25.tsv")
    certified_accuracy(rows, [0.0, 0.25, 0.5])   # array([0.86, 0.71, 0.42])
    plot_certified_accuracy({"σ = 0.25": rows}, "curve.png")
"""

import dataclasses
import datetime
import math
import os
import re

import numpy as np
import tensorflow as tf

from sat_tf import files

HEADER = "idx\tlabel\tpredict\tradius\tcorrect\ttime"
_TIME_RE = re.compile(r"^(?:(-?\d+) days?, )?(\d+):(\d\d):(\d\d(?:\.\d+)?)$")


@dataclasses.dataclass(frozen=True)
class Row:
    """One certified image: the columns of a certification TSV.

    `radius` holds the value as printed (3 significant digits), so numbers
    computed from rows in memory equal those computed from the file.
    """

    idx: int
    label: int
    predict: int
    radius: float
    correct: int
    time: str

    @property
    def seconds(self):
        """`time` back in seconds (parses `str(timedelta)`, days included)."""
        match = _TIME_RE.match(self.time.strip())
        if not match:
            raise ValueError(f"Not a str(timedelta) time. Received: time={self.time!r}")
        days, hours, minutes, seconds = match.groups()
        return int(days or 0) * 86400 + int(hours) * 3600 + int(minutes) * 60 + float(seconds)


def write_tsv_header(f):
    """Writes the header line and flushes (so `tail -f` shows it at once)."""
    print(HEADER, file=f, flush=True)


def format_row(idx, label, predict, radius, seconds):
    """One TSV line (no newline), exactly as the reference prints it.

    `correct` is `int(predict == label)`, so an abstention is never correct.

    Example:
        format_row(0, 3, 3, 0.45723, 14.25)   # '0\\t3\\t3\\t0.457\\t1\\t0:00:14.250000'
        format_row(7, 6, -1, 0.0, 2)          # '7\\t6\\t-1\\t0.0\\t0\\t0:00:02'
    """
    idx, label, predict = int(idx), int(label), int(predict)
    elapsed = str(datetime.timedelta(seconds=float(seconds)))
    return f"{idx}\t{label}\t{predict}\t{float(radius):.3}\t{int(predict == label)}\t{elapsed}"


def parse_row(line, columns=None):
    """A `Row` from one TSV line, given the header's column names (default: `HEADER`'s)."""
    values = dict(zip(columns or HEADER.split("\t"), line.rstrip("\n").split("\t")))
    try:
        return Row(
            idx=int(values["idx"]),
            label=int(values["label"]),
            predict=int(values["predict"]),
            radius=float(values["radius"]),
            correct=int(values["correct"]),
            time=values.get("time", ""),
        )
    except (KeyError, ValueError) as err:
        raise ValueError(f"Not a certification row ({err}). Received: line={line!r}") from None


def write_row(f, idx, label, predict, radius, seconds):
    """Appends one formatted row, flushes, and returns it as a `Row`."""
    line = format_row(idx, label, predict, radius, seconds)
    print(line, file=f, flush=True)
    return parse_row(line)


def read_tsv(path):
    """The rows of a certification TSV (ours or the reference's own logs).

    Columns are found by header name; extra columns are ignored.
    """
    with tf.io.gfile.GFile(os.fspath(path), "r") as f:
        header = f.readline().rstrip("\n").split("\t")
        missing = {"idx", "label", "predict", "radius", "correct"} - set(header)
        if missing:
            raise ValueError(f"{path} is not a certification TSV: no column(s) {sorted(missing)}")
        return [parse_row(line, header) for line in f if line.strip()]


def _hits(rows, radii):
    if not rows:
        raise ValueError("Need at least one row to compute an accuracy.")
    correct = np.array([r.correct == 1 for r in rows])
    radius = np.array([r.radius for r in rows], np.float64)
    radii = np.asarray(radii, np.float64)
    return (correct[:, None] & (radius[:, None] >= radii.reshape(-1)[None, :])).mean(0), radii


def certified_accuracy(rows, radii):
    """Fraction of ALL rows that are correct with radius >= r, for each r.

    Example:
        rows = [Row(0, 3, 3, 0.5, 1, ""), Row(1, 2, -1, 0.0, 0, "")]
        certified_accuracy(rows, [0.0, 0.5, 0.6])   # array([0.5, 0.5, 0. ])
    """
    accuracy, radii = _hits(rows, radii)
    return accuracy.reshape(radii.shape)


def high_prob_accuracy(rows, radii, alpha, rho):
    """A lower bound on certified accuracy that holds with probability 1 - rho.

    The reference's `HighProbAccuracy`: each certificate fails with
    probability <= alpha, so subtract alpha and a Bernstein deviation term:
    mean - alpha - sqrt(alpha (1 - alpha) ln(1/rho) / n) - ln(1/rho) / (3 n).
    """
    accuracy = certified_accuracy(rows, radii)
    n, log_term = len(rows), math.log(1.0 / rho)
    return accuracy - alpha - math.sqrt(alpha * (1 - alpha) * log_term / n) - log_term / (3 * n)


def plot_radii(curves, max_radius=None):
    """The reference's plot grid: arange(0, max_r + 0.01, 0.01); max_r
    defaults to the largest radius in any curve."""
    if max_radius is None:
        max_radius = max((r.radius for rows in curves.values() for r in rows), default=0.0)
    return np.arange(0.0, max_radius + 0.01, 0.01), max(float(max_radius), 0.01)


def plot_certified_accuracy(curves, path, max_radius=None, title=None):
    """One PNG: certified accuracy against radius, one line per curve.

    Args:
        curves: {label: rows}, e.g. {"σ = 0.25": rows_025, "σ = 0.5": rows_05}.
        path: the PNG to write.
        max_radius: right end of the x axis (default: the largest radius).
        title: optional plot title.
    Returns:
        `path`.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    radii, x_max = plot_radii(curves, max_radius)
    fig, ax = plt.subplots(figsize=(6.4, 3.6), dpi=120)
    for label, rows in curves.items():
        ax.plot(radii, certified_accuracy(rows, radii), label=label)
    ax.set_xlim(0, x_max)
    ax.set_ylim(0, 1)
    ax.set_xlabel("radius (L2, [0, 1] pixels)")
    ax.set_ylabel("certified accuracy")
    if title:
        ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(loc="upper right", fontsize="small", framealpha=0.9)
    fig.tight_layout()
    files.save_figure(fig, path)
    plt.close(fig)
    return path


def markdown_table(curves, radii, title=None):
    """Certified accuracy at `radii`, one row per curve; the best value of a
    column is bold when there are several curves.

    Example:
        markdown_table({"σ = 0.25": rows}, [0, 0.5])
        # | curve | images | r = 0.00 | r = 0.50 |
        # |---|---|---|---|
        # | σ = 0.25 | 90 | 0.811 | 0.433 |
    """
    table = {label: certified_accuracy(rows, radii) for label, rows in curves.items()}
    best = np.max(np.stack(list(table.values())), axis=0) if table else None
    lines = [f"### {title}", ""] if title else []
    lines.append("| curve | images | " + " | ".join(f"r = {r:.2f}" for r in radii) + " |")
    lines.append("|---" * (len(radii) + 2) + "|")
    for label, accuracy in table.items():
        cells = [f"**{a:.3f}**" if len(table) > 1 and a == b > 0 else f"{a:.3f}" for a, b in zip(accuracy, best)]
        lines.append(f"| {label} | {len(curves[label])} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


# === Which images, which seeds, which labels ===


def selected_indices(num_examples, skip=1, max_index=-1):
    """Indices the reference certifies: i % skip == 0 and i < max_index.

    The reference loop is `if i % skip != 0: continue; if i == max: break`.
    For max = -1 or a multiple of skip (its documented uses) that is exactly
    this. For any other max the reference's break is never reached and it
    certifies the whole split; here max still stops the run.

    Example:
        selected_indices(20, skip=4, max_index=12)   # [0, 4, 8]
    """
    if skip < 1:
        raise ValueError(f"skip must be >= 1. Received: skip={skip}")
    stop = num_examples if max_index < 0 else min(num_examples, max_index)
    return list(range(0, stop, skip))


def image_seed(seed, idx):
    """The `Smooth.certify` seed of image `idx`: a hash of (seed, idx).

    Each image gets its own noise, independent across images (the
    reference's torch RNG runs on from image to image), and a row can be
    reproduced alone: `Smooth(...).certify(x, n0, n, alpha, seed=image_seed(seed, idx))`.
    """
    state = np.random.SeedSequence([int(seed) & 0xFFFFFFFF, int(idx)]).generate_state(1)
    return int(state[0] & 0x7FFFFFFF)


def sidecar_path(tsv_path):
    """`<tsv>.json`: the run's settings (sigma, N0, N, alpha, ...), next to the TSV."""
    return os.fspath(tsv_path) + ".json"


def write_sidecar(tsv_path, meta):
    files.write_json(sidecar_path(tsv_path), meta, indent=2, sort_keys=True)


def read_sidecar(tsv_path):
    """The sidecar dict of `tsv_path`, or None if there is none (reference logs)."""
    try:
        return files.read_json(sidecar_path(tsv_path))
    except (FileNotFoundError, ValueError):
        return None


def curve_label(tsv_path):
    """ "σ = 0.25, SmoothAdv-PGD ε=0.25 m=2" from the sidecar, else the TSV's file name."""
    meta = read_sidecar(tsv_path) or {}
    if isinstance(meta.get("sigma"), (int, float)):
        training = f", {meta['training']}" if meta.get("training") else ""
        return f"σ = {meta['sigma']:g}{training}"
    return os.path.basename(os.fspath(tsv_path))


def load_curves(paths, curves=None):
    """{label: rows} for TSV files, added to `curves` (a copy) if given.

    A label already taken gets the file name appended, then the full path.
    """
    curves = dict(curves or {})
    for path in paths:
        label = curve_label(path)
        for candidate in (label, f"{label} ({os.path.basename(os.fspath(path))})"):
            if candidate not in curves:
                label = candidate
                break
        else:
            label = f"{label} ({os.fspath(path)})"
        curves[label] = read_tsv(path)
    return curves
