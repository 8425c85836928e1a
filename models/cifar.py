"""CIFAR-scale networks used by the adversarial-robustness baselines.

- `CifarResNet`: post-activation BasicBlock ResNets with a 3x3 stem and no
  max-pool; `resnet18_cifar` (Kuang Liu's pytorch-cifar ResNet18, used by
  AWP / Rice et al.) and `resnet110` (Cohen / SmoothAdv `cifar_resnet110`).
- `PreActResNet`: `preact_resnet18` (RAT / TRADES `models/preact_resnet.py`).
- `WideResNet`: `wide_resnet34_10`, `wide_resnet28_10` (TRADES / RAT / AWP
  `models/wideresnet.py`).

Layer names are the PyTorch module paths with `.` -> `_`
(`layer1.0.conv1` -> `layer1_0_conv1`, `block1.layer.0.convShortcut` ->
`block1_layer_0_convShortcut`), so porting a state dict is a rename plus
OIHW -> HWIO transposes. For Cohen's checkpoints map `downsample` ->
`shortcut` and `fc` -> `linear`. Activation layers (inline `F.relu` in
PyTorch) are named `..._act1`, `..._act2`, `..._act`.

PyTorch's padding=1 3x3 convs are `same` at stride 1 and fixed pad 1/1 +
`valid` at stride 2 (`layers.conv`); PyTorch BN momentum 0.1 is Keras 0.9.
The references' `AvgPool2d(4)` / `AvgPool2d(8)` / `avg_pool2d(out, 8)` on the
last feature map are global average pools at 32x32 input, so any input size
works here.
"""

import keras

from sat_tf.models import layers, register_model

# depth -> (filters per stage, blocks per stage). 18/34: pytorch-cifar's
# 4-stage nets; 6n+2: He et al.'s 3-stage CIFAR nets (bearpaw, Cohen).
CIFAR_RESNET_DEPTHS = {
    18: ((64, 128, 256, 512), (2, 2, 2, 2)),
    34: ((64, 128, 256, 512), (3, 4, 6, 3)),
    20: ((16, 32, 64), (3, 3, 3)),
    32: ((16, 32, 64), (5, 5, 5)),
    44: ((16, 32, 64), (7, 7, 7)),
    56: ((16, 32, 64), (9, 9, 9)),
    110: ((16, 32, 64), (18, 18, 18)),
}
PREACT_RESNET_DEPTHS = {18: (2, 2, 2, 2), 34: (3, 4, 6, 3)}
STAGE_STRIDES = (1, 2, 2, 2)


def _check_depth(depth, table):
    if depth not in table:
        raise ValueError(f"`depth` must be one of {sorted(table)}. Received: depth={depth!r}")


# === Post-activation ResNet (3x3 stem) ===


def apply_cifar_basic_block(x, filters, strides, args, *, name):
    """conv3x3(stride)-BN-act, conv3x3-BN, + shortcut, act."""
    shortcut = x
    if x.shape[args.channel_axis] != filters or strides != 1:
        shortcut = layers.conv(x, filters, 1, args, strides=strides, name=f"{name}_shortcut_0")
        shortcut = layers.batch_norm(shortcut, args, name=f"{name}_shortcut_1")
    x = layers.conv(x, filters, 3, args, strides=strides, name=f"{name}_conv1")
    x = layers.batch_norm(x, args, name=f"{name}_bn1")
    x = layers.act(x, args, name=f"{name}_act1")
    x = layers.conv(x, filters, 3, args, name=f"{name}_conv2")
    x = layers.batch_norm(x, args, name=f"{name}_bn2")
    x = keras.layers.Add(name=f"{name}_add")([x, shortcut])
    return layers.act(x, args, name=f"{name}_act")


