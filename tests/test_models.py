"""Tests for `sat_tf.models`: registry, architectures, serialization.

Fast suite: `python -m pytest tests/test_models.py -q` (< 2 min on 2 CPUs).
Builds are tiny (32x32 ImageNet nets, 16x16 CIFAR nets, batch 2); parameter
counts do not depend on the input size, so they are checked on tiny inputs.
"""

import functools
import json
import math

import keras
import numpy as np
import pytest
import tensorflow as tf
from conftest import randomise_bn_state, trainable_params

from sat_tf import activations, models
from sat_tf.models import layers

IMAGENET_NETS = {
    "resnet18",
    "resnet34",
    "resnet50",
    "resnet101",
    "resnet152",
    "resnext50_32x4d",
    "resnext50_32x8d",
    "resnext101_32x8d",
    "resnext152_32x8d",
    *(f"efficientnet_b{i}" for i in range(9)),
    "efficientnet_l1",
    "convnext_tiny",
    "convnext_small",
    "convnext_base",
    "convnext_large",
}
SLOW_NETS = {  # > 10 s each: --run_exhaustive (outside CI)
    "resnext101_32x8d",
    "resnext152_32x8d",
    "efficientnet_b6",
    "efficientnet_b7",
    "efficientnet_b8",
    "efficientnet_l1",
    "convnext_small",
    "convnext_base",
    "convnext_large",
}
# EfficientNet-L2 (480M weights) is not built here: tests/test_efficientnet.py
# checks its stage table and parameter count from the scaling rules.
# Nor DMWideResNet-70-16 / 94-16 (267M / 366M weights): tests/test_dm_wide_resnet.py checks their counts
# in closed form and builds them under --run_exhaustive.
UNBUILT_NETS = {"efficientnet_l2", "dm_wide_resnet70_16", "dm_wide_resnet94_16"}

# Trainable parameters at the default num_classes. Sources: torchvision
# (ResNet/ResNeXt: same layers and counts as the SAT nets), pytorch-cifar
# (ResNet18 11,173,962; PreActResNet18 11,171,146 + 1,024 for RAT's final BN),
# TRADES/RobustBench (WRN-34-10 46.16M), Zagoruyko & Komodakis 2016 Table 1
# (WRN-28-10 36.5M), He et al. 2016 Table 6 (ResNet-110 1.7M; see
# test_resnet110_param_count_closed_form). Marked values are regression
# values measured here, with no external source.
PARAM_COUNTS = {
    "resnet18": 11_689_512,
    "resnet34": 21_797_672,
    "resnet50": 25_557_032,
    "resnet101": 44_549_160,
    "resnet152": 60_192_808,
    "resnext50_32x4d": 25_028_904,
    "resnext50_32x8d": 48_021_800,  # measured
    "resnext101_32x8d": 88_791_336,
    "resnext152_32x8d": 122_372_392,  # measured
    "resnet18_cifar": 11_173_962,
    "resnet110": 1_730_714,
    "preact_resnet18": 11_172_170,
    "wide_resnet34_10": 46_160_474,
    "wide_resnet28_10": 36_479_194,
    "digits_cnn": 28_842,  # measured
    "mnist_resnet": 78_042,  # measured
    "mnist_resnet_fast": 78_042,  # the same layers, a stride-2 stem
    # EfficientNet: keras.applications EfficientNetB0-B7 trainable weights
    # (same architecture; B0 5,288,548 and B7 66,347,960 are the published
    # counts); B8 and L2 as timm's tf_efficientnet_b8 / l2; L1 (SAT's bL1)
    # has no outside source: measured.
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
    # DMWideResNet and ConvNeXt: the closed forms of tests/test_dm_wide_resnet.py / tests/test_convnext.py,
    # which round to the published 36.5M, 46.16M, 267M, 366M and 28.6M, 50.2M, 88.6M, 197.8M.
    "dm_wide_resnet28_10": 36_479_194,
    "dm_wide_resnet34_10": 46_160_474,
    "dm_wide_resnet70_16": 266_796_506,
    "dm_wide_resnet94_16": 365_915_610,
    "convnext_tiny": 28_589_128,
    "convnext_small": 50_223_688,
    "convnext_base": 88_591_464,
    "convnext_large": 197_767_336,
}

