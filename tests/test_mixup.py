"""sat_tf.training.mixup against a NumPy reference of timm's Mixup (mode "batch").

The reference below restates timm/data/mixup.py (`rand_bbox`, `cutmix_bbox_and_lam` with
correct_lam, `mixup_target`, `_mix_batch`) for given draws; the TF sampler's draws are checked
for their distributions (Beta lambda, switch and apply probabilities, uniform box centre) and
for determinism per seed.
"""

import numpy as np
import pytest
import scipy.stats
import tensorflow as tf

from sat_tf.training import losses, mixup


def np_rand_bbox(h, w, lam, cy, cx):
    ratio = np.sqrt(1 - lam)
    cut_h, cut_w = int(h * ratio), int(w * ratio)
    yl = np.clip(cy - cut_h // 2, 0, h)
    yh = np.clip(cy + cut_h // 2, 0, h)
    xl = np.clip(cx - cut_w // 2, 0, w)
    xh = np.clip(cx + cut_w // 2, 0, w)
    return yl, yh, xl, xh


def np_mixup_target(target, num_classes, lam, smoothing):
    off = smoothing / num_classes
    on = 1.0 - smoothing + off
    y1 = np.full((len(target), num_classes), off)
    y1[np.arange(len(target)), target] = on
    y2 = y1[::-1]
    return y1 * lam + y2 * (1.0 - lam)


def np_mix_batch(x, target, num_classes, smoothing, lam_raw, use_cutmix, cy, cx):
    """timm `Mixup.__call__` (mode batch) with the draws given; x NHWC."""
    x = x.copy()
    lam = lam_raw
    if lam != 1.0:
        if use_cutmix:
            h, w = x.shape[1:3]
            yl, yh, xl, xh = np_rand_bbox(h, w, lam_raw, cy, cx)
            lam = 1.0 - (yh - yl) * (xh - xl) / float(h * w)
            x[:, yl:yh, xl:xh, :] = x[::-1][:, yl:yh, xl:xh, :]
        else:
            x = x * lam + x[::-1] * (1.0 - lam)
    return x, np_mixup_target(target, num_classes, lam, smoothing), lam


def _batch(seed, b=6, h=9, w=7, c=5):
    rng = np.random.default_rng(seed)
    return rng.uniform(0, 1, (b, h, w, 3)).astype(np.float32), rng.integers(0, c, b)


@pytest.mark.parametrize("alphas", [(0.8, 1.0), (0.8, 0.0), (0.0, 1.0)])
def test_mixing_and_targets_match_timm_for_the_drawn_parameters(alphas):
    cutmix_seen = mixup_seen = 0
    for seed in range(40):
        x, y = _batch(seed)
        mixed, targets, p = mixup.mixup_cutmix(
            tf.constant(x),
            tf.constant(y),
            tf.constant([seed, 7]),
            num_classes=5,
            label_smoothing=0.1,
            mixup_alpha=alphas[0],
            cutmix_alpha=alphas[1],
        )
        p = {k: v.numpy() for k, v in p.items()}
        ex, et, elam = np_mix_batch(
            x, y, 5, 0.1, float(p["lam_raw"]), bool(p["use_cutmix"]), int(p["cy"]), int(p["cx"])
        )
        np.testing.assert_allclose(mixed.numpy(), ex, atol=1e-6)
        np.testing.assert_allclose(targets.numpy(), et, atol=1e-6)
        np.testing.assert_allclose(p["lam"], elam, atol=1e-6)
        np.testing.assert_allclose(targets.numpy().sum(-1), 1.0, atol=1e-6)
        if p["use_cutmix"]:
            cutmix_seen += 1
            yl, yh, xl, xh = np_rand_bbox(9, 7, float(p["lam_raw"]), int(p["cy"]), int(p["cx"]))
            np.testing.assert_array_equal(p["box"], [yl, yh, xl, xh])
            # lambda correction: the label weight is the kept area, whatever the clipping did
            assert p["lam"] == pytest.approx(1 - (yh - yl) * (xh - xl) / 63.0, abs=1e-6)
        else:
            mixup_seen += 1
    assert (cutmix_seen > 0) == (alphas[1] > 0)
    assert (mixup_seen > 0) == (alphas[0] > 0)


def test_lambda_is_beta_alpha_alpha_and_switch_prob_holds():
    n = 600
    sample = tf.function(
        lambda s: mixup.sample_params(s, height=32, width=32, mixup_alpha=0.8, cutmix_alpha=1.0, switch_prob=0.3)
    )
    draws = [sample(tf.constant([s, 1])) for s in range(n)]
    use_cutmix = np.array([bool(d["use_cutmix"]) for d in draws])
    lam = np.array([float(d["lam_raw"]) for d in draws])
    # switch_prob 0.3: a two-sided binomial test, not a tolerance picked to pass
    assert scipy.stats.binomtest(int(use_cutmix.sum()), n, 0.3).pvalue > 1e-3
    assert scipy.stats.kstest(lam[~use_cutmix], scipy.stats.beta(0.8, 0.8).cdf).pvalue > 1e-3
    assert scipy.stats.kstest(lam[use_cutmix], scipy.stats.beta(1.0, 1.0).cdf).pvalue > 1e-3
    assert scipy.stats.kstest(lam[~use_cutmix], scipy.stats.beta(2.0, 2.0).cdf).pvalue < 1e-3  # the test has power
    centres = np.array([int(d["cy"]) for d in draws])
    assert centres.min() == 0 and centres.max() == 31
    assert scipy.stats.chisquare(np.bincount(centres // 4, minlength=8)).pvalue > 1e-3


def test_prob_zero_leaves_the_batch_and_smooths_the_labels():
    x, y = _batch(3)
    mixed, targets, p = mixup.mixup_cutmix(
        tf.constant(x), tf.constant(y), tf.constant([1, 2]), num_classes=5, label_smoothing=0.1, prob=0.0
    )
    np.testing.assert_array_equal(mixed.numpy(), x)
    np.testing.assert_allclose(targets.numpy(), np_mixup_target(y, 5, 1.0, 0.1), atol=1e-7)
    assert float(p["lam"]) == 1.0 and not bool(p["use_cutmix"])
    sample = tf.function(lambda s: mixup.sample_params(s, height=8, width=8, prob=0.5)["lam"])
    draws = [float(sample(tf.constant([s, 0]))) < 1 for s in range(400)]
    assert scipy.stats.binomtest(sum(draws), 400, 0.5).pvalue > 1e-3


def test_deterministic_per_seed():
    x, y = _batch(0, b=8, h=16, w=16)
    runs = [
        mixup.mixup_cutmix(tf.constant(x), tf.constant(y), tf.constant(s), num_classes=5)[0].numpy()
        for s in ([3, 4], [3, 4], [3, 5])
    ]
    np.testing.assert_array_equal(runs[0], runs[1])
    assert not np.array_equal(runs[0], runs[2])
    graph = tf.function(lambda a, b, s: mixup.mixup_cutmix(a, b, s, num_classes=5)[0])
    np.testing.assert_allclose(graph(tf.constant(x), tf.constant(y), tf.constant([3, 4])).numpy(), runs[0], atol=1e-6)


def test_xla_compiled_mixing_is_deterministic_and_matches_timm():
    # The replica step may be XLA-compiled; XLA's stateless streams differ from the eager kernels', so a
    # jit run draws other (equally distributed) parameters, the same ones on every call.
    fn = tf.function(lambda a, b, s: mixup.mixup_cutmix(a, b, s, num_classes=5, label_smoothing=0.1), jit_compile=True)
    kinds = set()
    for seed in range(12):
        x, y = _batch(seed, h=8, w=8)
        mixed, targets, p = fn(tf.constant(x), tf.constant(y), tf.constant([seed, 1]))
        again = fn(tf.constant(x), tf.constant(y), tf.constant([seed, 1]))[0]
        np.testing.assert_array_equal(mixed.numpy(), again.numpy())
        p = {k: v.numpy() for k, v in p.items()}
        kinds.add(bool(p["use_cutmix"]))
        ex, et, _ = np_mix_batch(x, y, 5, 0.1, float(p["lam_raw"]), bool(p["use_cutmix"]), int(p["cy"]), int(p["cx"]))
        np.testing.assert_allclose(mixed.numpy(), ex, atol=1e-6)
        np.testing.assert_allclose(targets.numpy(), et, atol=1e-6)
    assert kinds == {False, True}


@pytest.mark.parametrize("alpha", [0.8, 1.0, 2.5])
def test_gamma_sampler_is_gamma(alpha):
    draws = mixup._gamma(tf.constant([5, 6]), alpha, 4000).numpy()
    assert scipy.stats.kstest(draws, scipy.stats.gamma(alpha).cdf).pvalue > 1e-3
    assert scipy.stats.kstest(draws, scipy.stats.gamma(alpha * 1.15).cdf).pvalue < 1e-3  # the test has power


def test_soft_cross_entropy_and_smoothing_of_mixed_targets():
    rng = np.random.default_rng(0)
    logits = rng.normal(0, 2, (6, 5)).astype(np.float32)
    y = rng.integers(0, 5, 6)
    lam = 0.3
    mixed = np_mixup_target(y, 5, lam, 0.0)
    logp = logits - logits.max(-1, keepdims=True)
    logp = logp - np.log(np.exp(logp).sum(-1, keepdims=True))
    # smoothing is linear in the mix: smoothing the mixed one-hots == timm's mixup_target(smoothing)
    expected = -(np_mixup_target(y, 5, lam, 0.1) * logp).sum(-1)
    got = losses.cross_entropy(tf.constant(logits), tf.constant(mixed, tf.float32), 5, label_smoothing=0.1)
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-5)
    np.testing.assert_allclose(
        losses.soft_cross_entropy(logits, np_mixup_target(y, 5, lam, 0.1)).numpy(), expected, rtol=1e-5
    )
    hard = losses.cross_entropy(tf.constant(logits), tf.constant(y), 5, label_smoothing=0.1)
    np.testing.assert_allclose(hard.numpy(), -(np_mixup_target(y, 5, 1.0, 0.1) * logp).sum(-1), rtol=1e-5)


def test_objective_attacks_the_mixed_batch_with_its_soft_targets():
    seen = {}

    def attack(logits_fn, x, targets, *, seed):
        seen["x"], seen["targets"] = x, targets
        return tf.clip_by_value(x + 0.01, 0.0, 1.0)

    objective = mixup.MixupObjective(attack, num_classes=5, label_smoothing=0.1)
    x, y = _batch(5, h=8, w=8)
    seed = tf.constant([9, 9])
    rows, targets = objective.training_batch(None, tf.constant(x), tf.constant(y), seed=seed, step=0)
    mixed, expected_targets, _ = mixup.mixup_cutmix(
        tf.constant(x), tf.constant(y), seed, num_classes=5, label_smoothing=0.1
    )
    np.testing.assert_allclose(seen["x"].numpy(), mixed.numpy())
    np.testing.assert_allclose(seen["targets"].numpy(), expected_targets.numpy())
    np.testing.assert_allclose(targets.numpy(), expected_targets.numpy())
    assert int(objective.batches.numpy()) == 1 and int(objective.mixed.numpy()) == 1
    assert float(objective.perturbation.numpy()) == pytest.approx(0.01, abs=1e-6)
    logits = tf.constant(np.random.default_rng(1).normal(size=(6, 5)), tf.float32)
    per_example, _, labels = objective.loss(lambda z: logits, (rows, targets), None, num_classes=5, label_smoothing=0.1)
    # the step's label_smoothing is not applied a second time
    np.testing.assert_allclose(per_example.numpy(), losses.soft_cross_entropy(logits, targets).numpy())
    np.testing.assert_array_equal(labels.numpy(), np.argmax(targets.numpy(), -1))


def test_bad_arguments_name_the_argument():
    with pytest.raises(ValueError, match="one of `mixup_alpha`, `cutmix_alpha` must be > 0"):
        mixup.sample_params(tf.constant([0, 0]), height=4, width=4, mixup_alpha=0.0, cutmix_alpha=0.0)
    with pytest.raises(ValueError, match="`switch_prob` must be in"):
        mixup.MixupObjective(lambda *a, **k: a[1], num_classes=3, switch_prob=1.5)
