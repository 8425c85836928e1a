"""Randomized smoothing (sat_tf.certification): bounds, abstention, soundness, tracing, sharding."""

import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest
import scipy.stats
import tensorflow as tf
from conftest import ROOT

from sat_tf import certification

SCRIPT = os.path.join(ROOT, "tests", "scripts", "certify_mirrored.py")
SHAPE = (4, 4, 1)


def cp_lower_by_bisection(n_a, n, alpha):
    """Independent one-sided bound: the p with P[Bin(n, p) >= n_a] = alpha."""
    if n_a == 0:
        return 0.0
    lo, hi = 0.0, 1.0
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        if scipy.stats.binom.sf(n_a - 1, n, mid) < alpha:  # increasing in p
            lo = mid
        else:
            hi = mid
    return 0.5 * (lo + hi)


def coin_fn(calls=None):
    """Class 0 or 1 by the sign of the noise on pixel (0, 0, 0) of a 0.5 image: ~50/50."""

    def fn(z):
        if calls is not None:
            calls.append(z.shape)
        d = z[:, 0, 0, 0] - 0.5
        return tf.stack([d, -d], axis=-1)

    return fn


def constant_fn(winner, num_classes=3):
    logits = tf.one_hot(winner, num_classes)[tf.newaxis]
    return lambda z: tf.tile(logits, [tf.shape(z)[0], 1])


def linear_fn(w, b):
    """Two classes, logits (0, w·z + b): class 1 on the positive side."""
    w = tf.constant(w.reshape(-1), tf.float32)

    def fn(z):
        score = tf.linalg.matvec(tf.reshape(z, [tf.shape(z)[0], -1]), w) + b
        return tf.stack([tf.zeros_like(score), score], axis=-1)

    return fn


HALF = np.full(SHAPE, 0.5, np.float32)


# === Clopper–Pearson and the radius ===


@pytest.mark.parametrize("alpha", [0.001, 0.01, 0.05])
@pytest.mark.parametrize(
    "n_a,n",
    [
        (1, 1),
        (1, 100),
        (3, 100),
        (50, 100),
        (99, 100),
        (100, 100),
        (500, 1000),
        (990, 1000),
        (1000, 1000),
        (99000, 100000),
        (100000, 100000),
    ],
)
def test_clopper_pearson_matches_exact_binomial_tail(n_a, n, alpha):
    got = certification.clopper_pearson_lower(n_a, n, alpha)
    assert abs(got - cp_lower_by_bisection(n_a, n, alpha)) < 1e-9


def test_clopper_pearson_zero_and_bad_input():
    assert certification.clopper_pearson_lower(0, 100, 0.001) == 0.0
    with pytest.raises(ValueError, match="n_a=101"):
        certification.clopper_pearson_lower(101, 100, 0.001)


def test_regression_fact_max_radius():
    n, alpha = 100_000, 0.001
    p = certification.clopper_pearson_lower(n, n, alpha)
    assert p == pytest.approx(alpha ** (1 / n), abs=1e-12)
    assert f"{p:.8f}" == "0.99993092"
    for sigma, printed in ((0.12, "0.457"), (0.25, "0.953"), (0.5, "1.91"), (1.0, "3.81")):
        radius = certification.certified_radius(p, sigma)
        assert round(radius / sigma, 4) == 3.8115
        assert f"{radius:.3}" == printed  # certify.py's {:.3} (3 significant digits)
        assert radius == pytest.approx(certification.max_radius(n, alpha, sigma))
    assert [round(certification.max_radius(n, alpha, s), 3) for s in (0.12, 0.25, 0.5, 1.0)] == [
        0.457,
        0.953,
        1.906,
        3.811,
    ]


def test_documented_radius_caps_match_scipy():
    """The caps the README and launch/certify.py quote: sigma * Phi^-1(alpha^(1/N)) at alpha = 0.001."""
    for n, documented in ((10_000, 3.20), (100_000, 3.81)):
        exact = scipy.stats.norm.ppf(0.001 ** (1 / n))
        assert round(exact, 2) == documented
        assert certification.max_radius(n, 0.001, 1.0) == pytest.approx(exact, rel=1e-9)
    docs = open(os.path.join(ROOT, "README.md"), encoding="utf-8").read()
    docs += open(os.path.join(ROOT, "launch", "certify.py"), encoding="utf-8").read()
    assert "3.09σ" not in docs and "3.20σ" in docs and "3.81σ" in docs


