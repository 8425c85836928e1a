"""Sparta, a spatially attentive ReLU: a documented RECONSTRUCTION.

Sparta (Guo et al., 2021, arXiv 2105.08269) has no public code, and its
formula was not available to us. The `Sparta` layer here is built to satisfy
the paper's published claims and nothing more: it extends ReLU to be
spatially attentive and input-dependent; it trains jointly with adversarial
training; and the trained activation can be frozen and transferred to another
CNN (ResNet-18 -> ResNet-34) and another dataset (CIFAR-10 -> SVHN). It is
NOT the paper's definition. Never present results obtained with it as the
paper's numbers.

Transfer, as in the paper's cross-CNN / cross-dataset experiments. Every
`sat_tf.models` builder calls ONE shared `Sparta` (layer name `"sparta"`) at
all its activation sites, so a network has one parameter set to move:

    source = models.build_model("resnet18_cifar", activation="sparta")
    ...  # adversarial training of `source`
    save_sparta("sparta.npz", source)
    target = models.cifar.CifarResNet(depth=34, activation="sparta")
    load_sparta("sparta.npz", target)  # loaded and frozen (trainable=False)
    ...  # adversarial training of `target`; its Sparta stays fixed

Freeze before building the optimizer / train function: a frozen layer's
variables leave `model.trainable_variables`. Freezing is not part of the
model config, so a target reloaded from a `.keras` file or rebuilt for a
checkpoint resume must be frozen again (e.g. `load_sparta` once more).
"""

import functools
import io
import os
from collections.abc import Mapping

import keras
import numpy as np
import tensorflow as tf
from keras import ops

from sat_tf import files
from sat_tf.checks import is_int, is_number

DATA_FORMATS = ("channels_last", "channels_first")
WEIGHT_NAMES = ("gate_weights", "gate_bias")


# === Pure function ===


def per_channel_correlation(x, kernel, data_format="channels_last"):
    """Correlates each channel of `x` alone with one `k x k` `kernel`.

    Zero `same` padding, stride 1, as a convolution layer (cross-correlation).
    channels_last uses a depthwise conv with the kernel tiled over channels;
    channels_first folds the channels into the batch and runs a 1-channel
    NHWC conv, so no transpose is needed and it runs on CPU too.
    """
    k = kernel.shape[0]
    kernel = ops.reshape(kernel, (k, k, 1, 1))
    if data_format == "channels_last":
        tiled = ops.tile(kernel, (1, 1, ops.shape(x)[-1], 1))
        return ops.depthwise_conv(x, tiled, padding="same", data_format="channels_last")
    shape = ops.shape(x)
    folded = ops.reshape(x, (-1, shape[2], shape[3], 1))
    out = ops.conv(folded, kernel, padding="same", data_format="channels_last")
    return ops.reshape(out, shape)


def sparta(x, gate_weights, gate_bias, data_format="channels_last"):
    """`x * sigmoid(K * x + b)`, `K * x` a per-channel `k x k` correlation.

    Example:
    >>> k = np.zeros((3, 3), "float32"); k[1, 1] = 1.0
    >>> sparta(np.ones((1, 4, 4, 2), "float32"), k, 0.0)  # silu(1) = 0.731...
    """
    logits = per_channel_correlation(x, gate_weights, data_format) + gate_bias
    return x * ops.sigmoid(logits)


# === Layer ===


