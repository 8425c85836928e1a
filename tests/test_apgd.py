"""APGD against the reference AutoAttack code (pyautoattack) on the same weights, and its invariants.

Deterministic pieces are compared exactly: the checkpoint schedule, the DLR losses and their gradients, the
step-halving decisions on a given loss trace, and whole APGD runs from the same start point (`x_init`).
Random restarts cannot be bit-identical across frameworks, so full attacks are compared by robust accuracy
on 360 held-out digits with a tolerance the point count justifies.
"""

import functools
import importlib

import aa_reference
import numpy as np
import pytest
import tensorflow as tf
from conftest import logits_of

from sat_tf.attacks import base
from sat_tf.attacks.apgd import apgd, checkpoint_iterations, halving_decisions

apgd_module = importlib.import_module("sat_tf.attacks.apgd")  # the module (the package exports the function)


def reference_module():
    pytest.importorskip("torch", reason="PyTorch cross-check: pip install -e '.[crosscheck]'")
    return pytest.importorskip("pyautoattack.autopgd_base", reason="pip install --no-deps pyautoattack")


# --- Deterministic pieces --------------------------------------------------


def reference_checkpoints(steps):
    """Where the reference's loop (`counter3 == k`) checks, read off its own constants."""
    ref = reference_module().APGDAttack(lambda t: t, n_iter=steps, eps=0.1)
    k, counter, checks = ref.n_iter_2, 0, []
    for i in range(steps):
        counter += 1
        if counter == k:
            checks.append(i + 1)
            k = max(k - ref.size_decr, ref.n_iter_min)
            counter = 0
    return checks


def test_checkpoints_for_100_iterations_are_the_papers():
    assert checkpoint_iterations(100) == [22, 41, 57, 70, 80, 87, 93, 99]


@pytest.mark.parametrize("steps", [1, 2, 5, 10, 20, 37, 50, 100, 250, 1000])
def test_checkpoints_equal_the_reference(steps):
    assert checkpoint_iterations(steps) == reference_checkpoints(steps)