# === Abstention and the clear-winner case ===


def test_tie_abstains():
    smooth = certification.Smooth(coin_fn(), 2, sigma=0.25, batch_size=500)
    counts = smooth.sample(HALF, 2000, seed=0, stream=certification.PREDICT)
    assert 0.4 < counts[0] / 2000 < 0.6
    for seed in range(3):
        assert smooth.predict(HALF, 2000, 0.001, seed=seed) == certification.ABSTAIN
        assert smooth.certify(HALF, 100, 2000, 0.001, seed=seed) == (certification.ABSTAIN, 0.0)


@pytest.mark.parametrize("sigma", [0.12, 0.5])
def test_clear_winner_gets_max_radius(sigma):
    smooth = certification.Smooth(constant_fn(2), 3, sigma=sigma, batch_size=1000)
    label, radius = smooth.certify(HALF, 100, 100_000, 0.001, seed=0)
    assert label == 2
    assert radius == pytest.approx(sigma * scipy.stats.norm.ppf(0.001 ** (1 / 100_000)), rel=1e-12)
    assert smooth.predict(HALF, 1000, 0.001, seed=0) == 2


def test_predict_tie_in_counts_goes_to_lowest_index():
    assert certification._top_two(np.array([3, 5, 5, 1])) == (1, 2)
    assert certification._top_two(np.array([0, 0, 0])) == (0, 1)


# === Soundness on a linear classifier: p_A = Φ(d/σ) exactly ===


def _linear_case(d, sigma=0.25):
    rng = np.random.default_rng(1)
    w = rng.normal(size=SHAPE).astype(np.float64)
    w /= np.linalg.norm(w)
    b = -float(np.sum(w * 0.5))  # the hyperplane goes through the 0.5 image
    x = (0.5 + d * w).astype(np.float32)  # signed L2 distance d from it
    return linear_fn(w, b), x


@pytest.mark.parametrize("d", [0.05, 0.2, 0.5, -0.3])
def test_linear_classifier_empirical_rate_and_sound_radius(d):
    sigma, n, alpha = 0.25, 10_000, 0.001
    fn, x = _linear_case(d, sigma)
    smooth = certification.Smooth(fn, 2, sigma, batch_size=2500)
    true_class = 1 if d > 0 else 0
    distance = abs(d)
    p_a = scipy.stats.norm.cdf(distance / sigma)
    counts = smooth.sample(x, n, seed=5, stream=certification.ESTIMATION)
    stderr = math.sqrt(p_a * (1 - p_a) / n)
    assert abs(counts[true_class] / n - p_a) < 4 * stderr
    radii = []
    for seed in range(4):
        label, radius = smooth.certify(x, 100, n, alpha, seed=seed)
        assert label in (true_class, certification.ABSTAIN)
        assert radius <= distance  # Cohen's bound (holds w.p. >= 1 - alpha per call)
        radii.append(radius)
    if distance >= 0.2:  # not vacuous: close to the truth
        assert min(radii) > 0.6 * distance


def test_noise_is_not_clipped():
    # Class 1 iff some pixel went below 0 — impossible if the noise were clipped to [0, 1].
    fn = lambda z: tf.stack(  # noqa: E731
        [tf.zeros(tf.shape(z)[0]), tf.cast(tf.reduce_min(z, [1, 2, 3]) < 0, tf.float32)], -1
    )
    counts = certification.sample_counts(
        fn, np.zeros(SHAPE, np.float32), 200, sigma=0.25, num_classes=2, batch_size=200, seed=0
    )
    assert counts[1] == 200


# === Seeds, streams, remainder batch ===


