"""ImageNet ResNet / ResNeXt with the SAT conventions.

Follows cihangxie/SmoothAdversarialTraining `ResNet/resnet_model.py` and
`ResNet/nets.py` (itself from facebookresearch/ImageNet-Adversarial-Training),
with the TPU-style fixed padding SAT adds:

- stem: fixed pad 3/3, 7x7/2 conv `valid`, BN, activation, 3x3/2 max-pool
  `same` (TF SAME: 0 before, 1 after on even sizes);
- groups `group0..group3`, 64/128/256/512 filters, strides 1/2/2/2; only the
  first block of a group is strided, and the stride sits on the 3x3 conv;
  strided 3x3 convs use fixed pad 1/1 + `valid`, others `same`;
- bottleneck `conv1` 1x1 and `conv2` 3x3 (grouped for ResNeXt) are followed by
  BN + activation, `conv3` 1x1 by BN with gamma initialised to 0; basic blocks
  (depth 18/34, torchvision layout) have `conv1` 3x3 BN-act and `conv2` 3x3
  BN (gamma 0);
- projection shortcut (1x1 conv, stride s, + BN) only when the shape changes;
  the block output is `activation(block + shortcut)`;
- no conv bias, conv init variance scaling 2.0 fan_out (truncated normal),
  BN momentum 0.9 / epsilon 1e-5, global average pool, `linear` FC with
  N(0, 0.01^2) kernel and zero bias.

Layer names mirror the tensorpack variable scopes with `/` -> `_`
(`conv0`, `conv0_bn`, `group1_block0_conv2`, `group1_block0_conv2_bn`,
`group1_block0_convshortcut`, `linear`), so porting the released SAT
checkpoints is a rename plus layout changes. Activation layers are
`conv0_act`, `groupG_blockB_conv1_act`, `..._conv2_act` and `groupG_blockB_act`
(SAT's `smoothrelu_beta` sites).
"""

import keras

from sat_tf.models import layers, register_model

# depth -> (block type, blocks per group)
RESNET_DEPTHS = {
    18: ("basic", (2, 2, 2, 2)),
    34: ("basic", (3, 4, 6, 3)),
    50: ("bottleneck", (3, 4, 6, 3)),
    101: ("bottleneck", (3, 4, 23, 3)),
    152: ("bottleneck", (3, 8, 36, 3)),
}
GROUP_FILTERS = (64, 128, 256, 512)
GROUP_STRIDES = (1, 2, 2, 2)


def _shortcut(x, out_channels, strides, args, name):
    in_channels = x.shape[args.channel_axis]
    if in_channels == out_channels and strides == 1:
        return x
    x = layers.conv(x, out_channels, 1, args, strides=strides, name=f"{name}_convshortcut")
    return layers.batch_norm(x, args, name=f"{name}_convshortcut_bn")


def apply_basic_block(x, filters, strides, args, *, name):
    """3x3 (stride) BN-act, 3x3 BN (gamma 0), add, act. Output: `filters`."""
    shortcut = _shortcut(x, filters, strides, args, name)
    x = layers.conv(x, filters, 3, args, strides=strides, name=f"{name}_conv1")
    x = layers.batch_norm(x, args, name=f"{name}_conv1_bn")
    x = layers.act(x, args, name=f"{name}_conv1_act")
    x = layers.conv(x, filters, 3, args, name=f"{name}_conv2")
    x = layers.batch_norm(x, args, zero_gamma=True, name=f"{name}_conv2_bn")
    x = keras.layers.Add(name=f"{name}_add")([x, shortcut])
    return layers.act(x, args, name=f"{name}_act")


