"""Randomized smoothing (Cohen et al. 2019): PREDICT and CERTIFY on a logits_fn.

`Smooth(lambda z: model(z, training=False), num_classes, sigma)` wraps any
callable mapping float32 [B, H, W, C] images in [0, 1] pixel space to logits
(preprocessing lives inside the model; call Keras models with
`training=False` so BatchNorm uses its moving statistics). The smoothed
classifier is g(x) = argmax_c P[argmax f(x + N(0, σ²I)) = c], the noise never
clipped. `certify` returns (class, L2 radius) or (ABSTAIN, 0.0); `predict`
returns a class or ABSTAIN. Reference: https://arxiv.org/abs/1902.02918
(locuslab/smoothing `code/core.py`).

Monte Carlo. `sample_counts` runs ONE `tf.function` per (logits_fn, image
shape, batch, classes, strategy): a `tf.while_loop` over the batches, so
sampling 10x more noise costs no extra Python. The `num` samples are cut into
K = ceil(num / b) *global* batches of b = min(batch_size, num) samples; the
last one is masked down to the remainder. Batch k's noise is
`stateless_normal(seed=noise_seed(seed, stream, k))`, so the counts for a
seed do not depend on the hardware: under a strategy with R replicas,
replica r evaluates batches k = r, r + R, r + 2R, ... (round robin, every
replica runs ceil(K / R) iterations, trailing ones fully masked), and the
per-replica counts are SUMmed with `strategy.reduce`. A MirroredStrategy,
MultiWorkerMirroredStrategy (all workers call with the same arguments) or
TPUStrategy run thus gives exactly the single-device counts (up to the model
computing bit-different logits on other hardware). `batch_size` is the
per-replica batch of one step.

Streams. `certify` draws its n0 selection samples from stream SELECTION and
its n estimation samples from stream ESTIMATION (fresh noise, never reused);
`predict` uses stream PREDICT.
"""

import inspect
import math
import weakref

import numpy as np
import scipy.stats
import tensorflow as tf

ABSTAIN = -1
SELECTION, ESTIMATION, PREDICT = 0, 1, 2
_SALT = 0x5E0  # separates these seeds from sat_tf.seeds.make_seed's


def clopper_pearson_lower(n_a, n, alpha):
    """One-sided (1 - alpha) Clopper–Pearson lower bound on p from n_a of n.

    Equals `Beta.ppf(alpha; n_a, n - n_a + 1)`, and 0 when n_a == 0 (Cohen's
    `proportion_confint(n_a, n, alpha=2 * alpha, method="beta")[0]`).
    """
    n_a, n = int(n_a), int(n)
    if not 0 <= n_a <= n or n < 1:
        raise ValueError(f"Need 0 <= n_a <= n and n >= 1. Received: n_a={n_a}, n={n}")
    if n_a == 0:
        return 0.0
    return float(scipy.stats.beta.ppf(float(alpha), n_a, n - n_a + 1))


def certified_radius(p_lower, sigma):
    """Cohen's L2 radius σ·Φ⁻¹(p_lower) (meaningful for p_lower > 0.5)."""
    return float(sigma) * float(scipy.stats.norm.ppf(float(p_lower)))


def noise_seed(seed, stream, batch_index):
    """The stateless [2] int32 seed of global noise batch `batch_index`."""
    base = tf.stack([tf.cast(seed, tf.int32), tf.constant(_SALT, tf.int32)])
    key = tf.random.experimental.stateless_fold_in(base, tf.cast(stream, tf.int32))
    return tf.random.experimental.stateless_fold_in(key, tf.cast(batch_index, tf.int32))


def _replica_counts(logits_fn, x, num, sigma, seed, stream, replica, replicas, *, batch, num_classes):
    """int32 [num_classes] counts over global batches replica, replica + replicas, ..."""
    num_batches = (num + batch - 1) // batch
    iterations = (num_batches + replicas - 1) // replicas
    x = x[tf.newaxis]
    offsets = tf.range(batch, dtype=tf.int32)

    def body(j, counts):
        k = j * replicas + replica
        noise = tf.random.stateless_normal(
            (batch,) + tuple(x.shape[1:]), seed=noise_seed(seed, stream, k), dtype=tf.float32
        )
        logits = tf.cast(logits_fn(x + sigma * noise), tf.float32)
        pred = tf.argmax(logits, axis=-1, output_type=tf.int32)
        valid = tf.cast(k * batch + offsets < num, tf.int32)
        counts += tf.reduce_sum(tf.one_hot(pred, num_classes, dtype=tf.int32) * valid[:, None], 0)
        return j + 1, counts

    _, counts = tf.while_loop(lambda j, _: j < iterations, body, (tf.constant(0), tf.zeros([num_classes], tf.int32)))
    return counts


