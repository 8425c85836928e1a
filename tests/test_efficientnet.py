"""Tests for `sat_tf.models.efficientnet`.

Fast suite: `python -m pytest tests/test_efficientnet.py -q` (< 1 min on 2 CPUs).
Parameter counts are checked on builds at each variant's default resolution
(B0-B7, a few seconds each); B8/L1/L2 (87M-480M parameters) are checked from
`stage_table` with a closed-form count that matches the built B0-B7 exactly.
"""

import json
import math

import keras
import numpy as np
import pytest
import tensorflow as tf
from conftest import randomise_bn_state, trainable_params

from sat_tf import activations, models
from sat_tf.models import efficientnet, layers

TINY = (32, 32, 3)

# Trainable parameters, 1000 classes. B0-B7: trainable weights of
# `keras.applications.EfficientNetBx(weights=None)` (same architecture; its
# `count_params()` also holds BN statistics and the Normalization layer, e.g.
# B1 7,856,239 total). B8 87.41M and L2 480.31M: timm `tf_efficientnet_b8`
# / `tf_efficientnet_l2_ns` (Xie et al. 2020: L2 480M). L1: measured here
# (closed form), no external source.
PARAM_COUNTS = {
    "efficientnet_b0": 5_288_548,
    "efficientnet_b1": 7_794_184,
    "efficientnet_b2": 9_109_994,
    "efficientnet_b3": 12_233_232,
    "efficientnet_b4": 19_341_616,
    "efficientnet_b5": 30_389_784,
    "efficientnet_b6": 43_040_704,
    "efficientnet_b7": 66_347_960,
    "efficientnet_b8": 87_413_142,
    "efficientnet_l1": 272_630_564,  # measured
    "efficientnet_l2": 480_309_308,
}
# Built at the default resolution; B4-B6 (~3 s each) only with --run_slow,
# the closed form covers them in the fast suite.
BUILT = [
    pytest.param(f"efficientnet_b{i}", marks=pytest.mark.slow) if i in (4, 5, 6) else f"efficientnet_b{i}"
    for i in range(8)
]
# B0 identity-skip blocks (stride 1, in == out): the repeats after the first
# of each stage except the last stage (1 repeat).
B0_SKIP_BLOCKS = {2, 4, 6, 7, 9, 10, 12, 13, 14}


def images(shape=TINY, batch=2, seed=0):
    return np.random.default_rng(seed).uniform(size=(batch, *shape)).astype("float32")


def tiny_b0(**kwargs):
    kwargs = {"input_shape": TINY, "num_classes": 10, **kwargs}
    return models.build_model("efficientnet_b0", **kwargs)


def blocks(table):
    """`(i, kernel, stride, expand, in, out)` per block, from the table."""
    i = 0
    for s in table.stages:
        for r in range(s.repeats):
            cin, stride = (s.input_filters, s.strides) if r == 0 else (s.output_filters, 1)
            yield i, s.kernel_size, stride, s.expand_ratio, cin, s.output_filters
            i += 1


def closed_form_params(table, num_classes=1000):
    """Trainable parameters counted from the reference layer list."""
    total = 3 * 3 * 3 * table.stem_filters + 2 * table.stem_filters
    for _, k, _, e, cin, cout in blocks(table):
        width = cin * e
        if e != 1:
            total += cin * width + 2 * width
        total += k * k * width + 2 * width
        se = max(1, int(cin * 0.25))
        total += width * se + se + se * width + width
        total += width * cout + 2 * cout
    total += cout * table.head_filters + 2 * table.head_filters
    return total + table.head_filters * num_classes + num_classes


def expected_layer_names(table):
    names = {"images", "preprocessing", "stem_conv", "stem_bn", "stem_act"}
    for i, _, stride, e, cin, cout in blocks(table):
        parts = [
            "dwconv",
            "dwconv_bn",
            "dwconv_act",
            "se_squeeze",
            "se_reduce",
            "se_act",
            "se_expand",
            "se_excite",
            "project_conv",
            "project_bn",
        ]
        if e != 1:
            parts += ["expand_conv", "expand_bn", "expand_act"]
        if stride == 1 and cin == cout:
            parts += ["drop", "add"]
        names.update(f"block{i}_{p}" for p in parts)
    return names | {"head_conv", "head_bn", "head_act", "gap", "dropout", "head_dense"}


def activation_sites(table):
    """Stem, expand (ratio != 1), depthwise, SE reduce, head."""
    return 2 + sum(2 + (e != 1) for _, _, _, e, _, _ in blocks(table))


