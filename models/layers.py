"""Model building blocks shared by every `sat_tf.models` architecture.

- `Normalize`: the preprocessing layer that sits *inside* each model, so the
  model input is always float32 pixels in [0, 1], NHWC (attacks, certification
  and the exported SavedModel all see [0, 1] pixels).
- `PREPROCESSING` / `get_preprocessing`: named preprocessing choices.
- `BatchNormalization`: Keras' layer, computed by TensorFlow's fused kernel
  (~11 % off a ResNet-18 CIFAR training step on CPU; BENCHMARKS.md).
- `INIT_SCHEMES`: weight initialisation as in each reference implementation.
- `BlockArgs` plus `conv`, `batch_norm`, `act`, `image_input` and
  `classifier_head`: plain functions that add named layers to a functional
  graph, so every weight path is stable (`group0_block0_conv1/kernel`).
- `ImageClassifier` / `canonical_activation`: the config plumbing shared by
  the model classes (their `get_config` holds the builder kwargs, with the
  activation as a string or a serialized dict, never a Layer object).
"""

import dataclasses
import math

import keras
from keras import ops

from sat_tf import activations
from sat_tf.activations import fused

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# CIFAR-10 statistics as used by SmoothAdv / Cohen (`code/datasets.py`).
CIFAR_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR_STD = (0.2023, 0.1994, 0.2010)
DATA_FORMATS = ("channels_last", "channels_first")


# === Preprocessing ===


def _as_floats(name, value):
    values = list(value) if isinstance(value, (list, tuple)) else [value]
    if not values or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
        raise ValueError(f"`{name}` must be a number or a non-empty sequence of numbers. Received: {name}={value!r}")
    values = [float(v) for v in values]
    return values[0] if len(values) == 1 else values


@keras.saving.register_keras_serializable(package="sat_tf")
class Normalize(keras.layers.Layer):
    """Per-channel `(x - mean) / std`, applied inside the model.

    With `mean=0.5, std=0.5` this is SAT's `x * 2 - 1` on [0, 1] input
    (bit-exact: scaling by a power of two commutes with rounding). With
    `std=1` it is SmoothAdv's `InputCenterLayer` (mean subtraction only).

    Formula: `f(x) = (x - mean) / std`, broadcast along `axis`.

    Example:
    >>> Normalize(mean=0.5, std=0.5)(np.array([[0.0, 1.0]]))  # [[-1., 1.]]

    Args:
        mean: float or per-channel sequence of floats. Defaults to `0.0`.
        std: float or per-channel sequence of floats, all > 0. Defaults to
            `1.0`.
        axis: int, the channel axis. Defaults to `-1`.
        **kwargs: Base layer keyword arguments, such as `name` and `dtype`.

    Reference:
    - [Xie et al., 2020](https://arxiv.org/abs/2006.14536) (`x * 2 - 1`)
    - [Salman et al., 2019](https://arxiv.org/abs/1906.04584) (centering)
    """

    def __init__(self, mean=0.0, std=1.0, axis=-1, **kwargs):
        super().__init__(**kwargs)
        self.mean = _as_floats("mean", mean)
        self.std = _as_floats("std", std)
        stds = self.std if isinstance(self.std, list) else [self.std]
        if min(stds) <= 0:
            raise ValueError(f"`std` must be > 0. Received: std={std!r}")
        if not isinstance(axis, int) or isinstance(axis, bool):
            raise ValueError(f"`axis` must be an int. Received: axis={axis!r}")
        self.axis = axis
        self.supports_masking = True

    def build(self, input_shape):
        channels = input_shape[self.axis]
        for key in ("mean", "std"):
            value = getattr(self, key)
            if isinstance(value, list) and channels is not None:
                if len(value) != channels:
                    raise ValueError(
                        f"`{key}` has {len(value)} entries but the input has "
                        f"{channels} channels. Received: {key}={value}"
                    )
        self._rank = len(input_shape)

    def _broadcast(self, value, dtype):
        value = ops.convert_to_tensor(value, dtype=dtype)
        if ops.ndim(value) == 0:
            return value
        shape = [1] * self._rank
        shape[self.axis] = -1
        return ops.reshape(value, shape)

    def call(self, inputs):
        mean = self._broadcast(self.mean, inputs.dtype)
        std = self._broadcast(self.std, inputs.dtype)
        return (inputs - mean) / std

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        config = super().get_config()
        config.update({"mean": self.mean, "std": self.std, "axis": self.axis})
        return config


