r"""ReLU vs SiLU (or any activations) under the main job, over several seeds.

Runs `launch/train.py` once per (activation, seed) in a fresh process, reads
each run's report/robustness.json and prints a markdown table of
mean ± standard deviation (and min-max) of clean / PGD-k / AutoAttack
(standard, the main job's default) and worst-case top-1 accuracy; AutoAttack's
per-attack rows stay in each run's report.

    python benchmarks/compare_activations.py                       # relu,silu x 3 seeds
    python benchmarks/compare_activations.py --activations=relu,silu,softplus,smooth_relu \
        --seeds=0,1,2,3,4 --out=runs/compare

Extra flags after `--` (config overrides, e.g. `--config.schedule.epochs=5`) go to every train.py run.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run(name, seed, out, flags):
    """report/robustness.json results of `launch/train.py *flags --config.system.seed=seed` (reused if present)."""
    workdir = os.path.join(out, f"{name}_seed{seed}")
    report = os.path.join(workdir, "report", "robustness.json")
    if not os.path.exists(report):
        cmd = [
            sys.executable,
            os.path.join(ROOT, "launch", "train.py"),
            *flags,
            f"--config.system.seed={seed}",
            f"--workdir={workdir}",
            "--config.export.enabled=false",
        ]
        start = time.perf_counter()
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
        print(f"  {name} seed {seed}: {time.perf_counter() - start:.0f} s", flush=True)
    with open(report) as f:
        return json.load(f)["results"]


def table_lines(table, first_column="activation"):
    """Markdown rows: mean ± std (min–max) of each result column over the runs of each row (AutoAttack's
    per-attack rows left out: its final row and the worst case stand for it)."""
    first = next(iter(table.values()))[0]
    columns = [c for c in first if "/" not in c]
    lines = [
        f"| {first_column} | " + " | ".join(f"{c} top-1 (%)" for c in columns) + " |",
        "|---" * (len(columns) + 1) + "|",
    ]
    for name, runs in table.items():
        cells = []
        for c in columns:
            values = [100 * r[c]["top1"] for r in runs]
            spread = statistics.stdev(values) if len(values) > 1 else 0.0
            cells.append(f"{statistics.mean(values):.1f} ± {spread:.1f} ({min(values):.1f}–{max(values):.1f})")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return lines


def write_table(table, seeds, out, first_column="activation"):
    """Prints the table and writes it to `<out>/table.md`."""
    text = "\n".join(table_lines(table, first_column=first_column))
    print(f"\n{len(seeds)} seeds each ({', '.join(map(str, seeds))}); mean ± std (min–max)\n")
    print(text)
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, "table.md"), "w") as f:
        f.write(text + "\n")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--activations", default="relu,silu")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--out", default="runs/compare_activations")
    args, extra = parser.parse_known_args()
    extra = [e for e in extra if e != "--"]
    activations = args.activations.split(",")
    seeds = [int(s) for s in args.seeds.split(",")]
    table = {a: [run(a, s, args.out, [f"--config.model.activation={a}", *extra]) for s in seeds] for a in activations}
    write_table(table, seeds, args.out)


if __name__ == "__main__":
    main()
