"""Shared by the benchmark scripts: the machine line and section-wise updates of BENCHMARKS.md."""

import os
import platform
import re

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BENCHMARKS_MD = os.path.join(ROOT, "BENCHMARKS.md")


def machine():
    """(CPU model name, logical core count)."""
    model = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            model = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return model, os.cpu_count()


def update_section(path, heading, section):
    """Replaces the `heading` section of the markdown file `path` (up to the next `## `), or appends it.

    `heading` is the section's first line without any trailing date, e.g. `## Certification throughput`.
    """
    text = open(path).read() if os.path.exists(path) else "# sat_tf benchmarks\n"
    pattern = re.compile(rf"^{re.escape(heading)}\b.*?(?=^## |\Z)", re.S | re.M)
    if pattern.search(text):
        text = pattern.sub(lambda _: section.rstrip("\n") + "\n\n", text, count=1).rstrip("\n") + "\n"
    else:
        text = text.rstrip("\n") + "\n\n" + section.rstrip("\n") + "\n"
    with open(path, "w") as f:
        f.write(text)