# Activation sites, counted from the reference architectures:
# ImageNet: stem 1 + per block (basic: conv1, post-add = 2; bottleneck:
# conv1, conv2, post-add = 3). CIFAR ResNet: stem 1 + 2 per block.
# PreAct / WRN: 2 per block + the final BN-act. Digits: 3 conv-BN-act.
ACTIVATION_SITES = {
    "resnet18": 1 + 2 * 8,
    "resnet34": 1 + 2 * 16,
    "resnet50": 1 + 3 * 16,
    "resnet101": 1 + 3 * 33,
    "resnet152": 1 + 3 * 50,
    "resnext50_32x4d": 1 + 3 * 16,
    "resnext50_32x8d": 1 + 3 * 16,
    "resnext101_32x8d": 1 + 3 * 33,
    "resnext152_32x8d": 1 + 3 * 50,
    "resnet18_cifar": 1 + 2 * 8,
    "resnet110": 1 + 2 * 54,
    "preact_resnet18": 2 * 8 + 1,
    "wide_resnet34_10": 2 * 15 + 1,
    "wide_resnet28_10": 2 * 12 + 1,
    "digits_cnn": 3,
    # DMWideResNet: 2 per block + the final BN-act; ConvNeXt: one per block (MLP), none in the patchify stem.
    "dm_wide_resnet28_10": 2 * 12 + 1,
    "dm_wide_resnet34_10": 2 * 15 + 1,
    "dm_wide_resnet70_16": 2 * 33 + 1,
    "dm_wide_resnet94_16": 2 * 45 + 1,
    "convnext_tiny": 18,
    "convnext_small": 36,
    "convnext_base": 36,
    "convnext_large": 36,
    "mnist_resnet": 1 + 2 * 3,
    "mnist_resnet_fast": 1 + 2 * 3,
    # EfficientNet: stem + head + 3 per MBConv block (expand, depthwise, SE
    # reduce), minus the expand conv the first stage's blocks (ratio 1) lack.
    # (blocks, first-stage blocks) = (sum ceil(d * r), ceil(d * 1)).
    **{
        f"efficientnet_{v}": 2 + 3 * blocks - first
        for v, (blocks, first) in {
            "b0": (16, 1),
            "b1": (23, 2),
            "b2": (23, 2),
            "b3": (26, 2),
            "b4": (32, 2),
            "b5": (39, 3),
            "b6": (45, 3),
            "b7": (55, 4),
            "b8": (61, 4),
            "l1": (63, 4),
            "l2": (88, 6),
        }.items()
    },
}


def tiny_shape(name):
    if name == "digits_cnn":
        return (8, 8, 1)
    if name in ("mnist_resnet", "mnist_resnet_fast"):
        return (28, 28, 1)
    return (32, 32, 3) if name in IMAGENET_NETS else (16, 16, 3)


def images(shape, batch=2, seed=0):
    return np.random.default_rng(seed).uniform(size=(batch, *shape)).astype("float32")


def is_relu(layer):
    if isinstance(layer, (keras.layers.ReLU, activations.ReLU)):
        return True
    fn = getattr(layer, "activation", None)
    return callable(fn) and getattr(fn, "__name__", "") == "relu"


def _model_params():
    return [
        pytest.param(n, marks=pytest.mark.exhaustive) if n in SLOW_NETS else n
        for n in models.list_models()
        if n not in UNBUILT_NETS
    ]


# === Registry ===


