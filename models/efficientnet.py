"""EfficientNet B0-B8, SAT's L1 and L2, with a pluggable activation.

Follows cihangxie/SmoothAdversarialTraining `EfficientNet/efficientnet_builder.py`
and `efficientnet_model.py` (= tensorflow/tpu `models/official/efficientnet`):

- variants `(width, depth, resolution, dropout)` in `EFFICIENTNET_PARAMS`,
  B0 blocks in `BASE_STAGES`; filters rounded to multiples of `depth_divisor`
  (`round_filters`), repeats rounded up (`round_repeats`); the stem (32) and
  head (1280) widths are width-scaled too (`stage_table`);
- stem 3x3/2 conv, BN, activation; MBConv blocks: [expand 1x1 BN-act if the
  expand ratio != 1], depthwise kxk (stride) BN-act, squeeze-and-excitation
  (spatial mean, 1x1 conv + bias, activation, 1x1 conv + bias, sigmoid,
  multiply) with `max(1, int(block_input_filters * 0.25))` reduced channels,
  project 1x1 BN (no activation), and on identity skips (stride 1, in == out)
  drop-connect then add; head 1x1 conv BN-act, global average pool, dropout,
  dense;
- convs use TF SAME padding (also the strided ones), no bias except in SE;
  conv init N(0, sqrt(2 / fan_out)) untruncated (a depthwise kernel
  `[k, k, C, 1]` has fan_out `k * k`), dense U(+-1/sqrt(num_classes)), zero
  bias;
- block `i` of `N` uses drop-connect survival `1 - (1 - survival_prob) * i / N`.

The released EfficientNets use SiLU at every activation site (stem, expand,
depthwise, SE reduce, head); here each of those sites takes `activation`. The
SE gate stays sigmoid.

Layer names (a contract: TF1 checkpoints are mapped onto them), with `i` the
global 0-based block index counting repeats (upstream `blocks_i`):
`stem_conv`, `stem_bn`, `stem_act`; `block{i}_expand_conv`, `_expand_bn`,
`_expand_act` (expand ratio != 1 only); `block{i}_dwconv` (kernel
`depthwise_kernel`), `_dwconv_bn`, `_dwconv_act`; `block{i}_se_squeeze`,
`_se_reduce`, `_se_act`, `_se_expand`, `_se_excite`; `block{i}_project_conv`,
`_project_bn`, `_drop`, `_add` (identity skips only); `head_conv`, `head_bn`,
`head_act`, `gap`, `dropout`, `head_dense`.
"""

import math
import typing

import keras
from keras import ops

from sat_tf.models import layers, register_model

# name -> (width_coefficient, depth_coefficient, resolution, dropout_rate)
EFFICIENTNET_PARAMS = {
    "efficientnet_b0": (1.0, 1.0, 224, 0.2),
    "efficientnet_b1": (1.0, 1.1, 240, 0.2),
    "efficientnet_b2": (1.1, 1.2, 260, 0.3),
    "efficientnet_b3": (1.2, 1.4, 300, 0.3),
    "efficientnet_b4": (1.4, 1.8, 380, 0.4),
    "efficientnet_b5": (1.6, 2.2, 456, 0.4),
    "efficientnet_b6": (1.8, 2.6, 528, 0.5),
    "efficientnet_b7": (2.0, 3.1, 600, 0.5),
    "efficientnet_b8": (2.2, 3.6, 672, 0.5),
    "efficientnet_l1": (3.9, 3.7, 600, 0.5),  # SAT's `efficientnet-bL1`
    "efficientnet_l2": (4.3, 5.3, 800, 0.5),
}
STEM_FILTERS = 32
HEAD_FILTERS = 1280
SE_RATIO = 0.25


class Stage(typing.NamedTuple):
    repeats: int
    kernel_size: int
    strides: int
    expand_ratio: int
    input_filters: int
    output_filters: int


# `_DEFAULT_BLOCKS_ARGS` of the reference (B0), r/k/s/e/i/o, SE ratio 0.25.
BASE_STAGES = (
    Stage(1, 3, 1, 1, 32, 16),
    Stage(2, 3, 2, 6, 16, 24),
    Stage(2, 5, 2, 6, 24, 40),
    Stage(3, 3, 2, 6, 40, 80),
    Stage(3, 5, 1, 6, 80, 112),
    Stage(4, 5, 2, 6, 112, 192),
    Stage(1, 3, 1, 6, 192, 320),
)


class StageTable(typing.NamedTuple):
    stem_filters: int
    head_filters: int
    num_blocks: int
    stages: tuple  # of `Stage`, filters and repeats already scaled