def test_dlr_losses_and_gradients_equal_the_reference(robust_mlp):
    torch = pytest.importorskip("torch")
    ref = reference_module().APGDAttack_targeted(lambda t: t, eps=0.1)
    model, x, y = robust_mlp
    twin = aa_reference.torch_twin(model)
    target = base.ranked_classes(model(x), 3).numpy()
    xt = aa_reference.to_nchw(x).requires_grad_()
    logits_t = twin(xt)
    ref.y_target = torch.from_numpy(target)
    dlr_t = ref.dlr_loss(logits_t, torch.from_numpy(y))
    tdlr_t = ref.dlr_loss_targeted(logits_t, torch.from_numpy(y))
    (g_dlr_t,) = torch.autograd.grad(dlr_t.sum(), xt, retain_graph=True)
    (g_tdlr_t,) = torch.autograd.grad(tdlr_t.sum(), xt)

    xs = tf.constant(x)
    with tf.GradientTape(persistent=True) as tape:
        tape.watch(xs)
        logits = model(xs)
        dlr = base.dlr_loss(logits, y)
        tdlr = base.dlr_loss_targeted(logits, y, target)
        sums = tf.reduce_sum(dlr), tf.reduce_sum(tdlr)
    g_dlr, g_tdlr = (tape.gradient(total, xs) for total in sums)
    np.testing.assert_allclose(dlr.numpy(), dlr_t.detach().numpy(), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(tdlr.numpy(), tdlr_t.detach().numpy(), rtol=1e-4, atol=1e-5)
    for ours, theirs in ((g_dlr, g_dlr_t), (g_tdlr, g_tdlr_t)):
        theirs = aa_reference.to_nhwc(theirs)
        scale = np.abs(theirs).max()
        np.testing.assert_allclose(ours.numpy(), theirs, atol=1e-4 * scale)


def test_targets_are_the_ranks_of_the_clean_logits():
    logits = tf.constant([[0.1, 3.0, 2.0, -1.0, 0.5]])
    assert [int(base.ranked_classes(logits, k)[0]) for k in range(1, 6)] == [1, 2, 4, 0, 3]


def reference_halving(trace, rho=0.75):
    """The reference's checkpoint decisions on a loss trace: its `check_oscillation` and halving lines."""
    torch = pytest.importorskip("torch")
    steps, batch = trace.shape
    ref = reference_module().APGDAttack(lambda t: t, n_iter=steps, eps=0.1, rho=rho)
    ref.device = "cpu"
    loss_steps = torch.zeros([steps, batch])
    loss_best = torch.full([batch], -float("inf"))
    best_last_check, reduced_last_check = loss_best.clone(), torch.ones(batch)
    k, counter, decisions = ref.n_iter_2, 0, []
    for i in range(steps):
        y1 = torch.from_numpy(trace[i])
        loss_steps[i] = y1
        improved = y1 > loss_best
        loss_best[improved] = y1[improved]
        counter += 1
        if counter == k:
            osc = ref.check_oscillation(loss_steps, i, k, loss_best, k3=ref.thr_decr)
            no_impr = (1.0 - reduced_last_check) * (best_last_check >= loss_best).float()
            osc = torch.max(osc, no_impr)
            reduced_last_check, best_last_check = osc.clone(), loss_best.clone()
            decisions.append(osc.numpy() > 0)
            k = max(k - ref.size_decr, ref.n_iter_min)
            counter = 0
    return np.array(decisions).reshape(-1, batch)


@pytest.mark.parametrize("steps", [1, 4, 30, 100])
def test_halving_decisions_on_a_loss_trace_equal_the_reference(steps):
    rng = np.random.default_rng(steps)
    # Traces of several shapes: rising, falling, oscillating, flat, noisy, with plateaus and negative losses.
    i = np.arange(steps, dtype=np.float32)[:, None]
    traces = np.concatenate(
        [
            np.cumsum(rng.normal(0.1, 1.0, (steps, 6)), 0),
            np.cumsum(rng.normal(-0.1, 1.0, (steps, 6)), 0),
            np.sin(i * np.array([0.5, 1.3, 2.9])) + 0.01 * i,
            np.repeat(rng.integers(-3, 3, (max(steps // 5, 1), 4)).astype(np.float32), 5, axis=0)[:steps],
            np.ones((steps, 2), np.float32) * np.array([2.0, -2.0]),
            -np.log1p(i) * np.array([1.0, 0.5]),
        ],
        axis=1,
    ).astype(np.float32)
    ours = halving_decisions(traces).numpy()
    theirs = reference_halving(traces)
    assert ours.shape == theirs.shape == (len(checkpoint_iterations(steps)), traces.shape[1])
    np.testing.assert_array_equal(ours, theirs)
    if steps >= 30:
        assert 0 < ours.mean() < 1  # the traces exercise both outcomes


@pytest.mark.parametrize("norm,eps", [("linf", 0.1), ("l2", 1.0)])
@pytest.mark.parametrize("loss", ["ce", "dlr", "dlr_targeted"])
def test_a_run_from_the_same_start_follows_the_reference(robust_mlp, norm, eps, loss):
    """Same weights, points and start: after 10 iterations the same adversarial images (float32 rounding in
    two frameworks aside); after 100 the same points broken (L2 trajectories drift apart by up to 5e-2 by
    then: a rounding difference in one normalised step grows)."""
    torch = pytest.importorskip("torch")
    ref_module = reference_module()
    model, x, y = robust_mlp
    correct = model(x).numpy().argmax(1) == y
    x, y = x[correct], y[correct]
    start = apgd_module._start_point(
        tf.constant(x), tf.constant(eps), norm, base.as_seed(5), base.default_point_ids(x), (0,)
    ).numpy()
    target = base.ranked_classes(model(x), 2).numpy()
    twin = aa_reference.torch_twin(model)
    ref_norm = {"linf": "Linf", "l2": "L2"}[norm]
    for steps in (10, 100):
        # Eagerly for the image comparison: graph rewrites fuse the model's ops, and a rounding difference can
        # flip the sign of a near-zero gradient coordinate; the flags after 100 steps run as users run it.
        run = functools.partial(apgd, logits_of(model), eps=eps, norm=norm, loss=loss, steps=steps, n_target_classes=1)
        run = run if steps == 10 else tf.function(run)
        ours = run(x, y, x_init=start).numpy()
        ours_broken = model(ours).numpy().argmax(1) != y
        if loss == "dlr_targeted":
            ref = ref_module.APGDAttack_targeted(twin, n_iter=steps, norm=ref_norm, eps=eps, device="cpu")
            ref.y_target = torch.from_numpy(target)
        else:
            ref = ref_module.APGDAttack(twin, n_iter=steps, norm=ref_norm, eps=eps, loss=loss, device="cpu")
        ref.init_hyperparam(aa_reference.to_nchw(x))
        with _quiet():
            _, acc, _, best_adv = ref.attack_single_run(
                aa_reference.to_nchw(x), torch.from_numpy(y), x_init=aa_reference.to_nchw(start)
            )
        theirs_broken = ~acc.numpy().astype(bool)
        agree = np.mean(ours_broken == theirs_broken)
        assert agree >= 0.98, (steps, agree, ours_broken.mean(), theirs_broken.mean())
        both = ours_broken & theirs_broken
        assert 0 < both.sum() < len(y)
        if steps == 10:
            diff = np.abs(ours[both] - aa_reference.to_nhwc(best_adv)[both]).reshape(both.sum(), -1).max(1)
            assert np.mean(diff < 1e-4) >= 0.9, np.quantile(diff, [0.5, 0.9, 1.0])


@pytest.mark.parametrize("norm,eps", [("linf", 0.1), ("l2", 1.0)])
@pytest.mark.parametrize("loss,restarts", [("ce", 1), ("dlr", 2), ("dlr_targeted", 1)])
def test_robust_accuracy_agrees_with_the_reference(robust_mlp, norm, eps, loss, restarts):
    """Full attacks (random starts in both) on 360 points: within 3 points of the reference (about 3 binomial
    standard errors of a difference of two 50 % accuracies on 360 points, which is the loosest case)."""
    torch = pytest.importorskip("torch")
    ref_module = reference_module()
    model, x, y = robust_mlp
    kwargs = {"n_target_classes": 9} if loss == "dlr_targeted" else {}
    ours = tf.function(
        lambda a, b: apgd(logits_of(model), a, b, eps=eps, norm=norm, loss=loss, restarts=restarts, seed=0, **kwargs)
    )(x, y)
    ours_acc = np.mean(model(ours).numpy().argmax(1) == y)
    twin = aa_reference.torch_twin(model)
    ref_norm = {"linf": "Linf", "l2": "L2"}[norm]
    if loss == "dlr_targeted":
        ref = ref_module.APGDAttack_targeted(twin, norm=ref_norm, eps=eps, seed=0, device="cpu", **kwargs)
    else:
        ref = ref_module.APGDAttack(twin, norm=ref_norm, eps=eps, loss=loss, n_restarts=restarts, seed=0, device="cpu")
    with _quiet():
        adv = ref.perturb(aa_reference.to_nchw(x), torch.from_numpy(y))
    theirs_acc = np.mean(twin(adv).detach().numpy().argmax(1) == y)
    assert abs(ours_acc - theirs_acc) <= 0.03, (ours_acc, theirs_acc)
    assert ours_acc < np.mean(model(x).numpy().argmax(1) == y)  # the attack breaks points


class _quiet:
    """Silences the reference's zero-gradient warning (a check, not a failure)."""

    def __enter__(self):
        import warnings

        self._catch = warnings.catch_warnings()
        self._catch.__enter__()
        warnings.simplefilter("ignore")

    def __exit__(self, *exc):
        return self._catch.__exit__(*exc)


# --- Invariants ------------------------------------------------------------


@pytest.mark.parametrize("norm,eps", [("linf", 0.1), ("l2", 1.0)])
def test_outputs_stay_in_the_ball_and_the_box(robust_mlp, norm, eps):
    model, x, y = robust_mlp
    adv = apgd(logits_of(model), x, y, eps=eps, norm=norm, steps=20, seed=1).numpy()
    assert adv.min() >= 0.0 and adv.max() <= 1.0
    assert base.lp_norm(adv - x, norm).numpy().max() <= eps * (1 + 1e-5)


def test_unattacked_points_come_back_unchanged(robust_mlp):
    model, x, y = robust_mlp
    x, y = x[:64], y[:64]
    active = np.arange(64) % 2 == 0
    adv = apgd(logits_of(model), x, y, eps=0.1, steps=20, seed=1, active=active).numpy()
    wrong = model(x).numpy().argmax(1) != y
    untouched = ~active | wrong
    np.testing.assert_array_equal(adv[untouched], x[untouched])
    broken = model(adv).numpy().argmax(1) != y
    assert broken[active & ~wrong].any()
    # A point not broken comes back as x (the reference's output), a broken one moved.
    assert np.array_equal(adv[~broken], x[~broken])


def test_eager_graph_and_xla_agree(robust_mlp):
    model, x, y = robust_mlp
    x, y = x[:48], y[:48]

    def attack(a, b):
        return apgd(logits_of(model), a, b, eps=0.1, steps=15, loss="dlr", seed=3)

    eager = attack(x, y).numpy()
    graph = tf.function(attack)(x, y).numpy()
    xla = tf.function(attack, jit_compile=True)(x, y).numpy()
    # Graph rewrites and XLA fuse the model's ops, which can round a near-zero gradient to the other sign.
    broken = [model(a).numpy().argmax(1) != y for a in (eager, graph, xla)]
    for other, adv in ((broken[1], graph), (broken[2], xla)):
        assert np.mean(other == broken[0]) >= 0.95
        same = np.abs(adv - eager).reshape(len(x), -1).max(1) < 1e-6
        assert same.mean() >= 0.8
    np.testing.assert_array_equal(tf.function(attack)(x, y).numpy(), graph)  # deterministic


def test_a_points_result_does_not_depend_on_its_batch(robust_mlp):
    model, x, y = robust_mlp
    ids = np.arange(len(x), dtype=np.int32)
    full = apgd(logits_of(model), x[:40], y[:40], eps=0.1, steps=15, seed=7, point_ids=ids[:40]).numpy()
    pick = np.array([31, 2, 17, 5])
    alone = apgd(logits_of(model), x[pick], y[pick], eps=0.1, steps=15, seed=7, point_ids=ids[pick]).numpy()
    np.testing.assert_allclose(alone, full[pick], atol=1e-6)
    other_seed = apgd(logits_of(model), x[:40], y[:40], eps=0.1, steps=15, seed=8, point_ids=ids[:40]).numpy()
    assert not np.array_equal(other_seed, full)


def test_eot_averages_gradients_of_a_randomised_model(robust_mlp):
    model, x, y = robust_mlp
    x, y = x[:32], y[:32]
    calls = []

    def noisy(z):
        calls.append(1)
        return model(z + tf.random.normal(tf.shape(z), stddev=0.05), training=False)

    adv = apgd(noisy, x, y, eps=0.1, steps=5, eot_iter=4, seed=0).numpy()
    assert base.lp_norm(adv - x, "linf").numpy().max() <= 0.1 + 1e-6
    assert np.isfinite(adv).all()


def test_zero_gradients_are_reported_for_dlr():
    """A model whose logits ignore the input has all-zero gradients: reported for DLR, not for CE."""
    logits = tf.constant([[3.0, 1.0, 0.0, -1.0]])

    def constant(z):
        return tf.tile(logits, [tf.shape(z)[0], 1]) + 0.0 * tf.reduce_sum(z, axis=[1, 2, 3])[:, None]

    x = np.full((3, 4, 4, 1), 0.5, np.float32)
    y = np.zeros(3, np.int64)
    _, info = apgd(constant, x, y, eps=0.1, loss="dlr", steps=5, seed=0, return_info=True)
    assert info["zero_gradient"].numpy().all()
    _, info = apgd(constant, x, y, eps=0.1, loss="ce", steps=5, seed=0, return_info=True)
    assert not info["zero_gradient"].numpy().any()


def test_low_precision_models_are_attacked_in_float32(robust_mlp):
    model, x, y = robust_mlp

    def bf16(z):
        return tf.cast(model(tf.cast(tf.cast(z, tf.bfloat16), tf.float32)), tf.bfloat16)

    adv = apgd(bf16, x[:64], y[:64], eps=0.1, steps=10, seed=0)
    assert adv.dtype == tf.float32
    assert base.lp_norm(adv - x[:64], "linf").numpy().max() <= 0.1 + 1e-6


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"eps": -0.1}, "eps"),
        ({"eps": float("nan")}, "eps"),
        ({"norm": "l3"}, "norm"),
        ({"norm": "l1"}, "not implemented"),
        ({"loss": "hinge"}, "loss"),
        ({"steps": 0}, "steps"),
        ({"restarts": 0}, "restarts"),
        ({"rho": 1.5}, "rho"),
        ({"eot_iter": 0}, "eot_iter"),
    ],
)
def test_bad_arguments_are_named(robust_mlp, kwargs, match):
    model, x, y = robust_mlp
    with pytest.raises(ValueError, match=match):
        apgd(logits_of(model), x[:2], y[:2], **{"eps": 0.1, **kwargs})


def test_too_few_classes_for_the_targets_is_one_clear_error():
    x = np.zeros((2, 4, 4, 1), np.float32)

    def five_classes(z):
        return tf.reshape(z, [-1, 16])[:, :5]

    with pytest.raises(ValueError, match="n_target_classes=9 needs >= 10 classes; the model has 5"):
        apgd(five_classes, x, [0, 1], eps=0.1, loss="dlr_targeted")
