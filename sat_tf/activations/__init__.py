"""Smooth activations for SAT: `keras.ops` functions, layers and a registry.

`get_activation(name, **kwargs)` returns a new layer per call site, so every
SmoothReLU site owns its `beta_raw`.

Reference: [Xie et al., 2020](https://arxiv.org/abs/2006.14536)
"""

import functools
import inspect

import keras
from keras import ops

from sat_tf.activations import fused
from sat_tf.activations.sparta import Sparta
from sat_tf.checks import is_number

RELU_SMOOTH_GRAD_MODES = ("attacker", "optimizer", "both")


# === Pure functions ===


def relu(x):
    """`max(0, x)`."""
    return ops.relu(x)


def softplus(x):
    """`log(1 + exp(x))`."""
    return ops.softplus(x)


def parametric_softplus(x, alpha):
    """`log(1 + exp(alpha * x)) / alpha`; derivative `sigmoid(alpha * x)`."""
    return ops.softplus(x * alpha) / alpha


def silu(x):
    """`x * sigmoid(x)` (Swish with beta = 1)."""
    if fused.enabled():
        return _fused_kernels()["silu"](x)
    return ops.silu(x)


def gelu(x, approximate=True):
    """`x * Phi(x)`; `approximate=True` is the SAT code's tanh form."""
    if fused.enabled():
        return _fused_kernels()["gelu_tanh" if approximate else "gelu_erf"](x)
    return ops.gelu(x, approximate=approximate)


@functools.cache
def _fused_kernels():
    """SiLU, GELU and SmoothReLU as one XLA kernel each way (`sat_tf.activations.fused`): the same formulas."""
    import math

    import tensorflow as tf

    def silu_derivative(x):
        s = tf.sigmoid(x)
        return s * (1.0 + x * (1.0 - s))

    c, k = math.sqrt(2.0 / math.pi), 0.044715

    def gelu_tanh(x):
        return 0.5 * x * (1.0 + tf.tanh(c * (x + k * x * x * x)))

    def gelu_tanh_derivative(x):
        t = tf.tanh(c * (x + k * x * x * x))
        return 0.5 * (1.0 + t) + 0.5 * x * (1.0 - t * t) * c * (1.0 + 3.0 * k * x * x)

    def gelu_erf(x):  # erfc, not 1 + erf: no cancellation in the left tail (as tf.nn.gelu)
        return 0.5 * x * tf.math.erfc(x * (-1.0 / math.sqrt(2.0)))

    def gelu_erf_derivative(x):
        return 0.5 * tf.math.erfc(x * (-1.0 / math.sqrt(2.0))) + x * tf.exp(-0.5 * x * x) * (
            1.0 / math.sqrt(2.0 * math.pi)
        )

    def smooth_relu_forward(x, beta):
        return tf.nn.relu(x - tf.math.log1p(beta * tf.abs(x)) / beta)

    def smooth_relu_backward(upstream, x, beta):
        # f = x - log1p(beta x) / beta for x > 0, else 0; the beta term is
        # summed outside XLA (tf.reduce_sum's tree reduction, in float32).
        positive, bx = x > 0, beta * x
        dx = tf.where(positive, upstream * bx / (1.0 + bx), tf.zeros_like(x))
        dbeta = tf.where(
            positive, upstream * (tf.math.log1p(bx) / (beta * beta) - x / (beta * (1.0 + bx))), tf.zeros_like(x)
        )
        return dx, tf.cast(dbeta, tf.float32)

    forward_kernel = tf.function(smooth_relu_forward, jit_compile=True, autograph=False)
    backward_kernel = tf.function(smooth_relu_backward, jit_compile=True, autograph=False)

    def smooth_relu(x, beta):
        def with_gradient(x, beta):
            def grad(upstream):
                dx, dbeta = backward_kernel(upstream, x, beta)
                return dx, tf.cast(tf.reduce_sum(dbeta), beta.dtype)

            return forward_kernel(x, beta), grad

        return tf.custom_gradient(with_gradient)(x, tf.convert_to_tensor(beta, x.dtype))

    return {
        "smooth_relu": smooth_relu,
        "silu": fused.elementwise(lambda x: x * tf.sigmoid(x), silu_derivative),
        "gelu_tanh": fused.elementwise(gelu_tanh, gelu_tanh_derivative),
        "gelu_erf": fused.elementwise(gelu_erf, gelu_erf_derivative),
    }