def _centre_kernel(shape, dtype=None, *, beta):
    # Centre-only kernel: at initialisation Sparta is exactly x * sigmoid(beta x).
    kernel = np.zeros(shape, "float32")
    kernel[shape[0] // 2, shape[1] // 2] = beta
    return ops.convert_to_tensor(kernel, dtype=dtype)


@keras.saving.register_keras_serializable(package="sat_tf")
class Sparta(keras.layers.Layer):
    """Spatially attentive gated activation (a reconstruction of Sparta).

    RECONSTRUCTION, NOT THE PAPER'S DEFINITION: the paper's formula is
    unknown to us. This form meets its published claims (see the module
    docstring); its results must never be presented as the paper's numbers.

    Formula: `f(x) = x * sigmoid(K * x + b)`, where `K * x` correlates each
    channel alone with ONE trainable `k x k` kernel `K` (the same for every
    channel; zero `same` padding) and `b` is a trainable scalar. The gate at
    a pixel depends on its spatial neighbourhood in the same channel.

    Why this form rather than CBAM-style attention on
    channel-pooled maps, `relu(x) * sigmoid(conv([mean_c x; max_c x]))`:

    - It extends ReLU and Swish, the paper's named relatives, as special
      cases: a centre-only `K = beta` gives Swish `x * sigmoid(beta x + b)`
      (`beta = 1, b = 0` is SiLU, the initialisation); a large centre weight
      approaches ReLU (error at most ~0.28 / beta). `kernel_size=1` is a
      learnable pointwise Swish. The CBAM form cannot reduce to ReLU or Swish
      and gates every channel with one map.
    - Its `k * k + 1` parameters do not depend on the channel count, and no
      channel statistic (a channel max grows with width) enters, so the same
      values mean the same thing in a wider or deeper network: what the
      cross-CNN transfer needs.
    - It stays an activation: per channel, no cross-channel mixing.

    Sharing: `sat_tf.models` builders call one instance (named `"sparta"`)
    at every activation site of a network (`SHARED = True`, see
    `models.layers.act`); `get_activation("sparta")` alone returns a new
    layer, as for every activation. Weights are named `gate_weights` and
    `gate_bias` (not `kernel`), so L2 weight decay skips them, as for
    activation parameters everywhere in sat_tf. Mixed precision: the gate is
    computed in float32 (the weights are never autocast) and the output is
    cast to the input dtype. Export/load/freeze: `sparta_weights`,
    `load_sparta_weights`, `save_sparta`, `load_sparta`.

    Example:
    >>> layer = Sparta(kernel_size=3)
    >>> y = layer(np.random.rand(2, 8, 8, 16).astype("float32"))  # == silu(x)
    >>> [tuple(w.shape) for w in layer.weights]  # [(3, 3), ()] for any width

    Args:
        kernel_size: odd int >= 1, the gate's spatial window. Defaults to `3`.
        initial_beta: float > 0, the initial centre weight (Swish's beta).
            Defaults to `1.0` (SiLU, SAT's best smooth activation).
        data_format: `"channels_last"` or `"channels_first"`; None takes
            `keras.config.image_data_format()`. Defaults to `None`.
        **kwargs: Base layer keyword arguments, such as `name` and `dtype`.

    Reference: [Guo et al., 2021](https://arxiv.org/abs/2105.08269) (the
    claims only; the form is ours).
    """

    SHARED = True
    SHARED_NAME = "sparta"

    def __init__(self, kernel_size=3, initial_beta=1.0, data_format=None, **kwargs):
        super().__init__(**kwargs)
        if not is_int(kernel_size) or kernel_size < 1 or kernel_size % 2 == 0:
            raise ValueError(f"`kernel_size` must be an odd int >= 1. Received: kernel_size={kernel_size!r}")
        if not is_number(initial_beta) or initial_beta <= 0:
            raise ValueError(f"`initial_beta` must be a positive number. Received: initial_beta={initial_beta!r}")
        data_format = data_format or keras.config.image_data_format()
        if data_format not in DATA_FORMATS:
            raise ValueError(f"`data_format` must be one of {DATA_FORMATS}. Received: data_format={data_format!r}")
        self.kernel_size = kernel_size
        self.initial_beta = float(initial_beta)
        self.data_format = data_format

    def build(self, input_shape):
        if len(input_shape) != 4:
            raise ValueError(
                "Sparta is a spatial activation: it needs 4-D feature maps "
                f"(batch, H, W, C) or (batch, C, H, W). Received: input_shape={input_shape}"
            )
        k = self.kernel_size
        self.gate_weights = self.add_weight(
            shape=(k, k),
            name="gate_weights",
            initializer=functools.partial(_centre_kernel, beta=self.initial_beta),
            autocast=False,  # float32 gate under mixed precision
        )
        self.gate_bias = self.add_weight(shape=(), name="gate_bias", initializer="zeros", autocast=False)

    def call(self, inputs):
        x = ops.cast(inputs, "float32")
        y = sparta(x, self.gate_weights, self.gate_bias, self.data_format)
        return ops.cast(y, inputs.dtype)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "kernel_size": self.kernel_size,
                "initial_beta": self.initial_beta,
                "data_format": self.data_format,
            }
        )
        return config


# === Export, load, freeze ===


def sparta_layers(model):
    """The distinct `Sparta` layers of `model`, nested models included, in
    the order `model.layers` first reaches them (a shared one counts once)."""
    found, seen = [], set()

    def visit(layer):
        if id(layer) in seen:
            return
        seen.add(id(layer))
        if isinstance(layer, Sparta):
            found.append(layer)
        for child in getattr(layer, "layers", ()):
            visit(child)

    for layer in model.layers:
        visit(layer)
    return found


