"""The study's bookkeeping and statistics: per-table result JSON, claim tests, the markdown summary and plots.

A table's file `<results_dir>/<table>.json` is `{"table": name, "runs": [entry, ...]}`, one entry per
(row, seed), appended right after its run through a temporary file and a rename under a lock, so an
interrupted study loses at most the run in progress and a resumed one skips every recorded entry.
Nothing here imports TensorFlow: summarising needs only the JSON.
"""

import base64
import collections
import contextlib
import fcntl
import json
import math
import os
import re
import statistics

import numpy as np
from scipy import stats

ALPHA = 0.05  # the family-wise level (Holm) at which a claim's direction "holds"
METRICS = (
    ("clean", "clean"),
    ("pgd", "PGD"),
    ("apgd_ce", "APGD-CE"),
    ("gradient_attacks", "APGD+FAB"),
    ("autoattack", "AutoAttack"),
    ("worst_case", "worst case"),
)


# === The result store ===


def table_path(results_dir, table):
    return os.path.join(results_dir, f"{table}.json")


def load_table(results_dir, table):
    """The entries of `table` (an empty list if it has none yet)."""
    path = table_path(results_dir, table)
    if not os.path.exists(path):
        return []
    with open(path) as f:
        try:
            return json.load(f)["runs"]
        except (json.JSONDecodeError, KeyError) as err:
            raise ValueError(
                f"{path} is not a study result file ({err}); move it aside to start the table over"
            ) from None


def pack_bits(flags):
    """Per-image booleans as evaluate.py's state keeps them: base64 of numpy.packbits."""
    return base64.b64encode(np.packbits(np.asarray(flags, bool)).tobytes()).decode("ascii")


def unpack_bits(text, count):
    return np.unpackbits(np.frombuffer(base64.b64decode(text), np.uint8))[:count].astype(bool)


def monotonicity(entries):
    """(curves checked, images robust at an eps after being broken at a smaller one, the largest such count at
    one eps of one curve) over the budget entries whose every point has its per-image verdicts (`robust_images`).
    An adversarial example within eps is one within any larger eps, so a correct evaluation never counts an
    image robust at eps' once it was broken at eps < eps': a violation is an attack that missed."""
    checked, violations, worst = 0, 0, 0
    for e in entries:
        points = sorted(e["curve"], key=lambda p: p["eps"])
        if not points or not all("robust_images" in p for p in points):
            continue
        checked += 1
        count = e.get("images") or points[0]["images"]
        still = np.ones(count, bool)
        for p in points:
            robust = unpack_bits(p["robust_images"], count)
            missed = int((robust & ~still).sum())
            violations, worst = violations + missed, max(worst, missed)
            still &= robust
    return checked, violations, worst


def find_entry(entries, row, seed):
    return next((e for e in entries if e["row"] == row and e["seed"] == seed), None)


