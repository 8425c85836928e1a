"""SmoothAdv: the attacks on the smoothed soft classifier, the training objective,
the train step and the launcher flags, each against an independent NumPy
computation of the reference's formulas (Hadisalman/smoothing-adversarial)."""

import json
import math

import keras
import numpy as np
import pytest
import tensorflow as tf
from conftest import np_softmax, run_launcher

from sat_tf import attacks, training
from sat_tf.attacks import base
from sat_tf.training import objectives

SHAPE = (3, 2, 2)  # 12 pixels
CLASSES = 3


# === Independent NumPy references for a linear base classifier ===


def linear_problem(seed=0, batch=4, num_noise=3, sigma=0.3, scale=3.0):
    rng = np.random.default_rng(seed)
    dim = int(np.prod(SHAPE))
    w = (scale * rng.standard_normal((dim, CLASSES))).astype(np.float32)
    b = rng.standard_normal(CLASSES).astype(np.float32)
    x = rng.uniform(0.1, 0.9, (batch,) + SHAPE).astype(np.float32)
    x[0, 0, 0, 0] = 0.999  # a coordinate where the box clip matters
    y = rng.integers(0, CLASSES, batch).astype(np.int32)
    noise = (sigma * rng.standard_normal((batch, num_noise) + SHAPE)).astype(np.float32)
    return w, b, x, y, noise


def tf_linear(w, b):
    w, b = tf.constant(w), tf.constant(b)
    return lambda z: tf.matmul(tf.reshape(z, [tf.shape(z)[0], -1]), w) + b


def np_rows(x, noise):
    """[B, m, D] flattened noisy rows."""
    return (x[:, None] + noise).reshape(x.shape[0], noise.shape[1], -1).astype(np.float64)


def np_grad_and_votes(w, b, x, delta, y, noise):
    """Gradient of -log mean_i softmax(W(x + delta + n_i) + b)_y w.r.t. delta, and the majority votes."""
    p = np_softmax(np_rows(x + delta, noise) @ w + b)  # [B, m, C]
    grads, votes = [], []
    for k in range(x.shape[0]):
        p_y = p[k, :, y[k]]  # [m]
        mean_py = p_y.mean()
        # d p_y / d z = p_y (W_y - W p) for each noisy copy.
        d = (p_y[:, None] * (w[:, y[k]][None] - p[k] @ w.T)).mean(0)
        grads.append(-d / mean_py)
        votes.append(np.bincount(p[k].argmax(-1), minlength=CLASSES).argmax())
    return np.stack(grads).reshape(x.shape), np.array(votes)


def np_norm(t):
    return np.sqrt((t.reshape(t.shape[0], -1) ** 2).sum(1)).reshape((-1,) + (1,) * (t.ndim - 1))


def np_smoothadv_pgd(w, b, x, y, noise, eps, steps):
    x = x.astype(np.float64)
    delta = np.zeros_like(x)
    for _ in range(steps):
        g, _ = np_grad_and_votes(w, b, x, delta, y, noise)
        delta = delta + (2 * eps / steps) * g / np_norm(g)
        delta = np.clip(x + delta, 0, 1) - x
        delta = delta * np.minimum(1.0, eps / np.maximum(np_norm(delta), 1e-30))
    return x + delta


def np_smoothadv_ddn(w, b, x, y, noise, eps, steps, gamma):
    x = x.astype(np.float64)
    n = x.shape[0]
    norm = np.full(n, eps)
    worst = np_norm(np.maximum(x, 1 - x)).ravel()
    best_l2, best = worst.copy(), np.zeros_like(x)
    delta = np.zeros_like(x)
    for i in range(steps):
        lr = 0.01 + 0.495 * (1 + math.cos(math.pi * (i + 1) / steps))
        l2 = np_norm(delta).ravel()
        g, votes = np_grad_and_votes(w, b, x, delta, y, noise)
        is_adv = votes != y
        both = is_adv & (l2 < best_l2)
        best_l2[both], best[both] = l2[both], delta[both]
        delta = delta + lr * g / np_norm(g)
        norm = np.minimum(norm * (1 - (2 * is_adv - 1) * gamma), worst)
        delta = delta * (norm / np_norm(delta).ravel()).reshape(-1, 1, 1, 1)
        delta = np.clip(x + delta, 0, 1) - x
    best = best * np.minimum(1.0, eps / np.maximum(np_norm(best), 1e-30))
    return x + best