def round_filters(filters, width_coefficient, depth_divisor=8):
    """`filters * width` rounded to a multiple of `depth_divisor` (at least
    `depth_divisor`), rounded up a step if that lost more than 10%."""
    filters = filters * width_coefficient
    rounded = int(filters + depth_divisor / 2) // depth_divisor * depth_divisor
    new_filters = max(depth_divisor, rounded)
    if new_filters < 0.9 * filters:
        new_filters += depth_divisor
    return int(new_filters)


def round_repeats(repeats, depth_coefficient):
    """`ceil(repeats * depth)`."""
    return int(math.ceil(depth_coefficient * repeats))


def stage_table(width_coefficient, depth_coefficient, depth_divisor=8):
    """The scaled architecture, without building a model. Example:
    `stage_table(3.9, 3.7).num_blocks == 63` (SAT's L1)."""
    stages = tuple(
        Stage(
            round_repeats(s.repeats, depth_coefficient),
            s.kernel_size,
            s.strides,
            s.expand_ratio,
            round_filters(s.input_filters, width_coefficient, depth_divisor),
            round_filters(s.output_filters, width_coefficient, depth_divisor),
        )
        for s in BASE_STAGES
    )
    return StageTable(
        stem_filters=round_filters(STEM_FILTERS, width_coefficient, depth_divisor),
        head_filters=round_filters(HEAD_FILTERS, width_coefficient, depth_divisor),
        num_blocks=sum(s.repeats for s in stages),
        stages=stages,
    )


def _check_number(name, value, condition, test):
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not test(value):
        raise ValueError(f"`{name}` must be a number {condition}. Received: {name}={value!r}")


def survival_schedule(survival_prob, num_blocks):
    """Drop-connect survival of each block: `1 - (1 - p) * i / num_blocks`."""
    return [1.0 - (1.0 - survival_prob) * i / num_blocks for i in range(num_blocks)]


@keras.saving.register_keras_serializable(package="sat_tf")
class DropConnect(keras.layers.Layer):
    """Drop-connect (stochastic depth) on a residual branch.

    With `training=True`, each example's branch is zeroed with probability
    `1 - survival_prob` and otherwise divided by `survival_prob`, so the mean
    is preserved; the identity otherwise (upstream `utils.drop_connect`).

    Formula: `f(x) = x / p * floor(p + U[0, 1))`, one draw per example.

    Args:
        survival_prob: float in (0, 1], the keep probability `p`.
        seed: int or None, seed of the layer's `keras.random.SeedGenerator`.
            Defaults to `None`.
        **kwargs: Base layer keyword arguments, such as `name` and `dtype`.

    Reference:
    - [Huang et al., 2016](https://arxiv.org/abs/1603.09382)
    """

    def __init__(self, survival_prob, seed=None, **kwargs):
        super().__init__(**kwargs)
        _check_number("survival_prob", survival_prob, "in (0, 1]", lambda v: 0 < v <= 1)
        self.survival_prob = float(survival_prob)
        self.seed = seed
        self.seed_generator = keras.random.SeedGenerator(seed)
        self.supports_masking = True

    def call(self, inputs, training=False):
        if not training or self.survival_prob == 1.0:
            return inputs
        shape = (ops.shape(inputs)[0],) + (1,) * (len(inputs.shape) - 1)
        noise = keras.random.uniform(shape, seed=self.seed_generator, dtype="float32")
        mask = ops.cast(ops.floor(self.survival_prob + noise), inputs.dtype)
        return inputs / ops.cast(self.survival_prob, inputs.dtype) * mask

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        config = super().get_config()
        config.update({"survival_prob": self.survival_prob, "seed": self.seed})
        return config


EFFICIENTNET_INIT = layers.InitScheme(
    conv=lambda: keras.initializers.VarianceScaling(2.0, "fan_out", "untruncated_normal"),
    # U(-1/sqrt(num_classes), 1/sqrt(num_classes)), upstream `dense_kernel_initializer`.
    dense_kernel=lambda: keras.initializers.VarianceScaling(1.0 / 3.0, "fan_out", "uniform"),
    dense_bias=lambda fan_in: keras.initializers.Zeros(),
)


def _conv(x, filters, kernel_size, args, *, strides=1, name):
    """Bias-free conv, TF SAME padding (also when strided, as upstream)."""
    return keras.layers.Conv2D(
        filters,
        kernel_size,
        strides=strides,
        padding="same",
        use_bias=False,
        data_format=args.data_format,
        kernel_initializer=args.init.conv(),
        name=name,
    )(x)


