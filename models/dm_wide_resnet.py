"""DeepMind's WideResNet (Gowal et al. 2020), the network of the CIFAR-10 leaders of RobustBench.

`DMWideResNet` is RobustBench's `robustbench/model_zoo/architectures/dm_wide_resnet.py` (a port of
deepmind-research `adversarial_robustness/pytorch/model_zoo.py`) in Keras: the same layers, the same
padding, and every layer named after its PyTorch module path with `.` -> `_` (`layer.0.block.1.conv_0`
-> `layer_0_block_1_conv_0`), so `sat_tf.zoo.robustbench.convert_state_dict` maps a state dict one to one.
Wang et al. 2023 (WRN-28-10, WRN-70-16) and Bartoldson et al. 2024 (WRN-94-16) publish this same class
with `activation_fn=nn.SiLU` and the CIFAR-10 mean/std; there is no separate "WRN-94-16" architecture.

Differences from the TRADES WideResNet (`sat_tf.models.cifar.WideResNet`), all taken from the reference:
- the dataset's mean/std (DeepMind's CIFAR-10 std 0.2471/0.2435/0.2616, not SmoothAdv's 0.2023/...) is a
  layer inside the model;
- a stride-2 3x3 conv pads (0, 1) on each spatial axis (top/left 0, bottom/right 1), TensorFlow's `SAME`
  on even sizes; stride 1 pads 1 on every side;
- the projection shortcut (1x1 conv, no BN) exists when the channel count changes, and then both the
  shortcut and `conv_0` read the activated input; otherwise the residual is the raw input;
- SiLU by default.

The reference's `avg_pool2d(out, 8)` is a global average pool at 32x32 input; here it is global at any
size. BatchNorm is PyTorch's default (momentum 0.1 = Keras 0.9, eps 1e-5) as in the reference module.
"""

import keras

from sat_tf.models import layers, register_model

# DeepMind's CIFAR statistics (dm_wide_resnet.py CIFAR10_MEAN/STD, CIFAR100_MEAN/STD).
DM_CIFAR10 = {"mean": (0.4914, 0.4822, 0.4465), "std": (0.2471, 0.2435, 0.2616)}
DM_CIFAR100 = {"mean": (0.5071, 0.4865, 0.4409), "std": (0.2673, 0.2564, 0.2762)}
# (depth, width) of the published networks: Gowal et al. 2020, Rebuffi et al. 2021, Wang et al. 2023,
# Bartoldson et al. 2024. Any depth = 6n + 4 and width >= 1 builds.
DM_WIDE_RESNETS = {
    "dm_wide_resnet28_10": (28, 10),
    "dm_wide_resnet34_10": (34, 10),
    "dm_wide_resnet70_16": (70, 16),
    "dm_wide_resnet94_16": (94, 16),
}


def dm_wide_resnet_params(depth, width, num_classes=10, input_channels=3):
    """Trainable parameters of `DMWideResNet(depth, width)`, in closed form (no build).

    BatchNorm contributes gamma and beta (its moving statistics are not trainable).
    """
    blocks = (depth - 4) // 6
    channels = [16, 16 * width, 32 * width, 64 * width]
    total = 9 * input_channels * channels[0]  # init_conv
    for group in range(3):
        cin, cout = channels[group], channels[group + 1]
        for b in range(blocks):
            c = cin if b == 0 else cout
            total += 2 * c + 9 * c * cout + 2 * cout + 9 * cout * cout  # bn_0, conv_0, bn_1, conv_1
            if c != cout:
                total += c * cout  # 1x1 shortcut
    return total + 2 * channels[3] + channels[3] * num_classes + num_classes


def _pad(x, pads, args, *, name):
    return keras.layers.ZeroPadding2D(pads, data_format=args.data_format, name=name)(x)


def apply_dm_block(x, out_planes, stride, args, *, name):
    """`_Block`: BN-act, padded conv3x3(stride), BN-act, conv3x3, + shortcut (see the module docstring)."""
    has_shortcut = x.shape[args.channel_axis] != out_planes
    activated = layers.batch_norm(x, args, name=f"{name}_batchnorm_0")
    activated = layers.act(activated, args, name=f"{name}_relu_0")
    pads = ((1, 1), (1, 1)) if stride == 1 else ((0, 1), (0, 1))
    out = _pad(activated, pads, args, name=f"{name}_pad_0")
    out = keras.layers.Conv2D(
        out_planes,
        3,
        strides=stride,
        padding="valid",
        use_bias=False,
        data_format=args.data_format,
        kernel_initializer=args.init.conv(),
        name=f"{name}_conv_0",
    )(out)
    out = layers.batch_norm(out, args, name=f"{name}_batchnorm_1")
    out = layers.act(out, args, name=f"{name}_relu_1")
    out = layers.conv(out, out_planes, 3, args, name=f"{name}_conv_1")
    if has_shortcut:
        shortcut = layers.conv(activated, out_planes, 1, args, strides=stride, name=f"{name}_shortcut")
    else:
        shortcut = x
    return keras.layers.Add(name=f"{name}_add")([shortcut, out])