# === The loss: log of the mean softmax ===


def test_smoothed_loss_is_log_of_mean_softmax_not_mean_cross_entropy():
    # One pixel at 0; noise +1 / -1; logits (z, -z): the copies give softmax_0 = s(2), s(-2).
    fn = lambda z: tf.concat([tf.reshape(z, [-1, 1]), -tf.reshape(z, [-1, 1])], axis=1)  # noqa: E731
    x = tf.zeros([1, 1, 1, 1])
    noise = tf.constant([1.0, -1.0], shape=[1, 2, 1, 1, 1])
    loss, _ = attacks.smoothed_nll(fn, x, tf.constant([0]), noise)
    s = lambda t: 1 / (1 + math.exp(-t))  # noqa: E731
    assert abs(float(loss[0]) - math.log(2.0)) < 1e-6  # -log((s(2) + s(-2)) / 2) = log 2
    mean_ce = -(math.log(s(2)) + math.log(s(-2))) / 2  # 1.1269: what averaging CE would give
    assert abs(float(loss[0]) - mean_ce) > 0.4


def test_smoothed_loss_clamps_at_1e_minus_20_and_m1_is_plain_cross_entropy():
    fn = lambda z: tf.concat([100 * tf.reshape(z, [-1, 1]), -100 * tf.reshape(z, [-1, 1])], 1)  # noqa: E731
    x = tf.ones([1, 1, 1, 1])
    noise = tf.zeros([1, 2, 1, 1, 1])
    loss, pred = attacks.smoothed_nll(fn, x, tf.constant([1]), noise)
    assert abs(float(loss[0]) - (-math.log(1e-20))) < 1e-3  # true class prob e^-200 < 1e-20
    assert int(pred[0]) == 0
    single, _ = attacks.smoothed_nll(fn, x, tf.constant([1]), noise[:, :1])
    assert abs(float(single[0]) - 200.0) < 1e-3  # m = 1: cross-entropy, no clamp (the reference's path)


def test_smoothed_loss_matches_numpy_on_a_linear_model():
    w, b, x, y, noise = linear_problem()
    loss, votes = attacks.smoothed_nll(tf_linear(w, b), tf.constant(x), tf.constant(y), tf.constant(noise))
    p = np_softmax(np_rows(x, noise) @ w + b)
    expected = -np.log(np.maximum(p[np.arange(len(y)), :, y].mean(1), 1e-20))
    np.testing.assert_allclose(loss.numpy(), expected, rtol=1e-5, atol=1e-5)
    _, np_votes = np_grad_and_votes(w, b, x, 0 * x, y, noise)
    np.testing.assert_array_equal(votes.numpy(), np_votes)


# === The attacks against the NumPy reference ===


@pytest.mark.parametrize("num_noise", [1, 3])
@pytest.mark.parametrize("eps,steps", [(0.25, 1), (0.5, 4), (2.0, 7)])
def test_smoothadv_pgd_matches_numpy_reference(num_noise, eps, steps):
    w, b, x, y, noise = linear_problem(num_noise=num_noise)
    got = attacks.smoothadv_pgd(tf_linear(w, b), x, y, noise=tf.constant(noise), eps=eps, steps=steps)
    expected = np_smoothadv_pgd(w, b, x, y, noise, eps, steps)
    np.testing.assert_allclose(got.numpy(), expected, atol=2e-5)
    assert np.all(np_norm(got.numpy() - x) <= eps + 1e-5)
    assert got.numpy().min() >= 0 and got.numpy().max() <= 1