@keras.saving.register_keras_serializable(package="sat_tf")
class CifarResNet(layers.ImageClassifier):
    """Post-activation ResNet for 32x32 inputs: 3x3 stem, no max-pool.

    conv3x3-BN-act stem with `filters[0]` channels, BasicBlock stages with
    strides 1/2/2(/2), global average pool, `linear`. Projection shortcut
    (1x1 conv + BN) when the shape changes.

    Args:
        depth: int, a key of `CIFAR_RESNET_DEPTHS`: 18/34 (64..512, as
            pytorch-cifar) or 20/32/44/56/110 (16/32/64, He et al.).
            Defaults to `18`.
        init_scheme: a key of `layers.INIT_SCHEMES`. Defaults to `"torch"`
            (PyTorch default init, as pytorch-cifar); `resnet110` uses
            `"cohen"`.
        num_classes, input_shape, activation, preprocessing, data_format,
        bn_momentum, bn_epsilon, name: as `resnet.ResNet`. Defaults: 10,
            `(32, 32, 3)`, `"relu"`, None, `"channels_last"`, 0.9, 1e-5.
        **kwargs: Base model keyword arguments.

    Reference:
    - [He et al., 2016](https://arxiv.org/abs/1512.03385)
    - [Cohen et al., 2019](https://arxiv.org/abs/1902.02918) (ResNet-110)
    """

    def __init__(
        self,
        depth=18,
        init_scheme="torch",
        num_classes=10,
        input_shape=(32, 32, 3),
        activation="relu",
        preprocessing=None,
        data_format="channels_last",
        bn_momentum=0.9,
        bn_epsilon=1e-5,
        name=None,
        **kwargs,
    ):
        _check_depth(depth, CIFAR_RESNET_DEPTHS)
        common = layers.common_kwargs(
            num_classes=num_classes,
            input_shape=input_shape,
            activation=activation,
            preprocessing=preprocessing,
            data_format=data_format,
            bn_momentum=bn_momentum,
            bn_epsilon=bn_epsilon,
        )
        args = layers.block_args(common, init_scheme)
        stage_filters, stage_blocks = CIFAR_RESNET_DEPTHS[depth]

        # === Functional Model ===
        inputs, x = layers.image_input(input_shape, preprocessing, data_format)
        x = layers.conv(x, stage_filters[0], 3, args, name="conv1")
        x = layers.batch_norm(x, args, name="bn1")
        x = layers.act(x, args, name="act1")
        for s, (filters, blocks) in enumerate(zip(stage_filters, stage_blocks)):
            for b in range(blocks):
                strides = STAGE_STRIDES[s] if b == 0 else 1
                x = apply_cifar_basic_block(x, filters, strides, args, name=f"layer{s + 1}_{b}")
        outputs = layers.classifier_head(x, num_classes, args, name="linear")
        super().__init__(inputs, outputs, name=name or f"cifar_resnet{depth}", **common, **kwargs)

        # === Config ===
        self.depth = depth
        self.init_scheme = init_scheme

    def get_config(self):
        config = super().get_config()
        config.update({"depth": self.depth, "init_scheme": self.init_scheme})
        return config


# === Pre-activation ResNet ===


def apply_preact_block(x, filters, strides, args, *, name):
    """BN-act, (1x1 shortcut on the activated input), conv3x3(stride),
    BN-act, conv3x3, + shortcut. No activation after the add."""
    needs_projection = x.shape[args.channel_axis] != filters or strides != 1
    out = layers.batch_norm(x, args, name=f"{name}_bn1")
    out = layers.act(out, args, name=f"{name}_act1")
    shortcut = x
    if needs_projection:
        shortcut = layers.conv(out, filters, 1, args, strides=strides, name=f"{name}_shortcut_0")
    out = layers.conv(out, filters, 3, args, strides=strides, name=f"{name}_conv1")
    out = layers.batch_norm(out, args, name=f"{name}_bn2")
    out = layers.act(out, args, name=f"{name}_act2")
    out = layers.conv(out, filters, 3, args, name=f"{name}_conv2")
    return keras.layers.Add(name=f"{name}_add")([out, shortcut])