PREPROCESSING = {
    "sat": {"mean": 0.5, "std": 0.5},  # x * 2 - 1 (SAT, ResNet/adv_model.py)
    "imagenet": {"mean": IMAGENET_MEAN, "std": IMAGENET_STD},
    "cifar": {"mean": CIFAR_MEAN, "std": CIFAR_STD},
    # SmoothAdv `InputCenterLayer`: mean subtraction only.
    "imagenet_center": {"mean": IMAGENET_MEAN, "std": 1.0},
    "cifar_center": {"mean": CIFAR_MEAN, "std": 1.0},
}


def preprocessing_stats(spec):
    """Resolves a preprocessing choice to `{"mean": ..., "std": ...}` or None.

    Args:
        spec: None or `"none"` (identity: the net sees [0, 1] pixels); a name
            in `PREPROCESSING` (`"sat"`, `"imagenet"`, `"cifar"`,
            `"imagenet_center"`, `"cifar_center"`); a dict with `"mean"` and
            optional `"std"` (default 1); or a `(mean, std)` pair.
    """
    if spec is None or (isinstance(spec, str) and spec.lower() == "none"):
        return None
    if isinstance(spec, str):
        if spec.lower() not in PREPROCESSING:
            raise ValueError(
                f"Unknown preprocessing {spec!r}. Known: "
                f"{sorted(PREPROCESSING) + ['none']}, a dict with 'mean' and "
                f"'std', or a (mean, std) pair."
            )
        stats = PREPROCESSING[spec.lower()]
    elif isinstance(spec, dict):
        unknown = set(spec) - {"mean", "std"}
        if "mean" not in spec or unknown:
            raise ValueError(
                f"A preprocessing dict takes a 'mean' and an optional 'std'. Received: preprocessing={spec!r}"
            )
        stats = {"mean": spec["mean"], "std": spec.get("std", 1.0)}
    elif isinstance(spec, (list, tuple)) and len(spec) == 2:
        stats = {"mean": spec[0], "std": spec[1]}
    else:
        raise ValueError(
            f"`preprocessing` must be None, a name, a dict or a (mean, std) pair. Received: preprocessing={spec!r}"
        )
    return {"mean": _as_floats("mean", stats["mean"]), "std": _as_floats("std", stats["std"])}


def get_preprocessing(spec, name="preprocessing", **kwargs):
    """Returns a new `Normalize` layer for `spec`, or None for the identity.
    `kwargs` go to the layer (e.g. `dtype`)."""
    stats = preprocessing_stats(spec)
    return None if stats is None else Normalize(**stats, name=name, **kwargs)


# === Initialisation ===


def _torch_default_kernel():
    # PyTorch's default conv/linear init, kaiming_uniform(a=sqrt(5)):
    # U(-1/sqrt(fan_in), 1/sqrt(fan_in)).
    return keras.initializers.VarianceScaling(1.0 / 3.0, "fan_in", "uniform")


def _torch_default_bias(fan_in):
    bound = 1.0 / math.sqrt(fan_in)
    return keras.initializers.RandomUniform(-bound, bound)


def _zeros(fan_in):
    return keras.initializers.Zeros()


@dataclasses.dataclass(frozen=True)
class InitScheme:
    """Factories for fresh initializers (a reused unseeded Keras initializer
    instance repeats the same values), one scheme per reference code."""

    conv: object
    dense_kernel: object
    dense_bias: object  # called with the dense layer's fan_in