def elu(x, alpha=1.0):
    """`x` if `x >= 0` else `alpha * (exp(x) - 1)`; no inf in the gradient."""
    return ops.relu(x) + alpha * ops.expm1(ops.minimum(x, 0.0))


def celu(x, alpha=1.0):
    """`max(0, x) + min(0, alpha * (exp(x / alpha) - 1))`."""
    return ops.relu(x) + alpha * ops.expm1(ops.minimum(x, 0.0) / alpha)


def smooth_relu(x, beta):
    """`relu(x - log(beta * |x| + 1) / beta)`, with `log1p` for small `|x|`."""
    if fused.enabled() and len(getattr(beta, "shape", ())) == 0:
        return _fused_kernels()["smooth_relu"](x, beta)
    return ops.relu(x - ops.log1p(beta * ops.abs(x)) / beta)


def mish(x):
    """`x * tanh(softplus(x))`, computed as `x * q / (q + 2)` with `q = n (n + 2)`, `n = exp(min(x, cap))`.

    The same function (`tanh(log(1 + n)) = q / (q + 2)`; past `cap`, 20 or 5 for float16, the ratio is 1 to
    the dtype's precision) without the Softplus -> Tanh -> Mul chain: TensorFlow's oneDNN graph rewrite turns
    that chain after a BatchNorm in inference mode into a fused BatchNorm+Mish node that has no CPU kernel
    ("Fusion is not implemented: [FusedBatchNorm,Mish]"), so every Mish network failed to evaluate in a
    `tf.function` on CPU.
    """
    # Past the cap the ratio is 1 to the dtype's precision; float16's cap keeps n (n + 2) below its 65 504.
    cap = 5.0 if keras.backend.standardize_dtype(x.dtype) == "float16" else 20.0
    n = ops.exp(ops.minimum(x, cap))
    q = n * (n + 2.0)
    return x * (q / (q + 2.0))


def relu_smooth_grad(x, alpha=10.0, smooth=True):
    """`relu(x)`; backward `dy * sigmoid(alpha * x)` if `smooth`, else ReLU's.

    `smooth` is a Python bool or a boolean scalar tensor.
    """

    @ops.custom_gradient
    def _relu(x):
        def grad(*args, upstream=None):
            if upstream is None:
                (upstream,) = args
            if isinstance(smooth, bool) and smooth:
                return upstream * ops.sigmoid(x * alpha)
            step = ops.cast(ops.greater(x, 0), x.dtype)
            if isinstance(smooth, bool):
                return upstream * step
            return upstream * ops.where(smooth, ops.sigmoid(x * alpha), step)

        return ops.relu(x), grad

    return _relu(x)


# === Layers ===


def _check_positive(name, value):
    if not is_number(value) or value <= 0:
        raise ValueError(f"`{name}` must be a positive number. Received: {name}={value!r}")
    return float(value)