def test_smoothadv_pgd_first_step_is_two_eps_over_steps_without_random_start():
    w, b, x, y, noise = linear_problem(num_noise=2)
    x = np.full_like(x, 0.5)  # far from the box: one step moves exactly 2 eps / T
    got = attacks.smoothadv_pgd(tf_linear(w, b), x, y, noise=tf.constant(noise), eps=1.0, steps=8)
    first = attacks.smoothadv_pgd(tf_linear(w, b), x, y, noise=tf.constant(noise), eps=0.1, steps=1)
    np.testing.assert_allclose(np_norm(first.numpy() - x).ravel(), 0.1, rtol=1e-5)  # 2*0.1/1 = 0.2, projected to 0.1
    g, _ = np_grad_and_votes(w, b, x, 0 * x, y, noise)
    direction = (first.numpy() - x) / np_norm(first.numpy() - x)
    np.testing.assert_allclose(direction, g / np_norm(g), atol=1e-5)
    assert np.all(np_norm(got.numpy() - x) <= 1.0 + 1e-5)
    # Deterministic: no random start, so two calls agree exactly.
    again = attacks.smoothadv_pgd(tf_linear(w, b), x, y, noise=tf.constant(noise), eps=1.0, steps=8)
    np.testing.assert_array_equal(got.numpy(), again.numpy())


def test_smoothadv_pgd_raises_the_smoothed_loss():
    w, b, x, y, noise = linear_problem(num_noise=4, seed=3)
    fn, noise = tf_linear(w, b), tf.constant(noise)
    before, _ = attacks.smoothed_nll(fn, tf.constant(x), y, noise)
    x_adv = attacks.smoothadv_pgd(fn, x, y, noise=noise, eps=0.5, steps=5)
    after, _ = attacks.smoothed_nll(fn, x_adv, y, noise)
    assert np.all(after.numpy() >= before.numpy() - 1e-6)
    assert float(tf.reduce_sum(after - before)) > 0.1


@pytest.mark.parametrize("num_noise", [1, 3])
def test_smoothadv_ddn_matches_numpy_reference(num_noise):
    w, b, x, y, noise = linear_problem(num_noise=num_noise, scale=1.0, seed=1)
    got = attacks.smoothadv_ddn(tf_linear(w, b), x, y, noise=tf.constant(noise), eps=1.0, steps=10, quantize=False)
    expected = np_smoothadv_ddn(w, b, x, y, noise, eps=1.0, steps=10, gamma=0.05)
    np.testing.assert_allclose(got.numpy(), expected, atol=2e-5)
    assert np.any(np.abs(expected - x) > 1e-3), "the problem should make some attack succeed"


def test_smoothadv_ddn_returns_clean_input_when_no_adversarial_is_found_and_quantizes():
    x = (np.random.default_rng(0).integers(0, 256, (2,) + SHAPE) / 255.0).astype(np.float32)

    def always_right(z):  # class 0 whatever the input; its zero gradient takes the random-direction path
        flat = tf.reshape(z, [tf.shape(z)[0], -1])[:, :CLASSES]
        return tf.one_hot(tf.zeros(tf.shape(z)[0], tf.int32), CLASSES) * 50.0 + 0.0 * flat

    noise = attacks.sample_noise(x, 2, 0.25, [0, 1])
    out = attacks.smoothadv_ddn(always_right, x, np.zeros(2, np.int32), noise=noise, eps=0.5, steps=5)
    np.testing.assert_array_equal(out.numpy(), x)
    w, b, _, y, _ = linear_problem(batch=2, scale=1.0, seed=1)
    adv = attacks.smoothadv_ddn(tf_linear(w, b), x, y, noise=noise, eps=0.5, steps=10).numpy()
    np.testing.assert_allclose(adv * 255, np.round(adv * 255), atol=1e-3)  # 8-bit levels
    # Quantising after the projection (as the reference) may overshoot eps by half a level per pixel.
    assert np.all(np_norm(adv - x) <= 0.5 + 0.5 / 255 * math.sqrt(adv[0].size) + 1e-6)


