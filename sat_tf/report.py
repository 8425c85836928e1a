"""Robustness reports: JSON, a markdown table and a PNG robustness curve."""

import json
import os
import re


def markdown_table(results, title=None):
    """`results` as from `sat_tf.evaluation.evaluate`: one row per attack."""
    lines = [f"### {title}", ""] if title else []
    lines += ["| attack | top-1 (%) | top-5 (%) | images |", "|---|---|---|---|"]
    for name, row in results.items():
        lines.append(
            f"| {name} | {100 * row['top1']:.2f} | {100 * row['top5']:.2f} | {row['count']} |"
        )
    return "\n".join(lines) + "\n"


def _attack_steps(name):
    match = re.search(r"(\d+)$", name)
    return int(match.group(1)) if match else None


def robustness_curve(results, path, title="robustness"):
    """Plots top-1 accuracy against PGD steps (clean as step 0); writes a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    points = []
    for name, row in results.items():
        steps = 0 if name == "clean" else _attack_steps(name)
        if steps is not None:
            points.append((steps, 100 * row["top1"], 100 * row["top5"]))
    points.sort()
    fig, ax = plt.subplots(figsize=(5, 3.4), dpi=120)
    xs = [p[0] for p in points]
    ax.plot(xs, [p[1] for p in points], "o-", label="top-1")
    ax.plot(xs, [p[2] for p in points], "s--", label="top-5", alpha=0.7)
    ax.set_xlabel("PGD steps (0 = clean)")
    ax.set_ylabel("accuracy (%)")
    ax.set_ylim(0, 103)
    ax.set_xticks(xs)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower left")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def write_report(results, directory, *, meta=None, title="robustness"):
    """Writes `robustness.json`, `robustness.md` and `robustness.png`."""
    os.makedirs(directory, exist_ok=True)
    paths = {
        "json": os.path.join(directory, "robustness.json"),
        "markdown": os.path.join(directory, "robustness.md"),
        "png": os.path.join(directory, "robustness.png"),
    }
    with open(paths["json"], "w") as f:
        json.dump({"results": results, "meta": meta or {}}, f, indent=2)
    with open(paths["markdown"], "w") as f:
        f.write(markdown_table(results, title=title))
        if meta:
            f.write("\n" + "\n".join(f"- {k}: {v}" for k, v in meta.items()) + "\n")
    robustness_curve(results, paths["png"], title=title)
    return paths
