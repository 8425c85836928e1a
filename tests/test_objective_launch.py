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


@pytest.mark.parametrize(
    "flags,field",
    [
        (["--config.objective.name=gaussian", "--config.objective.noise_sd=0.25"], "config.attack.name="),
        (["--config.objective.rat_alpha=2"], "config.objective.rat_alpha="),
        (["--config.objective.name=trades", "--config.attack.steps=0"], "config.attack.steps="),
    ],
)
def test_bad_objective_fields(tmp_path, flags, field):
    proc = train(tmp_path, *flags, check=False)
    assert proc.returncode == 2 and field in proc.stderr, proc.stderr[-2000:]


def test_unknown_config_field_is_one_error(tmp_path):
    proc = train(tmp_path, "--config.atack.eps=8/255", check=False)
    lines = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
    assert proc.returncode == 2 and len(lines) == 1 and 'Did you mean "attack"' in lines[0], proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr


def test_compare_objectives_smoke(tmp_path):
    # The README's comparison command, on a seconds-long configuration.
    cmd = [
        sys.executable,
        os.path.join(ROOT, "benchmarks", "compare_objectives.py"),
        "--rows=trades,pgd_at",
        "--seeds=0,1",
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
    assert "| trades |" in table and "| pgd_at |" in table and " ± " in table
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
    proc = train(
        tmp_path / "bad",
        "--config.model.activation=silu",
        f"--config.model.load_sparta={tmp_path / 'source' / 'sparta.npz'}",
        check=False,
    )
    assert proc.returncode == 2 and "config.model.activation=" in proc.stderr


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