def test_attacks_reject_bad_steps():
    with pytest.raises(ValueError, match="steps"):
        attacks.smoothadv_pgd(lambda z: z, tf.zeros([1, 2, 2, 1]), [0], noise=None, eps=0.1, steps=0)


# === The training objective ===


def test_noise_is_shared_by_attack_and_training_rows():
    w, b, x, y, _ = linear_problem()
    fn = tf_linear(w, b)
    seed = tf.constant([3, 4], tf.int32)
    objective = objectives.SmoothAdvObjective(
        sigma=0.3, attack="pgd", epsilon=0.5, steps=3, num_noise=3, multi_noise=True
    )
    rows, labels = objective.training_batch(fn, x, y, seed=seed, step=tf.constant(0, tf.int64))
    noise = attacks.sample_noise(x, 3, 0.3, seed)
    x_adv = attacks.smoothadv_pgd(fn, x, y, noise=noise, eps=0.5, steps=3, seed=base.fold_seed(seed, 1))
    expected = (x_adv.numpy()[:, None] + noise.numpy()).reshape((-1,) + SHAPE)
    np.testing.assert_allclose(rows.numpy(), expected, atol=1e-6)
    np.testing.assert_array_equal(labels.numpy(), np.repeat(y, 3))
    assert np.abs(x_adv.numpy() - x).max() > 1e-3

    single = objectives.SmoothAdvObjective(sigma=0.3, attack="pgd", epsilon=0.5, steps=3, num_noise=3)
    rows1, labels1 = single.training_batch(fn, x, y, seed=seed, step=tf.constant(0, tf.int64))
    np.testing.assert_allclose(rows1.numpy(), x_adv.numpy() + noise.numpy()[:, 0], atol=1e-6)
    np.testing.assert_array_equal(labels1.numpy(), y)
    assert single.rows_per_example == 1 and objective.rows_per_example == 3


def test_gaussian_augmentation_adds_unclipped_noise_of_sigma():
    x = np.full((64, 8, 8, 1), 0.95, np.float32)
    objective = objectives.SmoothAdvObjective(sigma=0.5)
    rows, _ = objective.training_batch(None, x, np.zeros(64), seed=tf.constant([1, 2]), step=0)
    noise = rows.numpy() - x
    assert rows.numpy().max() > 1.0  # never clipped
    assert abs(noise.std() - 0.5) < 0.02 and abs(noise.mean()) < 0.02


@pytest.mark.parametrize("warmup,expected", [(1, [0.5, 0.5, 0.5]), (4, [0.125, 0.25, 0.5]), (10, [0.05, 0.1, 0.2])])
def test_epsilon_warmup_ramps_per_epoch(warmup, expected):
    objective = objectives.SmoothAdvObjective(
        sigma=0.25, attack="pgd", epsilon=0.5, warmup_epochs=warmup, steps_per_epoch=10
    )
    got = [float(objective.epsilon_at(step)) for step in (0, 19, 35)]  # epochs 0, 1, 3
    np.testing.assert_allclose(got, expected, rtol=1e-6)


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"attack": "fgsm"}, "attack"),
        ({"sigma": -1.0}, "sigma"),
        ({"num_noise": 0}, "num_noise"),
        ({"warmup_epochs": 0}, "warmup"),
        ({"ddn_gamma": 1.5}, "ddn_gamma"),
    ],
)
def test_objective_rejects_bad_values(kwargs, match):
    with pytest.raises(ValueError, match=match):
        objectives.SmoothAdvObjective(**{"sigma": 0.25, **kwargs})


# === One train step equals the hand-computed update ===