def test_registry_lists_every_architecture():
    assert set(models.list_models()) == set(PARAM_COUNTS)
    assert models.list_models() == sorted(models.list_models())
    assert models.list_models("resnext*") == [
        "resnext101_32x8d",
        "resnext152_32x8d",
        "resnext50_32x4d",
        "resnext50_32x8d",
    ]
    assert models.list_models("cifar") == ["resnet18_cifar"]


def test_register_refuses_duplicates():
    def resnet50(**kwargs):
        return None

    with pytest.raises(KeyError, match="resnet50"):
        models.register_model(resnet50)
    assert models.build_model  # registry untouched
    assert models._MODELS["resnet50"] is not resnet50


def test_unknown_model_lists_known_names():
    with pytest.raises(ValueError) as err:
        models.build_model("resnet51")
    assert str(sorted(PARAM_COUNTS)) in str(err.value)


def test_caller_kwargs_win():
    model = models.build_model("resnet110", preprocessing=None, name="mine", num_classes=3)
    assert model.name == "mine"
    assert model.preprocessing is None
    assert not any(isinstance(l, layers.Normalize) for l in model.layers)
    assert model.output_shape == (None, 3)


# === Every architecture ===


@pytest.mark.parametrize("name", _model_params())
def test_architecture(name):
    """Shape, finiteness, parameter count, activation at every site, no
    Lambda layers, unique names, and a finite input gradient (attacks)."""
    shape = tiny_shape(name)
    model = models.build_model(name, input_shape=shape, activation="softplus")
    default_classes = 1000 if name in IMAGENET_NETS else 10
    x = images(shape)
    logits = model(x, training=False)
    assert logits.shape == (2, default_classes)
    assert np.all(np.isfinite(logits))
    assert trainable_params(model) == PARAM_COUNTS[name]

    assert not [l.name for l in model.layers if is_relu(l)]
    sites = [l for l in model.layers if isinstance(l, activations.Softplus)]
    assert len(sites) == ACTIVATION_SITES[name]
    assert not any(isinstance(l, keras.layers.Lambda) for l in model.layers)
    paths = [w.path for w in model.weights]
    assert len(paths) == len(set(paths))
    assert model.get_config()["activation"] == "softplus"

    x = tf.constant(x)
    with tf.GradientTape() as tape:
        tape.watch(x)
        loss = tf.reduce_sum(tf.nn.log_softmax(model(x, training=False))[:, 0])
    grad = tape.gradient(loss, x)
    assert grad is not None and np.all(np.isfinite(grad))
    assert np.any(grad.numpy() != 0)


@pytest.mark.parametrize("activation", ["relu", "silu"])
@pytest.mark.parametrize("name", ["resnet50", "resnext50_32x4d", "resnet18", "wide_resnet34_10"])
def test_published_param_counts(name, activation):
    model = models.build_model(name, input_shape=tiny_shape(name), activation=activation)
    assert trainable_params(model) == PARAM_COUNTS[name]


def test_resnet110_param_count_closed_form():
    """He et al. 2016 (Table 6) report 1.7M for ResNet-110; counted here from
    the Cohen/SmoothAdv layout (projection shortcuts = 1x1 conv + BN)."""

    def conv(cin, cout, k=3):
        return k * k * cin * cout

    def bn(c):
        return 2 * c

    total = conv(3, 16) + bn(16)
    cin = 16
    for cout in (16, 32, 64):
        for b in range(18):
            total += conv(cin, cout) + bn(cout) + conv(cout, cout) + bn(cout)
            if cin != cout:
                total += conv(cin, cout, k=1) + bn(cout)
            cin = cout
    total += 64 * 10 + 10
    assert total == 1_730_714
    model = models.build_model("resnet110", input_shape=(16, 16, 3))
    assert trainable_params(model) == total
    assert round(total / 1e6, 1) == 1.7


# === SAT ResNet conventions ===