INIT_SCHEMES = {
    # SAT ResNet: variance scaling 2.0 fan_out (TF1 default truncated normal),
    # FC N(0, 0.01^2), zero bias.
    "sat": InitScheme(
        conv=lambda: keras.initializers.VarianceScaling(2.0, "fan_out", "truncated_normal"),
        dense_kernel=lambda: keras.initializers.RandomNormal(0.0, 0.01),
        dense_bias=_zeros,
    ),
    # Cohen/SmoothAdv cifar_resnet (bearpaw): conv N(0, sqrt(2 / (k*k*out))),
    # PyTorch-default Linear.
    "cohen": InitScheme(
        conv=lambda: keras.initializers.VarianceScaling(2.0, "fan_out", "untruncated_normal"),
        dense_kernel=_torch_default_kernel,
        dense_bias=_torch_default_bias,
    ),
    # TRADES/RAT WideResNet: as "cohen" but the fc bias is zeroed.
    "trades": InitScheme(
        conv=lambda: keras.initializers.VarianceScaling(2.0, "fan_out", "untruncated_normal"),
        dense_kernel=_torch_default_kernel,
        dense_bias=_zeros,
    ),
    # Kuang Liu's pytorch-cifar ResNet/PreActResNet (RAT, AWP, Rice et al.):
    # PyTorch defaults everywhere.
    "torch": InitScheme(
        conv=_torch_default_kernel,
        dense_kernel=_torch_default_kernel,
        dense_bias=_torch_default_bias,
    ),
}


def get_init_scheme(name):
    if name not in INIT_SCHEMES:
        raise ValueError(f"Unknown init_scheme {name!r}. Known: {sorted(INIT_SCHEMES)}")
    return INIT_SCHEMES[name]


# === Graph-building helpers ===


@dataclasses.dataclass(frozen=True)
class BlockArgs:
    """What every conv/BN/activation site of one model shares."""

    activation: object
    data_format: str = "channels_last"
    bn_momentum: float = 0.9
    bn_epsilon: float = 1e-5
    init: InitScheme = INIT_SCHEMES["sat"]
    # The activation instance `act` shares across this build's sites when its
    # class sets `SHARED = True` (Sparta). A fresh dict per BlockArgs, i.e. per
    # model build; mutable inside the frozen dataclass by design.
    shared_layers: dict = dataclasses.field(default_factory=dict, init=False, repr=False, compare=False)

    @property
    def channel_axis(self):
        return -1 if self.data_format == "channels_last" else 1


def block_args(common, init_scheme):
    """`BlockArgs` from the dict returned by `common_kwargs`."""
    return BlockArgs(
        activation=common["activation"],
        data_format=common["data_format"],
        bn_momentum=common["bn_momentum"],
        bn_epsilon=common["bn_epsilon"],
        init=get_init_scheme(init_scheme),
    )


def conv(x, filters, kernel_size, args, *, strides=1, groups=1, name):
    """Bias-free conv. Strided k>1 convs use fixed (symmetric) padding:
    `ZeroPadding2D((k-1)//2, k-1-(k-1)//2)` + `valid`, as SAT/TPU ResNets and
    PyTorch `padding=k//2`; others use `same` (k=1: no padding)."""
    padding = "same" if kernel_size > 1 else "valid"
    if strides > 1 and kernel_size > 1:
        begin = (kernel_size - 1) // 2
        end = kernel_size - 1 - begin
        x = keras.layers.ZeroPadding2D(((begin, end), (begin, end)), data_format=args.data_format, name=f"{name}_pad")(
            x
        )
        padding = "valid"
    return keras.layers.Conv2D(
        filters,
        kernel_size,
        strides=strides,
        padding=padding,
        groups=groups,
        use_bias=False,
        data_format=args.data_format,
        kernel_initializer=args.init.conv(),
        name=name,
    )(x)