@contextlib.contextmanager
def _locked(path):
    directory, name = os.path.split(path)
    with open(os.path.join(directory, f".{name}.lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # two runners on one table append in turn, never over each other
        yield


def append_entry(results_dir, table, entry):
    """Adds `entry` to the table's file atomically; an entry for the same (row, seed) is replaced."""
    os.makedirs(results_dir, exist_ok=True)
    path = table_path(results_dir, table)
    with _locked(path):
        entries = [
            e for e in load_table(results_dir, table) if not (e["row"] == entry["row"] and e["seed"] == entry["seed"])
        ]
        entries.append(entry)
        temporary = f"{path}.tmp-{os.getpid()}"
        with open(temporary, "w") as f:
            json.dump({"table": table, "runs": entries}, f, indent=1)
            f.flush()
            os.fsync(f.fileno())
        os.replace(temporary, path)


# === Statistics ===


def describe(values):
    """{"n", "mean", "std" (sample, ddof 1; None below 2 values), "min", "max"} of a list of numbers."""
    values = [float(v) for v in values]
    if not values:
        return {"n": 0, "mean": None, "std": None, "min": None, "max": None}
    return {
        "n": len(values),
        "mean": statistics.fmean(values),
        "std": statistics.stdev(values) if len(values) > 1 else None,
        "min": min(values),
        "max": max(values),
    }


def welch(a, b, alternative="greater"):
    """One-sided Welch's t-test of mean(a) vs mean(b): the p-value (None with fewer than 2 values a side,
    or when both sides are constant)."""
    a, b = np.asarray(a, float), np.asarray(b, float)
    if len(a) < 2 or len(b) < 2:
        return None
    if np.ptp(a) == 0 and np.ptp(b) == 0:  # no spread: scipy's rounding then yields p = 0 or 1, not "no test"
        return None
    p = stats.ttest_ind(a, b, equal_var=False, alternative=alternative).pvalue
    return None if p is None or math.isnan(p) else float(p)


def sign_count(a_by_seed, b_by_seed, alternative="greater"):
    """(wins, ties, losses) of a over b on the seeds both have; a win is a > b ("greater") or a < b ("less")."""
    seeds = sorted(set(a_by_seed) & set(b_by_seed))
    sign = 1 if alternative == "greater" else -1
    diffs = [sign * (a_by_seed[s] - b_by_seed[s]) for s in seeds]
    return sum(d > 0 for d in diffs), sum(d == 0 for d in diffs), sum(d < 0 for d in diffs)


def by_seed(entries, row, metric):
    """{seed: value} of `metric` for `row` (metric may be a callable of the entry)."""
    get = metric if callable(metric) else (lambda e: e[metric])
    return {e["seed"]: get(e) for e in entries if e["row"] == row and get(e) is not None}


def compare(entries, a, b, metric, alternative="greater"):
    """The test of "a's metric is greater (or less) than b's" over the seeds: means, p and sign count."""
    va, vb = by_seed(entries, a, metric), by_seed(entries, b, metric)
    p = welch(list(va.values()), list(vb.values()), alternative)
    opposite = welch(list(va.values()), list(vb.values()), "less" if alternative == "greater" else "greater")
    return {
        "a": a,
        "b": b,
        "alternative": alternative,
        "mean_a": describe(va.values())["mean"],
        "mean_b": describe(vb.values())["mean"],
        "n_a": len(va),
        "n_b": len(vb),
        "p": p,
        "p_opposite": opposite,
        "signs": sign_count(va, vb, alternative),
    }


def curve_mean(xs, ys):
    """The mean of a curve sampled at increasing `xs` (possibly uneven): its trapezoid area divided by its width."""
    xs, ys = np.asarray(xs, float), np.asarray(ys, float)
    return float(np.sum((ys[1:] + ys[:-1]) / 2 * np.diff(xs)) / (xs[-1] - xs[0]))


def certified_reach(sigma, n, alpha):
    """The largest L2 radius CERTIFY can return with `n` samples at level `alpha`: sigma * Phi^-1(alpha^(1/n))
    (every sample votes for the class; Clopper-Pearson's lower bound is then alpha^(1/n)). Beyond it every
    model certifies 0 %: the sample size's limit, not the model's."""
    return float(sigma * stats.norm.ppf(alpha ** (1.0 / n)))


def certified_curve(entry, grid):
    """Certified accuracy of one certified run at each radius of `grid`, from its per-image radii."""
    radii = np.asarray(entry["certified_radii"], float)
    return [float(np.sum(radii >= r) / entry["images"]) for r in grid]


def holm(ps):
    """Holm-Bonferroni adjusted p-values of one family of tests, in the input order (None stays None: no test)."""
    tested = sorted((p, i) for i, p in enumerate(ps) if p is not None)
    adjusted, running = [None] * len(ps), 0.0
    for rank, (p, i) in enumerate(tested):
        running = max(running, min(1.0, (len(tested) - rank) * p))
        adjusted[i] = running
    return adjusted


def verdicts(tests):
    """Per test: (Holm-adjusted p, verdict). A family is the tests sharing (claim, metric), e.g. every smooth
    activation against ReLU in AutoAttack accuracy. Verdict: "holds" (the direction, Holm p < ALPHA),
    "reversed" (the opposite direction at the same level), "not shown", or "—" without a test (< 2 seeds)."""
    families = {}
    for k, (claim, metric, _) in enumerate(tests):
        families.setdefault((claim, metric), []).append(k)
    out = [None] * len(tests)
    for members in families.values():
        adjusted = holm([tests[k][2]["p"] for k in members])
        opposite = holm([tests[k][2].get("p_opposite") for k in members])
        for k, p, q in zip(members, adjusted, opposite):
            verdict = "—" if p is None else "holds" if p < ALPHA else "reversed" if q < ALPHA else "not shown"
            out[k] = (p, verdict)
    return out


# === Markdown ===


def pct(value):
    return "—" if value is None else f"{100 * value:.2f}"


def cell(summary):
    """ "mean ± std (min–max)" in percent."""
    if summary["n"] == 0:
        return "—"
    std = "" if summary["std"] is None else f" ± {100 * summary['std']:.2f}"
    return f"{pct(summary['mean'])}{std} ({pct(summary['min'])}–{pct(summary['max'])})"


def row_table(entries, rows, metrics=METRICS):
    """Markdown: one line per row, mean ± std (min–max) per metric over the seeds."""
    lines = [
        "| row | seeds | " + " | ".join(f"{label} (%)" for _, label in metrics) + " |",
        "|---|---|" + "---|" * len(metrics),
    ]
    for row in rows:
        mine = [e for e in entries if e["row"] == row]
        cells = [cell(describe([e[key] for e in mine if e.get(key) is not None])) for key, _ in metrics]
        lines.append(f"| {row} | {len(mine)} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


MASKING_GAIN = 0.03  # Square finding this much after APGD-CE, APGD-T and FAB-T: flag the run


def masking_watch(entries, threshold=MASKING_GAIN):
    """Markdown lines naming the runs where Square (black-box) found >= `threshold` of the images that the
    gradient attacks left robust: the sign of gradient masking, whose robust number only Square holds up."""
    flagged = [
        (e["row"], e["seed"], e["gradient_attacks"] - e["autoattack"])
        for e in entries
        if e.get("gradient_attacks") is not None
        and e.get("autoattack") is not None
        and e["gradient_attacks"] - e["autoattack"] >= threshold - 1e-9
    ]
    if not flagged:
        return []
    runs = ", ".join(f"{row} seed {seed} ({100 * gain:.2f})" for row, seed, gain in flagged)
    return [
        f"**Masking watch:** Square found >= {100 * threshold:g} points after the gradient attacks (APGD+FAB - "
        f"AutoAttack) in {runs}: gradient attacks alone overstate these models; only the AutoAttack column counts.",
        "",
    ]


def claim_table(tests):
    """Markdown: one line per (claim, metric) test, with its family's Holm-adjusted p and the verdict."""
    lines = [
        "| claim | metric | A mean (%) | B mean (%) | seeds A/B | Welch p (one-sided) | Holm p (family) | "
        f"sign count A better/tie/worse | verdict at {ALPHA} |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for (claim, metric, t), (p_holm, verdict) in zip(tests, verdicts(tests)):
        direction = ">" if t["alternative"] == "greater" else "<"
        p = "—" if t["p"] is None else f"{t['p']:.3g}"
        p_holm = "—" if p_holm is None else f"{p_holm:.3g}"
        # A test carries "unit": "radius" when its values are lengths (printed as they are), not fractions.
        mean = pct if t.get("unit") != "radius" else (lambda v: "—" if v is None else f"{v:.3f}")
        lines.append(
            f"| {t['a']} {direction} {t['b']} ({claim}) | {metric} | {mean(t['mean_a'])} | "
            f"{mean(t['mean_b'])} | {t['n_a']}/{t['n_b']} | {p} | {p_holm} | {'/'.join(map(str, t['signs']))} | "
            f"{verdict} |"
        )
    return "\n".join(lines)


def verdict_table(tests):
    """Markdown: one line per family of tests (claim, metric) naming the A rows where the claim holds, is
    reversed, is not shown, or is not tested yet (fewer than 2 seeds on a side)."""
    families = {}
    for (claim, metric, t), (_, verdict) in zip(tests, verdicts(tests)):
        family = families.setdefault((claim, metric, t["alternative"]), {"b": set(), "rows": {}})
        family["b"].add(t["b"])
        family["rows"].setdefault(verdict, []).append(t["a"])
    lines = [
        "| claim (A {>, <} B) | metric | holds | reversed | not shown | untested (< 2 seeds a side) |",
        "|---|---|---|---|---|---|",
    ]
    for (claim, metric, alternative), family in families.items():
        direction = ">" if alternative == "greater" else "<"
        cells = [", ".join(family["rows"].get(v, [])) or "—" for v in ("holds", "reversed", "not shown", "—")]
        lines.append(
            f"| {claim}: A {direction} {', '.join(sorted(family['b']))} | {metric} | " + " | ".join(cells) + " |"
        )
    return "\n".join(lines)


def clock(seconds):
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    return f"{hours}h{rest // 60:02d}m" if hours else f"{rest // 60}m{rest % 60:02d}s"


def wall_seconds(entries):
    """Training + evaluation seconds of the machine. Training counts its epochs' seconds from the trainer's
    history, evaluation its attacks' seconds from the evaluator's state, when that is more than the runner
    waited: a run resumed in a later session (or found finished) took longer than its last process did. A run
    measured beside others (`side_by_side`: N, from --jobs) counts 1/N of its wall time, so that a sum over runs
    stays the time the study took."""
    return sum(
        (
            max(e.get("train_seconds", 0.0), e.get("train_epoch_seconds") or 0.0)
            + max(e.get("eval_seconds", 0.0), e.get("eval_state_seconds") or 0.0)
        )
        / e.get("side_by_side", 1)
        for e in entries
    )


def provenance_text(entries):
    """When the runs finished (the first and last date of their `finished` UTC timestamps) and on which machine
    (their `machine` records, with how many runs each; older entries have none), or ""."""
    if not entries:
        return ""
    days = sorted(e["finished"][:10] for e in entries if e.get("finished"))
    parts = [f"runs finished {days[0]}" + (f" to {days[-1]}" if days[-1] != days[0] else "") + " (UTC)"] if days else []
    machines = collections.Counter(e["machine"] for e in entries if e.get("machine"))
    unrecorded = sum(not e.get("machine") for e in entries)
    where = [f"{m} ({n} run{'s' * (n != 1)})" for m, n in sorted(machines.items())]
    where += [f"not recorded for {unrecorded} older run{'s' * (unrecorded != 1)}"] if unrecorded else []
    parts.append("machine: " + ", ".join(where))
    text = "; ".join(parts)
    return f" {text[0].upper()}{text[1:]}."


def speed_text(entries):
    """The training images/s of the runs that recorded it (median and range), or ""."""
    speeds = sorted(e["train_images_per_second"] for e in entries if e.get("train_images_per_second"))
    if not speeds:
        return ""
    median = statistics.median(speeds)
    return (
        f" Training speed: median {median:,.0f} images/s ({speeds[0]:,.0f}–{speeds[-1]:,.0f}) over "
        f"{len(speeds)} runs, from the trainer's per-epoch seconds."
    )


# === Generated blocks in a hand-written document ===

BLOCK = re.compile(r"<!-- study:(?P<name>[\w-]+) -->\n(?P<body>.*?)<!-- /study:(?P=name) -->", re.DOTALL)
BLOCK_START = re.compile(r"<!-- study:(?P<name>[\w-]+) -->")


def sections(lines, level=3):
    """{name: body lines} of a generated markdown document, split at its headings of `level` (`### name`); a
    section runs to the next heading of that level or a higher one, without its heading and the blank lines
    around its body. Lines inside ``` fences are never headings."""
    found, name, fenced = {}, None, False
    for line in lines:
        fenced ^= line.startswith("```")
        depth = len(line) - len(line.lstrip("#"))
        if fenced or not depth or not line[depth:].startswith(" ") or depth > level:
            if name is not None:
                found[name].append(line)
        elif depth == level:
            name = line[depth:].strip()
            found[name] = []
        else:
            name = None  # a higher-level heading ends the section
    return {k: "\n".join(v).strip("\n").split("\n") for k, v in found.items()}


def fill_blocks(path, blocks, image_dir=""):
    """Rewrites every `<!-- study:NAME -->` ... `<!-- /study:NAME -->` block of the markdown file `path` with
    `blocks[NAME]` (lines), leaving the text around the blocks as it is, so a hand-written document (RESULTS.md)
    shows the generated tables and never a stale copy of them. Images (`![alt](file.png)`) are rewritten to
    `image_dir/file.png`. Returns the names filled; a block without its end marker or with an unknown name is
    an error naming the file and the fix, and the file is then left untouched. Written through a temporary file
    and a rename, so an interrupted rewrite never leaves half a document."""
    with open(path) as f:
        text = f.read()
    ends = set(re.findall(r"<!-- /study:([\w-]+) -->", text))
    for m in BLOCK_START.finditer(text):
        if m.group("name") not in ends:
            raise ValueError(
                f"{path}: block <!-- study:{m.group('name')} --> has no <!-- /study:{m.group('name')} -->; add it"
            )
    unknown = sorted({m.group("name") for m in BLOCK.finditer(text)} - set(blocks))
    if unknown:
        raise ValueError(
            f"{path}: no generated section named {', '.join(unknown)}; the blocks it can hold: {', '.join(sorted(blocks))}"
        )
    filled = []

    def body(m):
        filled.append(m.group("name"))
        lines = [
            re.sub(
                r"^!\[(.*?)\]\(([^/)]+)\)$", lambda i: f"![{i.group(1)}]({os.path.join(image_dir, i.group(2))})", line
            )
            if image_dir
            else line
            for line in blocks[m.group("name")]
        ]
        return f"<!-- study:{m.group('name')} -->\n" + "\n".join(lines) + f"\n<!-- /study:{m.group('name')} -->"

    text = BLOCK.sub(body, text)
    with open(path + ".tmp", "w") as f:
        f.write(text)
    os.replace(path + ".tmp", path)
    return filled


# === Plots (matplotlib, Agg) ===


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_rows(entries, rows, path, title, metrics=(("autoattack", "AutoAttack"), ("clean", "clean"))):
    """Mean ± std per row (points with error bars, each seed as a faint dot), one series per metric."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(max(5.0, 1.0 + 0.9 * len(rows)), 3.6))
    for k, (key, label) in enumerate(metrics):
        offset = (k - (len(metrics) - 1) / 2) * 0.15
        for i, row in enumerate(rows):
            values = [100 * e[key] for e in entries if e["row"] == row and e.get(key) is not None]
            if not values:
                continue
            ax.scatter([i + offset] * len(values), values, s=8, alpha=0.35, color=f"C{k}")
            d = describe(values)
            ax.errorbar(
                i + offset,
                d["mean"],
                yerr=d["std"] or 0.0,
                fmt="o",
                capsize=3,
                color=f"C{k}",
                label=label if i == 0 else None,
            )
    ax.set_xticks(range(len(rows)), rows, rotation=20, ha="right")
    ax.set_ylabel("top-1 accuracy (%)")
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def plot_curves(curves, path, title, xlabel, ylabel="accuracy (%)", styles=None, vlines=(), legend="best"):
    """`curves`: {label: (x, [per-seed y lists])}; the mean with a ± std band. `styles`: optional {label: plot
    kwargs}; `vlines`: (x, text) pairs drawn as dotted vertical lines. Markers only on coarse grids."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5.5, 3.6))
    for k, (label, (xs, runs)) in enumerate(curves.items()):
        ys = 100 * np.asarray(runs, float)
        mean = ys.mean(0)
        std = ys.std(0, ddof=1) if len(ys) > 1 else np.zeros_like(mean)
        style = {
            "color": f"C{k}",
            **({"marker": "o", "ms": 3} if len(xs) <= 30 else {}),
            **(styles or {}).get(label, {}),
        }
        ax.plot(xs, mean, label=f"{label} ({len(ys)} seeds)", **style)
        ax.fill_between(xs, mean - std, mean + std, color=style["color"], alpha=0.2)
    for x, text in vlines:
        ax.axvline(x, color="grey", linestyle=":", linewidth=1)
        ax.text(x, 98, text, rotation=90, va="top", ha="right", fontsize=6, color="grey")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=9)
    ax.set_ylim(0, 100)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc=legend)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