def _build_sampler(logits_ref, batch, num_classes, strategy):
    def local(x, num, sigma, seed, stream):
        return _replica_counts(
            logits_ref(),
            x,
            num,
            sigma,
            seed,
            stream,
            tf.constant(0),
            tf.constant(1),
            batch=batch,
            num_classes=num_classes,
        )

    def distributed(x, num, sigma, seed, stream):
        def replica_fn(x, num, sigma, seed, stream):
            ctx = tf.distribute.get_replica_context()
            replica = tf.cast(ctx.replica_id_in_sync_group, tf.int32)
            return _replica_counts(
                logits_ref(),
                x,
                num,
                sigma,
                seed,
                stream,
                replica,
                tf.constant(ctx.num_replicas_in_sync, tf.int32),
                batch=batch,
                num_classes=num_classes,
            )

        per_replica = strategy.run(replica_fn, args=(x, num, sigma, seed, stream))
        return strategy.reduce("SUM", per_replica, axis=None)

    return tf.function(local if strategy is None else distributed)


# logits_fn (or a bound method's object) -> {(shape, batch, classes, strategy
# [, method's function]): tf.function}. The traced functions reach logits_fn
# only through a weakref, so the entry dies with it.
_SAMPLERS = weakref.WeakKeyDictionary()


def get_sampler(logits_fn, shape, *, batch, num_classes, strategy=None):
    """The cached `tf.function(x, num, sigma, seed, stream) -> int32 counts`.

    Exposed for tests (`experimental_get_tracing_count()`). A callable that
    cannot be weakly referenced gets a fresh, uncached function each call.
    """
    key = (tuple(shape), int(batch), int(num_classes), strategy)
    anchor = logits_fn
    if inspect.ismethod(logits_fn):  # a bound method is a new object per access
        anchor, key = logits_fn.__self__, key + (logits_fn.__func__,)
    try:
        cache = _SAMPLERS.setdefault(anchor, {})
        ref = weakref.WeakMethod(logits_fn) if anchor is not logits_fn else weakref.ref(logits_fn)
    except TypeError:
        return _build_sampler(lambda: logits_fn, int(batch), int(num_classes), strategy)
    if key not in cache:
        cache[key] = _build_sampler(ref, int(batch), int(num_classes), strategy)
    return cache[key]


def sample_counts(logits_fn, x, num, *, sigma, num_classes, batch_size, seed, stream=0, strategy=None):
    """int64 [num_classes] counts of argmax logits_fn(x + N(0, σ²I)) over `num` draws.

    Args:
        logits_fn: `fn(z) -> logits` on float32 [B, H, W, C] in [0, 1]; e.g.
            `lambda z: model(z, training=False)`. Keep the same callable across
            calls (a new lambda per call retraces).
        x: one image, [H, W, C] float32 in [0, 1].
        num: number of noise samples (any int >= 0).
        sigma: noise standard deviation in [0, 1] pixel units (not clipped).
        num_classes: length of the logits.
        batch_size: per-replica samples per step; the batch is min(batch_size, num).
        seed: int seed; with `stream` it fixes every noise sample.
        stream: int stream id (SELECTION, ESTIMATION, PREDICT, ...).
        strategy: optional `tf.distribute.Strategy`; batches are dealt round
            robin to its replicas and the counts summed (same result as None).
    """
    x = tf.convert_to_tensor(x, tf.float32)
    if x.shape.rank != 3:
        raise ValueError(f"x must be one [H, W, C] image. Received: shape={x.shape}")
    num = int(num)
    if num < 0 or batch_size < 1:
        raise ValueError(f"Need num >= 0, batch_size >= 1. Received: num={num}, batch_size={batch_size}")
    if num == 0:
        return np.zeros([num_classes], np.int64)
    if num >= 2**31:
        raise ValueError(f"num must be < 2**31 (int32 counts). Received: num={num}")
    batch = min(int(batch_size), num)
    sampler = get_sampler(logits_fn, x.shape, batch=batch, num_classes=num_classes, strategy=strategy)
    counts = sampler(
        x,
        tf.constant(num, tf.int32),
        tf.constant(sigma, tf.float32),
        tf.constant(int(seed) & 0x7FFFFFFF, tf.int32),
        tf.constant(int(stream), tf.int32),
    )
    return np.asarray(counts, np.int64)


