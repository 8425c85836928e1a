"""Robustness reports: JSON, a markdown table and a PNG.

`results` maps a row name to `{"top1", "top5", "count"}` and, from
`evaluation.evaluate_points`, also `"max_norm"`, `"nan"` and `"seconds"`.
The top-k column is named after the k used ("top4" for a 4-class model;
`topk_key`) and so is its header; it is None for AutoAttack's rows and the
worst case (AutoAttack is a top-1 evaluation). Files are written through
`tf.io.gfile`, so `gs://` directories work.
"""

import io
import json
import os
import re

ROBUSTNESS_FILES = {"json": "robustness.json", "markdown": "robustness.md", "png": "robustness.png"}


def topk_name(k):
    """The result key of the top-k accuracy: "top5"; "top4" when only 4 classes exist."""
    return f"top{int(k)}"


def topk_key(row):
    """The top-k key of a result row ("top5", "top4", ...), or None if it has none."""
    return next((key for key in row if key != "top1" and re.fullmatch(r"top\d+", key)), None)


def _topk(results):
    """The top-k key of the rows ("top5", "top4", ...), or None."""
    return next((key for key in map(topk_key, results.values()) if key), None)


def _topk_label(key):
    return f"top-{key[3:]}" if key else "top-k"


def markdown_table(results, title=None, warnings=()):
    """One row per attack; the perturbation columns appear when the rows carry them."""
    lines = [f"### {title}", ""] if title else []
    extended = any("max_norm" in row for row in results.values())
    key = _topk(results)
    label = _topk_label(key)
    if extended:
        lines += [
            f"| row | top-1 (%) | {label} (%) | images | max perturbation | NaN | seconds |",
            "|---|---|---|---|---|---|---|",
        ]
    else:
        lines += [f"| attack | top-1 (%) | {label} (%) | images |", "|---|---|---|---|"]
    for name, row in results.items():
        topk = "—" if row.get(key) is None else f"{100 * row[key]:.2f}"
        cells = [name, f"{100 * row['top1']:.2f}", topk, str(row["count"])]
        if extended:
            cells += [f"{row.get('max_norm', 0.0):.4g}", str(row.get("nan", 0)), f"{row.get('seconds', 0.0):.1f}"]
        lines.append("| " + " | ".join(cells) + " |")
    if warnings:
        lines += ["", "Warnings (AutoAttack's sanity checks):", ""] + [f"- {w}" for w in warnings]
    return "\n".join(lines) + "\n"


def _attack_steps(name):
    match = re.search(r"(\d+)$", name)
    return int(match.group(1)) if match else None


def robustness_curve(results, path, title="robustness"):
    """Top-1 accuracy of every row as bars and, when there are PGD rows,
    top-1/top-k against the PGD steps (clean as step 0); writes a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from sat_tf import files

    key = _topk(results)
    points = []
    for name, row in results.items():
        steps = 0 if name == "clean" else (_attack_steps(name) if name.startswith("pgd") else None)
        if steps is not None and row.get(key) is not None:
            points.append((steps, 100 * row["top1"], 100 * row[key]))
    points.sort()
    curve = len(points) > 1
    fig, axes = plt.subplots(1, 2 if curve else 1, figsize=(10.5 if curve else 5.5, 3.8), dpi=120, squeeze=False)
    bars = axes[0][0]
    names = list(results)
    values = [100 * results[n]["top1"] for n in names]
    colors = ["#c44e52" if key and results[n].get(key) is None else "#4c72b0" for n in names]
    bars.barh(range(len(names)), values, color=colors)
    for i, value in enumerate(values):
        bars.text(min(value + 1, 85), i, f"{value:.1f}", va="center", fontsize=8)
    bars.set_yticks(range(len(names)), names, fontsize=8)
    bars.invert_yaxis()
    bars.set_xlim(0, 100)
    bars.set_xlabel("top-1 accuracy (%)  (red: AutoAttack rows and the worst case)")
    bars.grid(axis="x", alpha=0.3)
    bars.set_title(title, fontsize=9)
    if curve:
        ax = axes[0][1]
        xs = [p[0] for p in points]
        ax.plot(xs, [p[1] for p in points], "o-", label="top-1")
        ax.plot(xs, [p[2] for p in points], "s--", label=_topk_label(key), alpha=0.7)
        for name in ("autoattack", "worst case"):
            if name in results:
                ax.axhline(
                    100 * results[name]["top1"],
                    ls=":",
                    color="#c44e52" if name == "autoattack" else "k",
                    label=f"{name} (top-1)",
                )
        ax.set_xlabel("PGD steps (0 = clean)")
        ax.set_ylabel("accuracy (%)")
        ax.set_ylim(0, 103)
        ax.set_xticks(xs)
        ax.grid(alpha=0.3)
        ax.legend(loc="lower left", fontsize=8)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    plt.close(fig)
    files.write_bytes(path, buffer.getvalue())
    return path


def write_report(results, directory, *, meta=None, title="robustness", warnings=()):
    """Writes `robustness.json`, `robustness.md` and `robustness.png` (atomically each)."""
    from sat_tf import files

    paths = {key: os.path.join(directory, name) for key, name in ROBUSTNESS_FILES.items()}
    files.write_text(
        paths["json"], json.dumps({"results": results, "warnings": list(warnings), "meta": meta or {}}, indent=2)
    )
    text = markdown_table(results, title=title, warnings=warnings)
    if meta:
        text += "\n" + "\n".join(f"- {k}: {v}" for k, v in meta.items()) + "\n"
    files.write_text(paths["markdown"], text)
    robustness_curve(results, paths["png"], title=title)
    return paths
