"""`DMWideResNet` (models/dm_wide_resnet.py): parameter counts in closed form and built, the layer layout of
RobustBench's module, the activation at every site, config round-trip, shapes and input checks.

The numerical reference (logits equal to an independent PyTorch DMWideResNet with the same weights) is
tests/test_robustbench.py. The 267M/366M-weight networks are built only with --run_exhaustive.
"""

import keras
import numpy as np
import pytest
import tensorflow as tf

from sat_tf import activations, models
from sat_tf.models import dm_wide_resnet as dm
from sat_tf.models import layers


def trainable_params(model):
    return sum(int(np.prod(w.shape)) for w in model.trainable_weights)


# Published sizes: Zagoruyko & Komodakis 2016 (WRN-28-10 36.5M), TRADES/RobustBench (WRN-34-10 46.16M, the
# same layer shapes as the DM layout: no BN in the shortcut either), Gowal et al. 2020 (WRN-70-16 267M),
# Bartoldson et al. 2024 (WRN-94-16 366M). Exact values: the closed form, checked against builds below.
PUBLISHED_MILLIONS = {(28, 10): 36.5, (34, 10): 46.16, (70, 16): 267, (94, 16): 366}
EXACT = {(28, 10): 36_479_194, (34, 10): 46_160_474, (70, 16): 266_796_506, (94, 16): 365_915_610}


@pytest.mark.parametrize("depth_width", sorted(PUBLISHED_MILLIONS))
def test_closed_form_counts_equal_the_published_sizes(depth_width):
    count = dm.dm_wide_resnet_params(*depth_width)
    assert count == EXACT[depth_width]
    published = PUBLISHED_MILLIONS[depth_width]
    digits = len(str(published).split(".")[1]) if "." in str(published) else 0
    assert round(count / 1e6, digits) == published


@pytest.mark.parametrize("depth,width,classes", [(10, 1, 10), (16, 2, 100), (22, 3, 7), (28, 10, 10)])
def test_closed_form_equals_the_built_model(depth, width, classes):
    model = models.build_model(
        "dm_wide_resnet28_10", depth=depth, width=width, num_classes=classes, input_shape=(16, 16, 3)
    )
    assert trainable_params(model) == dm.dm_wide_resnet_params(depth, width, classes)


@pytest.mark.exhaustive
@pytest.mark.parametrize("name", sorted(dm.DM_WIDE_RESNETS))
def test_every_registered_size_builds_with_its_count(name):
    model = models.build_model(name, input_shape=(32, 32, 3))
    assert trainable_params(model) == dm.dm_wide_resnet_params(*dm.DM_WIDE_RESNETS[name])


def test_registry_and_defaults():
    assert models.list_models("dm_wide_resnet*") == sorted(dm.DM_WIDE_RESNETS)
    model = models.build_model("dm_wide_resnet28_10", depth=10, width=1)
    config = model.get_config()
    assert config["activation"] == "silu"
    assert config["preprocessing"] == {"mean": [0.4914, 0.4822, 0.4465], "std": [0.2471, 0.2435, 0.2616]}
    assert (config["bn_momentum"], config["bn_epsilon"]) == (0.9, 1e-5)  # torch BatchNorm2d defaults
    assert model.output_shape == (None, 10)
    assert sum(isinstance(l, activations.SiLU) for l in model.layers) == 2 * 3 + 1