def apply_mbconv_block(x, block, survival_prob, args, *, name):
    """One MBConv block; `block` is a `Stage` with `repeats` ignored."""
    input_filters = x.shape[args.channel_axis]
    inputs = x
    expanded = input_filters * block.expand_ratio
    if block.expand_ratio != 1:
        x = _conv(x, expanded, 1, args, name=f"{name}_expand_conv")
        x = layers.batch_norm(x, args, name=f"{name}_expand_bn")
        x = layers.act(x, args, name=f"{name}_expand_act")
    x = keras.layers.DepthwiseConv2D(
        block.kernel_size,
        strides=block.strides,
        padding="same",
        use_bias=False,
        data_format=args.data_format,
        depthwise_initializer=args.init.conv(),
        name=f"{name}_dwconv",
    )(x)
    x = layers.batch_norm(x, args, name=f"{name}_dwconv_bn")
    x = layers.act(x, args, name=f"{name}_dwconv_act")

    reduced = max(1, int(input_filters * SE_RATIO))  # block *input* filters
    se = keras.layers.GlobalAveragePooling2D(data_format=args.data_format, keepdims=True, name=f"{name}_se_squeeze")(x)
    se = keras.layers.Conv2D(
        reduced,
        1,
        padding="same",
        data_format=args.data_format,
        kernel_initializer=args.init.conv(),
        name=f"{name}_se_reduce",
    )(se)
    se = layers.act(se, args, name=f"{name}_se_act")
    se = keras.layers.Conv2D(
        expanded,
        1,
        padding="same",
        activation="sigmoid",
        data_format=args.data_format,
        kernel_initializer=args.init.conv(),
        name=f"{name}_se_expand",
    )(se)
    x = keras.layers.Multiply(name=f"{name}_se_excite")([x, se])

    x = _conv(x, block.output_filters, 1, args, name=f"{name}_project_conv")
    x = layers.batch_norm(x, args, name=f"{name}_project_bn")
    if block.strides == 1 and input_filters == block.output_filters:
        x = DropConnect(survival_prob, name=f"{name}_drop")(x)
        x = keras.layers.Add(name=f"{name}_add")([x, inputs])
    return x


def _variant_name(width_coefficient, depth_coefficient):
    for name, (w, d, _, _) in EFFICIENTNET_PARAMS.items():
        if (w, d) == (width_coefficient, depth_coefficient):
            return name
    return "efficientnet"


