"""ConvNeXt (Liu et al. 2022) with the optional ConvStem of Singh et al. 2023, as timm builds them.

`ConvNeXt` follows timm's `timm/models/convnext.py` (the class RobustBench's ImageNet ConvNeXt entries
instantiate) with every layer named after its timm module path, `.` -> `_`:
`stem_0`/`stem_1` (4x4/4 patchify conv + LayerNorm), `stages_N_downsample_0`/`_1` (LayerNorm + 2x2/2 conv,
stages 1-3), `stages_N_blocks_M_{conv_dw, norm, mlp_fc1, mlp_act, mlp_fc2, gamma}`, `head_norm`, `head_fc`.
A block is: 7x7 depthwise conv, LayerNorm over channels, Linear(4C), activation, Linear(C), layer scale
(`gamma`, initialised to 1e-6), drop-path, + input. LayerNorm eps is 1e-6 everywhere (timm's LayerNorm and
LayerNorm2d). Convs and linears have biases.

ConvStem (`stem="convstem"`): RobustBench's `convstem_models.py` replaces `model.stem` by a `ConvBlock`,
so its layers are `stem.stem.K` here `stem_stem_K`: 3x3 convs (padding 1, with bias) each followed by a
channels-first LayerNorm and GELU. T/S (`ConvBlock1(48)`): 3->48 /2, 48->96 /2. B (`ConvBlock3(64)`):
3->64 /2, 64->96 /2, 96->128 /1. L (`ConvBlock3(96)`): 3->96 /2, 96->144 /2, 144->192 /1. Stride 4 overall,
like the patchify stem, so the stages are unchanged.

Activation: timm's and the ConvStem's `nn.GELU()` is the exact erf form, so the default here is
`"gelu_erf"` (the SAT nets' `"gelu"` is the tanh form; the two differ by up to ~1e-3 per site, too much for
converted weights to reproduce the reference). Any `sat_tf.activations` name works at every site (block MLP
and ConvStem).

Built channels_last only: the MLP is a Dense over the last axis, as timm's (`conv_mlp=False`).
"""

import keras
from keras import ops

from sat_tf.models import layers, register_model

# name -> (blocks per stage, channels per stage, ConvStem convs as (channels, stride)).
CONVNEXT_VARIANTS = {
    "tiny": ((3, 3, 9, 3), (96, 192, 384, 768), ((48, 2), (96, 2))),
    "small": ((3, 3, 27, 3), (96, 192, 384, 768), ((48, 2), (96, 2))),
    "base": ((3, 3, 27, 3), (128, 256, 512, 1024), ((64, 2), (96, 2), (128, 1))),
    "large": ((3, 3, 27, 3), (192, 384, 768, 1536), ((96, 2), (144, 2), (192, 1))),
}
STEMS = ("patch", "convstem")
LN_EPSILON = 1e-6


def convnext_params(depths, dims, *, stem="patch", convstem=None, num_classes=1000, input_channels=3, layer_scale=True):
    """Trainable parameters of a ConvNeXt, in closed form (no build).

    `convstem`: the ConvStem's (channels, stride) convs, needed when `stem="convstem"`.
    """
    total = 0
    if stem == "patch":
        total += 16 * input_channels * dims[0] + dims[0] + 2 * dims[0]
    else:
        cin = input_channels
        for channels, _ in convstem:
            total += 9 * cin * channels + channels + 2 * channels
            cin = channels
    for i, (blocks, c) in enumerate(zip(depths, dims)):
        if i > 0:
            total += 2 * dims[i - 1] + 4 * dims[i - 1] * c + c
        per_block = 49 * c + c + 2 * c + (c * 4 * c + 4 * c) + (4 * c * c + c) + (c if layer_scale else 0)
        total += blocks * per_block
    return total + 2 * dims[-1] + dims[-1] * num_classes + num_classes


@keras.saving.register_keras_serializable(package="sat_tf")
class LayerScale(keras.layers.Layer):
    """Per-channel learned scale `x * gamma` (CaiT / ConvNeXt layer scale; timm's block `gamma`).

    Args:
        init_value: float, the initial value of every entry of `gamma`. Defaults to `1e-6`.
        **kwargs: Base layer keyword arguments, such as `name` and `dtype`.
    """

    def __init__(self, init_value=1e-6, **kwargs):
        super().__init__(**kwargs)
        if not isinstance(init_value, (int, float)) or isinstance(init_value, bool):
            raise ValueError(f"`init_value` must be a number. Received: init_value={init_value!r}")
        self.init_value = float(init_value)

    def build(self, input_shape):
        self.gamma = self.add_weight(
            shape=(input_shape[-1],), name="gamma", initializer=keras.initializers.Constant(self.init_value)
        )

    def call(self, x):
        return x * ops.cast(self.gamma, x.dtype)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {**super().get_config(), "init_value": self.init_value}