class _Elementwise(keras.layers.Layer):
    """Shared plumbing of the weightless activations (not registered)."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.supports_masking = True

    def compute_output_shape(self, input_shape):
        return input_shape


@keras.saving.register_keras_serializable(package="sat_tf")
class ReLU(_Elementwise):
    """Rectified linear unit, the SAT baseline.

    Formula: `f(x) = max(0, x)`

    Args:
        **kwargs: Base layer keyword arguments, such as `name` and `dtype`.

    Reference: [Nair and Hinton, 2010](https://dl.acm.org/doi/10.5555/3104322.3104425)
    """

    def call(self, inputs):
        return relu(inputs)


@keras.saving.register_keras_serializable(package="sat_tf")
class Softplus(_Elementwise):
    """Softplus.

    Formula: `f(x) = log(1 + exp(x))`

    Args:
        **kwargs: Base layer keyword arguments, such as `name` and `dtype`.

    Reference: [Xie et al., 2020](https://arxiv.org/abs/2006.14536)
    """

    def call(self, inputs):
        return softplus(inputs)


@keras.saving.register_keras_serializable(package="sat_tf")
class ParametricSoftplus(_Elementwise):
    """Parametric softplus; larger `alpha` is closer to ReLU.

    Formula: `f(x) = log(1 + exp(alpha * x)) / alpha`, so that
    `f'(x) = sigmoid(alpha * x)`.

    Args:
        alpha: float > 0. Defaults to `10.0` (the SAT paper's value).
        **kwargs: Base layer keyword arguments, such as `name` and `dtype`.

    Reference: [Xie et al., 2020](https://arxiv.org/abs/2006.14536)
    """

    def __init__(self, alpha=10.0, **kwargs):
        super().__init__(**kwargs)
        self.alpha = _check_positive("alpha", alpha)

    def call(self, inputs):
        return parametric_softplus(inputs, self.alpha)

    def get_config(self):
        return {**super().get_config(), "alpha": self.alpha}


@keras.saving.register_keras_serializable(package="sat_tf")
class SiLU(_Elementwise):
    """SiLU / Swish, the default activation of the SAT recipe.

    Formula: `f(x) = x * sigmoid(x)`

    Args:
        **kwargs: Base layer keyword arguments, such as `name` and `dtype`.

    Reference: [Ramachandran et al., 2017](https://arxiv.org/abs/1710.05941)
    """

    def call(self, inputs):
        return silu(inputs)


@keras.saving.register_keras_serializable(package="sat_tf")
class GELU(_Elementwise):
    """Gaussian error linear unit.

    Formula: `f(x) = x * Phi(x)`, or with `approximate=True` (the SAT code's
    form) `f(x) = 0.5 * x * (1 + tanh(sqrt(2 / pi) * (x + 0.044715 * x**3)))`.

    Args:
        approximate: bool, tanh approximation if `True`, exact erf form if
            `False`. Defaults to `True` (Keras `gelu` defaults to `False`).
        **kwargs: Base layer keyword arguments, such as `name` and `dtype`.

    Reference: [Hendrycks and Gimpel, 2016](https://arxiv.org/abs/1606.08415)
    """

    def __init__(self, approximate=True, **kwargs):
        super().__init__(**kwargs)
        if not isinstance(approximate, bool):
            raise ValueError(f"`approximate` must be a bool. Received: {approximate=!r}")
        self.approximate = approximate

    def call(self, inputs):
        return gelu(inputs, approximate=self.approximate)

    def get_config(self):
        return {**super().get_config(), "approximate": self.approximate}


@keras.saving.register_keras_serializable(package="sat_tf")
class ELU(_Elementwise):
    """Exponential linear unit.

    Formula: `f(x) = x` if `x >= 0` else `alpha * (exp(x) - 1)`

    Args:
        alpha: float > 0. Defaults to `1.0` (the SAT code's `tf.nn.elu`).
        **kwargs: Base layer keyword arguments, such as `name` and `dtype`.

    Reference: [Clevert et al., 2015](https://arxiv.org/abs/1511.07289)
    """

    def __init__(self, alpha=1.0, **kwargs):
        super().__init__(**kwargs)
        self.alpha = _check_positive("alpha", alpha)

    def call(self, inputs):
        return elu(inputs, self.alpha)

    def get_config(self):
        return {**super().get_config(), "alpha": self.alpha}


@keras.saving.register_keras_serializable(package="sat_tf")
class CELU(_Elementwise):
    """Continuously differentiable ELU (SAT's ELU case study): C1 for any alpha.

    Formula: `f(x) = max(0, x) + min(0, alpha * (exp(x / alpha) - 1))`

    Args:
        alpha: float > 0. Defaults to `1.0`.
        **kwargs: Base layer keyword arguments, such as `name` and `dtype`.

    Reference: [Barron, 2017](https://arxiv.org/abs/1704.07483)
    """

    def __init__(self, alpha=1.0, **kwargs):
        super().__init__(**kwargs)
        self.alpha = _check_positive("alpha", alpha)

    def call(self, inputs):
        return celu(inputs, self.alpha)

    def get_config(self):
        return {**super().get_config(), "alpha": self.alpha}


@keras.saving.register_keras_serializable(package="sat_tf")
class Mish(_Elementwise):
    """Mish.

    Formula: `f(x) = x * tanh(softplus(x))`

    Args:
        **kwargs: Base layer keyword arguments, such as `name` and `dtype`.

    Reference: [Misra, 2019](https://arxiv.org/abs/1908.08681)
    """

    def call(self, inputs):
        return mish(inputs)


@keras.saving.register_keras_serializable(package="sat_tf")
class SmoothReLU(keras.layers.Layer):
    """SmoothReLU with a learnable sharpness, one scalar per layer instance.

    Formula: `f(x) = relu(x - log(beta * |x| + 1) / beta)`, `beta = beta_raw**2`
    (0 for `x <= 0`; C1, `f'(x) = beta * x / (1 + beta * x)` for `x > 0`).
    The trainable scalar weight is named `beta_raw`: its path does not end in
    `kernel`, so the L2 weight decay on kernels skips it, as in SAT.

    Args:
        initial_beta_raw: float > 0. Defaults to `20.0` (beta = 400, as in
            the SAT code).
        **kwargs: Base layer keyword arguments, such as `name` and `dtype`.

    Reference: [Xie et al., 2020](https://arxiv.org/abs/2006.14536)
    """

    def __init__(self, initial_beta_raw=20.0, **kwargs):
        super().__init__(**kwargs)
        self.initial_beta_raw = _check_positive("initial_beta_raw", initial_beta_raw)
        self.supports_masking = True

    def build(self, input_shape):
        self.beta_raw = self.add_weight(
            shape=(),
            name="beta_raw",
            initializer=keras.initializers.Constant(self.initial_beta_raw),
        )

    def call(self, inputs):
        beta = ops.square(ops.cast(self.beta_raw, inputs.dtype))
        return smooth_relu(inputs, beta)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        config = super().get_config()
        return {**config, "initial_beta_raw": self.initial_beta_raw}


@keras.saving.register_keras_serializable(package="sat_tf")
class ReLUSmoothGrad(_Elementwise):
    """ReLU forward, parametric-softplus gradient backward (SAT sanity study).

    Formula: forward `f(x) = max(0, x)`; backward `dy * sigmoid(alpha * x)`
    where the smooth gradient is on, else ReLU's step `dy * (x > 0)`.

    The Keras `training` flag picks the pass: in sat_tf attacks call the model
    with `training=False` (None counts as False) and the weight update with
    `training=True`. Smooth gradient, by mode:

    - `"attacker"`: when `training` is falsy; ReLU's when `training=True`.
    - `"optimizer"`: when `training=True`; ReLU's when `training` is falsy.
    - `"both"`: always.

    So an *evaluation* attack (also `training=False`) sees the attacker-mode
    gradient. To evaluate against the true ReLU gradient, rebuild the model
    with `activation="relu"` and load the same weights: the forward pass is
    identical.

    Args:
        alpha: float > 0, sharpness of the surrogate derivative. Defaults to
            `10.0` (the parametric softplus alpha of the SAT paper).
        mode: `"attacker"`, `"optimizer"` or `"both"`. Defaults to `"both"`.
        **kwargs: Base layer keyword arguments, such as `name` and `dtype`.

    Reference: [Xie et al., 2020, Sec. 3](https://arxiv.org/abs/2006.14536)
    """

    def __init__(self, alpha=10.0, mode="both", **kwargs):
        super().__init__(**kwargs)
        self.alpha = _check_positive("alpha", alpha)
        if mode not in RELU_SMOOTH_GRAD_MODES:
            raise ValueError(f"`mode` must be one of {RELU_SMOOTH_GRAD_MODES}. Received: {mode=!r}")
        self.mode = mode

    def call(self, inputs, training=None):
        if self.mode == "both":
            smooth = True
        elif training is None or isinstance(training, bool):
            smooth = bool(training) == (self.mode == "optimizer")
        else:  # A boolean scalar tensor.
            is_optimizer = self.mode == "optimizer"
            smooth = ops.equal(ops.cast(training, "bool"), is_optimizer)
        return relu_smooth_grad(inputs, self.alpha, smooth)

    def get_config(self):
        config = super().get_config()
        return {**config, "alpha": self.alpha, "mode": self.mode}


# === Registry ===

ACTIVATIONS = {
    "relu": ReLU,
    "softplus": Softplus,
    "parametric_softplus": ParametricSoftplus,
    "silu": SiLU,
    "gelu": GELU,
    "elu": ELU,
    "celu": CELU,
    "smooth_relu": SmoothReLU,
    "mish": Mish,
    "relu_smooth_grad": ReLUSmoothGrad,
    "sparta": Sparta,  # a reconstruction, shared per model: sat_tf/activations/sparta.py
}
# Aliases are spelled out.
ACTIVATIONS["swish"] = ACTIVATIONS["silu"]
ACTIVATIONS["smoothrelu"] = ACTIVATIONS["smooth_relu"]  # SAT's flag value
ACTIVATIONS["psoftplus"] = ACTIVATIONS["parametric_softplus"]
ACTIVATIONS["gelu_tanh"] = ACTIVATIONS["gelu"]  # approximate=True by default
ACTIVATIONS["gelu_erf"] = functools.partial(GELU, approximate=False)


def list_activations():
    """Sorted registry names, aliases included."""
    return sorted(ACTIVATIONS)


def _takes_name(factory):
    try:
        params = inspect.signature(factory).parameters.values()
    except (TypeError, ValueError):
        return True
    return any(p.kind is p.VAR_KEYWORD or p.name == "name" for p in params)


def get_activation(identifier, **kwargs):
    """Returns a new activation layer for one call site.

    Args:
        identifier: a registry name (case-insensitive, `-` same as `_`); a
            Keras-serialized layer dict; a Layer class or a factory returning
            a Layer (one that takes no `name` is renamed after it returns); or
            a Layer instance, cloned from its config (weights not copied, name
            dropped).
        **kwargs: constructor arguments, such as `name` and `alpha`.

    Returns:
        A new `keras.layers.Layer`, shared with no other call.
    """
    if isinstance(identifier, str):
        key = identifier.lower().replace("-", "_")
        if key not in ACTIVATIONS:
            raise ValueError(f"Unknown activation {identifier!r}. Known: {list_activations()}")
        return ACTIVATIONS[key](**kwargs)
    if isinstance(identifier, dict):
        config = {**identifier.get("config", {}), **kwargs}
        return keras.saving.deserialize_keras_object({**identifier, "config": config})
    if isinstance(identifier, keras.layers.Layer):
        config = identifier.get_config()
        config.pop("name", None)
        return type(identifier).from_config({**config, **kwargs})
    if callable(identifier):
        name = kwargs.pop("name", None)
        if name is not None and _takes_name(identifier):
            kwargs["name"], name = name, None
        layer = identifier(**kwargs)
        if not isinstance(layer, keras.layers.Layer):
            raise TypeError(
                "An activation factory must return a keras Layer (wrap a "
                "function in keras.layers.Activation). Received: "
                f"{identifier!r} returned {type(layer).__name__}"
            )
        if name is not None:
            layer.name = name
        return layer
    raise ValueError(f"Could not interpret activation identifier. Received: {identifier!r}")