@keras.saving.register_keras_serializable(package="sat_tf")
class PreActResNet(layers.ImageClassifier):
    """Pre-activation ResNet (RAT / TRADES `PreActResNet18`).

    conv3x3(64) stem, PreActBlock stages 64/128/256/512 (strides 1/2/2/2),
    final BN-act, global average pool, `linear`. PyTorch default init.

    Args:
        depth: int, 18 or 34. Defaults to `18`.
        init_scheme: a key of `layers.INIT_SCHEMES`. Defaults to `"torch"`.
        num_classes, input_shape, activation, preprocessing, data_format,
        bn_momentum, bn_epsilon, name: as `CifarResNet` (RAT feeds raw [0, 1]
            pixels, so `preprocessing` defaults to None).
        **kwargs: Base model keyword arguments.

    Reference:
    - [He et al., 2016b](https://arxiv.org/abs/1603.05027)
    - [Jin et al., 2023 (RAT)](https://arxiv.org/abs/2303.07286)
    """

    def __init__(
        self,
        depth=18,
        init_scheme="torch",
        num_classes=10,
        input_shape=(32, 32, 3),
        activation="relu",
        preprocessing=None,
        data_format="channels_last",
        bn_momentum=0.9,
        bn_epsilon=1e-5,
        name=None,
        **kwargs,
    ):
        _check_depth(depth, PREACT_RESNET_DEPTHS)
        common = layers.common_kwargs(
            num_classes=num_classes,
            input_shape=input_shape,
            activation=activation,
            preprocessing=preprocessing,
            data_format=data_format,
            bn_momentum=bn_momentum,
            bn_epsilon=bn_epsilon,
        )
        args = layers.block_args(common, init_scheme)

        # === Functional Model ===
        inputs, x = layers.image_input(input_shape, preprocessing, data_format)
        x = layers.conv(x, 64, 3, args, name="conv1")
        for s, blocks in enumerate(PREACT_RESNET_DEPTHS[depth]):
            for b in range(blocks):
                strides = STAGE_STRIDES[s] if b == 0 else 1
                x = apply_preact_block(x, 64 * 2**s, strides, args, name=f"layer{s + 1}_{b}")
        x = layers.batch_norm(x, args, name="bn")
        x = layers.act(x, args, name="act")
        outputs = layers.classifier_head(x, num_classes, args, name="linear")
        super().__init__(inputs, outputs, name=name or f"preact_resnet{depth}", **common, **kwargs)

        # === Config ===
        self.depth = depth
        self.init_scheme = init_scheme

    def get_config(self):
        config = super().get_config()
        config.update({"depth": self.depth, "init_scheme": self.init_scheme})
        return config


# === Wide ResNet ===


def apply_wide_block(x, filters, strides, args, *, name):
    """TRADES WRN BasicBlock (dropRate 0): BN-act, conv3x3(stride), BN-act,
    conv3x3, + shortcut. If the shape changes, the shortcut is a 1x1
    `convShortcut` of the *activated* input; else the raw input."""
    equal_in_out = x.shape[args.channel_axis] == filters and strides == 1
    out = layers.batch_norm(x, args, name=f"{name}_bn1")
    out = layers.act(out, args, name=f"{name}_act1")
    if equal_in_out:
        shortcut = x
    else:
        shortcut = layers.conv(out, filters, 1, args, strides=strides, name=f"{name}_convShortcut")
    out = layers.conv(out, filters, 3, args, strides=strides, name=f"{name}_conv1")
    out = layers.batch_norm(out, args, name=f"{name}_bn2")
    out = layers.act(out, args, name=f"{name}_act2")
    out = layers.conv(out, filters, 3, args, name=f"{name}_conv2")
    return keras.layers.Add(name=f"{name}_add")([shortcut, out])