# === Registry and scaling rules ===


def test_registry():
    assert models.list_models("efficientnet*") == sorted(PARAM_COUNTS)


@pytest.mark.parametrize(
    "args,expected",
    [
        ((32, 1.0), 32),
        ((32, 1.1), 32),
        ((32, 2.0), 64),
        ((1280, 1.1), 1408),
        ((1280, 3.9), 4992),
        ((32, 4.3), 136),
        ((1, 1.0), 8),  # at least depth_divisor
        ((359, 0.1), 40),  # 35.9 -> 32 loses > 10%: bumped by 8
        ((16, 1.0, 4), 16),
    ],
)
def test_round_filters(args, expected):
    assert efficientnet.round_filters(*args) == expected


def test_round_repeats():
    assert efficientnet.round_repeats(3, 1.4) == 5
    assert efficientnet.round_repeats(1, 3.1) == 4
    assert efficientnet.round_repeats(4, 1.0) == 4
    assert efficientnet.round_repeats(4, 5.3) == 22


def test_b0_table_is_the_base_table():
    table = efficientnet.stage_table(1.0, 1.0)
    assert table.stages == efficientnet.BASE_STAGES
    assert table.stages[1] == (2, 3, 2, 6, 16, 24)  # r/k/s/e/i/o
    assert (table.stem_filters, table.head_filters, table.num_blocks) == (32, 1280, 16)


def test_l1_table():
    """SAT's `efficientnet-bL1` (reference notes §1.7)."""
    table = efficientnet.stage_table(3.9, 3.7)
    assert (table.stem_filters, table.head_filters, table.num_blocks) == (128, 4992, 63)
    assert [(s.repeats, s.kernel_size, s.strides, s.input_filters, s.output_filters) for s in table.stages] == [
        (4, 3, 1, 128, 64),
        (8, 3, 2, 64, 96),
        (8, 5, 2, 96, 160),
        (12, 3, 2, 160, 312),
        (12, 5, 1, 312, 440),
        (15, 5, 2, 440, 752),
        (4, 3, 1, 752, 1248),
    ]
    assert [s.expand_ratio for s in table.stages] == [1, 6, 6, 6, 6, 6, 6]


def test_l2_table():
    table = efficientnet.stage_table(4.3, 5.3)
    assert (table.stem_filters, table.head_filters, table.num_blocks) == (136, 5504, 88)
    assert [s.repeats for s in table.stages] == [6, 11, 11, 16, 16, 22, 6]
    assert [s.output_filters for s in table.stages] == [72, 104, 176, 344, 480, 824, 1376]


@pytest.mark.parametrize("name", sorted(PARAM_COUNTS))
def test_closed_form_param_counts(name):
    width, depth, _, _ = efficientnet.EFFICIENTNET_PARAMS[name]
    assert closed_form_params(efficientnet.stage_table(width, depth)) == PARAM_COUNTS[name]


@pytest.mark.parametrize("name", BUILT)
def test_built_param_counts(name):
    model = models.build_model(name)
    resolution = efficientnet.EFFICIENTNET_PARAMS[name][2]
    assert model.input_shape == (None, resolution, resolution, 3)
    assert trainable_params(model) == PARAM_COUNTS[name]


@pytest.mark.parametrize("name", ["efficientnet_b0", "efficientnet_b2"])
def test_same_weight_shapes_as_keras_applications(name):
    """Independent reference: keras.applications (no download with weights=None)."""
    ref_cls = getattr(keras.applications, "EfficientNetB" + name[-1])
    ref = ref_cls(weights=None, input_shape=TINY)
    model = models.build_model(name, input_shape=TINY)
    shapes = lambda m: sorted(tuple(w.shape) for w in m.trainable_weights)  # noqa: E731
    assert shapes(model) == shapes(ref)


def test_entry_point_defaults_and_caller_kwargs_win(monkeypatch):
    monkeypatch.setattr(efficientnet, "EfficientNet", lambda **kwargs: kwargs)
    l1 = models.build_model("efficientnet_l1")
    assert l1 == {
        "width_coefficient": 3.9,
        "depth_coefficient": 3.7,
        "dropout_rate": 0.5,
        "input_shape": (600, 600, 3),
        "name": "efficientnet_l1",
    }
    l2 = models.build_model("efficientnet_l2", dropout_rate=0.1)
    assert l2["input_shape"] == (800, 800, 3) and l2["dropout_rate"] == 0.1
    assert models.build_model("efficientnet_b3")["dropout_rate"] == 0.3