@keras.saving.register_keras_serializable(package="sat_tf")
class EfficientNet(layers.ImageClassifier):
    """EfficientNet with MBConv + squeeze-and-excitation blocks.

    The model takes float32 pixels in [0, 1], NHWC, of any spatial size, and
    returns logits (float32 also under a mixed precision policy).

    Example:
    >>> model = EfficientNet(width_coefficient=1.0, depth_coefficient=1.0)  # B0
    >>> model = build_model("efficientnet_b0", input_shape=(64, 64, 3), num_classes=10)

    Args:
        width_coefficient: float, filter multiplier. Defaults to `1.0`.
        depth_coefficient: float, repeats multiplier. Defaults to `1.0`.
        dropout_rate: float in [0, 1), dropout before the dense layer.
            Defaults to `0.2`.
        survival_prob: float in (0, 1], drop-connect survival of the last
            block (block `i` of `N`: `1 - (1 - survival_prob) * i / N`).
            Defaults to `0.8`.
        depth_divisor: int, filters are rounded to multiples of it. Defaults
            to `8`.
        num_classes: int. Defaults to `1000`.
        input_shape: `(height, width, channels)`. Defaults to `(224, 224, 3)`.
        activation: an `activations.get_activation` identifier used at every
            site where the reference has SiLU (stem, expand, depthwise, SE
            reduce, head); the SE gate stays sigmoid. Defaults to `"silu"`.
        preprocessing: see `layers.preprocessing_stats`. Defaults to `"sat"`
            (`x * 2 - 1`).
        data_format: `"channels_last"` or `"channels_first"` (the input is
            still NHWC and is transposed after preprocessing). Defaults to
            `"channels_last"`.
        bn_momentum: float. Defaults to `0.9`, the value of the SAT
            checkpoints (the upstream builder's default is 0.99).
        bn_epsilon: float. Defaults to `1e-5`, the value of the SAT
            checkpoints (the upstream builder's default is 1e-3).
        name: str. Defaults to the variant's name (e.g. `"efficientnet_b0"`)
            if the coefficients match one, else `"efficientnet"`.
        **kwargs: Base model keyword arguments, such as `trainable`.

    Reference:
    - [Tan and Le, 2019](https://arxiv.org/abs/1905.11946)
    - [Xie et al., 2020 (SAT)](https://arxiv.org/abs/2006.14536)
    """

    def __init__(
        self,
        width_coefficient=1.0,
        depth_coefficient=1.0,
        dropout_rate=0.2,
        survival_prob=0.8,
        depth_divisor=8,
        num_classes=1000,
        input_shape=(224, 224, 3),
        activation="silu",
        preprocessing="sat",
        data_format="channels_last",
        bn_momentum=0.9,
        bn_epsilon=1e-5,
        name=None,
        **kwargs,
    ):
        _check_number("width_coefficient", width_coefficient, "> 0", lambda v: v > 0)
        _check_number("depth_coefficient", depth_coefficient, "> 0", lambda v: v > 0)
        _check_number("dropout_rate", dropout_rate, "in [0, 1)", lambda v: 0 <= v < 1)
        _check_number("survival_prob", survival_prob, "in (0, 1]", lambda v: 0 < v <= 1)
        if not isinstance(depth_divisor, int) or isinstance(depth_divisor, bool) or depth_divisor < 1:
            raise ValueError(f"`depth_divisor` must be an int >= 1. Received: depth_divisor={depth_divisor!r}")
        common = layers.common_kwargs(
            num_classes=num_classes,
            input_shape=input_shape,
            activation=activation,
            preprocessing=preprocessing,
            data_format=data_format,
            bn_momentum=bn_momentum,
            bn_epsilon=bn_epsilon,
        )
        if name is None:
            name = _variant_name(width_coefficient, depth_coefficient)
        args = layers.BlockArgs(
            activation=common["activation"],
            data_format=data_format,
            bn_momentum=bn_momentum,
            bn_epsilon=bn_epsilon,
            init=EFFICIENTNET_INIT,
        )
        table = stage_table(width_coefficient, depth_coefficient, depth_divisor)
        survival = survival_schedule(survival_prob, table.num_blocks)

        # === Functional Model ===
        inputs, x = layers.image_input(input_shape, preprocessing, data_format)
        x = _conv(x, table.stem_filters, 3, args, strides=2, name="stem_conv")
        x = layers.batch_norm(x, args, name="stem_bn")
        x = layers.act(x, args, name="stem_act")
        i = 0
        for stage in table.stages:
            for r in range(stage.repeats):
                block = stage if r == 0 else stage._replace(strides=1, input_filters=stage.output_filters)
                x = apply_mbconv_block(x, block, survival[i], args, name=f"block{i}")
                i += 1
        x = _conv(x, table.head_filters, 1, args, name="head_conv")
        x = layers.batch_norm(x, args, name="head_bn")
        x = layers.act(x, args, name="head_act")
        x = keras.layers.GlobalAveragePooling2D(data_format=data_format, name="gap")(x)
        x = keras.layers.Dropout(dropout_rate, name="dropout")(x)
        outputs = keras.layers.Dense(
            num_classes,
            kernel_initializer=args.init.dense_kernel(),
            bias_initializer=args.init.dense_bias(x.shape[-1]),
            dtype="float32",
            name="head_dense",
        )(x)
        super().__init__(inputs, outputs, name=name, **common, **kwargs)

        # === Config ===
        self.width_coefficient = width_coefficient
        self.depth_coefficient = depth_coefficient
        self.dropout_rate = dropout_rate
        self.survival_prob = survival_prob
        self.depth_divisor = depth_divisor

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "width_coefficient": self.width_coefficient,
                "depth_coefficient": self.depth_coefficient,
                "dropout_rate": self.dropout_rate,
                "survival_prob": self.survival_prob,
                "depth_divisor": self.depth_divisor,
            }
        )
        return config


def _create(variant, kwargs):
    width, depth, resolution, dropout = EFFICIENTNET_PARAMS[variant]
    model_args = {
        "width_coefficient": width,
        "depth_coefficient": depth,
        "dropout_rate": dropout,
        "input_shape": (resolution, resolution, 3),
        "name": variant,
    }
    return EfficientNet(**{**model_args, **kwargs})


@register_model
def efficientnet_b0(**kwargs):
    return _create("efficientnet_b0", kwargs)


@register_model
def efficientnet_b1(**kwargs):
    return _create("efficientnet_b1", kwargs)


@register_model
def efficientnet_b2(**kwargs):
    return _create("efficientnet_b2", kwargs)


@register_model
def efficientnet_b3(**kwargs):
    return _create("efficientnet_b3", kwargs)


@register_model
def efficientnet_b4(**kwargs):
    return _create("efficientnet_b4", kwargs)


@register_model
def efficientnet_b5(**kwargs):
    return _create("efficientnet_b5", kwargs)


@register_model
def efficientnet_b6(**kwargs):
    return _create("efficientnet_b6", kwargs)


@register_model
def efficientnet_b7(**kwargs):
    return _create("efficientnet_b7", kwargs)


@register_model
def efficientnet_b8(**kwargs):
    return _create("efficientnet_b8", kwargs)


@register_model
def efficientnet_l1(**kwargs):
    """SAT's `efficientnet-bL1` (width 3.9, depth 3.7, 600 px, dropout 0.5)."""
    return _create("efficientnet_l1", kwargs)


@register_model
def efficientnet_l2(**kwargs):
    return _create("efficientnet_l2", kwargs)