@keras.saving.register_keras_serializable(package="sat_tf")
class WideResNet(layers.ImageClassifier):
    """Wide ResNet, TRADES / RAT / AWP layout.

    conv3x3(16) stem; three stages of `(depth - 4) / 6` pre-activation blocks
    with 16k/32k/64k channels (k = `widen_factor`) and strides 1/2/2; final
    BN-act, global average pool, `fc`. Conv init N(0, sqrt(2/(k*k*out))), fc
    bias 0. TRADES also builds an unused `sub_block1`; it has no effect on
    the outputs and is not built here (46,160,474 parameters for 34-10).

    Args:
        depth: int, 6n + 4. Defaults to `34`.
        widen_factor: int. Defaults to `10`.
        init_scheme: a key of `layers.INIT_SCHEMES`. Defaults to `"trades"`.
        num_classes, input_shape, activation, preprocessing, data_format,
        bn_momentum, bn_epsilon, name: as `CifarResNet` (`preprocessing`
            defaults to None: TRADES/RAT feed raw [0, 1] pixels).
        **kwargs: Base model keyword arguments.

    Reference:
    - [Zagoruyko and Komodakis, 2016](https://arxiv.org/abs/1605.07146)
    - [Zhang et al., 2019 (TRADES)](https://arxiv.org/abs/1901.08573)
    """

    def __init__(
        self,
        depth=34,
        widen_factor=10,
        init_scheme="trades",
        num_classes=10,
        input_shape=(32, 32, 3),
        activation="relu",
        preprocessing=None,
        data_format="channels_last",
        bn_momentum=0.9,
        bn_epsilon=1e-5,
        name=None,
        **kwargs,
    ):
        if not isinstance(depth, int) or depth < 10 or (depth - 4) % 6:
            raise ValueError(f"`depth` must be 6n + 4 with n >= 1. Received: depth={depth!r}")
        if not isinstance(widen_factor, int) or widen_factor < 1:
            raise ValueError(f"`widen_factor` must be an int >= 1. Received: widen_factor={widen_factor!r}")
        common = layers.common_kwargs(
            num_classes=num_classes,
            input_shape=input_shape,
            activation=activation,
            preprocessing=preprocessing,
            data_format=data_format,
            bn_momentum=bn_momentum,
            bn_epsilon=bn_epsilon,
        )
        args = layers.block_args(common, init_scheme)
        blocks = (depth - 4) // 6

        # === Functional Model ===
        inputs, x = layers.image_input(input_shape, preprocessing, data_format)
        x = layers.conv(x, 16, 3, args, name="conv1")
        for s, filters in enumerate((16 * widen_factor, 32 * widen_factor, 64 * widen_factor)):
            for b in range(blocks):
                strides = STAGE_STRIDES[s] if b == 0 else 1
                x = apply_wide_block(x, filters, strides, args, name=f"block{s + 1}_layer_{b}")
        x = layers.batch_norm(x, args, name="bn1")
        x = layers.act(x, args, name="act")
        outputs = layers.classifier_head(x, num_classes, args, name="fc")
        super().__init__(inputs, outputs, name=name or f"wide_resnet{depth}_{widen_factor}", **common, **kwargs)

        # === Config ===
        self.depth = depth
        self.widen_factor = widen_factor
        self.init_scheme = init_scheme

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "depth": self.depth,
                "widen_factor": self.widen_factor,
                "init_scheme": self.init_scheme,
            }
        )
        return config


# === Entry points ===


@register_model
def resnet18_cifar(**kwargs):
    return CifarResNet(**{"depth": 18, "name": "resnet18_cifar", **kwargs})


@register_model
def resnet110(**kwargs):
    # Cohen/SmoothAdv: NormalizeLayer with CIFAR statistics (their HEAD; many
    # released SmoothAdv checkpoints need preprocessing="cifar_center").
    model_args = {"depth": 110, "init_scheme": "cohen", "preprocessing": "cifar"}
    return CifarResNet(**{**model_args, "name": "resnet110", **kwargs})


@register_model
def preact_resnet18(**kwargs):
    return PreActResNet(**{"depth": 18, "name": "preact_resnet18", **kwargs})


@register_model
def wide_resnet34_10(**kwargs):
    model_args = {"depth": 34, "widen_factor": 10}
    return WideResNet(**{**model_args, "name": "wide_resnet34_10", **kwargs})


@register_model
def wide_resnet28_10(**kwargs):
    model_args = {"depth": 28, "widen_factor": 10}
    return WideResNet(**{**model_args, "name": "wide_resnet28_10", **kwargs})
