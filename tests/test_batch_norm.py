"""`models.layers.BatchNormalization` (TensorFlow's fused kernel) against Keras' layer and exact float64 math."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from sat_tf.models import layers

EPS, MOMENTUM = 1e-5, 0.9


def _pair(shape, axis=-1, **kwargs):
    """A fused layer and a Keras layer with the same random weights and moving statistics."""
    fused = layers.BatchNormalization(axis=axis, epsilon=EPS, momentum=MOMENTUM, **kwargs)
    plain = keras.layers.BatchNormalization(axis=axis, epsilon=EPS, momentum=MOMENTUM, **kwargs)
    fused.build(shape)
    plain.build(shape)
    rng = np.random.default_rng(0)
    weights = [
        rng.normal(1.0, 0.3, w.shape).astype(np.float32)
        if i != 3
        else rng.uniform(0.5, 2.0, w.shape).astype(np.float32)
        for i, w in enumerate(plain.get_weights())
    ]
    fused.set_weights(weights)
    plain.set_weights(weights)
    return fused, plain


def _images(shape=(6, 5, 4, 3), seed=1):
    return tf.constant(np.random.default_rng(seed).normal(0.5, 2.0, shape).astype(np.float32))


@pytest.mark.parametrize("training", [False, True])
def test_outputs_moving_statistics_and_gradients_equal_keras(training):
    x = _images()
    fused, plain = _pair(x.shape)
    upstream = _images(seed=2)
    before = fused.moving_mean.numpy()
    results = []
    for layer in (fused, plain):
        with tf.GradientTape() as tape:
            tape.watch(x)
            y = layer(x, training=training)
            total = tf.reduce_sum(y * upstream)
        grads = tape.gradient(total, [x, layer.gamma, layer.beta])
        results.append((y, grads, [v.numpy() for v in layer.non_trainable_variables]))
    (y_f, g_f, stats_f), (y_p, g_p, stats_p) = results
    np.testing.assert_allclose(y_f, y_p, rtol=1e-5, atol=1e-5)
    for a, b in zip(g_f, g_p):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)
    for a, b in zip(stats_f, stats_p):  # biased variance in the moving average, as Keras
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6)
    assert np.allclose(stats_f[0], before) != training  # only a training call moves the statistics


def test_training_gradient_matches_exact_float64_batch_norm():
    x = _images()
    fused, _ = _pair(x.shape)
    gamma, beta = (np.asarray(w, np.float64) for w in fused.get_weights()[:2])
    upstream = _images(seed=2)
    x64, up64 = tf.cast(x, tf.float64), tf.cast(upstream, tf.float64)
    with tf.GradientTape() as tape:
        tape.watch(x64)
        mean = tf.reduce_mean(x64, [0, 1, 2])
        var = tf.reduce_mean(tf.square(x64 - mean), [0, 1, 2])
        exact = tf.reduce_sum(((x64 - mean) / tf.sqrt(var + EPS) * gamma + beta) * up64)
    expected = tape.gradient(exact, x64).numpy()
    with tf.GradientTape() as tape:
        tape.watch(x)
        total = tf.reduce_sum(fused(x, training=True) * upstream)
    np.testing.assert_allclose(tape.gradient(total, x), expected, rtol=1e-4, atol=1e-5)


def test_the_traced_graph_uses_the_fused_kernel():
    x = _images()
    fused, _ = _pair(x.shape)
    for training in (False, True):
        graph = tf.function(lambda z, t=training: fused(z, training=t)).get_concrete_function(x).graph
        types = {op.type for op in graph.get_operations()}
        assert "FusedBatchNormV3" in types and "Rsqrt" not in types, types


@pytest.mark.parametrize("shape,axis", [((6, 3, 5, 4), 1), ((6, 3), -1), ((6, 5, 3), -1)])
def test_other_layouts_fall_back_to_keras(shape, axis):
    x = _images(shape)
    fused, plain = _pair(x.shape, axis=axis)
    for training in (False, True):
        np.testing.assert_allclose(fused(x, training=training), plain(x, training=training), rtol=1e-5, atol=1e-5)
    graph = tf.function(lambda z: fused(z, training=True)).get_concrete_function(x).graph
    assert "FusedBatchNormV3" not in {op.type for op in graph.get_operations()}


def test_stateless_call_returns_the_updated_statistics():
    # AWP runs the model through stateless_call: the moving statistics must come back as state.
    x = _images()
    fused, plain = _pair(x.shape)
    trainable = [tf.identity(v) for v in fused.trainable_variables]
    state = [tf.identity(v) for v in fused.non_trainable_variables]
    y, new_state = fused.stateless_call(trainable, state, x, training=True)
    np.testing.assert_allclose(y, plain(x, training=True), rtol=1e-5, atol=1e-5)
    for a, b in zip(new_state, plain.non_trainable_variables):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6)
    np.testing.assert_array_equal(fused.non_trainable_variables[0], state[0])  # the layer itself is untouched


def test_jit_compiled_training_call_equals_eager():
    x = _images()
    fused, _ = _pair(x.shape)
    eager = fused(x, training=False)
    compiled = tf.function(lambda z: fused(z, training=False), jit_compile=True)(x)
    np.testing.assert_allclose(compiled, eager, rtol=1e-5, atol=1e-5)


def test_mixed_bfloat16_normalises_in_float32_and_returns_bfloat16():
    x = _images()
    keras.mixed_precision.set_global_policy("mixed_bfloat16")
    try:
        fused, plain = _pair(x.shape)
    finally:
        keras.mixed_precision.set_global_policy("float32")
    y_f, y_p = fused(x, training=True), plain(x, training=True)
    assert y_f.dtype == tf.bfloat16 and fused.moving_mean.dtype == "float32"
    np.testing.assert_allclose(tf.cast(y_f, tf.float32), tf.cast(y_p, tf.float32), rtol=2e-2, atol=2e-2)


def test_keras_file_round_trip_in_safe_mode(tmp_path):
    inputs = keras.Input((5, 4, 3))
    model = keras.Model(inputs, layers.BatchNormalization(epsilon=EPS, name="bn")(inputs))
    model.get_layer("bn").set_weights(
        [np.full(3, 2.0, np.float32), np.ones(3, np.float32), np.full(3, 0.5, np.float32), np.full(3, 4.0, np.float32)]
    )
    path = str(tmp_path / "bn.keras")
    model.save(path)
    loaded = keras.saving.load_model(path, safe_mode=True)
    assert type(loaded.get_layer("bn")) is layers.BatchNormalization
    x = _images((2, 5, 4, 3))
    np.testing.assert_allclose(loaded(x, training=False), model(x, training=False), rtol=1e-6)
    np.testing.assert_allclose(
        loaded(x, training=False), (x - 0.5) / np.sqrt(4.0 + EPS) * 2.0 + 1.0, rtol=1e-5, atol=1e-5
    )
