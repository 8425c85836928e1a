"""AutoAttack's composition: against the reference AutoAttack on the same weights and points, and its invariants.

The cross-check runs both `standard` evaluations on 360 held-out digits and an adversarially trained MLP
(~88 % clean, ~64 % robust at L-inf 0.1). Random draws differ between the frameworks, so robust accuracy is
compared with a tolerance: the attacks are the same deterministic algorithms, and only points on the edge of
being broken can go either way. Two points of accuracy (7 of 360 images) is about two binomial standard errors
of the ~3 % of points that flip between two runs of either implementation with different seeds (measured:
0-1 %), and ours may never be weaker than the reference by more than that.
"""

import importlib
import logging

import aa_reference
import numpy as np
import pytest
import tensorflow as tf
from conftest import logits_of

from sat_tf import evaluation
from sat_tf.attacks import base, pgd

aa = importlib.import_module("sat_tf.attacks.autoattack")  # the module (the package exports the function)

TOLERANCE = 0.02  # robust accuracy, see the module docstring


def graph(fn, **kwargs):
    """`autoattack` with `kwargs` as a tf.function of (x, y, eps): eager while-loops would be slow."""
    return tf.function(lambda a, b, eps: aa.autoattack(fn, a, b, eps=eps, **kwargs))


def quick(**extra):
    """Settings for the invariant tests: every attack, fewer iterations."""
    return {
        "apgd-ce": {"steps": 20},
        "apgd-t": {"steps": 20, "n_target_classes": 3},
        "fab-t": {"steps": 20, "n_target_classes": 3},
        "square": {"queries": 200},
        **extra,
    }


@pytest.mark.slow
def test_standard_agrees_with_the_reference(robust_mlp):
    torch = pytest.importorskip("torch", reason="PyTorch cross-check: pip install -e '.[crosscheck]'")
    reference = pytest.importorskip("pyautoattack", reason="pip install -e '.[crosscheck]' (pyautoattack)")
    model, x, y = robust_mlp
    ours = tf.function(lambda a, b: aa.autoattack(logits_of(model), a, b, eps=0.1, seed=0))(x, y)
    ours_robust = ours.robust["square"].numpy()
    assert ours.warnings() == []

    twin = aa_reference.torch_twin(model)
    runner = reference.AutoAttack(twin, eps=0.1, norm="Linf", seed=0, version="standard", device="cpu")
    runner.logger.setLevel(logging.WARNING)
    # One intra-op thread for the reference: on a small MLP torch's thread pool only spins, and next to TF's
    # threads on a 2-core CI box that cost ~110 CPU-s where one thread takes ~6 (the same attack and checks).
    # Restored afterwards: other torch tests may share this pytest process.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        x_ref, _ = runner.run_standard_evaluation(aa_reference.to_nchw(x), torch.from_numpy(y), batch_size=250)
    finally:
        torch.set_num_threads(threads)
    with torch.no_grad():
        theirs_robust = twin(x_ref).argmax(1).numpy() == y
    ours_acc, theirs_acc = ours_robust.mean(), theirs_robust.mean()
    print(
        f"robust accuracy: ours {ours_acc:.4f}, reference {theirs_acc:.4f}, "
        f"same flags on {np.mean(ours_robust == theirs_robust):.4f} of {len(y)} points"
    )
    assert 0.3 < theirs_acc < 0.85  # a model with points to break and points to keep
    assert abs(ours_acc - theirs_acc) <= TOLERANCE
    assert ours_acc <= theirs_acc + TOLERANCE  # never weaker by more than the tolerance
    assert np.mean(ours_robust == theirs_robust) >= 0.97


