"""Elementwise activations as one XLA kernel forward and one backward, in graphs that are not XLA-compiled.

TensorFlow runs `x * sigmoid(x)` as two kernels forward and about six
backward, each a full pass over the activations; ReLU is one pass each way
(and oneDNN folds it into the preceding batch norm). On a CPU those extra
passes made a SiLU ResNet-18 step ~6 % slower than ReLU. Compiling only the
elementwise math with XLA (`tf.function(jit_compile=True)`) fuses each
direction into a single pass, while the convolutions stay on oneDNN (XLA on
the whole step is slower on CPU; BENCHMARKS.md has both measurements).

Under an outer `jit_compile=True` (TPU, GPU) the inner functions are simply
inlined, so the same code serves every device. The gradient is the analytic
derivative (`upstream * derivative(x)`), equal to autodiff's up to float
rounding (tests/test_activations.py checks it against the unfused ops).
"""

import contextlib

import keras

_enabled = True


def enabled():
    """Whether activations and `models.layers.BatchNormalization` take the fused path (TensorFlow backend and
    not switched off)."""
    return _enabled and keras.backend.backend() == "tensorflow"


@contextlib.contextmanager
def disabled():
    """Activations and batch norms traced inside the block use the plain ops (for comparisons and tests)."""
    global _enabled
    previous, _enabled = _enabled, False
    try:
        yield
    finally:
        _enabled = previous


def elementwise(forward, derivative):
    """`forward(x)` whose gradient is `upstream * derivative(x)`, each computed by one XLA kernel.

    `forward` and `derivative` are elementwise functions of one tensor written
    with `tf` ops. Returns a function of `x` (TensorFlow only; see `enabled`).
    """
    import tensorflow as tf

    forward_kernel = tf.function(forward, jit_compile=True, autograph=False)
    backward_kernel = tf.function(lambda upstream, x: upstream * derivative(x), jit_compile=True, autograph=False)

    def apply(x):
        def with_gradient(x):
            return forward_kernel(x), lambda upstream: backward_kernel(upstream, x)

        return tf.custom_gradient(with_gradient)(x)

    return apply