@keras.saving.register_keras_serializable(package="sat_tf")
class DropPath(keras.layers.Layer):
    """Stochastic depth: in training, zero a whole example's residual branch with probability `rate`
    and scale the kept ones by `1 / (1 - rate)` (timm `DropPath`, `scale_by_keep=True`). Identity at
    inference.

    Args:
        rate: float in [0, 1). The drop probability.
        seed: int or None, the seed of the layer's `SeedGenerator`.
        **kwargs: Base layer keyword arguments.
    """

    def __init__(self, rate, seed=None, **kwargs):
        super().__init__(**kwargs)
        if not isinstance(rate, (int, float)) or isinstance(rate, bool) or not 0 <= rate < 1:
            raise ValueError(f"`rate` must be in [0, 1). Received: rate={rate!r}")
        self.rate = float(rate)
        self.seed = seed
        self.seed_generator = keras.random.SeedGenerator(seed)

    def call(self, x, training=None):
        if not training or self.rate == 0:
            return x
        keep = 1.0 - self.rate
        shape = (ops.shape(x)[0],) + (1,) * (len(x.shape) - 1)
        mask = ops.floor(keep + keras.random.uniform(shape, seed=self.seed_generator, dtype=x.dtype))
        return x / keep * mask

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {**super().get_config(), "rate": self.rate, "seed": self.seed}


def _layer_norm(x, *, name):
    return keras.layers.LayerNormalization(axis=-1, epsilon=LN_EPSILON, name=name)(x)


def _conv(x, filters, kernel_size, strides, padding, init, *, name):
    """Conv2D with bias; `padding` pixels of zeros on every side first (PyTorch's `padding=`)."""
    if padding:
        x = keras.layers.ZeroPadding2D(padding, name=f"{name}_pad")(x)
    return keras.layers.Conv2D(
        filters, kernel_size, strides=strides, padding="valid", use_bias=True, kernel_initializer=init(), name=name
    )(x)


def apply_convnext_block(x, args, *, layer_scale_init, drop_path, init, name):
    """timm `ConvNeXtBlock` (conv_mlp=False): dwconv7, LN, fc1, act, fc2, gamma, drop-path, + x."""
    channels = x.shape[-1]
    out = keras.layers.DepthwiseConv2D(
        7, padding="same", use_bias=True, depthwise_initializer=init(), name=f"{name}_conv_dw"
    )(x)
    out = _layer_norm(out, name=f"{name}_norm")
    out = keras.layers.Dense(4 * channels, kernel_initializer=init(), name=f"{name}_mlp_fc1")(out)
    out = layers.act(out, args, name=f"{name}_mlp_act")
    out = keras.layers.Dense(channels, kernel_initializer=init(), name=f"{name}_mlp_fc2")(out)
    if layer_scale_init is not None:
        out = LayerScale(layer_scale_init, name=f"{name}_gamma")(out)
    if drop_path > 0:
        out = DropPath(drop_path, name=f"{name}_drop_path")(out)
    return keras.layers.Add(name=f"{name}_add")([x, out])


