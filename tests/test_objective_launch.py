"""launch/train.py with the TRADES / AWP / RAT objectives and their config files."""

import json
import os
import subprocess
import sys

import pytest
from conftest import ROOT, run_launcher

TINY = [
    "--config.schedule.epochs=1",
    "--config.eval.autoattack=none",
    "--config.data.limit_train=128",
    "--config.data.limit_test=32",
    "--config.schedule.batch_size=32",
    "--config.export.enabled=false",
    "--config.attack.steps=2",
    "--config.eval.steps=2",
    # No end-of-training evaluation: these tests read run_config.json, history.json, sparta.npz and the start line.
    "--config.mode=train",
]


def train(workdir, *flags, check=True):
    files = [f for f in flags if f.startswith("--config=")]  # the config file comes before its overrides
    return run_launcher(
        "train.py", *files, *TINY, *(f for f in flags if f not in files), f"--workdir={workdir}", check=check
    )


@pytest.mark.parametrize("objective", ["trades", "awp_trades_rat"])
def test_objectives_train_and_record_their_settings(tmp_path, objective):
    train(
        tmp_path,
        f"--config.objective.name={objective}",
        "--config.objective.awp_warmup_epochs=0",
        "--config.objective.trades_beta=3",
    )
    config = json.load(open(tmp_path / "run_config.json"))
    assert config["objective"]["name"] == objective and config["objective"]["trades_beta"] == 3.0
    assert config["attack"]["steps"] == 2
    history = json.load(open(tmp_path / "history.json"))
    assert history[-1]["train_loss"] == history[-1]["train_loss"]  # finite


def test_config_file_with_overrides_on_top(tmp_path):
    proc = train(tmp_path, "--config=launch/configs/rat_digits.py", "--config.attack.eps=16/255")
    config = json.load(open(tmp_path / "run_config.json"))
    assert config["objective"]["name"] == "trades_rat" and config["objective"]["trades_beta"] == 6.0
    assert config["objective"]["label_smoothing"] == 0.0 and config["objective"]["rat_weight_noise"] == 1e-4
    assert abs(config["attack"]["eps"] - 16 / 255) < 1e-12 and config["attack"]["step_size"] == 8 / 255
    assert "trades_rat" in proc.stdout


# The bad objective fields and the misspelled config field (one `error:` line each) are
# tests/test_bad_flags.py's TRAIN cases.


def test_compare_objectives_aggregates_each_row_over_its_seeds(tmp_path, monkeypatch, capsys):
    # The table's statistics on hand-made results, one set per (row, seed): the real smoke below runs one seed,
    # whose "x ± 0.0 (x–x)" cannot show a wrong mean, a population instead of a sample standard deviation,
    # a wrong min-max, runs paired with the wrong row or seed, or AutoAttack's per-attack rows leaking in.
    monkeypatch.syspath_prepend(os.path.join(ROOT, "benchmarks"))
    import compare_objectives

    top1 = {  # (row, seed) -> clean, pgd1, autoattack, worst case top-1 (%)
        ("trades", 0): (80, 50, 40, 39),
        ("trades", 1): (84, 56, 42, 41),
        ("trades", 4): (85, 47, 47, 43),
        ("pgd_at", 0): (70, 60, 30, 29),
        ("pgd_at", 1): (76, 61, 35, 34),
        ("pgd_at", 4): (73, 65, 31, 30),
    }
    calls = []

    def fake_run(name, seed, out, flags):
        calls.append((name, seed, out, flags))
        clean, pgd1, aa, worst = top1[name, seed]
        return {
            "clean": {"top1": clean / 100, "count": 16},
            "pgd1": {"top1": pgd1 / 100, "count": 16},
            "autoattack/apgd-ce": {"top1": 0.99, "count": 16},  # not a column of the table
            "autoattack": {"top1": aa / 100, "count": 16},
            "worst case": {"top1": worst / 100, "count": 16},
        }

    monkeypatch.setattr(compare_objectives, "run", fake_run)
    extra = "--config.schedule.epochs=1"
    argv = ["compare_objectives.py", "--rows=trades,pgd_at", "--seeds=0,1,4", f"--out={tmp_path}", "--", extra]
    monkeypatch.setattr(sys, "argv", argv)
    compare_objectives.main()
    assert calls == [
        (row, seed, str(tmp_path), [*compare_objectives.BUDGET, *compare_objectives.ROWS[row], extra])
        for row in ("trades", "pgd_at")
        for seed in (0, 1, 4)
    ]
    # Worked by hand: mean, sample standard deviation (n - 1), min-max over the three seeds of each row.
    assert (tmp_path / "table.md").read_text() == (
        "| configuration | clean top-1 (%) | pgd1 top-1 (%) | autoattack top-1 (%) | worst case top-1 (%) |\n"
        "|---|---|---|---|---|\n"
        "| trades | 83.0 ± 2.6 (80.0–85.0) | 51.0 ± 4.6 (47.0–56.0) | 43.0 ± 3.6 (40.0–47.0) "
        "| 41.0 ± 2.0 (39.0–43.0) |\n"
        "| pgd_at | 73.0 ± 3.0 (70.0–76.0) | 62.0 ± 2.6 (60.0–65.0) | 32.0 ± 2.6 (30.0–35.0) "
        "| 31.0 ± 2.6 (29.0–34.0) |\n"
    )
    assert "3 seeds each (0, 1, 4)" in capsys.readouterr().out


