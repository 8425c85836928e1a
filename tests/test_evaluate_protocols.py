"""launch/evaluate.py --protocol: the RAT / TRADES / AWP evaluation and friends.

The expected parameters below are copied by hand from the reference's
eval_attack.py (Alexkael/Randomized-Adversarial-Training), not from sat_tf/evaluation/protocols.py, so a
typo in the preset table fails here.
"""

import inspect
import json
import os
import sys

import numpy as np
import pytest
import tensorflow as tf
from conftest import ROOT, run_launcher

sys.path.insert(0, ROOT)

from launch import common  # noqa: E402
from sat_tf import attacks  # noqa: E402
from sat_tf.evaluation import protocols  # noqa: E402

_PGD = {
    "func": attacks.pgd,
    "norm": "linf",
    "loss": "ce",
    "targeted": False,
    "random_start": True,
    "prob_start_from_clean": 0.0,
    "step_size_rule": "fixed",
    "restarts": 1,
    "cw_kappa": 50.0,
}
_FGSM = {"func": attacks.fgsm, "norm": "linf", "loss": "ce", "targeted": False, "cw_kappa": 50.0}
RAT_CIFAR = {
    "fgsm": {**_FGSM, "eps": 0.031},
    "pgd20": {**_PGD, "eps": 0.031, "step_size": 0.003, "steps": 20},
    "cw20": {**_PGD, "eps": 0.031, "step_size": 0.003, "steps": 20, "loss": "cw", "cw_kappa": 50.0},
}
RAT_SVHN = {
    "fgsm": {**_FGSM, "eps": 4 / 255},
    "pgd20": {**_PGD, "eps": 4 / 255, "step_size": 1 / 255, "steps": 20},
    "cw20": {**_PGD, "eps": 4 / 255, "step_size": 1 / 255, "steps": 20, "loss": "cw", "cw_kappa": 50.0},
}
# A run whose own budget must lose to the presets' fixed values.
RUN_EVAL = {"epsilon": 0.5, "step_size": 0.25, "iters": [7]}


def effective(attack):
    """Every argument the bound attack runs with (bound keywords + defaults)."""
    bound = inspect.signature(attack.func).bind(None, None, None, **attack.keywords)
    bound.apply_defaults()
    params = {k: v for k, v in bound.arguments.items() if k not in ("logits_fn", "x", "y", "seed", "point_ids")}
    return {"func": attack.func, **params}


def table(name, run_eval=RUN_EVAL, **explicit):
    protocol = protocols.PROTOCOLS[name]
    return protocols.build_attacks(protocol, **protocols.resolve_budget(protocol, run_eval, **explicit))


@pytest.mark.parametrize("shape", [(8, 8, 1), (32, 32, 3), (5, 7, 2)])
def test_max_epsilon_is_the_largest_distance_between_two_images(shape):
    black, white = np.zeros(shape), np.ones(shape)
    rng = np.random.default_rng(0)
    for norm, order in (("linf", np.inf), ("l2", 2), ("l1", 1)):
        largest = protocols.max_epsilon(norm, shape)
        assert largest == pytest.approx(np.linalg.norm((white - black).ravel(), order))
        a, b = rng.uniform(size=(2, *shape))
        assert np.linalg.norm((a - b).ravel(), order) <= largest
    assert protocols.max_epsilon("linf") == 1.0 and protocols.max_epsilon("l2") is None
    with pytest.raises(ValueError, match="l3"):
        protocols.max_epsilon("l3", shape)


@pytest.mark.parametrize("name,expected", [("rat_cifar", RAT_CIFAR), ("rat_svhn", RAT_SVHN)])
def test_rat_presets_have_the_reference_parameters(name, expected):
    got = table(name)
    assert list(got) == ["clean", "fgsm", "pgd20", "cw20"] and got["clean"] is None
    assert {row: effective(attack) for row, attack in got.items() if attack} == expected


def test_explicit_values_beat_the_preset_and_the_preset_beats_the_run():
    got = table("rat_cifar", epsilon=8 / 255, steps=[10, 0, 50])
    assert list(got) == ["clean", "fgsm", "pgd10", "pgd50", "cw10", "cw50"]  # PGD-0 is the clean row
    assert effective(got["fgsm"])["eps"] == 8 / 255
    assert effective(got["cw50"]) == {**RAT_CIFAR["cw20"], "eps": 8 / 255, "steps": 50}
    strong = table("strong")  # no budget of its own: the run's
    assert list(strong) == ["clean", "pgd100", "cw100"]
    assert effective(strong["cw100"]) == {
        **_PGD,
        "eps": 0.5,
        "step_size": 0.25,
        "steps": 100,
        "loss": "cw",
        "restarts": 5,
    }
    restarted = protocols.build_attacks(
        protocols.PROTOCOLS["strong"], epsilon=0.1, step_size=0.1, steps=[3], restarts=2
    )
    assert effective(restarted["pgd3"])["restarts"] == 2


