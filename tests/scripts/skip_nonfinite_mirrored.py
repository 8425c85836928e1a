"""Three steps on 2 logical CPUs (MirroredStrategy) with --on_nonfinite=skip;
the second step's NaN pixel lies in replica 1's half of the batch only.

Run in its own process (logical devices must be configured before TF starts).
Prints one JSON line: the summed metrics, optimizer iterations, whether every
variable (each replica's copy, BatchNorm statistics included) is finite, and
whether the replicas' copies agree.
"""

import json
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
import tensorflow as tf  # noqa: E402

cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)

import keras  # noqa: E402
import numpy as np  # noqa: E402

from sat_tf import training  # noqa: E402

GLOBAL_BATCH = 8
strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
with strategy.scope():
    keras.utils.set_random_seed(0)
    inputs = keras.Input((4, 4, 1))
    x = keras.layers.Conv2D(3, 3, padding="same")(inputs)
    x = keras.layers.BatchNormalization(momentum=0.9)(x)
    x = keras.layers.Activation("silu")(keras.layers.Flatten()(x))
    model = keras.Model(inputs, keras.layers.Dense(3)(x))
    optimizer = keras.optimizers.SGD(0.1, momentum=0.9)

rng = np.random.default_rng(0)
images = rng.uniform(size=(3 * GLOBAL_BATCH, 4, 4, 1)).astype(np.float32)
labels = rng.integers(0, 3, size=(3 * GLOBAL_BATCH,)).astype(np.int32)
images[GLOBAL_BATCH + GLOBAL_BATCH // 2 + 1, 0, 0, 0] = np.nan  # step 2, replica 1's shard

config = training.StepConfig(global_batch_size=GLOBAL_BATCH, num_classes=3)
train = training.make_train_function(
    model, optimizer, lambda logits_fn, x, y, seed=None: x, strategy, config, on_nonfinite="skip"
)
dataset = strategy.experimental_distribute_dataset(
    tf.data.Dataset.from_tensor_slices((images, labels)).batch(GLOBAL_BATCH)
)
out = {k: float(v) for k, v in train(iter(dataset), tf.constant(3)).items()}


def copies(variables):
    return [[np.asarray(value) for value in strategy.experimental_local_results(v)] for v in variables]


finite = all(np.all(np.isfinite(c)) for per_replica in copies(model.weights) for c in per_replica)
# BN moving statistics are per replica (each saw its own shard): only their finiteness is checked.
agree = all(np.array_equal(p[0], p[-1]) for p in copies(model.trainable_weights + optimizer.variables))
print(
    json.dumps(
        {**out, "iterations": int(optimizer.iterations.numpy()), "finite": bool(finite), "replicas_agree": bool(agree)}
    )
)
