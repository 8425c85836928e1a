"""Smoke tests of the benchmark harnesses, so they cannot rot (the real runs are in BENCHMARKS.md)."""

import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "benchmarks"))


def test_step_time_quick_reports_clean_and_pgd_rows(tmp_path):
    import step_time

    out = tmp_path / "table.md"
    rows = step_time.main(["--quick", f"--output={out}"])
    assert [(r[0], r[2]) for r in rows] == [("silu", 0), ("silu", 1)]
    clean, pgd1 = rows
    assert clean[7] == 1.0 and clean[8] == 1.0 and abs(pgd1[8] - 5 / 3) < 1e-9
    assert all(r[3] > 0 and r[4] <= r[3] <= r[5] for r in rows)  # min <= median <= max
    assert pgd1[3] > clean[3]  # an attack step costs more than a clean one
    text = out.read_text()
    assert "| silu | off | 1 |" in text and "bound (2K+3)/3" in text
