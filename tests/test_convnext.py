"""ConvNeXt (models/convnext.py): parameter counts in closed form and built, ConvStem, layer scale, drop-path,
the activation at every site, config round-trip and shapes.

The numerical reference (logits equal to independent PyTorch timm-layout ConvNeXt / ConvStem twins with the
same weights) is tests/test_robustbench.py. Full-size B/L networks are built only with --run_exhaustive.
"""

import keras
import numpy as np
import pytest
import tensorflow as tf

from sat_tf import activations, models
from sat_tf.models import convnext as cn

# Liu et al. 2022, Table 1 / timm's model cards (ImageNet-1k heads): T 28.6M, S 50.2M, B 88.6M, L 197.8M.
PUBLISHED_MILLIONS = {"tiny": 28.6, "small": 50.2, "base": 88.6, "large": 197.8}
EXACT = {"tiny": 28_589_128, "small": 50_223_688, "base": 88_591_464, "large": 197_767_336}
# With the ConvStem (Singh et al.; counted from RobustBench's ConvBlock1/ConvBlock3 layers: the patchify
# conv and its LayerNorm replaced by 3x3 convs with LayerNorms). tests/test_robustbench.py checks these
# against the full-size PyTorch twins under --run_exhaustive.
EXACT_CONVSTEM = {"tiny": 28_627_432, "small": 50_261_992, "base": 88_753_416, "large": 198_134_680}
SMALL = dict(depths=(1, 1, 2, 1), dims=(8, 16, 24, 32), num_classes=5, input_shape=(32, 32, 3))


def trainable_params(model):
    return sum(int(np.prod(w.shape)) for w in model.trainable_weights)


@pytest.mark.parametrize("variant", sorted(cn.CONVNEXT_VARIANTS))
def test_closed_form_counts_equal_the_published_sizes(variant):
    depths, dims, convs = cn.CONVNEXT_VARIANTS[variant]
    count = cn.convnext_params(depths, dims)
    assert count == EXACT[variant]
    assert round(count / 1e6, 1) == PUBLISHED_MILLIONS[variant]
    assert cn.convnext_params(depths, dims, stem="convstem", convstem=convs) == EXACT_CONVSTEM[variant]


@pytest.mark.parametrize("stem", cn.STEMS)
@pytest.mark.parametrize("convs", [((4, 2), (8, 2)), ((4, 2), (6, 2), (8, 1))])
def test_closed_form_equals_the_built_model(stem, convs):
    model = models.build_model("convnext_tiny", stem=stem, convstem_convs=convs, **SMALL)
    assert trainable_params(model) == cn.convnext_params(
        SMALL["depths"], SMALL["dims"], stem=stem, convstem=convs, num_classes=5
    )


def test_tiny_builds_with_the_published_count():
    for stem, expected in (("patch", EXACT["tiny"]), ("convstem", EXACT_CONVSTEM["tiny"])):
        model = models.build_model("convnext_tiny", stem=stem, input_shape=(32, 32, 3))
        assert trainable_params(model) == expected


@pytest.mark.exhaustive
@pytest.mark.parametrize("variant", ["small", "base", "large"])
@pytest.mark.parametrize("stem", cn.STEMS)
def test_every_variant_builds_with_its_count(variant, stem):
    model = models.build_model(f"convnext_{variant}", stem=stem, input_shape=(32, 32, 3))
    expected = EXACT_CONVSTEM[variant] if stem == "convstem" else EXACT[variant]
    assert trainable_params(model) == expected


def test_layout_and_defaults():
    assert models.list_models("convnext*") == ["convnext_base", "convnext_large", "convnext_small", "convnext_tiny"]
    model = models.build_model("convnext_tiny", stem="convstem", convstem_convs=((4, 2), (6, 2), (8, 1)), **SMALL)
    names = {l.name for l in model.layers}
    for expected in (
        "stem_stem_0",
        "stem_stem_1",
        "stem_stem_2",
        "stem_stem_6",
        "stem_stem_7",
        "stages_1_downsample_0",
        "stages_1_downsample_1",
        "stages_2_blocks_1_conv_dw",
        "stages_2_blocks_1_norm",
        "stages_2_blocks_1_mlp_fc1",
        "stages_2_blocks_1_mlp_act",
        "stages_2_blocks_1_mlp_fc2",
        "stages_2_blocks_1_gamma",
        "head_norm",
        "head_fc",
    ):
        assert expected in names
    assert "stages_0_downsample_0" not in names and "stem_0" not in names
    config = model.get_config()
    assert config["activation"] == "gelu_erf" and config["preprocessing"] == "imagenet"
    gelus = [l for l in model.layers if isinstance(l, activations.GELU)]
    assert gelus and all(not l.approximate for l in gelus)  # timm's nn.GELU: exact erf
    norms = [l for l in model.layers if isinstance(l, keras.layers.LayerNormalization)]
    assert {l.epsilon for l in norms} == {1e-6}
    gammas = [l for l in model.layers if isinstance(l, cn.LayerScale)]
    assert len(gammas) == sum(SMALL["depths"])
    assert all(np.all(l.gamma.numpy() == np.float32(1e-6)) for l in gammas)
    assert "stem_1" in {l.name for l in models.build_model("convnext_tiny", **SMALL).layers}