def _require_built_sparta(model):
    layers = sparta_layers(model)
    if not layers:
        raise ValueError(f"Model {model.name!r} has no Sparta layer; build it with activation='sparta'.")
    unbuilt = [layer.name for layer in layers if not layer.built]
    if unbuilt:
        raise ValueError(
            f"Sparta layers {unbuilt} of model {model.name!r} are not built; call the model on a batch first."
        )
    return layers


def sparta_weights(model):
    """The trained Sparta parameters of `model`, to move to another network.

    Example:
    >>> weights = sparta_weights(source)  # {"kernel_size": 3, ...}
    >>> load_sparta_weights(target, weights)  # loaded and frozen

    Returns:
        `{"kernel_size": int, "gate_weights": float32 [k, k], "gate_bias":
        float32 []}` (NumPy copies).

    Raises:
        ValueError: no Sparta, or several distinct Sparta layers (a
            `sat_tf.models` network has one; for a hand-built model export
            each with `layer.get_weights()`).
    """
    layers = _require_built_sparta(model)
    if len(layers) > 1:
        raise ValueError(
            f"Model {model.name!r} has {len(layers)} distinct Sparta layers "
            f"{[layer.name for layer in layers]}; sparta_weights exports the "
            "one shared instance that sat_tf.models builds."
        )
    layer = layers[0]
    return {
        "kernel_size": layer.kernel_size,
        "gate_weights": np.array(layer.gate_weights.numpy(), "float32"),
        "gate_bias": np.array(layer.gate_bias.numpy(), "float32"),
    }


def _checked_values(weights, kernel_size):
    if not isinstance(weights, Mapping) or not set(WEIGHT_NAMES) <= set(weights):
        keys = sorted(weights) if isinstance(weights, Mapping) else type(weights).__name__
        raise ValueError(
            f"Sparta weights must be a mapping with {list(WEIGHT_NAMES)} (from `sparta_weights`). Received: {keys}"
        )
    kernel = np.asarray(weights["gate_weights"], "float32")
    bias = np.asarray(weights["gate_bias"], "float32")
    declared = int(weights.get("kernel_size", kernel_size))
    if kernel.shape != (kernel_size, kernel_size) or declared != kernel_size:
        raise ValueError(
            f"Sparta kernel size mismatch: the target's Sparta has kernel_size="
            f"{kernel_size}, so gate_weights {(kernel_size, kernel_size)}. "
            f"Received: kernel_size={declared}, gate_weights shape {kernel.shape}"
        )
    if bias.shape != ():
        raise ValueError(f"`gate_bias` must be a scalar. Received: shape {bias.shape}")
    return kernel, bias


def load_sparta_weights(model, weights, *, freeze=True):
    """Loads Sparta parameters into every Sparta layer of `model`.

    A `sat_tf.models` network has one shared Sparta, so this sets its single
    parameter set; a hand-built model with several Sparta layers gets the
    same values in each. Do it before building the optimizer / train
    function, so that frozen weights are left out of the trained variables.

    Example:
    >>> load_sparta_weights(target, sparta_weights(source))

    Args:
        model: a built Keras model using `Sparta` (any channel counts).
        weights: the dict from `sparta_weights` (or `load_sparta`'s file).
        freeze: set `trainable=False` on the Sparta layers, so they stay
            fixed while the rest of the network trains. Defaults to `True`.

    Returns:
        The Sparta layers that were set.

    Raises:
        ValueError: the model has no (built) Sparta, or the kernel size or
            shapes do not match.
    """
    layers = _require_built_sparta(model)
    for layer in layers:
        kernel, bias = _checked_values(weights, layer.kernel_size)
        layer.gate_weights.assign(kernel)
        layer.gate_bias.assign(bias)
        if freeze:
            layer.trainable = False
    return layers


def save_sparta(path, model):
    """Writes `sparta_weights(model)` to a small `.npz` file (any
    `tf.io.gfile` path, e.g. `gs://`); appends `.npz` if missing.

    Example:
    >>> save_sparta("runs/cifar10/sparta.npz", source)

    Returns:
        The path written.
    """
    path = os.fspath(path)
    if not path.endswith(".npz"):
        path += ".npz"
    buffer = io.BytesIO()
    np.savez(buffer, **sparta_weights(model))
    files.write_bytes(path, buffer.getvalue())
    return path


def load_sparta(path, model, *, freeze=True):
    """Reads a `save_sparta` file into `model` (see `load_sparta_weights`).

    Example:
    >>> load_sparta("runs/cifar10/sparta.npz", target)  # frozen
    """
    with tf.io.gfile.GFile(os.fspath(path), "rb") as f:
        with np.load(io.BytesIO(f.read()), allow_pickle=False) as data:
            weights = {key: data[key] for key in data.files}
    return load_sparta_weights(model, weights, freeze=freeze)