def test_caller_kwargs_win_on_a_real_build():
    model = models.build_model(
        "efficientnet_b0", input_shape=(64, 64, 3), num_classes=10, dropout_rate=0.1, name="mine"
    )
    assert model.name == "mine" and model.image_shape == (64, 64, 3)
    assert model.output_shape == (None, 10)
    assert model.get_layer("dropout").rate == 0.1
    assert efficientnet.EfficientNet(input_shape=TINY, num_classes=3).name == "efficientnet_b0"


@pytest.mark.parametrize(
    "kwargs",
    [
        {"width_coefficient": 0},
        {"depth_coefficient": -1.0},
        {"dropout_rate": 1.0},
        {"survival_prob": 0.0},
        {"survival_prob": 1.5},
        {"depth_divisor": 0},
        {"activation": "not_an_activation"},
        {"data_format": "NCHW"},
        {"input_shape": (32, 32)},
    ],
)
def test_bad_kwargs_raise_value_error(kwargs):
    with pytest.raises(ValueError):
        tiny_b0(**kwargs)


# === Architecture ===


def test_layer_name_contract():
    model = tiny_b0()
    table = efficientnet.stage_table(1.0, 1.0)
    assert {l.name for l in model.layers} == expected_layer_names(table)
    names = {l.name for l in model.layers}
    assert "block0_expand_conv" not in names and "block1_expand_conv" in names
    assert {int(n[5:-5]) for n in names if n.endswith("_drop")} == B0_SKIP_BLOCKS
    assert isinstance(model.get_layer("block1_dwconv"), keras.layers.DepthwiseConv2D)
    assert isinstance(model.get_layer("block1_se_squeeze"), keras.layers.GlobalAveragePooling2D)
    assert isinstance(model.get_layer("block1_se_excite"), keras.layers.Multiply)
    assert isinstance(model.get_layer("block2_drop"), efficientnet.DropConnect)
    paths = {w.path for w in model.weights}
    for path in [
        "stem_conv/kernel",
        "stem_bn/gamma",
        "stem_bn/moving_variance",
        "block1_expand_conv/kernel",
        "block1_dwconv/kernel",  # Keras 3: not depthwise_kernel
        "block1_se_reduce/kernel",
        "block1_se_reduce/bias",
        "block1_se_expand/bias",
        "block1_project_bn/beta",
        "head_conv/kernel",
        "head_dense/kernel",
        "head_dense/bias",
    ]:
        assert path in paths, path
    assert model.get_layer("block1_dwconv").kernel.shape == (3, 3, 96, 1)
    assert not any(isinstance(l, keras.layers.Lambda) for l in model.layers)
    assert len(paths) == len(model.weights)


def test_geometry_at_224_uses_tf_same_padding():
    model = models.build_model("efficientnet_b0")
    shape = lambda n: tuple(model.get_layer(n).output.shape[1:])  # noqa: E731
    assert shape("stem_conv") == (112, 112, 32)
    assert shape("block1_dwconv") == (56, 56, 96)
    assert shape("block3_dwconv") == (28, 28, 144)
    assert shape("block15_project_bn") == (7, 7, 320)
    assert shape("head_act") == (7, 7, 1280)
    assert shape("block1_se_squeeze") == (1, 1, 96)
    convs = [l for l in model.layers if isinstance(l, keras.layers.Conv2D)]
    assert all(l.padding == "same" for l in convs)
    assert not any(isinstance(l, keras.layers.ZeroPadding2D) for l in model.layers)


def test_se_reduces_from_block_input_filters():
    model = tiny_b0()
    # block0: in 32, expand 1 -> 8; block1: in 16, expanded 96 -> 4 (not 24).
    assert model.get_layer("block0_se_reduce").kernel.shape == (1, 1, 32, 8)
    assert model.get_layer("block1_se_reduce").kernel.shape == (1, 1, 96, 4)
    assert model.get_layer("block1_se_expand").kernel.shape == (1, 1, 4, 96)
    assert model.get_layer("block15_se_reduce").kernel.shape == (1, 1, 1152, 48)


