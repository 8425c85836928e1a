"""Two training steps on 2 logical CPUs (MirroredStrategy) vs one device.

Run in its own process (logical devices must be configured before TF starts).
Prints the max |difference| of trainable weights and of the summed loss.
argv: activation, "jit" or "nojit", objective ("pgd" default, "trades",
"trades_rat_awp"; RAT's constants and AWP's perturbation come from each
replica's own batch, so that one is only checked to run and stay finite).
The model has no BatchNorm: per-replica batch statistics would (correctly)
differ from full-batch statistics; everything else must agree.
"""

import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
import tensorflow as tf  # noqa: E402

cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)

import keras  # noqa: E402
import numpy as np  # noqa: E402

from sat_tf import activations, attacks, distribute, training  # noqa: E402
from sat_tf.training import objectives

GLOBAL_BATCH = 8


def build():
    keras.utils.set_random_seed(0)
    inputs = keras.Input((6, 6, 1))
    x = keras.layers.Conv2D(4, 3, padding="same", name="conv")(inputs)
    x = activations.get_activation(sys.argv[1] if len(sys.argv) > 1 else "silu", name="act")(x)
    x = keras.layers.Flatten()(x)
    return keras.Model(inputs, keras.layers.Dense(3, name="fc")(x))


rng = np.random.default_rng(0)
X = rng.uniform(size=(4 * GLOBAL_BATCH, 6, 6, 1)).astype(np.float32)
Y = rng.integers(0, 3, size=(4 * GLOBAL_BATCH,)).astype(np.int32)
OBJECTIVE = sys.argv[3] if len(sys.argv) > 3 else "pgd"
OBJECTIVES = {
    "pgd": lambda model: attacks.get_attack("pgd", eps=8 / 255, step_size=2 / 255, steps=3, random_start=False),
    "trades": lambda model: objectives.TradesObjective(model, steps=3, beta=6.0),
    "trades_rat_awp": lambda model: objectives.TradesObjective(
        model, steps=3, beta=6.0, rat_alpha=0.2, attack_weight_noise=1e-4, awp_gamma=0.005, awp_warmup_epochs=0
    ),
}


def run(strategy):
    with strategy.scope():
        model = build()
        optimizer = keras.optimizers.SGD(0.1, momentum=0.9, nesterov=True)
    config = training.StepConfig(
        global_batch_size=GLOBAL_BATCH,
        num_classes=3,
        label_smoothing=0.1,
        weight_decay=1e-3,
        jit_compile=len(sys.argv) > 2 and sys.argv[2] == "jit",
    )
    train = training.make_train_function(model, optimizer, OBJECTIVES[OBJECTIVE](model), strategy, config)

    def dataset_fn(ctx):
        ds = tf.data.Dataset.from_tensor_slices((X, Y))
        return ds.batch(ctx.get_per_replica_batch_size(GLOBAL_BATCH))

    iterator = iter(strategy.distribute_datasets_from_function(dataset_fn))
    out = train(iterator, tf.constant(2))
    return [v.numpy() for v in model.trainable_variables], float(out["loss_sum"])


mirrored = distribute.make_strategy("mirrored")
assert mirrored.num_replicas_in_sync == 2, mirrored.num_replicas_in_sync
w1, l1 = run(tf.distribute.get_strategy())
w2, l2 = run(mirrored)
diff = max(float(np.abs(a - b).max()) for a, b in zip(w1, w2))
moved = max(float(np.abs(a - b).max()) for a, b in zip(w1, [v.numpy() for v in build().trainable_variables]))
print(f"replicas=2 weight_diff={diff:.3e} loss_diff={abs(l1 - l2):.3e} moved={moved:.3e}")