@pytest.mark.parametrize("name", ["resnet18", "resnet50", "digits_cnn"])
def test_smooth_relu_has_one_beta_per_site(name):
    model = models.build_model(name, input_shape=tiny_shape(name), num_classes=3, activation="smooth_relu")
    betas = [w for w in model.trainable_weights if w.path.endswith("beta_raw")]
    assert len(betas) == ACTIVATION_SITES[name]
    assert len({w.path for w in betas}) == len(betas)
    np.testing.assert_allclose([float(w.numpy()) for w in betas], 20.0)


@pytest.mark.parametrize("name,last_bn", [("resnet18", "conv2_bn"), ("resnet50", "conv3_bn")])
def test_last_bn_of_each_block_starts_at_zero_gamma(name, last_bn):
    model = models.build_model(name, input_shape=(32, 32, 3), num_classes=3)
    bns = [l for l in model.layers if isinstance(l, keras.layers.BatchNormalization)]
    zero = [l.name for l in bns if not np.any(l.gamma.numpy())]
    num_blocks = sum(models.resnet.RESNET_DEPTHS[int(name[6:])][1])
    assert len(zero) == num_blocks
    assert all(n.endswith(last_bn) for n in zero)
    assert all(np.all(l.gamma.numpy() == 1) for l in bns if l.name not in zero)
    assert all((l.momentum, l.epsilon) == (0.9, 1e-5) for l in bns)


def test_sat_initialisation():
    model = models.build_model("resnet18", input_shape=(32, 32, 3))
    fc = model.get_layer("linear")
    kernel = fc.kernel.numpy()
    assert kernel.shape == (512, 1000)
    assert abs(kernel.std() - 0.01) < 0.0003 and abs(kernel.mean()) < 0.0003
    assert not np.any(fc.bias.numpy())
    conv = model.get_layer("group3_block1_conv2")
    assert not conv.use_bias
    w = conv.kernel.numpy()
    std = math.sqrt(2.0 / (3 * 3 * 512))  # fan_out, truncated normal
    assert abs(w.std() / std - 1) < 0.02
    assert np.abs(w).max() <= 2 * std / 0.87962566 + 1e-6
    # Fresh initializers per layer: same-shaped kernels differ.
    other = model.get_layer("group3_block0_conv2").kernel.numpy()
    assert not np.allclose(w, other)


def test_reference_initialisation_of_cifar_nets():
    torch_net = models.build_model("resnet18_cifar", input_shape=(16, 16, 3))
    w = torch_net.get_layer("layer4_1_conv2").kernel.numpy()
    bound = 1 / math.sqrt(3 * 3 * 512)  # PyTorch default: U(+-1/sqrt(fan_in))
    assert np.abs(w).max() <= bound and abs(w.std() / (bound / math.sqrt(3)) - 1) < 0.02
    bias = torch_net.get_layer("linear").bias.numpy()
    assert np.any(bias) and np.abs(bias).max() <= 1 / math.sqrt(512)
    cohen = models.build_model("resnet110", input_shape=(16, 16, 3))
    w = cohen.get_layer("layer3_17_conv2").kernel.numpy()
    std = math.sqrt(2.0 / (3 * 3 * 64))  # N(0, sqrt(2/n)), n = k*k*out
    assert abs(w.std() / std - 1) < 0.03 and np.abs(w).max() > 2.5 * std


def test_fixed_padding_geometry_at_224():
    model = models.build_model("resnet18")
    shape = lambda n: tuple(model.get_layer(n).output.shape[1:])  # noqa: E731
    assert model.get_layer("conv0_pad").padding == ((3, 3), (3, 3))
    assert shape("conv0_pad") == (230, 230, 3)
    assert shape("conv0") == (112, 112, 64)
    assert shape("pool0") == (56, 56, 64)
    assert shape("group1_block0_conv1_pad") == (58, 58, 64)
    assert shape("group1_block0_conv1") == (28, 28, 128)
    assert shape("group1_block0_convshortcut") == (28, 28, 128)
    assert shape("group3_block1_act") == (7, 7, 512)
    assert model.get_layer("group0_block0_conv1").padding == "same"


