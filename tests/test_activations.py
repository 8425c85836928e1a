"""sat_tf.activations: NumPy values/gradients, registry, saving, export, XLA."""

import contextlib
import functools

import keras
import numpy as np
import pytest
import tensorflow as tf
from conftest import np_sigmoid

from sat_tf import activations, models
from sat_tf.activations import ACTIVATIONS, get_activation, list_activations

# Sparta is spatial (4-D feature maps, a k x k gate), so the elementwise
# NumPy references and the 1-D/2-D inputs below do not apply to it; it is
# tested in tests/test_sparta.py.
SPATIAL = ("sparta",)
NAMES = [name for name in list_activations() if name not in SPATIAL]
_POINTS = [-30.0, -8.0, -2.5, -1.0, -0.3, -1e-3, 0.0, 1e-3, 0.05, 0.3, 1.0, 2.5]
GRID = np.array(_POINTS + [8.0, 30.0], np.float32)


# === NumPy references (float64) ===


def _softplus(x):
    return np.logaddexp(0.0, x)


def _gelu_erf(x):
    from math import erf

    return x * 0.5 * (1.0 + np.vectorize(erf)(x / np.sqrt(2.0)))


def _gelu_tanh(x):
    return 0.5 * x * (1.0 + np.tanh(np.sqrt(2.0 / np.pi) * (x + 0.044715 * x**3)))


def _elu(x, alpha=1.0):
    return np.where(x >= 0, x, alpha * (np.exp(np.minimum(x, 0.0)) - 1.0))


def _celu(x, alpha=1.0):
    return np.maximum(0.0, x) + np.minimum(0.0, alpha * (np.exp(np.minimum(x, 0.0) / alpha) - 1.0))


def _smooth_relu(x, beta=400.0):
    return np.maximum(0.0, x - np.log(beta * np.abs(x) + 1.0) / beta)


NP_REF = {
    "relu": lambda x: np.maximum(x, 0.0),
    "softplus": _softplus,
    "parametric_softplus": lambda x: _softplus(10.0 * x) / 10.0,
    "silu": lambda x: x * np_sigmoid(x),
    "gelu": _gelu_tanh,
    "gelu_erf": _gelu_erf,
    "elu": _elu,
    "celu": _celu,
    "smooth_relu": _smooth_relu,
    "mish": lambda x: x * np.tanh(_softplus(x)),
    "relu_smooth_grad": lambda x: np.maximum(x, 0.0),
}
# Gradients: analytic for a kink at 0 (TF takes 0 there), a custom gradient or
# SmoothReLU (beta = 400 is too sharp at 0 for finite differences); central
# differences in float64 elsewhere.
NP_GRAD = {
    "relu": lambda x: (x > 0).astype(np.float64),
    # Defaults mode="both", alpha=10.
    "relu_smooth_grad": lambda x: np_sigmoid(10.0 * x),
    "smooth_relu": lambda x: np.where(x > 0, 400.0 * x / (1.0 + 400.0 * np.abs(x)), 0.0),
}
CANONICAL = {
    "swish": "silu",
    "smoothrelu": "smooth_relu",
    "psoftplus": "parametric_softplus",
    "gelu_tanh": "gelu",
}


def _canonical(name):
    return CANONICAL.get(name, name)


def _numeric_grad(f, x, h=1e-5):
    x = x.astype(np.float64)
    return (f(x + h) - f(x - h)) / (2.0 * h)


def _ref_grad(name):
    name = _canonical(name)
    if name in NP_GRAD:
        return NP_GRAD[name]
    return functools.partial(_numeric_grad, NP_REF[name])


def _value_and_grad(layer, x, **call_kwargs):
    x = tf.convert_to_tensor(x)
    with tf.GradientTape() as tape:
        tape.watch(x)
        y = layer(x, **call_kwargs)
    return y, tape.gradient(y, x)


def test_registry_covers_reference():
    assert {_canonical(name) for name in NAMES} == set(NP_REF)
    assert set(CANONICAL) <= set(NAMES)
    assert set(SPATIAL) <= set(ACTIVATIONS)