def apply_bottleneck_block(x, filters, strides, args, *, groups, bottleneck_width, name):
    """1x1 BN-act, 3x3 (stride, grouped) BN-act, 1x1 BN (gamma 0), add, act.

    Width of the inner convs: `(filters * bottleneck_width // 64) * groups`
    (torchvision; equal to SAT's `filters * (res2_bottleneck * group // 64)`
    for ResNet, 32x4d and 32x8d). Output: `4 * filters` channels.
    """
    width = (filters * bottleneck_width // 64) * groups
    shortcut = _shortcut(x, 4 * filters, strides, args, name)
    x = layers.conv(x, width, 1, args, name=f"{name}_conv1")
    x = layers.batch_norm(x, args, name=f"{name}_conv1_bn")
    x = layers.act(x, args, name=f"{name}_conv1_act")
    x = layers.conv(x, width, 3, args, strides=strides, groups=groups, name=f"{name}_conv2")
    x = layers.batch_norm(x, args, name=f"{name}_conv2_bn")
    x = layers.act(x, args, name=f"{name}_conv2_act")
    x = layers.conv(x, 4 * filters, 1, args, name=f"{name}_conv3")
    x = layers.batch_norm(x, args, zero_gamma=True, name=f"{name}_conv3_bn")
    x = keras.layers.Add(name=f"{name}_add")([x, shortcut])
    return layers.act(x, args, name=f"{name}_act")


@keras.saving.register_keras_serializable(package="sat_tf")
class ResNet(layers.ImageClassifier):
    """ResNet / ResNeXt for ImageNet-scale inputs, SAT conventions.

    The model takes float32 pixels in [0, 1], NHWC, of any spatial size
    (224/299/380 in SAT), and returns logits.

    Example:
    >>> model = ResNet(depth=50, activation="silu")          # SAT ResNet-50
    >>> model = ResNet(depth=50, groups=32, bottleneck_width=4)  # ResNeXt-50 32x4d

    Args:
        depth: int, one of `RESNET_DEPTHS` (18, 34, 50, 101, 152). Defaults
            to `50`.
        groups: int, groups of the 3x3 bottleneck conv (ResNeXt cardinality).
            Defaults to `1`.
        bottleneck_width: int, SAT's `res2_bottleneck`: 64 is ResNet, 4 with
            32 groups is 32x4d, 8 is 32x8d. Defaults to `64`.
        num_classes: int. Defaults to `1000`.
        input_shape: `(height, width, channels)`; None sizes are allowed.
            Defaults to `(224, 224, 3)`.
        activation: an `activations.get_activation` identifier used at every
            activation site (stem, each BN-act, after each residual add).
            Defaults to `"relu"`.
        preprocessing: see `layers.preprocessing_stats`. Defaults to `"sat"`
            (`x * 2 - 1`).
        data_format: `"channels_last"` or `"channels_first"` (the input is
            still NHWC and is transposed after preprocessing, as SAT does; TF
            on CPU cannot run NCHW convs). Defaults to `"channels_last"`.
        bn_momentum: float. Defaults to `0.9`.
        bn_epsilon: float. Defaults to `1e-5`.
        name: str. Defaults to e.g. `"resnet50"` / `"resnext50_32x4d"`.
        **kwargs: Base model keyword arguments, such as `trainable`.

    Reference:
    - [He et al., 2016](https://arxiv.org/abs/1512.03385)
    - [Xie et al., 2017 (ResNeXt)](https://arxiv.org/abs/1611.05431)
    - [Xie et al., 2020 (SAT)](https://arxiv.org/abs/2006.14536)
    """

    def __init__(
        self,
        depth=50,
        groups=1,
        bottleneck_width=64,
        num_classes=1000,
        input_shape=(224, 224, 3),
        activation="relu",
        preprocessing="sat",
        data_format="channels_last",
        bn_momentum=0.9,
        bn_epsilon=1e-5,
        name=None,
        **kwargs,
    ):
        if depth not in RESNET_DEPTHS:
            raise ValueError(f"`depth` must be one of {sorted(RESNET_DEPTHS)}. Received: depth={depth!r}")
        block_type, num_blocks = RESNET_DEPTHS[depth]
        if not isinstance(groups, int) or groups < 1:
            raise ValueError(f"`groups` must be an int >= 1. Received: groups={groups!r}")
        if not isinstance(bottleneck_width, int) or bottleneck_width < 1:
            raise ValueError(f"`bottleneck_width` must be an int >= 1. Received: bottleneck_width={bottleneck_width!r}")
        if block_type == "basic" and (groups, bottleneck_width) != (1, 64):
            raise ValueError(
                f"Depth {depth} uses basic blocks, which need groups=1 and "
                f"bottleneck_width=64. Received: groups={groups}, "
                f"bottleneck_width={bottleneck_width}"
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
        if name is None:
            name = f"resnet{depth}"
            if (groups, bottleneck_width) != (1, 64):
                name = f"resnext{depth}_{groups}x{bottleneck_width}d"
        args = layers.block_args(common, "sat")

        # === Functional Model ===
        inputs, x = layers.image_input(input_shape, preprocessing, data_format)
        x = layers.conv(x, 64, 7, args, strides=2, name="conv0")
        x = layers.batch_norm(x, args, name="conv0_bn")
        x = layers.act(x, args, name="conv0_act")
        x = keras.layers.MaxPooling2D(3, 2, padding="same", data_format=data_format, name="pool0")(x)
        groups_table = zip(GROUP_FILTERS, GROUP_STRIDES, num_blocks)
        for g, (filters, stride, blocks) in enumerate(groups_table):
            for b in range(blocks):
                strides = stride if b == 0 else 1
                block_name = f"group{g}_block{b}"
                if block_type == "basic":
                    x = apply_basic_block(x, filters, strides, args, name=block_name)
                else:
                    x = apply_bottleneck_block(
                        x,
                        filters,
                        strides,
                        args,
                        groups=groups,
                        bottleneck_width=bottleneck_width,
                        name=block_name,
                    )
        outputs = layers.classifier_head(x, num_classes, args, name="linear")
        super().__init__(inputs, outputs, name=name, **common, **kwargs)

        # === Config ===
        self.depth = depth
        self.groups = groups
        self.bottleneck_width = bottleneck_width

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "depth": self.depth,
                "groups": self.groups,
                "bottleneck_width": self.bottleneck_width,
            }
        )
        return config


@register_model
def resnet18(**kwargs):
    return ResNet(**{"depth": 18, "name": "resnet18", **kwargs})


@register_model
def resnet34(**kwargs):
    return ResNet(**{"depth": 34, "name": "resnet34", **kwargs})


@register_model
def resnet50(**kwargs):
    return ResNet(**{"depth": 50, "name": "resnet50", **kwargs})


@register_model
def resnet101(**kwargs):
    return ResNet(**{"depth": 101, "name": "resnet101", **kwargs})


@register_model
def resnet152(**kwargs):
    return ResNet(**{"depth": 152, "name": "resnet152", **kwargs})


@register_model
def resnext50_32x4d(**kwargs):
    model_args = {"depth": 50, "groups": 32, "bottleneck_width": 4}
    return ResNet(**{**model_args, "name": "resnext50_32x4d", **kwargs})


@register_model
def resnext50_32x8d(**kwargs):
    model_args = {"depth": 50, "groups": 32, "bottleneck_width": 8}
    return ResNet(**{**model_args, "name": "resnext50_32x8d", **kwargs})


@register_model
def resnext101_32x8d(**kwargs):
    model_args = {"depth": 101, "groups": 32, "bottleneck_width": 8}
    return ResNet(**{**model_args, "name": "resnext101_32x8d", **kwargs})


@register_model
def resnext152_32x8d(**kwargs):
    model_args = {"depth": 152, "groups": 32, "bottleneck_width": 8}
    return ResNet(**{**model_args, "name": "resnext152_32x8d", **kwargs})