def test_fixed_padding_numerics():
    """Stride-2 3x3 convs pad 1/1 (not TF SAME's 0/1); the max-pool is SAME."""
    model = models.build_model("resnet18", input_shape=(32, 32, 3), num_classes=3)
    names = ["conv0_act", "pool0", "group0_block1_act", "group1_block0_conv1"]
    probe = keras.Model(model.input, [model.get_layer(n).output for n in names])
    stem, pool, block_in, conv = probe(images((32, 32, 3)), training=False)
    np.testing.assert_allclose(pool, tf.nn.max_pool2d(stem, 3, 2, "SAME"), rtol=1e-6)
    kernel = model.get_layer("group1_block0_conv1").kernel
    padded = tf.pad(block_in, [[0, 0], [1, 1], [1, 1], [0, 0]])
    np.testing.assert_allclose(conv, tf.nn.conv2d(padded, kernel, 2, "VALID"), rtol=1e-4, atol=1e-5)
    tf_same = tf.nn.conv2d(block_in, kernel, 2, "SAME")
    assert not np.allclose(conv, tf_same, atol=1e-3)


def test_resnext_grouped_conv():
    model = models.build_model("resnext50_32x4d", input_shape=(32, 32, 3), num_classes=3)
    conv2 = model.get_layer("group0_block0_conv2")
    assert conv2.groups == 32
    assert conv2.kernel.shape == (3, 3, 128 // 32, 128)
    assert model.get_layer("group3_block0_conv2").kernel.shape == (3, 3, 32, 1024)


def test_basic_blocks_refuse_resnext_options():
    with pytest.raises(ValueError, match="basic blocks"):
        models.build_model("resnet18", groups=32, bottleneck_width=4)


# === Kwargs ===


@pytest.mark.parametrize(
    "kwargs",
    [
        {"data_format": "NCHW"},
        {"activation": "not_an_activation"},
        {"preprocessing": "center"},
        {"num_classes": 0},
        {"input_shape": (32, 32)},
        {"depth": 20},
    ],
)
def test_bad_kwargs_raise_value_error(kwargs):
    with pytest.raises(ValueError):
        models.build_model("preact_resnet18", **kwargs)


def test_bn_hyperparameters_reach_every_bn():
    model = models.build_model("digits_cnn", bn_momentum=0.99, bn_epsilon=1e-3)
    bns = [l for l in model.layers if isinstance(l, keras.layers.BatchNormalization)]
    assert len(bns) == 3
    assert all((l.momentum, l.epsilon) == (0.99, 1e-3) for l in bns)


@pytest.mark.parametrize("name", ["resnext50_32x4d", "wide_resnet28_10", "digits_cnn"])
def test_channels_first_builds(name):
    """NCHW builds (TF on CPU cannot run NCHW convs, so no forward pass); the
    input stays NHWC [0, 1] pixels and is transposed after preprocessing."""
    shape = tiny_shape(name)
    model = models.build_model(name, input_shape=shape, num_classes=3, data_format="channels_first")
    assert model.input_shape == (None, *shape)
    assert model.output_shape == (None, 3)
    assert model.get_layer("to_channels_first").output.shape[1] == shape[-1]
    bns = [l for l in model.layers if isinstance(l, keras.layers.BatchNormalization)]
    assert all(l.axis in (1, [1]) for l in bns)
    if name == "resnext50_32x4d":
        assert model.get_layer("group1_block0_conv2").output.shape[1:] == (256, 4, 4)


def test_training_flag_controls_batch_norm_statistics():
    model = models.build_model("digits_cnn")
    x = images((8, 8, 1), batch=16)
    before = [w.numpy() for w in model.non_trainable_weights]
    unchanged = lambda: all(  # noqa: E731
        np.array_equal(a, w.numpy()) for a, w in zip(before, model.non_trainable_weights)
    )
    model(x, training=False)
    assert unchanged()
    model(x, training=True)
    assert not unchanged()


# === Preprocessing ===


@pytest.mark.parametrize(
    "spec,mean,std",
    [
        ("imagenet", layers.IMAGENET_MEAN, layers.IMAGENET_STD),
        ("cifar", layers.CIFAR_MEAN, layers.CIFAR_STD),
        ("cifar_center", layers.CIFAR_MEAN, 1.0),
        ("imagenet_center", layers.IMAGENET_MEAN, 1.0),
        ({"mean": (0.1, 0.2, 0.3), "std": (0.5, 0.25, 2.0)}, (0.1, 0.2, 0.3), (0.5, 0.25, 2.0)),
        ({"mean": 0.4}, 0.4, 1.0),
        ((0.3, 0.2), 0.3, 0.2),
    ],
)
def test_preprocessing_matches_numpy(spec, mean, std):
    layer = layers.get_preprocessing(spec)
    x = images((4, 5, 3), batch=3)
    expected = (x - np.asarray(mean, "float32")) / np.asarray(std, "float32")
    np.testing.assert_allclose(layer(x), expected, rtol=1e-6, atol=1e-6)
    clone = layers.Normalize.from_config(layer.get_config())
    np.testing.assert_array_equal(clone(x), layer(x))


def test_sat_preprocessing_is_exactly_two_x_minus_one():
    x = images((8, 8, 1), batch=4)
    np.testing.assert_array_equal(layers.get_preprocessing("sat")(x), x * 2 - 1)
    model = models.build_model("digits_cnn")
    np.testing.assert_array_equal(model.get_layer("preprocessing")(x), x * 2 - 1)


def test_preprocessing_validation():
    assert layers.get_preprocessing(None) is None
    assert layers.get_preprocessing("none") is None
    bad_specs = (
        "center",
        {"std": 1.0},
        {"mean": 0.5, "scale": 2},
        (1, 2, 3),
        {"mean": 0, "std": 0},
    )
    for bad in bad_specs:
        with pytest.raises(ValueError):
            layers.get_preprocessing(bad)
    with pytest.raises(ValueError, match="channels"):
        layers.Normalize(mean=layers.CIFAR_MEAN)(np.zeros((1, 2, 2, 1), "float32"))


# === Serialization ===


@pytest.mark.parametrize(
    "name,kwargs",
    [
        ("digits_cnn", {"activation": "smooth_relu"}),
        ("resnet18", {"activation": "silu", "preprocessing": "imagenet", "num_classes": 3}),
        (
            "preact_resnet18",
            {
                "activation": functools.partial(activations.ParametricSoftplus, alpha=5.0),
                "num_classes": 3,
            },
        ),
    ],
)
def test_config_round_trip(name, kwargs):
    model = models.build_model(name, input_shape=tiny_shape(name), **kwargs)
    config = model.get_config()
    json.dumps(config)
    clone = type(model).from_config(config)
    assert clone.get_config() == config
    assert [w.path for w in clone.weights] == [w.path for w in model.weights]
    randomise_bn_state(model)
    clone.set_weights(model.get_weights())
    x = images(tiny_shape(name))
    np.testing.assert_allclose(clone(x), model(x), rtol=1e-5, atol=1e-6)
    rebuilt = models.build_model(name, **config)
    assert rebuilt.get_config() == config


def test_non_string_activation_is_stored_as_a_config():
    act = functools.partial(activations.ParametricSoftplus, alpha=5.0)
    model = models.build_model("digits_cnn", activation=act)
    config = model.get_config()["activation"]
    assert isinstance(config, dict) and config["config"]["alpha"] == 5.0
    sites = [l for l in model.layers if isinstance(l, activations.ParametricSoftplus)]
    assert len(sites) == 3 and all(l.alpha == 5.0 for l in sites)


# Keras' own .keras writer triggers NumPy 2's `__array__(copy=...)` warning.
@pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")
@pytest.mark.parametrize(
    "name,kwargs",
    [
        ("digits_cnn", {"activation": "smooth_relu"}),
        ("resnet18", {"activation": "gelu", "num_classes": 3}),
    ],
)
def test_keras_save_load_safe_mode(tmp_path, name, kwargs):
    model = models.build_model(name, input_shape=tiny_shape(name), **kwargs)
    randomise_bn_state(model)
    path = str(tmp_path / "model.keras")
    model.save(path)
    loaded = keras.saving.load_model(path, safe_mode=True)
    assert type(loaded) is type(model)
    assert loaded.get_config() == model.get_config()
    x = images(tiny_shape(name))
    np.testing.assert_allclose(loaded(x, training=False), model(x, training=False), rtol=1e-5, atol=1e-6)


def _check_export(model, path, shape):
    model.export(path, format="tf_saved_model", verbose=False)
    revived = tf.saved_model.load(path)
    x = images(shape, batch=2)
    np.testing.assert_allclose(revived.serve(x), model(x, training=False), rtol=1e-5, atol=1e-6)
    assert revived.serve(images(shape, batch=5, seed=3)).shape == (5, model.num_classes)


def test_saved_model_export(tmp_path):
    model = models.build_model("digits_cnn", activation="smooth_relu")
    randomise_bn_state(model)
    _check_export(model, str(tmp_path / "saved_model"), (8, 8, 1))


@pytest.mark.slow
def test_saved_model_export_resnext(tmp_path):
    """Grouped convs run through Keras' XLA fallback on CPU; export must too."""
    model = models.build_model("resnext50_32x4d", input_shape=(32, 32, 3), num_classes=3)
    _check_export(model, str(tmp_path / "saved_model"), (32, 32, 3))


def test_eager_and_graph_agree():
    model = models.build_model("digits_cnn", activation="silu")
    randomise_bn_state(model)
    x = tf.constant(images((8, 8, 1)))
    graph = tf.function(lambda z: model(z, training=False))
    np.testing.assert_allclose(graph(x), model(x, training=False), rtol=1e-5, atol=1e-6)


def test_digits_cnn_is_small():
    model = models.build_model("digits_cnn")
    assert model.count_params() < 100_000


def test_mnist_resnet_shape_and_activation_options():
    """28 -> 14 -> 7 -> 4 with the default strides; every site takes the configured activation layer, options
    included (relu_smooth_grad's mode); Sparta is one shared instance; `filters`/`blocks`/`strides` round-trip."""
    model = models.build_model("mnist_resnet")
    assert model.input_shape == (None, 28, 28, 1) and model.output_shape == (None, 10)
    assert [model.get_layer(f"layer{s}_0_act").output.shape[1] for s in (1, 2, 3)] == [14, 7, 4]
    layer = activations.get_activation("relu_smooth_grad", mode="attacker", alpha=10.0)
    spec = keras.saving.serialize_keras_object(layer)  # what a config's activation_options become
    spec["config"].pop("name")
    model = models.build_model("mnist_resnet", activation=spec)
    sites = [l for l in model.layers if type(l) is type(layer)]
    assert len(sites) == ACTIVATION_SITES["mnist_resnet"] and {l.mode for l in sites} == {"attacker"}
    sparta = models.build_model("mnist_resnet", activation="sparta")
    assert trainable_params(sparta) > PARAM_COUNTS["mnist_resnet"]
    wide = models.build_model("mnist_resnet", filters=(8, 16), blocks=2, strides=(1, 2))
    assert wide.get_layer("layer2_1_act").output.shape[1] == 14
    again = type(wide).from_config(wide.get_config())
    assert trainable_params(again) == trainable_params(wide)
    with pytest.raises(ValueError, match="`strides` must be one 1 or 2 per stage"):
        models.build_model("mnist_resnet", strides=(2, 2))
