"""`AdversarialModel.fit` on 2 logical CPUs (MirroredStrategy) vs one device and vs
`make_train_function` on the same 2 replicas.

Run in its own process (logical devices must be configured before TF starts).
Prints `name value` lines: max |weight difference| of each comparison, the
weight movement and the logged losses. No BatchNorm: per-replica batch
statistics would (correctly) differ from full-batch statistics. One device vs
2 replicas uses PGD without a random start, because per-replica seeds differ
from one device's by design; fit vs the loop on 2 replicas uses random
starts (and TRADES), so equal results also mean equal seeds.
"""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
import tensorflow as tf  # noqa: E402

cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)

import keras  # noqa: E402
import numpy as np  # noqa: E402

from sat_tf import activations, attacks, distribute, training  # noqa: E402
from sat_tf.training import objectives  # noqa: E402

GLOBAL_BATCH, STEPS = 8, 3
STEP = dict(num_classes=3, label_smoothing=0.1, weight_decay=1e-3, seed=5)
rng = np.random.default_rng(0)
X = rng.uniform(size=(STEPS * GLOBAL_BATCH, 6, 6, 1)).astype(np.float32)
Y = rng.integers(0, 3, size=(STEPS * GLOBAL_BATCH,)).astype(np.int32)
OBJECTIVES = {
    "pgd_fixed_start": lambda model: attacks.get_attack(
        "pgd", eps=8 / 255, step_size=2 / 255, steps=3, random_start=False
    ),
    "pgd": lambda model: attacks.get_attack("pgd", eps=8 / 255, step_size=2 / 255, steps=3),
    "trades": lambda model: objectives.TradesObjective(model, steps=3, beta=6.0),
}


def build():
    keras.utils.set_random_seed(0)
    inputs = keras.Input((6, 6, 1))
    x = keras.layers.Conv2D(4, 3, padding="same", name="conv")(inputs)
    x = activations.get_activation("silu", name="act")(x)
    x = keras.layers.Flatten()(x)
    return keras.Model(inputs, keras.layers.Dense(3, name="fc")(x))


def dataset():
    return tf.data.Dataset.from_tensor_slices((X, Y)).batch(GLOBAL_BATCH)


def keras_fit(strategy, name):
    with strategy.scope():
        model = build()
        wrapper = training.AdversarialModel(model, OBJECTIVES[name](model), **STEP)
        wrapper.compile(optimizer=keras.optimizers.SGD(0.1, momentum=0.9, nesterov=True))
    history = wrapper.fit(dataset(), epochs=1, verbose=0, shuffle=False)
    return [v.numpy() for v in model.weights], history.history["loss"][-1]


def loop(strategy, name):
    with strategy.scope():
        model = build()
        optimizer = keras.optimizers.SGD(0.1, momentum=0.9, nesterov=True)
    config = training.StepConfig(global_batch_size=GLOBAL_BATCH, **STEP)
    train = training.make_train_function(model, optimizer, OBJECTIVES[name](model), strategy, config)
    # The split Keras uses: each global batch dealt to the replicas in order.
    train(iter(strategy.experimental_distribute_dataset(dataset())), tf.constant(STEPS))
    return [v.numpy() for v in model.weights]


def max_diff(a, b):
    return max(float(np.abs(x - y).max()) for x, y in zip(a, b))


mirrored = distribute.make_strategy("mirrored")
one_device = tf.distribute.get_strategy()
print(f"replicas {mirrored.num_replicas_in_sync}")
w_one, loss_one = keras_fit(one_device, "pgd_fixed_start")
w_two, loss_two = keras_fit(mirrored, "pgd_fixed_start")
print(f"moved {max_diff(w_one, [v.numpy() for v in build().weights]):.3e}")
print(f"fit_mirrored_vs_one_device {max_diff(w_one, w_two):.3e}")
print(f"loss_one_device {loss_one:.8f}")
print(f"loss_mirrored {loss_two:.8f}")
for name in ("pgd", "trades"):
    print(f"fit_vs_loop_{name} {max_diff(keras_fit(mirrored, name)[0], loop(mirrored, name)):.3e}")
