"""sat_tf.activations.sparta: the Sparta reconstruction.

NumPy special cases (Swish, ReLU limit, spatial and input dependence),
channel-agnostic parameters, serialization and export, one shared instance
per network, freeze-and-transfer to another network, adversarial training.
"""

import functools

import keras
import numpy as np
import pytest
import tensorflow as tf
from conftest import np_sigmoid

from sat_tf import activations, attacks, export, models, training
from sat_tf.activations import sparta
from sat_tf.activations.sparta import Sparta
from sat_tf.models import cifar

# Activation sites per network (as tests/test_models.py ACTIVATION_SITES).
SITES = {
    "resnet18_cifar": 17,
    "preact_resnet18": 17,
    "resnet18": 17,
    "resnet34": 33,
    "wide_resnet34_10": 31,
    "digits_cnn": 3,
}
TINY_SHAPES = {"resnet18": (32, 32, 3), "resnet34": (32, 32, 3), "digits_cnn": (8, 8, 1)}


# === NumPy reference (float64, NHWC) ===


def _np_sparta(x, kernel, bias):
    """`x * sigmoid(K * x + b)`, each channel correlated alone, zero padding."""
    x = x.astype(np.float64)
    k = kernel.shape[0]
    p = k // 2
    h, w = x.shape[1:3]
    padded = np.pad(x, ((0, 0), (p, p), (p, p), (0, 0)))
    logits = np.full(x.shape, float(bias))
    for i in range(k):
        for j in range(k):
            logits += kernel[i, j] * padded[:, i : i + h, j : j + w, :]
    return x * np_sigmoid(logits)


def _features(shape=(2, 6, 7, 3), seed=0, scale=2.0):
    return np.random.default_rng(seed).normal(scale=scale, size=shape).astype("float32")


def _layer(kernel=None, bias=0.0, **kwargs):
    """A built Sparta with the given gate parameters (NHWC unless told)."""
    layer = Sparta(**kwargs)
    channels_first = layer.data_format == "channels_first"
    layer.build((None, 3, 6, 7) if channels_first else (None, 6, 7, 3))
    if kernel is not None:
        layer.gate_weights.assign(np.asarray(kernel, "float32"))
    layer.gate_bias.assign(bias)
    return layer


def _random_kernel(k=3, seed=1):
    return np.random.default_rng(seed).normal(size=(k, k)).astype("float32")


