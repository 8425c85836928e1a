"""attacks.apgd_train: APGD-CE as a training attack (Singh et al. 2023's `apgd_train`).

A NumPy port of the reference loop (autopgd_train_clean.py: start at x, step 2 eps, momentum
0.75, check_oscillation reading the zero-initialised buffer through index -1, x_best = the
highest-loss iterate including x) on a linear model, hard and soft labels; the eps-ball; the
loss against PGD-2; eager == tf.function == strategy.run; the trainer's registry.
"""

import numpy as np
import pytest
import tensorflow as tf
from conftest import logits_of, tiny_conv_bn_model

from sat_tf import attacks


def _log_softmax(z):
    z = z - z.max(-1, keepdims=True)
    return z - np.log(np.exp(z).sum(-1, keepdims=True))


def reference_apgd_train(w, x, y, eps, n_iter, soft):
    """The reference's Linf loop for logits = flatten(x) @ w, in float64 NumPy."""
    b = x.shape[0]

    def loss_grad(z):
        logp = _log_softmax(z.reshape(b, -1) @ w)
        t = y if soft else np.eye(w.shape[1])[y]
        loss = -(t * logp).sum(-1)
        grad = ((np.exp(logp) - t) @ w.T).reshape(x.shape)  # d CE / d x for a linear model
        return loss, grad

    n_iter_2, n_iter_min, size_decr = max(int(0.22 * n_iter), 1), max(int(0.06 * n_iter), 1), max(int(0.03 * n_iter), 1)
    k = n_iter_2
    step = 2.0 * eps * np.ones([b, 1, 1, 1])
    x_adv = x.copy()
    x_best = x_adv.copy()
    loss_steps = np.zeros([n_iter, b])
    loss, grad = loss_grad(x_adv)
    grad_best = grad.copy()
    loss_best = loss.copy()
    loss_best_last_check = loss_best.copy()
    reduced_last_check = np.ones(b)
    counter3 = 0
    x_adv_old = x_adv.copy()
    for i in range(n_iter):
        grad2 = x_adv - x_adv_old
        x_adv_old = x_adv.copy()
        a = 0.75 if i > 0 else 1.0
        x1 = np.clip(np.minimum(np.maximum(x_adv + step * np.sign(grad), x - eps), x + eps), 0, 1)
        x1 = np.clip(np.minimum(np.maximum(x_adv + (x1 - x_adv) * a + grad2 * (1 - a), x - eps), x + eps), 0, 1)
        x_adv = x1
        y1, new_grad = loss_grad(x_adv)
        if i < n_iter - 1:
            grad = new_grad
        loss_steps[i] = y1
        ind = y1 > loss_best
        x_best[ind] = x_adv[ind]
        grad_best[ind] = grad[ind]
        loss_best[ind] = y1[ind]
        counter3 += 1
        if counter3 == k:
            t = np.zeros(b)
            for c in range(k):
                t += loss_steps[i - c] > loss_steps[i - c - 1]  # index -1 wraps, as torch
            osc = (t <= k * 0.75).astype(float)
            no_impr = (1.0 - reduced_last_check) * (loss_best_last_check >= loss_best)
            osc = np.maximum(osc, no_impr)
            reduced_last_check = osc.copy()
            loss_best_last_check = loss_best.copy()
            halve = osc > 0
            step[halve] /= 2.0
            x_adv[halve] = x_best[halve]
            grad[halve] = grad_best[halve]
            counter3 = 0
            k = max(k - size_decr, n_iter_min)
    return x_best


@pytest.mark.parametrize("steps", [1, 2, 5, 10])
@pytest.mark.parametrize("soft", [False, True])
def test_matches_the_reference_loop(steps, soft):
    rng = np.random.default_rng(steps)
    x = rng.uniform(0, 1, (6, 4, 4, 3))
    w = rng.normal(0, 1, (48, 5))
    if soft:
        y = rng.dirichlet(np.ones(5), size=6)
    else:
        y = rng.integers(0, 5, 6)
    eps = 8 / 255
    expected = reference_apgd_train(w, x, y, eps, steps, soft)
    wt = tf.constant(w, tf.float32)
    got = attacks.apgd_train(
        lambda z: tf.reshape(z, [-1, 48]) @ wt,
        tf.constant(x, tf.float32),
        tf.constant(y, tf.float32 if soft else tf.int32),
        eps=eps,
        steps=steps,
    )
    # float32 vs float64 may flip a sign(grad) on a near-zero gradient entry: compare per image
    diff = np.abs(got.numpy() - expected).reshape(6, -1).max(-1)
    assert (diff < 1e-5).sum() >= 5, diff
    assert np.median(diff) < 1e-5