def test_protocols_put_autoattack_where_their_papers_report_it():
    budget = {"epsilon": 0.031, "step_size": 0.003, "steps": [20]}
    versions = {name: protocols.build_rows(protocols.PROTOCOLS[name], **budget)[-1] for name in protocols.PROTOCOLS}
    assert {name: getattr(row, "version", None) for name, row in versions.items()} == {
        "run": "standard",
        "sat_imagenet": "standard",
        "rat_cifar": "standard",
        "rat_svhn": "standard",
        "strong": "plus",
        "autoattack": "standard",
    }
    assert versions["rat_cifar"].eps == 8 / 255  # RAT's eval_autoattack.py, beside PGD's 0.031
    assert versions["sat_imagenet"].eps == 0.031  # the budget (given here), as every other protocol
    # An explicit budget also moves AutoAttack's; --autoattack picks or drops it.
    assert protocols.build_rows(protocols.PROTOCOLS["rat_cifar"], **{**budget, "epsilon": 0.05})[-1].eps == 0.05
    plus = protocols.build_rows(protocols.PROTOCOLS["run"], **budget, autoattack="plus", norm="l2")[-1]
    assert (plus.version, plus.norm) == ("plus", "l2")
    assert [r.name for r in protocols.build_rows(protocols.PROTOCOLS["run"], **budget, autoattack=None)] == [
        "clean",
        "pgd20",
    ]


def test_default_protocol_builds_what_evaluate_always_built():
    ours = table("run")
    theirs = common.eval_attacks([7], epsilon=0.5, step_size=0.25)
    assert list(ours) == list(theirs) == ["clean", "pgd7"]
    assert effective(ours["pgd7"]) == effective(theirs["pgd7"])
    sat = table("sat_imagenet")
    assert list(sat) == ["clean", "pgd10", "pgd20", "pgd50", "pgd200"]
    assert effective(sat["pgd200"]) == {**effective(theirs["pgd7"]), "eps": 4 / 255, "step_size": 1 / 255, "steps": 200}


# === One step on a linear model, by hand ===


def linear_problem(margins):
    """logits = flatten(x) @ w + offset; `offset` sets each example's initial
    CW margin max_{j != y} z_j - z_y to `margins[i]` (a constant: no gradient)."""
    rng = np.random.default_rng(0)
    b, d, c = len(margins), 16, 10
    x = rng.uniform(0.2, 0.8, size=(b, 4, 4, 1)).astype(np.float32)
    y = rng.integers(0, c, size=b)
    w = rng.normal(size=(d, c)).astype(np.float32)
    z0 = x.reshape(b, d).astype(np.float64) @ w
    offset = np.zeros((b, c))
    for i, m in enumerate(margins):
        offset[i, y[i]] = np.delete(z0[i], y[i]).max() - z0[i, y[i]] - m

    def logits_fn(z):
        return tf.matmul(tf.reshape(z, [b, d]), w) + tf.constant(offset, tf.float32)

    return x, y, w, z0 + offset, logits_fn


def one_step(x, grad, eps, step):
    """The reference's update: sign step, project to the eps-ball, clip to [0, 1]."""
    moved = x + np.float32(step) * np.sign(grad).reshape(x.shape).astype(np.float32)
    return np.clip(np.clip(moved, x - np.float32(eps), x + np.float32(eps)), 0.0, 1.0)


