"""Shared by the AutoAttack cross-checks: one small network in Keras and in PyTorch with identical weights.

Not a test module. `keras_mlp` builds a Keras classifier on NHWC images in [0, 1]; `torch_twin(model)` builds
the same function in PyTorch taking NCHW images (the reference AutoAttack's layout), with the Keras weights
copied, so both frameworks see one model and the reference code can be run on "the same weights and points".
Import torch lazily: tests that need it call `pytest.importorskip("torch")` first.
"""

import numpy as np


def keras_mlp(seed=0, input_shape=(8, 8, 1), num_classes=10, hidden=(64, 32), activation="relu", scale=1.0):
    """A Flatten -> Dense(+activation)* -> Dense logits model with seeded weights.

    `scale` multiplies the first kernel, making logits (and margins) larger or smaller.
    """
    import keras

    keras.utils.set_random_seed(seed)
    inputs = keras.Input(input_shape)
    h = keras.layers.Flatten()(inputs)
    for i, width in enumerate(hidden):
        h = keras.layers.Dense(width, activation=activation, name=f"dense{i}")(h)
    outputs = keras.layers.Dense(num_classes, name="logits")(h)
    model = keras.Model(inputs, outputs)
    rng = np.random.default_rng(seed)
    for layer in model.layers:
        if isinstance(layer, keras.layers.Dense):
            kernel, bias = layer.get_weights()
            fan_in = kernel.shape[0]
            kernel = rng.normal(0, np.sqrt(2.0 / fan_in), kernel.shape).astype(np.float32)
            bias = rng.normal(0, 0.1, bias.shape).astype(np.float32)
            if layer.name == "dense0":
                kernel *= scale
            layer.set_weights([kernel, bias])
    return model


def torch_twin(model):
    """The Keras MLP `model` as a torch.nn.Module on NCHW float32 input (eval mode)."""
    import keras
    import torch

    activations = {
        "relu": torch.relu,
        "softplus": torch.nn.functional.softplus,
        "tanh": torch.tanh,
        "linear": lambda t: t,
        "silu": torch.nn.functional.silu,
    }
    dense = [layer for layer in model.layers if isinstance(layer, keras.layers.Dense)]

    class Twin(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.linears = torch.nn.ModuleList()
            self.acts = []
            for layer in dense:
                kernel, bias = layer.get_weights()
                linear = torch.nn.Linear(kernel.shape[0], kernel.shape[1])
                with torch.no_grad():
                    linear.weight.copy_(torch.from_numpy(kernel.T.copy()))
                    linear.bias.copy_(torch.from_numpy(bias))
                self.linears.append(linear)
                self.acts.append(activations[keras.activations.serialize(layer.activation)])

        def forward(self, x):
            h = x.permute(0, 2, 3, 1).reshape(x.shape[0], -1)  # NHWC flatten order, as Keras
            for linear, act in zip(self.linears, self.acts):
                h = act(linear(h))
            return h

    return Twin().eval()


def to_nchw(x_nhwc):
    import torch

    return torch.from_numpy(np.ascontiguousarray(np.asarray(x_nhwc, np.float32).transpose(0, 3, 1, 2)))


def to_nhwc(t_nchw):
    return np.ascontiguousarray(t_nchw.detach().cpu().numpy().transpose(0, 2, 3, 1))


def digits_points(count=64, seed=0):
    """`count` real 8x8 digits from scikit-learn as NHWC float32 in [0, 1] and int labels."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    rng = np.random.default_rng(seed)
    index = rng.choice(len(digits.images), size=count, replace=False)
    x = (digits.images[index] / 16.0).astype(np.float32)[..., None]
    return x, digits.target[index].astype(np.int64)


def trained_mlp(seed=0, *, eps=0.1, epochs=8, hidden=(64, 32), activation="relu", batch_size=64):
    """`keras_mlp` trained on 1 437 digits with PGD-3 adversarial training at L-inf `eps` (plain TF loop).

    A non-trivially robust model in a few seconds: on the 360 held-out digits it is about 95 % clean accurate
    and keeps a good part of that under attack at `eps`, so attacks have points to break and points to miss.
    Returns (model, (x_train, y_train), (x_test, y_test)); the split is scikit-learn's first 1 437 / last 360.
    """
    import keras
    import tensorflow as tf
    from sklearn.datasets import load_digits

    from sat_tf.attacks import pgd

    digits = load_digits()
    x_all = (digits.images / 16.0).astype(np.float32)[..., None]
    y_all = digits.target.astype(np.int64)
    train, test = (x_all[:1437], y_all[:1437]), (x_all[1437:], y_all[1437:])
    model = keras_mlp(seed, hidden=hidden, activation=activation)
    optimizer = keras.optimizers.Adam(3e-3)

    @tf.function
    def step(x, y, step_seed):
        x_adv = pgd(lambda z: model(z, training=False), x, y, eps=eps, step_size=eps / 2, steps=3, seed=step_seed)
        with tf.GradientTape() as tape:
            logits = model(tf.concat([x, x_adv], 0), training=True)
            loss = tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(tf.concat([y, y], 0), logits))
        grads = tape.gradient(loss, model.trainable_variables)
        optimizer.apply_gradients(zip(grads, model.trainable_variables))
        return loss

    rng = np.random.default_rng(seed)
    count = 0
    for _ in range(epochs):
        order = rng.permutation(len(train[0]))
        for start in range(0, len(order) - batch_size + 1, batch_size):
            index = order[start : start + batch_size]
            step(train[0][index], train[1][index], tf.constant([seed, count], tf.int64))
            count += 1
    return model, train, test