def test_activation_at_every_site():
    model = models.build_model(
        "convnext_tiny", stem="convstem", activation="softplus", convstem_convs=((4, 2), (8, 2)), **SMALL
    )
    sites = [l for l in model.layers if isinstance(l, activations.Softplus)]
    assert len(sites) == sum(SMALL["depths"]) + 2
    assert not [l for l in model.layers if isinstance(l, activations.GELU)]


def test_drop_path_rates_and_semantics():
    model = models.build_model("convnext_tiny", drop_path_rate=0.3, **SMALL)
    rates = [l.rate for l in model.layers if isinstance(l, cn.DropPath)]
    np.testing.assert_allclose(rates, np.linspace(0, 0.3, 5)[1:], rtol=1e-6)  # the first block's 0: no layer
    x = np.random.default_rng(0).uniform(size=(4, 32, 32, 3)).astype(np.float32)
    np.testing.assert_array_equal(model(x, training=False).numpy(), model(x, training=False).numpy())
    layer = cn.DropPath(0.5, seed=1)
    ones = np.ones((256, 2, 2, 3), np.float32)
    out = layer(ones, training=True).numpy()
    per_example = out.reshape(256, -1)
    assert set(np.unique(per_example)) <= {0.0, 2.0}  # whole examples dropped, kept ones scaled by 1 / keep
    assert np.all(per_example.min(1) == per_example.max(1))
    assert 0.35 < (per_example[:, 0] == 0).mean() < 0.65
    np.testing.assert_array_equal(layer(ones, training=False).numpy(), ones)


def test_round_trip_shapes_and_gradient(tmp_path):
    model = models.build_model(
        "convnext_small",
        stem="convstem",
        drop_path_rate=0.1,
        convstem_convs=((4, 2), (8, 2)),
        **{**SMALL, "input_shape": (40, 48, 3)},
    )
    x = np.random.default_rng(1).uniform(size=(2, 40, 48, 3)).astype(np.float32)
    logits = model(x, training=False).numpy()
    assert logits.shape == (2, 5) and np.all(np.isfinite(logits))
    model.save(tmp_path / "m.keras")
    revived = keras.saving.load_model(tmp_path / "m.keras", safe_mode=True)
    assert isinstance(revived, cn.ConvNeXt) and revived.get_config() == model.get_config()
    np.testing.assert_allclose(revived(x, training=False).numpy(), logits, rtol=1e-5, atol=1e-5)
    xt = tf.constant(x)
    with tf.GradientTape() as tape:
        tape.watch(xt)
        loss = tf.reduce_sum(tf.nn.log_softmax(model(xt, training=False))[:, 0])
    grad = tape.gradient(loss, xt).numpy()
    assert np.all(np.isfinite(grad)) and np.any(grad != 0)


def test_layer_scale_is_the_numpy_product():
    layer = cn.LayerScale(0.5)
    x = np.random.default_rng(2).normal(size=(2, 3, 3, 4)).astype(np.float32)
    layer.build(x.shape)
    layer.gamma.assign(np.array([1.0, -2.0, 0.5, 3.0], np.float32))
    np.testing.assert_allclose(layer(x).numpy(), x * np.array([1.0, -2.0, 0.5, 3.0]), rtol=1e-6)
    assert cn.LayerScale.from_config(layer.get_config()).init_value == 0.5


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(variant="huge"), "`variant` must be one of"),
        (dict(stem="overlap"), "`stem` must be one of"),
        (dict(drop_path_rate=1.0), "`drop_path_rate` must be in"),
        (dict(data_format="channels_first"), "channels_last only"),
        (dict(depths=(1, 1, 1)), "`depths` must be 4 ints"),
        (dict(stem="convstem", convstem_convs=((4, 2), (6, 2))), "last conv must give dims\\[0\\]=8"),
    ],
)
def test_bad_arguments_name_the_setting(kwargs, match):
    with pytest.raises(ValueError, match=match):
        cn.ConvNeXt(**{**SMALL, **kwargs})