@pytest.mark.parametrize("name", NAMES)
def test_values_and_gradients_match_numpy(name):
    layer = get_activation(name)
    y, g = _value_and_grad(layer, GRID)
    np.testing.assert_allclose(
        y.numpy(),
        NP_REF[_canonical(name)](GRID.astype(np.float64)),
        rtol=1e-5,
        atol=1e-6,
    )
    np.testing.assert_allclose(g.numpy(), _ref_grad(name)(GRID), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize(
    "fn, ref",
    [
        (
            lambda x: activations.parametric_softplus(x, 3.0),
            lambda x: _softplus(3.0 * x) / 3.0,
        ),
        (lambda x: activations.elu(x, 0.5), lambda x: _elu(x, 0.5)),
        (lambda x: activations.celu(x, 2.0), lambda x: _celu(x, 2.0)),
        (
            lambda x: activations.smooth_relu(x, 9.0),
            lambda x: _smooth_relu(x, 9.0),
        ),
        (lambda x: activations.gelu(x, approximate=False), _gelu_erf),
    ],
)
def test_pure_functions_with_parameters(fn, ref):
    # ELU with alpha != 1 has a kink at 0; the layer tests cover x = 0.
    x = GRID[GRID != 0]
    y, g = _value_and_grad(fn, x)
    np.testing.assert_allclose(y.numpy(), ref(x.astype(np.float64)), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(g.numpy(), _numeric_grad(ref, x), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("name", NAMES)
def test_config_round_trip(name):
    layer = get_activation(name, name="act")
    config = layer.get_config()
    clone = type(layer).from_config(config)
    assert clone.get_config() == config
    revived = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(layer))
    assert type(revived) is type(layer) and revived.get_config() == config


@pytest.mark.parametrize("name", NAMES)
def test_each_call_returns_a_new_layer(name):
    a, b = get_activation(name), get_activation(name.upper())
    assert a is not b and type(a) is type(b) and a.name != b.name
    a.build((None, 3))
    b.build((None, 3))
    for wa, wb in zip(a.weights, b.weights, strict=True):
        assert wa is not wb
        wa.assign(wa * 0.5)
        assert float(wb.numpy()) != float(wa.numpy())


def test_unknown_name():
    with pytest.raises(
        ValueError,
        match=r"Unknown activation 'leaky'\. Known: \[.*'smooth_relu'",
    ):
        get_activation("leaky")


@pytest.mark.parametrize(
    "cls, kwargs, message",
    [
        (
            activations.ParametricSoftplus,
            {"alpha": -1.0},
            r"Received: alpha=-1\.0$",
        ),
        (activations.ELU, {"alpha": 0}, r"Received: alpha=0$"),
        (activations.CELU, {"alpha": "1"}, r"Received: alpha='1'$"),
        (
            activations.GELU,
            {"approximate": "tanh"},
            r"Received: approximate='tanh'$",
        ),
        (
            activations.SmoothReLU,
            {"initial_beta_raw": 0.0},
            r"Received: initial_beta_raw=0\.0$",
        ),
        (
            activations.ReLUSmoothGrad,
            {"mode": "attack"},
            r"Received: mode='attack'$",
        ),
        (
            activations.ReLUSmoothGrad,
            {"alpha": -2.0},
            r"Received: alpha=-2\.0$",
        ),
    ],
)
def test_validation(cls, kwargs, message):
    with pytest.raises(ValueError, match=message):
        cls(**kwargs)


def test_get_activation_identifier_kinds():
    assert get_activation("Smooth-ReLU", name="s").name == "s"
    assert get_activation("gelu_erf").approximate is False
    assert get_activation("gelu_erf", approximate=True).approximate is True
    assert get_activation("psoftplus", alpha=3.0).alpha == 3.0
    assert isinstance(get_activation(activations.SiLU, name="c"), activations.SiLU)
    partial = functools.partial(activations.ParametricSoftplus, alpha=5.0)
    assert get_activation(partial, name="p").alpha == 5.0
    zero_arg = get_activation(lambda: activations.Mish(), name="z")
    assert isinstance(zero_arg, activations.Mish) and zero_arg.name == "z"
    source = activations.CELU(alpha=2.0, name="src")
    clone = get_activation(source)
    assert clone is not source and clone.alpha == 2.0 and clone.name != "src"
    config = keras.saving.serialize_keras_object(activations.ELU(alpha=0.5))
    from_dict = get_activation(config, name="d")
    assert isinstance(from_dict, activations.ELU)
    assert from_dict.alpha == 0.5 and from_dict.name == "d"
    with pytest.raises(TypeError, match="must return a keras Layer"):
        get_activation(lambda: tf.nn.relu)
    with pytest.raises(ValueError, match="Could not interpret"):
        get_activation(3)


def test_smooth_relu_weight():
    layer = get_activation("smooth_relu", name="stem_act")
    layer.build((None, 4))
    (w,) = layer.weights
    assert layer.trainable_weights == [w] and w.trainable
    assert tuple(w.shape) == () and float(w.numpy()) == 20.0
    assert w.name == "beta_raw" and w.path == "stem_act/beta_raw"
    # sat_tf.training applies L2 only to variables whose path ends in "kernel".
    assert not w.path.endswith("kernel") and not w.name.endswith("kernel")


def test_smooth_relu_gradient_wrt_beta_raw():
    layer = activations.SmoothReLU(initial_beta_raw=3.0)
    x = GRID[np.abs(GRID) < 10]
    with tf.GradientTape() as tape:
        loss = tf.reduce_sum(layer(x))
    (g,) = tape.gradient(loss, layer.trainable_weights)

    def loss_np(b):
        return np.sum(_smooth_relu(x.astype(np.float64), b * b))

    h = 1e-6
    expected = (loss_np(3.0 + h) - loss_np(3.0 - h)) / (2 * h)
    np.testing.assert_allclose(g.numpy(), expected, rtol=1e-4)


@pytest.mark.parametrize("training", [True, False, None])
@pytest.mark.parametrize("mode", ["attacker", "optimizer", "both"])
def test_relu_smooth_grad_modes(mode, training):
    smooth = mode == "both" or (mode == "optimizer") == bool(training)
    expected = np_sigmoid(3.0 * GRID) if smooth else (GRID > 0).astype(np.float64)
    layer = activations.ReLUSmoothGrad(alpha=3.0, mode=mode)
    y, g = _value_and_grad(layer, GRID, training=training)
    np.testing.assert_array_equal(y.numpy(), np.maximum(GRID, 0.0))
    np.testing.assert_allclose(g.numpy(), expected, rtol=1e-5, atol=1e-7)
    # The flag reaches the layer through a model, and may be a tensor under XLA.
    inputs = keras.Input((GRID.size,))
    model = keras.Model(inputs, layer(inputs))
    x = GRID[None]
    _, g_model = _value_and_grad(lambda t: model(t, training=training), x)
    np.testing.assert_allclose(g_model.numpy()[0], expected, rtol=1e-5, atol=1e-7)
    grad_fn = tf.function(
        lambda t, flag: _value_and_grad(layer, t, training=flag)[1],
        jit_compile=True,
    )
    g_tensor_flag = grad_fn(tf.constant(GRID), tf.constant(bool(training)))
    np.testing.assert_allclose(g_tensor_flag.numpy(), expected, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("name", list_activations())
def test_after_batch_norm_in_inference_inside_tf_function(name):
    """Conv (no bias) -> BN -> activation (the digits CNN, built as every network here), called as evaluation and the attacks
    call it (training=False in a tf.function, with and without the input gradient): TensorFlow's graph rewrites there (the
    fused Conv2D + BatchNorm + activation of oneDNN) must not break it, and the result must equal eager
    execution. Mish's Softplus -> Tanh -> Mul once became an unimplemented Conv+BatchNorm+Mish fusion."""
    model = models.build_model("digits_cnn", num_classes=3, input_shape=(8, 8, 1), activation=name)
    images = tf.constant(np.random.default_rng(0).uniform(size=(2, 8, 8, 1)).astype(np.float32))

    def value_and_input_gradient(t):
        with tf.GradientTape() as tape:
            tape.watch(t)
            logits = model(t, training=False)
            total = tf.reduce_sum(logits)
        return logits, tape.gradient(total, t)

    y_graph, g_graph = tf.function(value_and_input_gradient)(images)
    y_eager, g_eager = value_and_input_gradient(images)
    y_forward = tf.function(lambda t: model(t, training=False))(images)  # a clean-accuracy pass: no gradient
    np.testing.assert_allclose(y_forward.numpy(), y_eager.numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(y_graph.numpy(), y_eager.numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(g_graph.numpy(), g_eager.numpy(), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", NAMES)
def test_jit_compile_matches_eager(name):
    layer = get_activation(name)
    x = np.random.default_rng(0).normal(scale=3.0, size=(4, 5))
    x = tf.constant(x.astype(np.float32))
    y_eager, g_eager = _value_and_grad(layer, x)
    y_xla, g_xla = tf.function(lambda t: _value_and_grad(layer, t), jit_compile=True)(x)
    np.testing.assert_allclose(y_xla.numpy(), y_eager.numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(g_xla.numpy(), g_eager.numpy(), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", NAMES)
def test_mixed_precision(name):
    layer = get_activation(name, dtype="mixed_float16")
    x = np.linspace(-6.0, 6.0, 25).astype(np.float32)
    y, g = _value_and_grad(layer, x)
    assert y.dtype == tf.float16 and g.dtype == tf.float32
    assert all(w.dtype == "float32" for w in layer.weights)
    np.testing.assert_allclose(
        y.numpy(),
        NP_REF[_canonical(name)](x.astype(np.float64)),
        rtol=5e-3,
        atol=5e-3,
    )
    assert np.all(np.isfinite(g.numpy()))


def _all_activations_model():
    inputs = keras.Input((6,))
    h = keras.layers.Dense(8, name="dense_in")(inputs)
    branches = [get_activation(name, name=f"act_{name}")(h) for name in NAMES]
    outputs = keras.layers.Dense(3, name="logits")(keras.layers.Concatenate()(branches))
    return keras.Model(inputs, outputs)


@pytest.fixture(scope="module")
def model():
    keras.utils.set_random_seed(0)
    model = _all_activations_model()
    for name in NAMES:
        layer = model.get_layer(f"act_{name}")
        if isinstance(layer, activations.SmoothReLU):
            layer.beta_raw.assign(7.0)
    return model


def test_keras_save_load_safe_mode(model, tmp_path):
    path = str(tmp_path / "model.keras")
    model.save(path)
    loaded = keras.saving.load_model(path, safe_mode=True)
    x = np.random.default_rng(1).normal(size=(5, 6)).astype(np.float32)
    np.testing.assert_allclose(loaded(x).numpy(), model(x).numpy(), rtol=1e-6, atol=1e-6)
    for name in NAMES:
        layer = loaded.get_layer(f"act_{name}")
        original = model.get_layer(f"act_{name}")
        assert type(layer) is type(original)
        assert layer.get_config() == original.get_config()
    assert float(loaded.get_layer("act_smooth_relu").beta_raw.numpy()) == 7.0


def test_saved_model_export(model, tmp_path):
    path = str(tmp_path / "export")
    model.export(path, format="tf_saved_model", verbose=False)
    revived = tf.saved_model.load(path)
    for batch in (5, 2):
        x = np.random.default_rng(batch).normal(size=(batch, 6))
        x = x.astype(np.float32)
        np.testing.assert_allclose(revived.serve(x).numpy(), model(x).numpy(), rtol=1e-5, atol=1e-6)
    # Input gradients (what an attack on the SavedModel uses) survive too,
    # including ReLUSmoothGrad's custom gradient.
    _, g_revived = _value_and_grad(revived.serve, x)
    _, g_keras = _value_and_grad(lambda t: model(t, training=False), x)
    np.testing.assert_allclose(g_revived, g_keras, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", ["silu", "gelu", "gelu_erf", "smooth_relu"])
def test_fused_kernels_equal_the_plain_ops(name):
    # sat_tf.activations.fused: one XLA kernel forward and one backward must give the
    # plain-op values and gradients (input and SmoothReLU's beta_raw).
    from sat_tf.activations import fused

    x = tf.constant(np.random.default_rng(0).normal(0.0, 3.0, (4, 5, 6, 3)).astype(np.float32))
    upstream = tf.sin(x)
    results = []
    for context in (fused.disabled, contextlib.nullcontext):
        with context():
            layer = get_activation(name, **({"initial_beta_raw": 1.5} if name == "smooth_relu" else {}))
            layer.build(x.shape)
            step = tf.function(lambda z, layer=layer: _forward_backward(layer, z, upstream))
            results.append(step(x))
            graph = step.get_concrete_function(x).graph
            top_level = {op.type for op in graph.get_operations()}
            # Fused: the elementwise math lives in XLA-compiled functions, not in the step's graph.
            assert (
                "Tanh" in top_level
                or "Sigmoid" in top_level
                or "Log1p" in top_level
                or "Erfc" in top_level
                or "Erf" in top_level
            ) == (context is fused.disabled), top_level
    for plain, fast in zip(*results):
        np.testing.assert_allclose(fast, plain, rtol=2e-5, atol=2e-5)


def _forward_backward(layer, x, upstream):
    with tf.GradientTape() as tape:
        tape.watch(x)
        total = tf.reduce_sum(layer(x) * upstream)
    return [layer(x), *tape.gradient(total, [x, *layer.trainable_variables])]