def _top_two(counts):
    order = np.argsort(-counts, kind="stable")  # ties -> lowest index, like np.argmax
    return int(order[0]), int(order[1])


class Smooth:
    """Cohen et al.'s smoothed classifier around a base `logits_fn`.

    Example:
        smooth = Smooth(lambda z: model(z, training=False), 10, sigma=0.25)
        label, radius = smooth.certify(x, n0=100, n=100_000, alpha=0.001, seed=0)

    Args:
        logits_fn: `fn(z) -> logits` on float32 [B, H, W, C] in [0, 1].
        num_classes: number of classes (>= 2).
        sigma: noise level in [0, 1] pixel units.
        batch_size: per-replica noise samples per step. Defaults to `1000`.
        strategy: optional `tf.distribute.Strategy` sharding the samples.
    """

    def __init__(self, logits_fn, num_classes, sigma, *, batch_size=1000, strategy=None):
        if num_classes < 2:
            raise ValueError(f"num_classes must be >= 2. Received: num_classes={num_classes}")
        if not sigma > 0:
            raise ValueError(f"sigma must be > 0. Received: sigma={sigma}")
        self.logits_fn = logits_fn
        self.num_classes = int(num_classes)
        self.sigma = float(sigma)
        self.batch_size = int(batch_size)
        self.strategy = strategy

    def sample(self, x, num, seed, stream):
        """int64 [num_classes] class counts under `num` noise draws."""
        return sample_counts(
            self.logits_fn,
            x,
            num,
            sigma=self.sigma,
            num_classes=self.num_classes,
            batch_size=self.batch_size,
            seed=seed,
            stream=stream,
            strategy=self.strategy,
        )

    def predict(self, x, n, alpha, seed=0):
        """The top class, or ABSTAIN if a two-sided binomial test of the top
        two counts has p-value > alpha (then P[wrong class] <= alpha)."""
        counts = self.sample(x, n, seed, PREDICT)
        top, second = _top_two(counts)
        c1, c2 = int(counts[top]), int(counts[second])
        if c1 + c2 == 0 or scipy.stats.binomtest(c1, c1 + c2, 0.5).pvalue > alpha:
            return ABSTAIN
        return top

    def certify(self, x, n0, n, alpha, seed=0):
        """(class, L2 radius), or (ABSTAIN, 0.0) if the lower bound is < 0.5.

        The class is argmax of n0 selection counts (lowest index on ties); the
        bound is the Clopper–Pearson lower bound of its count among n fresh
        estimation samples; radius = σ·Φ⁻¹(p_lower). With probability >= 1 - α
        the smoothed classifier returns that class within the radius.
        """
        top = int(np.argmax(self.sample(x, n0, seed, SELECTION)))
        n_a = int(self.sample(x, n, seed, ESTIMATION)[top])
        p_lower = clopper_pearson_lower(n_a, n, alpha)
        if p_lower < 0.5:
            return ABSTAIN, 0.0
        return top, certified_radius(p_lower, self.sigma)


def max_radius(n, alpha, sigma):
    """The largest radius `certify` can return: σ·Φ⁻¹(α^(1/n)) (n_a = n)."""
    return certified_radius(math.pow(alpha, 1.0 / n), sigma)


# === PREDICT as a graph (serving): batched, no scipy, no Python per image ===


def binomial_pvalue_half(c1, c2):
    """Two-sided binomial test p-value of c1 successes in c1 + c2 trials at p = 1/2.

    Graph-friendly and batched (any broadcastable integer shapes; float64
    result). Equals `scipy.stats.binomtest(c1, c1 + c2, 0.5).pvalue` (to
    ~1e-9 relative; `Smooth.predict`'s test): at p = 1/2 the test is
    symmetric, so with hi = max(c1, c2) > lo = min(c1, c2) it is
    min(1, 2·P[X >= hi]), X ~ Bin(c1 + c2, 1/2), and P[X >= k] is the
    regularized incomplete beta I_{1/2}(k, n - k + 1). Equal counts (0 and 0
    included) give 1.

    Example:
        binomial_pvalue_half([7, 5, 0], [3, 5, 0])  # [0.34375, 1.0, 1.0]
    """
    c1 = tf.cast(c1, tf.float64)
    c2 = tf.cast(c2, tf.float64)
    hi, lo = tf.maximum(c1, c2), tf.minimum(c1, c2)
    # betainc needs a > 0; hi == 0 only when hi == lo, which the where drops.
    tail = tf.math.betainc(tf.maximum(hi, 1.0), lo + 1.0, tf.constant(0.5, tf.float64))
    return tf.where(hi > lo, tf.minimum(2.0 * tail, 1.0), tf.ones_like(tail))