def test_counts_reproducible_and_sum_to_num():
    fn = coin_fn()
    kwargs = dict(sigma=0.25, num_classes=2, batch_size=100)
    a = certification.sample_counts(fn, HALF, 1037, seed=11, **kwargs)
    b = certification.sample_counts(fn, HALF, 1037, seed=11, **kwargs)
    c = certification.sample_counts(fn, HALF, 1037, seed=12, **kwargs)
    assert a.dtype == np.int64 and a.shape == (2,)
    assert a.sum() == 1037 and c.sum() == 1037
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    # The first 1000 samples of 1037 are the 1000 samples (batch k has the same seed).
    head = certification.sample_counts(fn, HALF, 1000, seed=11, **kwargs)
    assert np.all(head <= a) and (a - head).sum() == 37
    assert certification.sample_counts(fn, HALF, 0, seed=11, **kwargs).tolist() == [0, 0]


def test_selection_and_estimation_streams_differ_and_certify_uses_them():
    smooth = certification.Smooth(coin_fn(), 2, sigma=0.25, batch_size=100)
    x = HALF + np.float32(0.02)  # class 1 only slightly ahead: counts vary by stream
    sel = smooth.sample(x, 1000, seed=3, stream=certification.SELECTION)
    est = smooth.sample(x, 1000, seed=3, stream=certification.ESTIMATION)
    pre = smooth.sample(x, 1000, seed=3, stream=certification.PREDICT)
    assert len({tuple(sel), tuple(est), tuple(pre)}) == 3
    label, radius = smooth.certify(x, 1000, 1000, 0.4, seed=3)
    top = int(np.argmax(sel))
    p_lower = certification.clopper_pearson_lower(est[top], 1000, 0.4)
    expected = (top, certification.certified_radius(p_lower, 0.25)) if p_lower >= 0.5 else (-1, 0.0)
    assert (label, radius) == expected


# === One trace, no per-batch Python ===


def test_traced_once_and_no_python_per_batch():
    calls = []
    fn = coin_fn(calls)
    smooth = certification.Smooth(fn, 2, sigma=0.25, batch_size=100)
    rng = np.random.default_rng(0)
    for _ in range(3):
        smooth.certify(rng.uniform(size=SHAPE).astype(np.float32), 100, 1000, 0.001, seed=1)
    assert len(calls) == 1  # n0 and n both run in batches of 100: one trace
    smooth.certify(HALF, 100, 10_000, 0.001, seed=2)  # 10x the noise
    smooth.predict(HALF, 10_000, 0.001, seed=2)
    assert len(calls) == 1
    sampler = certification.get_sampler(fn, SHAPE, batch=100, num_classes=2)
    assert sampler.experimental_get_tracing_count() == 1
    assert calls[0].as_list() == [100, *SHAPE]


def test_small_n0_gets_its_own_batch_shape():
    calls = []
    smooth = certification.Smooth(coin_fn(calls), 2, sigma=0.25, batch_size=1000)
    for seed in range(3):
        smooth.certify(HALF, 100, 3000, 0.001, seed=seed)
    assert sorted(s[0] for s in calls) == [100, 1000]  # n0 batch, n batch; no more


# === MirroredStrategy on 2 logical CPUs (own process) ===


def test_mirrored_two_replicas_equal_single_device():
    proc = subprocess.run(
        [sys.executable, SCRIPT],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"},
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    line = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    assert line, proc.stdout
    result = json.loads(line[-1][len("RESULT ") :])
    assert result["replicas"] == 2
    for key, pair in result["counts"].items():
        num = int(key.split("/")[0])
        assert sum(pair["mirrored"]) == num, key
        assert pair["mirrored"] == pair["single"], key
    assert result["certify"]["mirrored"] == result["certify"]["single"]
    assert result["certify"]["single"][0] != certification.ABSTAIN
    assert result["predict"]["mirrored"] == result["predict"]["single"]
    assert result["traces"] == [1, 1]


def test_bound_method_logits_fn_is_cached():
    class Base:
        def __init__(self):
            self.calls = 0

        def logits(self, z):
            self.calls += 1
            return coin_fn()(z)

    base = Base()
    for seed in range(3):  # `base.logits` is a new bound-method object each time
        certification.sample_counts(base.logits, HALF, 300, sigma=0.25, num_classes=2, batch_size=100, seed=seed)
    assert base.calls == 1