@pytest.mark.parametrize(
    "activation,cls",
    [
        ("gelu", activations.GELU),
        ("smooth_relu", activations.SmoothReLU),
        ("softplus", activations.Softplus),
        ("relu", activations.ReLU),
    ],
)
def test_activation_at_every_site(activation, cls):
    model = tiny_b0(activation=activation)
    table = efficientnet.stage_table(1.0, 1.0)
    sites = [l for l in model.layers if isinstance(l, cls)]
    assert len(sites) == activation_sites(table) == 49
    others = (activations.SiLU, activations.ReLU, keras.layers.ReLU, keras.layers.Activation)
    wrong = [l.name for l in model.layers if isinstance(l, others) and not isinstance(l, cls)]
    assert not wrong
    for layer in model.layers:
        fn = getattr(layer, "activation", None)
        if isinstance(layer, (keras.layers.Conv2D, keras.layers.Dense)):
            expected = "sigmoid" if layer.name.endswith("_se_expand") else "linear"
            assert fn.__name__ == expected, layer.name
    if activation == "smooth_relu":
        betas = [w for w in model.trainable_weights if w.path.endswith("beta_raw")]
        assert len(betas) == 49
    assert model.get_config()["activation"] == activation


def test_default_activation_is_silu():
    model = tiny_b0()
    assert sum(isinstance(l, activations.SiLU) for l in model.layers) == 49


def test_bn_hyperparameters():
    defaults = [l for l in tiny_b0().layers if isinstance(l, keras.layers.BatchNormalization)]
    assert len(defaults) == 1 + 15 * 3 + 2 + 1
    assert all((l.momentum, l.epsilon) == (0.9, 1e-5) for l in defaults)
    upstream = tiny_b0(bn_momentum=0.99, bn_epsilon=1e-3)
    bns = [l for l in upstream.layers if isinstance(l, keras.layers.BatchNormalization)]
    assert all((l.momentum, l.epsilon) == (0.99, 1e-3) for l in bns)


def test_initialisation():
    model = models.build_model("efficientnet_b0", input_shape=TINY)
    dw = model.get_layer("block15_dwconv")
    assert not dw.use_bias
    w = dw.kernel.numpy()  # (3, 3, 1152, 1): fan_out = 3 * 3
    std = math.sqrt(2.0 / 9)
    assert abs(w.std() / std - 1) < 0.03 and np.abs(w).max() > 2.5 * std  # untruncated
    w = model.get_layer("head_conv").kernel.numpy()  # (1, 1, 320, 1280)
    std = math.sqrt(2.0 / 1280)
    assert abs(w.std() / std - 1) < 0.02 and np.abs(w).max() > 2.5 * std
    assert not model.get_layer("block15_project_conv").use_bias
    se = model.get_layer("block15_se_reduce")
    assert se.use_bias and not np.any(se.bias.numpy())
    dense = model.get_layer("head_dense")
    kernel = dense.kernel.numpy()
    bound = 1 / math.sqrt(1000)
    assert np.abs(kernel).max() <= bound and np.abs(kernel).max() > 0.99 * bound
    assert abs(kernel.std() / (bound / math.sqrt(3)) - 1) < 0.01
    assert not np.any(dense.bias.numpy())
    assert dense.dtype_policy.compute_dtype == "float32"
    # Fresh initializers per layer: same-shaped kernels differ.
    a = model.get_layer("block13_dwconv").kernel.numpy()
    b = model.get_layer("block14_dwconv").kernel.numpy()
    assert not np.allclose(a, b)


# === DropConnect ===


def test_drop_connect_is_identity_unless_training():
    layer = efficientnet.DropConnect(0.5, seed=1)
    x = images((4, 4, 3), batch=8)
    np.testing.assert_array_equal(layer(x), x)
    np.testing.assert_array_equal(layer(x, training=False), x)
    np.testing.assert_array_equal(efficientnet.DropConnect(1.0)(x, training=True), x)


def test_drop_connect_training_statistics():
    p = 0.8
    layer = efficientnet.DropConnect(p, seed=3)
    x = np.ones((20000, 2, 2, 3), "float32")
    y = layer(x, training=True).numpy()
    per_example = y.reshape(len(y), -1)
    # One draw per example: each example is all zeros or all 1/p.
    assert np.all(per_example.min(axis=1) == per_example.max(axis=1))
    np.testing.assert_allclose(np.unique(per_example), [0.0, 1 / p], rtol=1e-6)
    kept = per_example[:, 0] > 0
    assert 0 < kept.sum() < len(kept)
    assert abs(kept.mean() - p) < 0.015
    assert abs(y.mean() - 1.0) < 0.02
    again = layer(x, training=True).numpy()
    assert not np.array_equal(again, y)  # the seed generator advances
    same_seed = efficientnet.DropConnect(p, seed=3)(x, training=True).numpy()
    np.testing.assert_array_equal(same_seed, y)