@keras.saving.register_keras_serializable(package="sat_tf")
class DMWideResNet(layers.ImageClassifier):
    """WideResNet of Gowal et al. 2020 as RobustBench's `DMWideResNet`.

    `init_conv` (3x3, 16), three `layer_i` groups of `(depth - 4) / 6` `_Block`s with 16w/32w/64w
    channels and strides 1/2/2, `batchnorm`, `relu` (the activation), global average pool, `logits`.
    No biases except `logits`. PyTorch default initialisation.

    Args:
        depth: int, 6n + 4 (28, 34, 70, 94, ...). Defaults to `28`.
        width: int >= 1, the widen factor. Defaults to `10`.
        padding: int >= 0, zero pixels added around the [0, 1] input before normalisation, as the
            reference's `padding` (0 in every RobustBench entry). Defaults to `0`.
        init_scheme: a key of `layers.INIT_SCHEMES`. Defaults to `"torch"`.
        num_classes, input_shape, activation, data_format, bn_momentum, bn_epsilon, name: as
            `cifar.WideResNet`. Defaults: 10, `(32, 32, 3)`, `"silu"`, `"channels_last"`, 0.9, 1e-5.
        preprocessing: as the other builders. Defaults to DeepMind's CIFAR-10 mean/std (`DM_CIFAR10`).
        **kwargs: Base model keyword arguments.

    Reference:
    - [Gowal et al., 2020](https://arxiv.org/abs/2010.03593)
    - [Wang et al., 2023](https://arxiv.org/abs/2302.04638)
    - [Bartoldson et al., 2024](https://arxiv.org/abs/2404.09349)
    """

    def __init__(
        self,
        depth=28,
        width=10,
        padding=0,
        init_scheme="torch",
        num_classes=10,
        input_shape=(32, 32, 3),
        activation="silu",
        preprocessing=None,
        data_format="channels_last",
        bn_momentum=0.9,
        bn_epsilon=1e-5,
        name=None,
        **kwargs,
    ):
        if not isinstance(depth, int) or isinstance(depth, bool) or depth < 10 or (depth - 4) % 6:
            raise ValueError(f"`depth` must be 6n + 4 with n >= 1 (28, 34, 70, 94). Received: depth={depth!r}")
        if not isinstance(width, int) or isinstance(width, bool) or width < 1:
            raise ValueError(f"`width` must be an int >= 1. Received: width={width!r}")
        if not isinstance(padding, int) or isinstance(padding, bool) or padding < 0:
            raise ValueError(f"`padding` must be an int >= 0. Received: padding={padding!r}")
        size = tuple(input_shape)[:2] if len(tuple(input_shape)) == 3 else ()
        if any(d is not None and (d + 2 * padding) % 4 for d in size):
            raise ValueError(
                "DMWideResNet needs height and width (plus 2 * padding) divisible by 4: its stride-2 "
                "convs pad (0, 1) and their 1x1 shortcuts do not, so odd sizes give mismatched "
                f"branches (as in the reference). Received: input_shape={input_shape!r}, {padding=}"
            )
        if preprocessing is None:
            preprocessing = {k: list(v) for k, v in DM_CIFAR10.items()}
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
        inputs = keras.Input(shape=tuple(input_shape), dtype="float32", name="images")
        x = inputs
        if padding:
            x = keras.layers.ZeroPadding2D(padding, name="input_pad")(x)
        normalize = layers.get_preprocessing(preprocessing, dtype="float32")
        if normalize is not None:
            x = normalize(x)
        if data_format == "channels_first":
            x = keras.layers.Permute((3, 1, 2), name="to_channels_first")(x)
        x = layers.conv(x, 16, 3, args, name="init_conv")
        for g, planes in enumerate((16 * width, 32 * width, 64 * width)):
            for b in range(blocks):
                stride = (1, 2, 2)[g] if b == 0 else 1
                x = apply_dm_block(x, planes, stride, args, name=f"layer_{g}_block_{b}")
        x = layers.batch_norm(x, args, name="batchnorm")
        x = layers.act(x, args, name="relu")
        outputs = layers.classifier_head(x, num_classes, args, name="logits")
        super().__init__(inputs, outputs, name=name or f"dm_wide_resnet{depth}_{width}", **common, **kwargs)

        # === Config ===
        self.depth = depth
        self.width = width
        self.padding = padding
        self.init_scheme = init_scheme

    def get_config(self):
        config = super().get_config()
        config.update(
            {"depth": self.depth, "width": self.width, "padding": self.padding, "init_scheme": self.init_scheme}
        )
        return config


# === Entry points ===


@register_model
def dm_wide_resnet28_10(**kwargs):
    return DMWideResNet(**{"depth": 28, "width": 10, "name": "dm_wide_resnet28_10", **kwargs})


@register_model
def dm_wide_resnet34_10(**kwargs):
    return DMWideResNet(**{"depth": 34, "width": 10, "name": "dm_wide_resnet34_10", **kwargs})


@register_model
def dm_wide_resnet70_16(**kwargs):
    return DMWideResNet(**{"depth": 70, "width": 16, "name": "dm_wide_resnet70_16", **kwargs})


@register_model
def dm_wide_resnet94_16(**kwargs):
    return DMWideResNet(**{"depth": 94, "width": 16, "name": "dm_wide_resnet94_16", **kwargs})