def test_layer_names_follow_the_reference_modules():
    model = models.build_model("dm_wide_resnet28_10", depth=16, width=2, input_shape=(16, 16, 3))
    names = {l.name for l in model.layers}
    for expected in (
        "init_conv",
        "layer_0_block_0_batchnorm_0",
        "layer_0_block_0_relu_0",
        "layer_0_block_0_conv_0",
        "layer_0_block_0_batchnorm_1",
        "layer_0_block_0_relu_1",
        "layer_0_block_0_conv_1",
        "layer_0_block_0_shortcut",
        "layer_2_block_1_conv_1",
        "batchnorm",
        "relu",
        "logits",
    ):
        assert expected in names
    # Shortcuts where the channel count changes: every group's first block (16 -> 32 at width 2, ...).
    assert sorted(n for n in names if n.endswith("_shortcut")) == [f"layer_{g}_block_0_shortcut" for g in range(3)]
    assert "layer_2_block_2_conv_0" not in names  # (16 - 4) / 6 = 2 blocks per group
    assert not [l for l in model.layers if isinstance(l, keras.layers.Conv2D) and l.use_bias]
    # The strided conv pads bottom/right only, like TensorFlow's SAME on even sizes.
    assert model.get_layer("layer_1_block_0_pad_0").padding == ((0, 1), (0, 1))
    assert model.get_layer("layer_1_block_1_pad_0").padding == ((1, 1), (1, 1))


def test_equal_channels_make_no_shortcut():
    model = models.build_model("dm_wide_resnet28_10", depth=10, width=1, input_shape=(16, 16, 3))
    assert "layer_0_block_0_shortcut" not in {l.name for l in model.layers}  # 16 -> 16


@pytest.mark.parametrize("activation", ["softplus", "smooth_relu", "gelu"])
def test_activation_at_every_site(activation):
    model = models.build_model("dm_wide_resnet28_10", depth=16, width=1, activation=activation, input_shape=(16, 16, 3))
    kind = type(activations.get_activation(activation))
    sites = [l for l in model.layers if isinstance(l, kind)]
    assert len(sites) == 2 * 2 * 3 + 1
    assert not [l for l in model.layers if isinstance(l, activations.SiLU)]
    if activation == "smooth_relu":
        assert len([w for w in model.trainable_weights if w.name == "beta_raw"]) == len(sites)


def test_round_trip_and_shapes(tmp_path):
    model = models.build_model(
        "dm_wide_resnet28_10", depth=10, width=2, num_classes=4, input_shape=(20, 12, 3), padding=2
    )
    x = np.random.default_rng(0).uniform(size=(3, 20, 12, 3)).astype(np.float32)
    logits = model(x, training=False).numpy()
    assert logits.shape == (3, 4) and np.all(np.isfinite(logits))
    model.save(tmp_path / "m.keras")
    revived = keras.saving.load_model(tmp_path / "m.keras", safe_mode=True)
    assert isinstance(revived, dm.DMWideResNet)
    assert revived.get_config() == model.get_config()
    np.testing.assert_allclose(revived(x, training=False).numpy(), logits, rtol=1e-5, atol=1e-5)
    assert model.get_layer("input_pad").padding == ((2, 2), (2, 2))
    xt = tf.constant(x)
    with tf.GradientTape() as tape:
        tape.watch(xt)
        loss = tf.reduce_sum(tf.nn.log_softmax(model(xt, training=False))[:, 0])
    grad = tape.gradient(loss, xt).numpy()
    assert np.all(np.isfinite(grad)) and np.any(grad != 0)


def test_normalisation_inside_the_model_is_the_numpy_formula():
    model = models.build_model("dm_wide_resnet28_10", depth=10, width=1, input_shape=(8, 8, 3))
    normalize = next(l for l in model.layers if isinstance(l, layers.Normalize))
    x = np.random.default_rng(1).uniform(size=(2, 8, 8, 3)).astype(np.float32)
    expected = (x - np.array(dm.DM_CIFAR10["mean"])) / np.array(dm.DM_CIFAR10["std"])
    np.testing.assert_allclose(normalize(x).numpy(), expected, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(depth=27), "6n \\+ 4"),
        (dict(width=0), "`width` must be an int >= 1"),
        (dict(padding=-1), "`padding` must be an int >= 0"),
        (dict(input_shape=(30, 30, 3)), "divisible by 4"),
    ],
)
def test_bad_arguments_name_the_setting(kwargs, match):
    with pytest.raises(ValueError, match=match):
        models.build_model("dm_wide_resnet28_10", **{"input_shape": (16, 16, 3), **kwargs})
