"""launch/train.py with --objective (TRADES / AWP / RAT) and --preset."""

import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = ["--epochs=1", "--eval_autoattack=none", "--limit_train=128", "--limit_test=32", "--batch_size=32", "--export=false",
        "--attack_iter=2", "--eval_attack_iters=2"]


def train(workdir, *flags, check=True):
    cmd = [sys.executable, os.path.join(ROOT, "launch", "train.py"), *TINY, f"--workdir={workdir}", *flags]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=ROOT,
                          env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
    if check and proc.returncode != 0:
        raise AssertionError(f"{cmd} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}")
    return proc


@pytest.mark.parametrize("objective", ["trades", "awp_trades_rat"])
def test_objectives_train_and_record_their_settings(tmp_path, objective):
    train(tmp_path, f"--objective={objective}", "--awp_warmup=0", "--trades_beta=3")
    config = json.load(open(tmp_path / "run_config.json"))
    attack = config["train_attack"]
    assert attack["name"] == objective and attack["beta"] == 3.0 and attack["steps"] == 2
    if objective == "awp_trades_rat":
        assert attack["rat_alpha"] == 0.2 and attack["awp_gamma"] == 0.005 and attack["rat_c"] == 0.8
        assert "attack_weight_noise" not in attack  # RAT's AWP variant: no attacker weight noise
    history = json.load(open(tmp_path / "history.json"))
    assert history[-1]["train_loss"] == history[-1]["train_loss"]  # finite


def test_preset_fills_unset_flags_and_explicit_flags_win(tmp_path):
    train(tmp_path, "--preset=rat_digits", "--attack_epsilon=16")
    config = json.load(open(tmp_path / "run_config.json"))
    applied = config["preset"]["applied"]
    assert config["preset"]["name"] == "rat_digits"
    assert applied["objective"] == "trades_rat" and applied["trades_beta"] == 6.0
    assert "attack_epsilon" not in applied and "epochs" not in applied  # given on the command line
    assert abs(config["train_attack"]["eps"] - 16 / 255) < 1e-9
    assert config["train_attack"]["attack_weight_noise"] == 1e-4


@pytest.mark.parametrize(
    "flags,needle",
    [(["--objective=trades", "--noise_sd=0.25"], "--objective=trades"), (["--rat_alpha=2"], "--rat_alpha"),
     (["--objective=trades", "--attack_iter=0"], "--attack_iter"), (["--preset=nope"], "--preset")],
)
def test_bad_objective_flags(tmp_path, flags, needle):
    proc = train(tmp_path, *flags, check=False)
    assert proc.returncode in (1, 2) and needle in proc.stderr


def test_compare_objectives_smoke(tmp_path):
    # The README's comparison command, on a seconds-long configuration.
    cmd = [sys.executable, os.path.join(ROOT, "benchmarks", "compare_objectives.py"), "--rows=trades,pgd_at",
           "--seeds=0,1", f"--out={tmp_path}", "--", "--epochs=1", "--limit_train=64", "--limit_test=16",
           "--batch_size=32", "--eval_attack_iters=1",
           "--autoattack_options=apgd-ce.steps=5,apgd-t.steps=5,fab-t.steps=5,square.queries=50"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=ROOT,
                          env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    table = open(tmp_path / "table.md").read()
    assert "| configuration | clean top-1 (%) | pgd1 top-1 (%) | autoattack top-1 (%) | worst case top-1 (%) |" in table
    assert "| trades |" in table and "| pgd_at |" in table and " ± " in table
    bad = subprocess.run([sys.executable, cmd[1], "--rows=nope"], capture_output=True, text=True, cwd=ROOT)
    assert bad.returncode == 2 and "--rows" in bad.stderr


def test_sparta_transfer_through_the_launcher(tmp_path):
    # Train with Sparta, then train another network with those Sparta weights loaded and frozen.
    import numpy as np

    train(tmp_path / "source", "--activation=sparta", "--attack=pgd")
    source = np.load(tmp_path / "source" / "sparta.npz")
    train(tmp_path / "target", "--activation=sparta", "--attack=pgd", "--seed=5",
          f"--load_sparta={tmp_path / 'source' / 'sparta.npz'}")
    target = np.load(tmp_path / "target" / "sparta.npz")
    for key in ("gate_weights", "gate_bias"):
        np.testing.assert_array_equal(source[key], target[key])
    assert np.abs(source["gate_weights"] - np.pad([[1.0]], 1)).max() > 0  # the source run trained it
    proc = train(tmp_path / "bad", "--activation=silu", f"--load_sparta={tmp_path / 'source' / 'sparta.npz'}",
                 check=False)
    assert proc.returncode == 2 and "--load_sparta" in proc.stderr


def test_cifar_preset_flags_parse_and_train_on_a_small_stand_in(tmp_path):
    # The rat_cifar10 recipe (no CIFAR data here): every preset flag is applied and
    # validated, with the data set, model and length overridden to run in seconds.
    train(tmp_path, "--preset=rat_cifar10", "--dataset=digits", "--model=digits_cnn", "--attack_iter=1",
          "--epochs=1")
    config = json.load(open(tmp_path / "run_config.json"))
    applied = config["preset"]["applied"]
    assert applied["lr_decay_epochs"] == ["100", "150"] and applied["weight_decay"] == 5e-4
    assert applied["nesterov"] is False and applied["preprocessing"] == "none" and applied["learning_rate"] == 0.2
    assert config["train_attack"]["name"] == "trades_rat" and config["train_attack"]["rat_alpha"] == 0.2
    assert config["model_kwargs"]["preprocessing"] == "none"
    assert abs(config["train_attack"]["eps"] - 8 / 255) < 1e-9 and config["flags"]["nesterov"] is False