@keras.saving.register_keras_serializable(package="sat_tf")
class BatchNormalization(keras.layers.BatchNormalization):
    """`keras.layers.BatchNormalization` computed by TensorFlow's fused kernel where it can be.

    Keras 3 normalises with separate moment, subtract, scale and shift ops, each a pass over the
    activations; TensorFlow's `FusedBatchNormV3` does the forward in one kernel and the backward in
    another (also under XLA). Same variables, config and semantics as the Keras layer: statistics
    in float32, moving averages updated with the *biased* batch variance (the kernel reports the
    unbiased one, so it is rescaled by (n - 1) / n). Falls back to the Keras computation when the
    kernel does not apply (another backend, not 4-D, channels not last, a mask, synchronized or
    renorm) and inside `sat_tf.activations.fused.disabled()`.
    """

    def _fusable(self, inputs, mask):
        return (
            fused.enabled()
            and mask is None
            and len(inputs.shape) == 4
            and self.axis in (-1, 3)
            and not self.synchronized
            and not self.renorm
        )

    def call(self, inputs, training=None, mask=None):
        if not self._fusable(inputs, mask):
            return super().call(inputs, training=training, mask=mask)
        import tensorflow as tf

        x = ops.cast(inputs, "float32")
        channels = x.shape[-1]
        gamma = ops.cast(self.gamma, "float32") if self.scale else tf.ones([channels])
        beta = ops.cast(self.beta, "float32") if self.center else tf.zeros([channels])
        moving_mean = ops.cast(self.moving_mean, "float32")
        moving_variance = ops.cast(self.moving_variance, "float32")
        if training and self.trainable:
            y, mean, variance, _, _, _ = tf.raw_ops.FusedBatchNormV3(
                x=x,
                scale=gamma,
                offset=beta,
                mean=tf.constant([], tf.float32),
                variance=tf.constant([], tf.float32),
                epsilon=self.epsilon,
                data_format="NHWC",
                is_training=True,
            )
            n = tf.cast(tf.size(x) // channels, tf.float32)
            variance = variance * (n - 1.0) / tf.maximum(n, 1.0)
            self.moving_mean.assign(moving_mean * self.momentum + mean * (1.0 - self.momentum))
            self.moving_variance.assign(moving_variance * self.momentum + variance * (1.0 - self.momentum))
        else:
            y = tf.raw_ops.FusedBatchNormV3(
                x=x,
                scale=gamma,
                offset=beta,
                mean=moving_mean,
                variance=moving_variance,
                epsilon=self.epsilon,
                data_format="NHWC",
                is_training=False,
            )[0]
        return ops.cast(y, self.compute_dtype)


def batch_norm(x, args, *, zero_gamma=False, name):
    return BatchNormalization(
        axis=args.channel_axis,
        momentum=args.bn_momentum,
        epsilon=args.bn_epsilon,
        gamma_initializer="zeros" if zero_gamma else "ones",
        name=name,
    )(x)


def act(x, args, *, name):
    """The activation at one site: a new layer with its own weights (e.g.
    SmoothReLU's beta_raw), named `name`.

    Exception: an activation class with `SHARED = True` (Sparta) gets ONE
    instance per model build, named by its `SHARED_NAME` and given the
    model's `data_format`, called at every site, so the network has one
    transferable parameter set. It lives in `args.shared_layers`, fresh per
    `BlockArgs`, so models never share weights, and a `.keras` reload (which
    re-runs the builder) restores the same sharing.
    """
    layer = activations.get_activation(args.activation, name=name)
    if not getattr(layer, "SHARED", False):
        return layer(x)
    if "activation" not in args.shared_layers:
        args.shared_layers["activation"] = activations.get_activation(
            args.activation, name=layer.SHARED_NAME, data_format=args.data_format
        )
    return args.shared_layers["activation"](x)


def image_input(input_shape, preprocessing, data_format):
    """`Input` of [0, 1] NHWC float32 pixels, preprocessing, then NCHW if
    asked. The preprocessing always computes in float32 (under a mixed
    precision policy the first conv casts its output)."""
    inputs = keras.Input(shape=tuple(input_shape), dtype="float32", name="images")
    x = inputs
    layer = get_preprocessing(preprocessing, dtype="float32")
    if layer is not None:
        x = layer(x)
    if data_format == "channels_first":
        x = keras.layers.Permute((3, 1, 2), name="to_channels_first")(x)
    return inputs, x


def classifier_head(x, num_classes, args, *, name):
    """Global average pooling and a dense layer of logits. The dense layer
    computes in float32, so logits (and losses, attacks) stay float32 under
    a mixed precision policy."""
    x = keras.layers.GlobalAveragePooling2D(data_format=args.data_format, name="gap")(x)
    fan_in = x.shape[-1]
    return keras.layers.Dense(
        num_classes,
        kernel_initializer=args.init.dense_kernel(),
        bias_initializer=args.init.dense_bias(fan_in),
        dtype="float32",
        name=name,
    )(x)


# === Config plumbing for the model classes ===


def canonical_activation(activation):
    """A config-safe activation identifier: the str or dict as given, else the
    serialized config of one instance (Layer classes, factories, instances)."""
    if isinstance(activation, str):
        activations.get_activation(activation)  # fail early on unknown names
        return activation
    if isinstance(activation, dict):
        return dict(activation)
    layer = activations.get_activation(activation)
    config = keras.saving.serialize_keras_object(layer)
    config["config"] = {k: v for k, v in config["config"].items() if k != "name"}
    return config


def check_common(num_classes, input_shape, data_format):
    if not isinstance(num_classes, int) or isinstance(num_classes, bool) or num_classes < 1:
        raise ValueError(f"`num_classes` must be an int >= 1. Received: num_classes={num_classes!r}")
    if len(tuple(input_shape)) != 3:
        raise ValueError(
            "`input_shape` must be (height, width, channels); inputs are always "
            f"NHWC. Received: input_shape={input_shape!r}"
        )
    if data_format not in DATA_FORMATS:
        raise ValueError(f"`data_format` must be one of {DATA_FORMATS}. Received: data_format={data_format!r}")


def common_kwargs(**kwargs):
    """Validates and canonicalises the kwargs every model class shares."""
    check_common(kwargs["num_classes"], kwargs["input_shape"], kwargs["data_format"])
    preprocessing_stats(kwargs["preprocessing"])
    kwargs["activation"] = canonical_activation(kwargs["activation"])
    return kwargs


class ImageClassifier(keras.Model):
    """Base of the model classes: a functional model whose config is its
    builder kwargs (keras-hub Backbone style), so `from_config` rebuilds the
    graph and `.keras` files hold plain strings/numbers, never Layer objects.

    Subclasses build `inputs -> outputs` in their `__init__`, call
    `super().__init__(inputs, outputs, num_classes=..., ...)`, then set their
    own config attributes and extend `get_config`.
    """

    def __init__(
        self,
        inputs,
        outputs,
        *,
        num_classes,
        input_shape,
        activation,
        preprocessing,
        data_format,
        bn_momentum,
        bn_epsilon,
        **kwargs,
    ):
        super().__init__(inputs=inputs, outputs=outputs, **kwargs)
        self.num_classes = num_classes
        self.image_shape = tuple(input_shape)  # `input_shape` is a Model property
        self.activation = activation
        self.preprocessing = preprocessing
        self.data_format = data_format
        self.bn_momentum = bn_momentum
        self.bn_epsilon = bn_epsilon

    def get_config(self):
        return {
            "num_classes": self.num_classes,
            "input_shape": list(self.image_shape),
            "activation": _plain(self.activation),
            "preprocessing": _plain(self.preprocessing),
            "data_format": self.data_format,
            "bn_momentum": self.bn_momentum,
            "bn_epsilon": self.bn_epsilon,
            "name": self.name,
            "trainable": self.trainable,
        }


def _plain(value):
    """Tracked containers -> plain lists/dicts, for JSON configs."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value