def test_train_step_uses_the_objective_rows_and_normalises_by_rows():
    keras.utils.set_random_seed(0)
    make = lambda: keras.Sequential([keras.Input(SHAPE), keras.layers.Flatten(), keras.layers.Dense(CLASSES)])  # noqa: E731
    model, reference = make(), make()
    reference.set_weights(model.get_weights())
    _, _, x, y, _ = linear_problem(batch=4)
    objective = objectives.SmoothAdvObjective(
        sigma=0.3,
        attack="pgd",
        epsilon=0.5,
        steps=2,
        num_noise=2,
        multi_noise=True,
        warmup_epochs=2,
        steps_per_epoch=5,
    )
    strategy = tf.distribute.get_strategy()
    optimizer = keras.optimizers.SGD(1.0)
    config = training.StepConfig(global_batch_size=4, num_classes=CLASSES, seed=7)
    train = training.make_train_function(model, optimizer, objective, strategy, config)
    dataset = tf.data.Dataset.from_tensors((x, y)).repeat()
    metrics = train(iter(strategy.experimental_distribute_dataset(dataset)), tf.constant(1))
    assert float(metrics["count"]) == 8.0  # 4 images x 2 noisy copies

    seed = training.make_seed(7, 0, 0)
    rows, labels = objective.training_batch(
        lambda z: reference(z, training=False), x, y, seed=seed, step=tf.constant(0, tf.int64)
    )
    with tf.GradientTape() as tape:
        loss = tf.reduce_mean(attacks.cross_entropy(reference(rows, training=True), labels))
    grads = tape.gradient(loss, reference.trainable_variables)
    for v, g, new in zip(reference.trainable_variables, grads, model.trainable_variables):
        np.testing.assert_allclose(new.numpy(), v.numpy() - g.numpy(), atol=1e-5)
    np.testing.assert_allclose(float(metrics["loss_sum"]) / 8, float(loss), rtol=1e-5)


# === The training launcher ===


def launch_train(tmp_path, *flags):
    files = [f for f in flags if f.startswith("--config=")]  # the config file comes before its overrides
    return run_launcher(
        "train.py",
        *files,
        "--config.schedule.epochs=2",
        "--config.data.limit_train=256",
        "--config.data.limit_test=64",
        "--config.schedule.batch_size=32",
        "--config.export.enabled=false",
        "--config.eval.autoattack=none",
        f"--workdir={tmp_path}",
        *(f for f in flags if f not in files),
    )


@pytest.mark.slow
def test_train_launcher_smoothadv_run(tmp_path):
    proc = launch_train(
        tmp_path,
        "--config=launch/configs/digits_smoothadv.py",
        "--config.objective.smoothadv.attack=ddn",
        "--config.objective.smoothadv.eps=128/256",
        "--config.objective.smoothadv.steps=2",
        "--config.objective.smoothadv.num_noise=2",
        "--config.objective.smoothadv.multi_noise=true",
        "--config.objective.smoothadv.warmup_epochs=2",
        "--config.export.enabled=true",
    )
    config = json.load(open(tmp_path / "run_config.json"))
    assert config["objective"]["noise_sd"] == 0.25 and config["objective"]["smoothadv"]["eps"] == 0.5
    assert config["objective"]["name"] == "smoothadv"
    assert config["objective"]["label_smoothing"] == 0.0  # the config's, as the reference's plain cross-entropy
    results = json.load(open(tmp_path / "report" / "robustness.json"))["results"]
    assert set(results) == {"clean", "noise_sd=0.25"}
    assert "launch/certify.py" in proc.stdout
    loaded = tf.saved_model.load(str(tmp_path / "saved_model"))
    assert "predict_smoothed" in loaded.signatures  # the smoothed classifier is served too
    out = loaded.signatures["predict_smoothed"](images=tf.fill([2, 8, 8, 1], 0.5))
    assert out["smoothed_classes"].shape == (2,) and int(tf.reduce_sum(out["counts"][0])) == 1000


# Bad smoothing fields (one `error:` line naming the field and what is allowed): tests/test_bad_flags.py.