def ce_grad(w, z, y):
    p = np.exp(z - z.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    return (p - np.eye(z.shape[1])[y]) @ w.T


def margin_grad(w, z, y, kappa):
    """d min(max_{j != y} z_j - z_y, kappa) / dx: zero where the clamp is active."""
    other = np.where(np.eye(z.shape[1])[y] > 0, -np.inf, z).argmax(-1)
    active = (z[np.arange(len(y)), other] - z[np.arange(len(y)), y]) < kappa
    return (w[:, other] - w[:, y]).T * active[:, None]


def test_cw_row_takes_one_sign_step_on_the_kappa_50_margin():
    # Margins 45 and 55 straddle kappa = 50: only the examples below it move.
    x, y, w, z, logits_fn = linear_problem([-20.0, -3.0, 10.0, 45.0, 55.0, 80.0])
    got = table("rat_cifar")["cw20"](logits_fn, x, y, steps=1, random_start=False, seed=0).numpy()
    want = one_step(x, margin_grad(w, z, y, kappa=50.0), 0.031, 0.003)
    np.testing.assert_allclose(got, want, atol=1e-6)
    assert np.array_equal(got[4:], x[4:]) and not np.allclose(got[3], x[3])
    # The test can tell the losses apart: CE or an unclamped margin would move differently.
    assert not np.allclose(got, one_step(x, ce_grad(w, z, y), 0.031, 0.003), atol=1e-6)
    assert not np.allclose(got, one_step(x, margin_grad(w, z, y, kappa=np.inf), 0.031, 0.003), atol=1e-6)


@pytest.mark.parametrize(
    "row,eps,step,overrides", [("fgsm", 0.031, 0.031, {}), ("pgd20", 0.031, 0.003, {"steps": 1, "random_start": False})]
)
def test_fgsm_and_pgd_rows_step_on_the_cross_entropy(row, eps, step, overrides):
    x, y, w, z, logits_fn = linear_problem([0.0] * 6)
    got = table("rat_cifar")[row](logits_fn, x, y, seed=0, **overrides).numpy()
    np.testing.assert_allclose(got, one_step(x, ce_grad(w, z, y), eps, step), atol=1e-6)


# === The launcher, end to end ===


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    # Clean training for 3 short epochs: accurate enough (~70 %) that the
    # attacks have something to lower, in about 10 s.
    path = str(tmp_path_factory.mktemp("protocols") / "digits")
    run_launcher("train.py", *TRAIN_FLAGS, f"--workdir={path}")
    return path


TRAIN_FLAGS = (
    "--config.schedule.epochs=3",
    "--config.data.limit_train=512",
    "--config.data.limit_test=32",
    "--config.schedule.batch_size=32",
    "--config.export.enabled=false",
    "--config.attack.name=none",
    "--config.eval.autoattack=none",
    "--config.optimizer.learning_rate=2",
    "--config.schedule.warmup_epochs=0",
    "--config.system.deterministic",
    "--config.mode=train",  # no end-of-training evaluation: the tests evaluate with launch/evaluate.py
)


def report(directory):
    with open(os.path.join(directory, "robustness.json")) as f:
        return json.load(f)


def test_rat_cifar_end_to_end(workdir, tmp_path):
    proc = run_launcher(
        "evaluate.py",
        f"--workdir={workdir}",
        "--protocol=rat_cifar",
        "--limit=32",
        # A short AutoAttack (same attacks, version and budget; fewer steps, targets and queries): nothing below
        # depends on its strength, and the full one is tests/test_autoattack.py's.
        "--autoattack_options=apgd-ce.steps=10,apgd-t.steps=10,apgd-t.n_target_classes=2,fab-t.steps=10,"
        "fab-t.n_target_classes=2,square.queries=100",
        f"--output_dir={tmp_path}",
    )
    out = report(tmp_path)
    results, meta = out["results"], out["meta"]
    aa = [f"autoattack/{name}" for name in ("apgd-ce", "apgd-t", "fab-t", "square")]
    assert list(results) == ["clean", "fgsm", "pgd20", "cw20", *aa, "autoattack", "worst case"]
    assert all(row["count"] == 32 for row in results.values())
    clean = results["clean"]["top1"]
    assert clean > 0.3 and all(results[k]["top1"] <= clean for k in ("fgsm", "pgd20", "cw20"))
    assert min(results[k]["top1"] for k in ("fgsm", "pgd20", "cw20")) < clean
    assert meta["protocol"] == "rat_cifar" and meta["epsilon"] == 0.031 and meta["step"] == 0.003
    assert meta["steps"] == [20] and "cw_kappa=50" in meta["attacks"]["cw20"]
    # RAT's AutoAttack: standard at 8/255 (not the PGD rows' 0.031), and the worst case over every row.
    assert meta["autoattack"]["version"] == "standard" and meta["autoattack"]["epsilon"] == 8 / 255
    assert meta["autoattack"]["options"]["square"] == {"queries": 100}  # the short one ran
    assert results["worst case"]["top1"] == min(row["top1"] for row in results.values())
    assert "| cw20 |" in proc.stdout and "| worst case |" in proc.stdout


def test_flags_override_the_protocol_end_to_end(workdir, tmp_path):
    run_launcher(
        "evaluate.py",
        f"--workdir={workdir}",
        "--protocol=rat_svhn",
        "--attack_epsilon=8",
        "--steps=3",
        "--restarts=2",
        "--limit=32",
        "--autoattack=none",
        f"--output_dir={tmp_path}",
    )
    out = report(tmp_path)
    assert list(out["results"]) == ["clean", "fgsm", "pgd3", "cw3", "worst case"]
    meta = out["meta"]
    assert meta["epsilon"] == 8 / 255 and meta["step"] == 1 / 255 and meta["steps"] == [3]
    assert "restarts=2" in meta["attacks"]["cw3"] and "restarts" not in meta["attacks"]["fgsm"]


def test_an_evaluation_after_more_training_does_not_resume_the_older_weights(workdir, tmp_path):
    """The per-image state is named by the checkpoint restored: the same command after more training in the same
    workdir evaluates the new weights (before, it resumed the finished rows of the old ones)."""
    import shutil

    run = str(tmp_path / "run")
    shutil.copytree(workdir, run)  # the module's run stays as it is for the other tests
    out = tmp_path / "report"
    command = ("evaluate.py", f"--workdir={run}", "--limit=32", "--steps=2", "--autoattack=none", f"--output_dir={out}")
    run_launcher(*command)
    first = sorted(p.name for p in out.glob("evaluation_state*.json"))
    with open(os.path.join(run, "checkpoints", "checkpoint")) as f:
        latest = f.readline().split('"')[1]  # model_checkpoint_path: "ckpt-N"
    assert first == [f"evaluation_state-{latest}.json"]
    # One more epoch in the same workdir (resumed from its checkpoint), then the same command again.
    flags = [f for f in TRAIN_FLAGS if not f.startswith("--config.schedule.epochs")] + ["--config.schedule.epochs=4"]
    run_launcher("train.py", *flags, f"--workdir={run}")
    run_launcher(*command)
    second = sorted(p.name for p in out.glob("evaluation_state*.json"))
    assert len(second) == 2 and set(first) < set(second)  # a new state: nothing resumed from the old weights


def test_a_model_file_saved_again_in_place_is_evaluated_afresh(workdir, tmp_path):
    """--model_path: the per-image state is named by the model's content digest; the same command on a file
    saved again with other weights starts a new state, and on the same file it resumes the one it wrote."""
    import shutil

    import keras

    from sat_tf import models  # noqa: F401  (registers the model classes for loading)

    model_path = str(tmp_path / "model.keras")
    shutil.copy(os.path.join(workdir, "model.keras"), model_path)
    out = tmp_path / "report"
    command = (
        "evaluate.py",
        f"--model_path={model_path}",
        "--dataset=digits",
        "--eps=32/255",
        "--limit=32",
        "--steps=2",
        "--autoattack=none",
        f"--output_dir={out}",
    )
    run_launcher(*command)
    first = sorted(p.name for p in out.glob("evaluation_state*.json"))
    assert len(first) == 1 and first[0].startswith("evaluation_state-model-")
    run_launcher(*command)  # the same file: resumed, no new state
    assert sorted(p.name for p in out.glob("evaluation_state*.json")) == first
    model = keras.saving.load_model(model_path, safe_mode=True)
    model.set_weights([w * 0.5 for w in model.get_weights()])
    model.save(model_path)
    run_launcher(*command)
    second = sorted(p.name for p in out.glob("evaluation_state*.json"))
    assert len(second) == 2 and set(first) < set(second)


def test_nofused_kernels_evaluates_through_the_plain_ops_to_the_same_numbers(workdir, tmp_path, monkeypatch):
    """--nofused_kernels traces the model's activations as plain ops (the XLA kernels are never asked for) and
    gives the fused evaluation's numbers; without it, the fused kernels are used (the control)."""
    from conftest import run_launcher_in_process

    import sat_tf.activations as activations

    command = ("--limit=32", "--steps=2", "--autoattack=none", f"--workdir={workdir}")
    run_launcher_in_process("evaluate.py", *command, f"--output_dir={tmp_path / 'fused'}")

    def no_fused_kernels():
        raise AssertionError("a fused kernel was traced")

    monkeypatch.setattr(activations, "_fused_kernels", no_fused_kernels)
    with pytest.raises(AssertionError, match="a fused kernel was traced"):  # the control: the default fuses
        run_launcher_in_process("evaluate.py", *command, f"--output_dir={tmp_path / 'control'}")
    run_launcher_in_process("evaluate.py", *command, "--nofused_kernels", f"--output_dir={tmp_path / 'plain'}")
    fused, plain = report(tmp_path / "fused"), report(tmp_path / "plain")
    assert plain["meta"]["kernels"] == "plain ops (--nofused_kernels)" and "kernels" not in fused["meta"]
    counts = {name: {row: r["top1"] for row, r in out["results"].items()} for name, out in (("f", fused), ("p", plain))}
    assert counts["f"] == counts["p"] and list(counts["p"]) == ["clean", "pgd2", "worst case"]


# The bad --protocol flags (one `error:` line) are tests/test_bad_flags.py's EVALUATE cases.