def _centre(beta, k=3):
    kernel = np.zeros((k, k), "float32")
    kernel[k // 2, k // 2] = beta
    return kernel


# === (a) Special cases and the general form against NumPy ===


@pytest.mark.parametrize("kernel_size", [1, 3, 5])
@pytest.mark.parametrize("data_format", ["channels_last", "channels_first"])
def test_matches_numpy(data_format, kernel_size):
    kernel = _random_kernel(kernel_size)
    layer = _layer(kernel, -0.4, kernel_size=kernel_size, data_format=data_format)
    x = _features()
    expected = _np_sparta(x, kernel, -0.4)
    if data_format == "channels_first":
        y = np.transpose(layer(np.transpose(x, (0, 3, 1, 2))), (0, 2, 3, 1))
    else:
        y = layer(x).numpy()
    np.testing.assert_allclose(y, expected, rtol=1e-5, atol=1e-5)


def test_initialisation_is_silu_and_centre_only_kernel_is_swish():
    x = _features()
    x64 = x.astype(np.float64)
    np.testing.assert_allclose(Sparta()(x), x64 * np_sigmoid(x64), rtol=1e-6, atol=1e-6)
    swish = _layer(_centre(1.7), 0.3)
    np.testing.assert_allclose(swish(x), x64 * np_sigmoid(1.7 * x64 + 0.3), rtol=1e-6, atol=1e-6)
    beta_init = Sparta(initial_beta=2.5)
    np.testing.assert_allclose(beta_init(x), x64 * np_sigmoid(2.5 * x64), rtol=1e-6, atol=1e-6)


def test_large_centre_weight_approaches_relu():
    beta = 1e4
    x = np.concatenate([_features().ravel(), np.linspace(-1e-3, 1e-3, 41)])
    x = x[: 2 * 6 * 7 * 3].reshape(2, 6, 7, 3).astype("float32")
    y = _layer(_centre(beta))(x).numpy()
    # max |x sigmoid(beta x) - relu(x)| = 0.2785 / beta, at |x| = 1.28 / beta.
    np.testing.assert_allclose(y, np.maximum(x, 0.0), rtol=0, atol=0.28 / beta + 1e-6)


def test_spatially_attentive_and_input_dependent():
    kernel = _random_kernel()
    layer = _layer(kernel, 0.1)
    x = _features(shape=(1, 6, 7, 3))

    def out_at(z, i=2, j=2, c=1):
        return float(layer(z)[0, i, j, c])

    base = out_at(x)
    neighbour = x.copy()
    neighbour[0, 2, 3, 1] += 1.0  # a neighbouring pixel of the same channel
    assert abs(out_at(neighbour) - base) > 1e-3
    # Unlike ReLU / SiLU, whose output at (2, 2) cannot see the neighbour.
    for name in ("relu", "silu"):
        pointwise = activations.get_activation(name)
        assert float(pointwise(neighbour)[0, 2, 2, 1]) == float(pointwise(x)[0, 2, 2, 1])
    # Per channel and local: another channel or a pixel outside the 3x3
    # window leaves it unchanged.
    other = x.copy()
    other[0, 2, 3, 0] += 1.0
    other[0, 5, 6, 1] += 1.0
    assert out_at(other) == pytest.approx(base, abs=1e-7)
    # Input-dependent rule: the same value at two positions with different
    # neighbourhoods is gated differently.
    same = x.copy()
    same[0, 4, 4, 1] = same[0, 2, 2, 1]
    y = layer(same).numpy()
    assert abs(y[0, 4, 4, 1] - y[0, 2, 2, 1]) > 1e-3


# === (b) Parameters independent of the channel count ===


def test_parameters_do_not_depend_on_channel_count():
    shapes = []
    for channels in (16, 64):
        layer = Sparta()
        layer.build((None, 8, 8, channels))
        shapes.append([tuple(w.shape) for w in layer.weights])
    assert shapes[0] == shapes[1] == [(3, 3), ()]
    narrow = models.build_model("digits_cnn", filters=(8, 8, 16), activation="sparta")
    wide = models.build_model("digits_cnn", filters=(32, 32, 64), activation="sparta")
    assert [w.shape for w in sparta.sparta_layers(narrow)[0].weights] == [
        w.shape for w in sparta.sparta_layers(wide)[0].weights
    ]
    relu = models.build_model("digits_cnn", activation="relu")
    assert wide.count_params() == relu.count_params() + 3 * 3 + 1


def test_weight_decay_and_names():
    model = models.build_model("digits_cnn", activation="sparta")
    paths = [w.path for w in sparta.sparta_layers(model)[0].weights]
    assert paths == ["sparta/gate_weights", "sparta/gate_bias"]
    decayed = {w.path for w in training.decayed_variables(model)}
    assert decayed and not decayed & set(paths)  # activation parameters: no L2


# === (c) Serialization and export ===


def test_config_round_trip_and_validation():
    layer = Sparta(kernel_size=5, initial_beta=2.0, data_format="channels_first", name="s")
    config = layer.get_config()
    assert {k: config[k] for k in ("kernel_size", "initial_beta", "data_format")} == {
        "kernel_size": 5,
        "initial_beta": 2.0,
        "data_format": "channels_first",
    }
    assert Sparta.from_config(config).get_config() == config
    revived = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(layer))
    assert type(revived) is Sparta and revived.get_config() == config
    assert isinstance(activations.get_activation("sparta"), Sparta)
    for kwargs, message in [
        ({"kernel_size": 4}, r"Received: kernel_size=4$"),
        ({"kernel_size": True}, r"Received: kernel_size=True$"),
        ({"initial_beta": 0.0}, r"Received: initial_beta=0\.0$"),
        ({"data_format": "NHWC"}, r"Received: data_format='NHWC'$"),
    ]:
        with pytest.raises(ValueError, match=message):
            Sparta(**kwargs)
    with pytest.raises(ValueError, match="needs 4-D feature maps"):
        Sparta()(np.zeros((2, 5), "float32"))


def _trained_looking_digits(seed=0):
    """digits_cnn with Sparta and random (non-initial) gate and BN state."""
    model = models.build_model("digits_cnn", activation="sparta")
    rng = np.random.default_rng(seed)
    layer = sparta.sparta_layers(model)[0]
    layer.gate_weights.assign(rng.normal(size=(3, 3)).astype("float32"))
    layer.gate_bias.assign(0.25)
    for w in model.weights:
        if w.path.endswith(("moving_variance", "gamma")):
            w.assign(rng.uniform(0.5, 1.5, size=w.shape).astype("float32"))
    return model


@pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")
def test_keras_save_load_safe_mode_keeps_the_sharing(tmp_path):
    model = _trained_looking_digits()
    path = str(tmp_path / "model.keras")
    model.save(path)
    loaded = keras.saving.load_model(path, safe_mode=True)
    (layer,) = sparta.sparta_layers(loaded)
    assert len(layer._inbound_nodes) == SITES["digits_cnn"]  # one instance, 3 sites
    x = np.random.default_rng(1).uniform(size=(4, 8, 8, 1)).astype("float32")
    np.testing.assert_allclose(loaded(x, training=False), model(x, training=False), atol=1e-6)
    for key, value in sparta.sparta_weights(model).items():
        np.testing.assert_array_equal(sparta.sparta_weights(loaded)[key], value)


def test_saved_model_export(tmp_path):
    model = _trained_looking_digits()
    path = export.export_saved_model(model, str(tmp_path / "export"), jpeg=False)
    revived = tf.saved_model.load(path)
    x = np.random.default_rng(2).uniform(size=(3, 8, 8, 1)).astype("float32")
    logits = revived.serve_float(tf.constant(x))["logits"]
    np.testing.assert_allclose(logits, model(x, training=False), rtol=1e-5, atol=1e-5)


def test_mixed_precision_and_xla():
    x = _features()
    kernel = _random_kernel()
    mixed = Sparta(dtype="mixed_float16")
    mixed.build(x.shape)
    mixed.gate_weights.assign(kernel)
    y = mixed(x)
    assert y.dtype == tf.float16
    assert all(w.dtype == "float32" for w in mixed.weights)
    np.testing.assert_allclose(y.numpy(), _np_sparta(x, kernel, 0.0), rtol=5e-3, atol=5e-3)
    layer = _layer(kernel)
    xla = tf.function(layer, jit_compile=True)
    np.testing.assert_allclose(xla(tf.constant(x)), layer(x), rtol=1e-5, atol=1e-6)


# === (d) One shared instance per network ===


@pytest.mark.parametrize("name", sorted(SITES))
def test_one_shared_sparta_per_network(name):
    shape = TINY_SHAPES.get(name, (16, 16, 3))
    model = models.build_model(name, input_shape=shape, activation="sparta")
    (layer,) = sparta.sparta_layers(model)
    assert layer.name == "sparta"
    # `_inbound_nodes`: one node per call site (Keras keeps no public count).
    assert len(layer._inbound_nodes) == SITES[name]
    sparta_vars = [v for v in model.trainable_variables if v.path.startswith("sparta/")]
    assert len(sparta_vars) == 2
    assert model.get_config()["activation"] == "sparta"


def test_sharing_is_per_build_and_only_for_sparta():
    a = models.build_model("digits_cnn", activation="sparta")
    b = models.build_model("digits_cnn", activation="sparta")
    assert sparta.sparta_layers(a)[0] is not sparta.sparta_layers(b)[0]
    softplus = models.build_model("digits_cnn", activation="softplus")
    sites = [l for l in softplus.layers if isinstance(l, activations.Softplus)]
    assert len(sites) == 3 and len({id(l) for l in sites}) == 3  # per-site as before
    channels_first = models.build_model(
        "resnet18_cifar", input_shape=(16, 16, 3), activation="sparta", data_format="channels_first"
    )
    assert sparta.sparta_layers(channels_first)[0].data_format == "channels_first"


# === (e) Freeze and transfer; (f) adversarial training ===