def test_plan_has_the_references_composition():
    standard = {s.name: s.kwargs for s in aa.plan("standard")}
    assert list(standard) == ["apgd-ce", "apgd-t", "fab-t", "square"]
    assert standard["apgd-ce"]["restarts"] == 1 and standard["apgd-ce"]["steps"] == 100
    assert standard["apgd-t"]["n_target_classes"] == 9 and standard["apgd-t"]["restarts"] == 1
    assert standard["fab-t"]["n_target_classes"] == 9 and standard["fab-t"]["restarts"] == 1
    assert standard["square"]["queries"] == 5000 and standard["square"]["p_init"] == 0.8
    plus = {s.name: s.kwargs for s in aa.plan("plus")}
    assert list(plus) == ["apgd-ce", "apgd-dlr", "fab", "square", "apgd-t", "fab-t"]
    assert plus["apgd-ce"]["restarts"] == plus["apgd-dlr"]["restarts"] == plus["fab"]["restarts"] == 5
    assert plus["fab"]["targeted"] is False and plus["fab-t"]["restarts"] == 1
    rand = {s.name: s.kwargs for s in aa.plan("rand")}
    assert list(rand) == ["apgd-ce", "apgd-dlr"] and rand["apgd-dlr"]["eot_iter"] == 20


def test_invariants_on_a_robust_model(robust_mlp):
    """Inside the ball and the box; the worst case over attacks; AutoAttack <= PGD on the same points."""
    model, x, y = robust_mlp
    result = graph(logits_of(model), seed=1, options=quick())(x, y, 0.1)
    x_adv = result.x_adv.numpy()
    assert x_adv.min() >= 0 and x_adv.max() <= 1
    assert base.lp_norm(x_adv - x, "linf").numpy().max() <= 0.1 + 1e-6
    acc = result.robust_accuracy()
    assert list(acc) == ["clean", "apgd-ce", "apgd-t", "fab-t", "square"]
    assert all(a >= b for a, b in zip(list(acc.values()), list(acc.values())[1:]))  # cumulative
    final = result.robust["square"].numpy()
    pred = model(x_adv).numpy().argmax(1)
    np.testing.assert_array_equal(pred == y, final)  # the returned images are the per-point worst case
    np.testing.assert_array_equal(x_adv[final], x[final])
    pgd_adv = pgd(logits_of(model), x, y, eps=0.1, step_size=0.025, steps=20, seed=0)
    assert acc["square"] <= np.mean(model(pgd_adv).numpy().argmax(1) == y)


def test_robust_accuracy_reaches_zero_as_eps_grows(robust_mlp):
    model, x, y = robust_mlp
    x, y = x[:120], y[:120]
    run = graph(logits_of(model), seed=0, options=quick())
    accuracies = [run(x, y, tf.constant(eps)).robust_accuracy()["square"] for eps in (0.0, 0.1, 0.3, 0.6)]
    assert accuracies[0] == np.mean(model(x).numpy().argmax(1) == y)
    assert all(a >= b for a, b in zip(accuracies, accuracies[1:]))
    assert accuracies[-1] == 0.0  # no gradient masking: a big enough ball breaks everything


def test_a_gradient_masking_model_makes_square_win_and_the_warning_fire(robust_mlp):
    """Input quantisation (round to 1/2) has a zero gradient almost everywhere: the gradient attacks stall and
    the gradient-free Square breaks points they missed, which is what the reference's check warns about."""
    model, x, y = robust_mlp

    def quantised(z):
        return model(tf.round(z * 2.0) / 2.0, training=False)

    x, y = x[:160], y[:160]
    result = graph(quantised, seed=0, options=quick(square={"queries": 1000}))(x, y, 0.3)
    acc = result.robust_accuracy()
    assert acc["square"] < acc["fab-t"] - 0.002
    warnings = result.warnings()
    assert any("Square lowered robust accuracy" in w for w in warnings), warnings
    assert any("all-zero input gradient" in w for w in warnings), warnings


def test_graph_xla_and_eager_agree(robust_mlp):
    model, x, y = robust_mlp
    x, y = x[:40], y[:40]
    tiny = {
        "apgd-ce": {"steps": 5},
        "apgd-t": {"steps": 5, "n_target_classes": 2},
        "fab-t": {"steps": 5, "n_target_classes": 2},
        "square": {"queries": 20},
    }

    def run(a, b):
        return aa.autoattack(logits_of(model), a, b, eps=0.1, seed=3, options=tiny)

    graph = tf.function(run)(x, y)
    xla = tf.function(run, jit_compile=True)(x, y)
    eager = run(x, y)
    for other in (graph, xla):
        for name in eager.robust:
            assert np.mean(other.robust[name].numpy() == eager.robust[name].numpy()) >= 0.95