def _model_and_data(seed=0, n=64):
    model = tiny_conv_bn_model(seed)
    rng = np.random.default_rng(seed)
    x = tf.constant(rng.uniform(0, 1, (n, 4, 4, 1)), tf.float32)
    y = tf.constant(rng.integers(0, 3, n), tf.int32)
    return model, x, y


def _ce(model, x, y):
    return tf.nn.sparse_softmax_cross_entropy_with_logits(y, model(x, training=False)).numpy()


def test_eps_ball_box_and_not_clean():
    model, x, y = _model_and_data()
    eps = 8 / 255
    for labels in (y, tf.one_hot(y, 3) * 0.7 + 0.1):
        x_adv = attacks.apgd_train(logits_of(model), x, labels, eps=eps, steps=2).numpy()
        assert np.abs(x_adv - x.numpy()).max() <= eps + 1e-6
        assert x_adv.min() >= 0 and x_adv.max() <= 1
        assert np.abs(x_adv - x.numpy()).max() > 0.5 * eps  # it moved
    # never worse than the clean point it starts from (x_best includes x)
    x_adv = attacks.apgd_train(logits_of(model), x, y, eps=eps, steps=2)
    assert np.all(_ce(model, x_adv, y) >= _ce(model, x, y) - 1e-6)


def test_loss_at_least_pgd2_on_average():
    eps = 8 / 255
    apgd_losses, pgd_losses = [], []
    for seed in range(3):
        model, x, y = _model_and_data(seed, n=128)
        apgd_losses.append(_ce(model, attacks.apgd_train(logits_of(model), x, y, eps=eps, steps=2), y).mean())
        x_pgd = attacks.pgd(logits_of(model), x, y, eps=eps, step_size=eps / 2, steps=2, seed=seed)
        pgd_losses.append(_ce(model, x_pgd, y).mean())
    assert np.mean(apgd_losses) >= np.mean(pgd_losses), (apgd_losses, pgd_losses)


def test_bn_statistics_untouched_and_eager_equals_graph_and_strategy_run():
    model, x, y = _model_and_data()
    before = [v.numpy().copy() for v in model.non_trainable_variables]
    eager = attacks.apgd_train(logits_of(model), x, y, eps=4 / 255, steps=2)
    graph = tf.function(lambda a, b: attacks.apgd_train(logits_of(model), a, b, eps=4 / 255, steps=2))(x, y)
    strategy = tf.distribute.OneDeviceStrategy("/cpu:0")

    @tf.function
    def replicated(a, b):
        return strategy.run(lambda u, v: attacks.apgd_train(logits_of(model), u, v, eps=4 / 255, steps=2), args=(a, b))

    in_strategy = replicated(x, y)
    np.testing.assert_allclose(graph.numpy(), eager.numpy(), atol=1e-6)
    np.testing.assert_allclose(in_strategy.numpy(), eager.numpy(), atol=1e-6)
    for a, b in zip(before, model.non_trainable_variables):
        np.testing.assert_array_equal(a, b.numpy())


def test_trainer_registry_maps_apgd_to_the_training_attack():
    assert attacks.TRAINING_ATTACKS["apgd"] is attacks.apgd_train
    assert attacks.ATTACKS["apgd"] is attacks.apgd  # evaluation keeps AutoAttack's APGD
    bound = attacks.get_training_attack("apgd", eps=4 / 255, steps=2)
    assert bound.func is attacks.apgd_train and bound.keywords == {"eps": 4 / 255, "steps": 2}
    with pytest.raises(TypeError, match="step_size"):
        attacks.get_training_attack("apgd", eps=4 / 255, step_size=1 / 255)
    with pytest.raises(ValueError, match="`steps` must be a Python int >= 1"):
        attacks.apgd_train(lambda z: z, tf.zeros([1, 2]), tf.zeros([1], tf.int32), eps=0.1, steps=0)