def _train(model, attack, steps, num_classes, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.uniform(size=(8, *model.input_shape[1:])).astype("float32")
    y = rng.integers(0, num_classes, size=8).astype("int32")
    config = training.StepConfig(global_batch_size=8, num_classes=num_classes)
    train = training.make_train_function(model, keras.optimizers.SGD(0.1), attack, tf.distribute.get_strategy(), config)
    out = train(iter(tf.data.Dataset.from_tensors((x, y)).repeat()), tf.constant(steps))
    assert np.isfinite(float(out["loss_sum"]))


def _values(model):
    return {v.path: v.numpy().copy() for v in model.weights}


def test_freeze_and_transfer_to_another_network(tmp_path):
    keras.utils.set_random_seed(0)
    # ResNet-20 (16/32/64 channels) -> WRN-16-2 (32/64/128, pre-activation,
    # 5 classes): another CNN, other widths, "another data set".
    source = cifar.CifarResNet(depth=20, input_shape=(8, 8, 3), activation="sparta")
    initial = sparta.sparta_weights(source)
    _train(source, attacks.get_attack("none"), steps=3, num_classes=10)
    exported = sparta.sparta_weights(source)
    assert not np.allclose(exported["gate_weights"], initial["gate_weights"])
    path = sparta.save_sparta(tmp_path / "sparta", source)
    assert path.endswith("sparta.npz")

    target = cifar.WideResNet(depth=16, widen_factor=2, num_classes=5, input_shape=(8, 8, 3), activation="sparta")
    (layer,) = sparta.load_sparta(path, target)
    assert not layer.trainable
    assert not any(v.path.startswith("sparta/") for v in target.trainable_variables)
    for key in ("gate_weights", "gate_bias"):
        np.testing.assert_array_equal(sparta.sparta_weights(target)[key], exported[key])

    before = _values(target)
    _train(target, attacks.get_attack("none"), steps=3, num_classes=5, seed=1)
    after = _values(target)
    for key in ("gate_weights", "gate_bias"):
        np.testing.assert_array_equal(after[f"sparta/{key}"], exported[key])
    changed = [p for p in before if not np.array_equal(before[p], after[p])]
    assert "fc/kernel" in changed and "conv1/kernel" in changed


def test_mismatched_loads_raise_clear_errors():
    source = models.build_model("digits_cnn", activation="sparta")
    weights = sparta.sparta_weights(source)
    wide_kernel = functools.partial(Sparta, kernel_size=5)
    target = models.build_model("digits_cnn", activation=wide_kernel)
    with pytest.raises(ValueError, match=r"kernel size mismatch.*kernel_size=5.*\(3, 3\)"):
        sparta.load_sparta_weights(target, weights)
    assert sparta.sparta_layers(target)[0].trainable  # nothing half-loaded
    bad_shape = {**weights, "kernel_size": 5, "gate_weights": np.zeros((5, 3))}
    with pytest.raises(ValueError, match="kernel size mismatch"):
        sparta.load_sparta_weights(target, bad_shape)
    with pytest.raises(ValueError, match=r"mapping with \['gate_weights', 'gate_bias'\]"):
        sparta.load_sparta_weights(source, {"gate_weights": weights["gate_weights"]})
    relu = models.build_model("digits_cnn", activation="relu")
    with pytest.raises(ValueError, match="has no Sparta layer"):
        sparta.load_sparta_weights(relu, weights)
    with pytest.raises(ValueError, match="has no Sparta layer"):
        sparta.sparta_weights(relu)
    inputs = keras.Input((4, 4, 2))
    two = keras.Model(inputs, Sparta(name="a")(Sparta(name="b")(inputs)), name="two")
    with pytest.raises(ValueError, match=r"2 distinct Sparta layers \['b', 'a'\]"):
        sparta.sparta_weights(two)


def test_adversarial_training_step_updates_sparta():
    keras.utils.set_random_seed(0)
    model = models.build_model("digits_cnn", activation="sparta")
    before = sparta.sparta_weights(model)
    attack = attacks.get_attack("pgd", eps=8 / 255, step_size=2 / 255, steps=2)
    _train(model, attack, steps=1, num_classes=10)
    after = sparta.sparta_weights(model)
    assert np.all(np.isfinite(after["gate_weights"])) and np.isfinite(after["gate_bias"])
    assert not np.allclose(after["gate_weights"], before["gate_weights"])


# === (g) Gradient sanity ===


def test_input_gradients_are_finite_and_non_zero():
    model = _trained_looking_digits()
    x = tf.constant(np.random.default_rng(3).uniform(size=(4, 8, 8, 1)).astype("float32"))
    with tf.GradientTape() as tape:
        tape.watch(x)
        loss = tf.reduce_sum(tf.nn.log_softmax(model(x, training=False))[:, 0])
    grad = tape.gradient(loss, x).numpy()
    assert np.all(np.isfinite(grad)) and np.abs(grad).max() > 0
    layer = _layer(_random_kernel())
    z = tf.constant(_features())
    with tf.GradientTape() as tape:
        tape.watch(z)
        y = tf.reduce_sum(layer(z))
    grad = tape.gradient(y, z).numpy()
    assert np.all(np.isfinite(grad)) and np.mean(np.abs(grad) > 0) > 0.99


def test_numpy_numbers_pass_the_argument_checks_and_bools_do_not():
    layer = Sparta(kernel_size=np.int64(3), initial_beta=np.float32(2.0))
    assert layer.kernel_size == 3
    with pytest.raises(ValueError, match="kernel_size"):
        Sparta(kernel_size=True)