def test_compare_objectives_smoke(tmp_path):
    # The README's comparison command, on a seconds-long configuration: each row a real train.py run and its
    # report read back into the table. One seed (a second one repeated the same pipeline for ~35 CPU-s); the
    # statistics over seeds are checked on hand-made numbers above.
    cmd = [
        sys.executable,
        os.path.join(ROOT, "benchmarks", "compare_objectives.py"),
        "--rows=trades,pgd_at",
        "--seeds=0",
        f"--out={tmp_path}",
        "--",
        "--config.schedule.epochs=1",
        "--config.data.limit_train=64",
        "--config.data.limit_test=16",
        "--config.schedule.batch_size=32",
        "--config.eval.steps=1",
        "--config.eval.autoattack_options=('apgd-ce.steps=5','apgd-t.steps=5','fab-t.steps=5','square.queries=50')",
    ]
    proc = subprocess.run(
        cmd, capture_output=True, text=True, timeout=600, cwd=ROOT, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    table = open(tmp_path / "table.md").read()
    assert "| configuration | clean top-1 (%) | pgd1 top-1 (%) | autoattack top-1 (%) | worst case top-1 (%) |" in table
    for row in ("trades", "pgd_at"):  # each row's cells are its own run's results
        results = json.load(open(tmp_path / f"{row}_seed0" / "report" / "robustness.json"))["results"]
        assert results["clean"]["count"] == 16
        cells = [f"{100 * results[c]['top1']:.1f}" for c in ("clean", "pgd1", "autoattack", "worst case")]
        assert f"| {row} | " + " | ".join(f"{v} ± 0.0 ({v}–{v})" for v in cells) + " |" in table, table
    bad = subprocess.run([sys.executable, cmd[1], "--rows=nope"], capture_output=True, text=True, cwd=ROOT)
    assert bad.returncode == 2 and "--rows" in bad.stderr


def test_sparta_transfer_through_the_launcher(tmp_path):
    # Train with Sparta, then train another network with those Sparta weights loaded and frozen.
    import numpy as np

    train(tmp_path / "source", "--config.model.activation=sparta")
    source = np.load(tmp_path / "source" / "sparta.npz")
    train(
        tmp_path / "target",
        "--config.model.activation=sparta",
        "--config.system.seed=5",
        f"--config.model.load_sparta={tmp_path / 'source' / 'sparta.npz'}",
    )
    target = np.load(tmp_path / "target" / "sparta.npz")
    for key in ("gate_weights", "gate_bias"):
        np.testing.assert_array_equal(source[key], target[key])
    assert np.abs(source["gate_weights"] - np.pad([[1.0]], 1)).max() > 0  # the source run trained it
    # load_sparta with another activation, or a missing file: one `error:` line (tests/test_bad_flags.py).


def test_cifar_config_trains_on_a_small_stand_in(tmp_path):
    # The rat_cifar10 recipe (no CIFAR data here), with the data set, model and length overridden to run in
    # seconds: every other field of the file reaches the run.
    train(
        tmp_path,
        "--config=launch/configs/rat_cifar10.py",
        "--config.data.name=digits",
        "--config.model.name=digits_cnn",
        "--config.eval.eps=8/255",
        "--config.eval.step_size=2/255",
    )
    config = json.load(open(tmp_path / "run_config.json"))
    assert config["schedule"]["decay_epochs"] == [100, 150] and config["optimizer"]["weight_decay"] == 5e-4
    assert config["optimizer"]["nesterov"] is False and config["model"]["preprocessing"] == "none"
    assert config["optimizer"]["learning_rate"] == 0.2 and config["objective"]["name"] == "trades_rat"
    assert abs(config["attack"]["eps"] - 8 / 255) < 1e-12