@keras.saving.register_keras_serializable(package="sat_tf")
class ConvNeXt(layers.ImageClassifier):
    """ConvNeXt-T/S/B/L, timm layout, with the patchify stem or Singh et al.'s ConvStem.

    Args:
        variant: `"tiny"`, `"small"`, `"base"` or `"large"` (`CONVNEXT_VARIANTS`). Defaults to `"tiny"`.
        stem: `"patch"` (4x4/4 conv + LayerNorm) or `"convstem"`. Defaults to `"patch"`.
        drop_path_rate: float in [0, 1): stochastic depth of the last block, linear from 0 over the
            blocks as timm. Defaults to `0.0`.
        layer_scale_init: float, or None for no layer scale. Defaults to `1e-6`.
        depths, dims, convstem_convs: override the variant's blocks per stage, channels per stage
            (4 ints each) and ConvStem `(channels, stride)` pairs, for small test networks and
            other sizes. Defaults to `None` (the variant's).
        num_classes, input_shape, activation, preprocessing, name: as the other builders. Defaults: 1000,
            `(224, 224, 3)`, `"gelu_erf"` (timm's `nn.GELU`), `"imagenet"`.
        data_format: `"channels_last"` only (see the module docstring).
        bn_momentum, bn_epsilon: kept for the shared config; ConvNeXt has no BatchNorm.
        **kwargs: Base model keyword arguments.

    Init: truncated normal std 0.02 on conv and linear kernels, zero biases (timm `_init_weights`).

    Reference:
    - [Liu et al., 2022](https://arxiv.org/abs/2201.03545)
    - [Singh et al., 2023](https://arxiv.org/abs/2303.01870) (ConvStem)
    """

    def __init__(
        self,
        variant="tiny",
        stem="patch",
        drop_path_rate=0.0,
        layer_scale_init=1e-6,
        depths=None,
        dims=None,
        convstem_convs=None,
        num_classes=1000,
        input_shape=(224, 224, 3),
        activation="gelu_erf",
        preprocessing="imagenet",
        data_format="channels_last",
        bn_momentum=0.9,
        bn_epsilon=1e-5,
        name=None,
        **kwargs,
    ):
        if variant not in CONVNEXT_VARIANTS:
            raise ValueError(f"`variant` must be one of {sorted(CONVNEXT_VARIANTS)}. Received: variant={variant!r}")
        if stem not in STEMS:
            raise ValueError(f"`stem` must be one of {STEMS}. Received: stem={stem!r}")
        if not isinstance(drop_path_rate, (int, float)) or not 0 <= drop_path_rate < 1:
            raise ValueError(f"`drop_path_rate` must be in [0, 1). Received: drop_path_rate={drop_path_rate!r}")
        if data_format != "channels_last":
            raise ValueError(
                "ConvNeXt is built channels_last only (its MLP is a Dense over the channel axis, "
                f"as timm's). Received: data_format={data_format!r}"
            )
        common = layers.common_kwargs(
            num_classes=num_classes,
            input_shape=input_shape,
            activation=activation,
            preprocessing=preprocessing,
            data_format=data_format,
            bn_momentum=bn_momentum,
            bn_epsilon=bn_epsilon,
        )
        args = layers.block_args(common, "torch")
        table_depths, table_dims, table_convstem = CONVNEXT_VARIANTS[variant]
        depths = tuple(table_depths if depths is None else depths)
        dims = tuple(table_dims if dims is None else dims)
        convstem = tuple(tuple(c) for c in (table_convstem if convstem_convs is None else convstem_convs))
        for label, values in (("depths", depths), ("dims", dims)):
            if len(values) != 4 or not all(isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in values):
                raise ValueError(f"`{label}` must be 4 ints >= 1. Received: {label}={values!r}")
        if not convstem or any(len(c) != 2 or c[0] < 1 or c[1] not in (1, 2) for c in convstem):
            raise ValueError(
                "`convstem_convs` must be (channels >= 1, stride 1 or 2) pairs. "
                f"Received: convstem_convs={convstem_convs!r}"
            )
        if stem == "convstem" and convstem[-1][0] != dims[0]:
            raise ValueError(
                f"the ConvStem's last conv must give dims[0]={dims[0]} channels. "
                f"Received: convstem_convs={convstem_convs!r}"
            )

        def init():
            return keras.initializers.TruncatedNormal(stddev=0.02)

        # === Functional Model ===
        inputs, x = layers.image_input(input_shape, preprocessing, data_format)
        if stem == "patch":
            x = _conv(x, dims[0], 4, 4, 0, init, name="stem_0")
            x = _layer_norm(x, name="stem_1")
        else:
            for k, (channels, stride) in enumerate(convstem):
                x = _conv(x, channels, 3, stride, 1, init, name=f"stem_stem_{3 * k}")
                x = _layer_norm(x, name=f"stem_stem_{3 * k + 1}")
                x = layers.act(x, args, name=f"stem_stem_{3 * k + 2}")
        total = sum(depths)
        index = 0
        for i, (blocks, channels) in enumerate(zip(depths, dims)):
            if i > 0:
                x = _layer_norm(x, name=f"stages_{i}_downsample_0")
                x = _conv(x, channels, 2, 2, 0, init, name=f"stages_{i}_downsample_1")
            for b in range(blocks):
                rate = drop_path_rate * index / (total - 1) if total > 1 else 0.0
                x = apply_convnext_block(
                    x, args, layer_scale_init=layer_scale_init, drop_path=rate, init=init, name=f"stages_{i}_blocks_{b}"
                )
                index += 1
        x = keras.layers.GlobalAveragePooling2D(name="head_global_pool")(x)
        x = _layer_norm(x, name="head_norm")
        outputs = keras.layers.Dense(num_classes, kernel_initializer=init(), dtype="float32", name="head_fc")(x)
        suffix = "_convstem" if stem == "convstem" else ""
        super().__init__(inputs, outputs, name=name or f"convnext_{variant}{suffix}", **common, **kwargs)

        # === Config ===
        self.variant = variant
        self.stem = stem
        self.drop_path_rate = float(drop_path_rate)
        self.layer_scale_init = layer_scale_init
        self.depths = list(depths) if depths != table_depths else None
        self.dims = list(dims) if dims != table_dims else None
        self.convstem_convs = [list(c) for c in convstem] if convstem != table_convstem else None

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "variant": self.variant,
                "stem": self.stem,
                "drop_path_rate": self.drop_path_rate,
                "layer_scale_init": self.layer_scale_init,
                "depths": layers._plain(self.depths),
                "dims": layers._plain(self.dims),
                "convstem_convs": layers._plain(self.convstem_convs),
            }
        )
        return config


# === Entry points ===


@register_model
def convnext_tiny(**kwargs):
    return ConvNeXt(**{"variant": "tiny", **kwargs})


@register_model
def convnext_small(**kwargs):
    return ConvNeXt(**{"variant": "small", **kwargs})


@register_model
def convnext_base(**kwargs):
    return ConvNeXt(**{"variant": "base", **kwargs})


@register_model
def convnext_large(**kwargs):
    return ConvNeXt(**{"variant": "large", **kwargs})