def test_the_evaluator_gives_the_in_graph_result(robust_mlp):
    """evaluate_points re-batches the points still robust between attacks; per-point draws make that the
    same result as the one-graph composition with the same seed."""
    model, x, y = robust_mlp
    x, y = x[:150], y[:150]
    rows = [aa.AutoAttackRows(eps=0.1, options=quick())]
    out = evaluation.evaluate_points(logits_of(model), x, y, rows, batch_size=64, seed=9)
    in_graph = graph(logits_of(model), seed=tf.constant([9, 0], tf.int64), options=quick())(x, y, 0.1)
    for name in ("apgd-ce", "apgd-t", "fab-t", "square"):
        np.testing.assert_array_equal(out["flags"][f"autoattack/{name}"], in_graph.robust[name].numpy())
    assert out["rows"]["autoattack"]["top1"] == out["rows"]["worst case"]["top1"]


def test_probability_outputs_are_flagged(robust_mlp):
    model, x, y = robust_mlp
    result = aa.autoattack(
        lambda z: tf.nn.softmax(model(z)),
        x[:32],
        y[:32],
        eps=0.1,
        seed=0,
        attacks=["apgd-ce"],
        options={"apgd-ce": {"steps": 5}},
    )
    assert any("look like probabilities" in w for w in result.warnings())


def test_a_randomised_model_is_flagged(robust_mlp):
    model, x, y = robust_mlp

    def noisy(z):
        return model(z + tf.random.normal(tf.shape(z), stddev=0.2))

    result = aa.autoattack(
        noisy, x[:32], y[:32], eps=0.1, seed=0, attacks=["apgd-ce"], options={"apgd-ce": {"steps": 5}}
    )
    assert any("version='rand'" in w for w in result.warnings())
    rand = aa.autoattack(
        noisy,
        x[:32],
        y[:32],
        eps=0.1,
        seed=0,
        version="rand",
        options={"apgd-ce": {"steps": 5, "eot_iter": 2}, "apgd-dlr": {"steps": 5, "eot_iter": 2}},
    )
    assert not any("version='rand'" in w for w in rand.warnings(version="rand"))


@pytest.mark.parametrize(
    "kwargs,error,match",
    [
        ({"eps": -0.1}, ValueError, "eps"),
        ({"version": "fast"}, ValueError, "version"),
        ({"norm": "l0"}, ValueError, "norm"),
        ({"norm": "l1"}, ValueError, "l1"),
        ({"attacks": ["apgd-ce", "pgd"]}, ValueError, "attacks"),
        ({"options": {"square": {"queries": 10}}, "attacks": ["apgd-ce"]}, ValueError, "do not run"),
        ({"options": {"square": {"quries": 10}}}, ValueError, "quries"),
        ({"seed": None}, ValueError, "seed"),
    ],
)
def test_bad_arguments_are_one_clear_error(robust_mlp, kwargs, error, match):
    model, x, y = robust_mlp
    with pytest.raises(error, match=match):
        aa.autoattack(logits_of(model), x[:4], y[:4], **{"eps": 0.1, **kwargs})


def test_too_few_classes_for_the_targets_names_the_fix():
    x = np.zeros((2, 4, 4, 1), np.float32)

    def five_classes(z):
        return tf.reshape(z, [-1, 16])[:, :5]

    with pytest.raises(
        ValueError,
        match=r"apgd-t with 9 target classes needs >= 10 classes; the model has 5\. "
        r"Pass options=\{'apgd-t': \{'n_target_classes': 4\}\}",
    ):
        aa.autoattack(five_classes, x, [0, 1], eps=0.1)