def test_drop_connect_config_and_validation():
    layer = efficientnet.DropConnect(0.7, seed=5, name="d")
    clone = efficientnet.DropConnect.from_config(layer.get_config())
    assert (clone.survival_prob, clone.seed, clone.name) == (0.7, 5, "d")
    for bad in (0.0, 1.1, "0.5"):
        with pytest.raises(ValueError):
            efficientnet.DropConnect(bad)


@pytest.mark.parametrize("survival_prob", [0.8, 0.5])
def test_survival_schedule_by_block_index(survival_prob):
    model = tiny_b0(survival_prob=survival_prob)
    drops = {int(l.name[5:-5]): l for l in model.layers if isinstance(l, efficientnet.DropConnect)}
    assert set(drops) == B0_SKIP_BLOCKS
    for i, layer in drops.items():
        assert layer.survival_prob == pytest.approx(1 - (1 - survival_prob) * i / 16)
    schedule = efficientnet.survival_schedule(survival_prob, 16)
    assert schedule[0] == 1.0
    assert schedule[-1] == pytest.approx(1 - (1 - survival_prob) * 15 / 16)


# === Forward pass and serialization ===


def test_forward_pass_and_input_gradient():
    model = tiny_b0()
    x = tf.constant(images())
    with tf.GradientTape() as tape:
        tape.watch(x)
        logits = model(x, training=False)
        loss = tf.reduce_sum(tf.nn.log_softmax(logits)[:, 0])
    assert logits.shape == (2, 10) and logits.dtype == tf.float32
    assert np.all(np.isfinite(logits))
    grad = tape.gradient(loss, x)
    assert np.all(np.isfinite(grad)) and np.any(grad.numpy() != 0)
    np.testing.assert_array_equal(model(x, training=False), logits)  # deterministic
    train_logits = model(images(batch=4), training=True)
    assert np.all(np.isfinite(train_logits))


def test_channels_first_builds():
    model = tiny_b0(num_classes=3, data_format="channels_first")
    assert model.input_shape == (None, *TINY) and model.output_shape == (None, 3)
    assert model.get_layer("to_channels_first").output.shape[1] == 3
    assert model.get_layer("block1_dwconv").output.shape[1:] == (96, 8, 8)
    assert model.get_layer("block1_se_excite").output.shape[1:] == (96, 8, 8)
    bns = [l for l in model.layers if isinstance(l, keras.layers.BatchNormalization)]
    assert all(l.axis in (1, [1]) for l in bns)


def test_mixed_precision_logits_stay_float32():
    keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        model = tiny_b0()
    finally:
        keras.mixed_precision.set_global_policy("float32")
    assert model.get_layer("block1_dwconv").compute_dtype == "float16"
    assert model.output.dtype == "float32"


def test_config_round_trip():
    model = tiny_b0(activation="smooth_relu", survival_prob=0.7, dropout_rate=0.3)
    config = model.get_config()
    json.dumps(config)
    assert config["width_coefficient"] == 1.0 and config["survival_prob"] == 0.7
    clone = efficientnet.EfficientNet.from_config(config)
    assert clone.get_config() == config
    assert [w.path for w in clone.weights] == [w.path for w in model.weights]
    randomise_bn_state(model)
    clone.set_weights(model.get_weights())
    x = images()
    np.testing.assert_allclose(clone(x), model(x), rtol=1e-5, atol=1e-6)
    assert models.build_model("efficientnet_b0", **config).get_config() == config


# Keras' own .keras writer triggers NumPy 2's `__array__(copy=...)` warning.
@pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")
def test_keras_save_load_safe_mode(tmp_path):
    model = tiny_b0(activation="gelu", num_classes=3)
    randomise_bn_state(model)
    path = str(tmp_path / "model.keras")
    model.save(path)
    loaded = keras.saving.load_model(path, safe_mode=True)
    assert type(loaded) is efficientnet.EfficientNet
    assert loaded.get_config() == model.get_config()
    x = images()
    np.testing.assert_allclose(loaded(x, training=False), model(x, training=False), rtol=1e-5, atol=1e-6)


def test_preprocessing_is_inside_the_model():
    model = tiny_b0()
    x = images()
    np.testing.assert_array_equal(model.get_layer("preprocessing")(x), x * 2 - 1)
    bare = tiny_b0(preprocessing=None)
    assert not any(isinstance(l, layers.Normalize) for l in bare.layers)