def predict_batch_graph(logits_fn, images, *, n, alpha, sigma, num_classes, batch_size, seed):
    """`Smooth.predict` for every image of a batch, as TF ops (for a SavedModel).

    Each image gets the counts `Smooth(logits_fn, num_classes, sigma,
    batch_size=batch_size).sample(x, n, seed, PREDICT)` would give (the same
    noise: same seed, stream and batching), then the same decision: the top
    class, or ABSTAIN if the two-sided binomial test of the top two counts
    (ties to the lower class index) has p-value > alpha. With a scalar `seed`
    every image uses it, so an image's answer does not depend on the rest of
    the batch; an int32 [B] `seed` gives image i the seed `seed[i]` (e.g.
    fresh random seeds per request, as `sat_tf.export` serves by default).
    Meant for a `tf.function` (eager works, one image at a time).

    Example:
        @tf.function(input_signature=[tf.TensorSpec([None, 8, 8, 1])])
        def serve(images):
            return predict_batch_graph(
                lambda z: model(z, training=False), images, n=1000,
                alpha=0.001, sigma=0.25, num_classes=10, batch_size=500, seed=0)

    Args:
        logits_fn: `fn(z) -> logits` on float32 [b, H, W, C] in [0, 1].
        images: float32 [B, H, W, C] in [0, 1] (H, W, C static).
        n: noise samples per image, a Python int in [1, 2**31).
        alpha: the test's level (ABSTAIN if p-value > alpha).
        sigma: noise standard deviation in [0, 1] pixel units (not clipped).
        num_classes: length of the logits (>= 2), a Python int.
        batch_size: noise samples per step (Python int; the batch is
            min(batch_size, n)).
        seed: int seed (Python int or int32 scalar tensor), or int32 [B]
            seeds, one per image.
    Returns:
        {"smoothed_classes": int32 [B] (ABSTAIN = -1), "counts": int32
        [B, num_classes], "pvalues": float64 [B]}.
    """
    n, batch_size, num_classes = int(n), int(batch_size), int(num_classes)
    if not (1 <= n < 2**31 and batch_size >= 1 and num_classes >= 2):
        raise ValueError(
            f"Need 1 <= n < 2**31, batch_size >= 1, num_classes >= 2. Received: "
            f"n={n}, batch_size={batch_size}, num_classes={num_classes}"
        )
    images = tf.convert_to_tensor(images, tf.float32)
    # The same argument tensors sample_counts feeds its sampler: same noise.
    num = tf.constant(n, tf.int32)
    noise_sd = tf.cast(sigma, tf.float32)
    if isinstance(seed, (int, np.integer)):
        seed = tf.constant(int(seed) & 0x7FFFFFFF, tf.int32)  # as sample_counts
    seeds = tf.broadcast_to(tf.cast(seed, tf.int32), tf.shape(images)[:1])

    def image_counts(args):
        x, image_seed = args
        return _replica_counts(
            logits_fn,
            x,
            num,
            noise_sd,
            image_seed,
            tf.constant(PREDICT, tf.int32),
            tf.constant(0),
            tf.constant(1),
            batch=min(batch_size, n),
            num_classes=num_classes,
        )

    # One image at a time: each already runs batches of `batch_size` samples,
    # and parallel images would multiply the noise tensors held in memory.
    counts = tf.map_fn(
        image_counts,
        (images, seeds),
        parallel_iterations=1,
        fn_output_signature=tf.TensorSpec([num_classes], tf.int32),
    )
    top_counts, top_classes = tf.math.top_k(counts, k=2)  # equal counts: lower index first
    c1, c2 = top_counts[:, 0], top_counts[:, 1]
    pvalues = binomial_pvalue_half(c1, c2)
    abstain = tf.logical_or(tf.equal(c1 + c2, 0), pvalues > tf.cast(alpha, tf.float64))
    classes = tf.where(abstain, tf.constant(ABSTAIN, tf.int32), top_classes[:, 0])
    return {"smoothed_classes": classes, "counts": counts, "pvalues": pvalues}
