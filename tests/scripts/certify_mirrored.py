"""Randomized smoothing on 2 logical CPUs (MirroredStrategy) vs one device.

Run in its own process (logical devices must be configured before TF starts).
Noise batch k is seeded by (seed, stream, k) whatever the replica count, and
replica r evaluates batches r, r + 2, ...; so the summed counts must equal the
single-device counts exactly, and certify/predict must agree. Prints one JSON line.
"""

import json
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
import tensorflow as tf  # noqa: E402

cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)

import keras  # noqa: E402
import numpy as np  # noqa: E402

from sat_tf import (
    certification,
    distribute,  # noqa: E402
)

NUM_CLASSES = 4
SIGMA = 0.25


def build():
    keras.utils.set_random_seed(0)
    inputs = keras.Input((8, 8, 3))
    x = keras.layers.Rescaling(2.0, offset=-1.0)(inputs)
    x = keras.layers.Conv2D(4, 3, padding="same", activation="silu", name="conv")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    return keras.Model(inputs, keras.layers.Dense(NUM_CLASSES, name="fc")(x))


def main():
    mirrored = distribute.make_strategy("mirrored")
    assert mirrored.num_replicas_in_sync == 2, mirrored.num_replicas_in_sync
    single = build()
    with mirrored.scope():
        replicated = build()
    single_fn = lambda z: single(z, training=False)  # noqa: E731
    mirrored_fn = lambda z: replicated(z, training=False)  # noqa: E731
    x = np.random.default_rng(0).uniform(size=(8, 8, 3)).astype(np.float32)

    result = {"replicas": mirrored.num_replicas_in_sync, "counts": {}}
    for num, batch in ((1037, 100), (300, 100), (50, 100)):  # 11 batches: odd count per replica
        kwargs = dict(sigma=SIGMA, num_classes=NUM_CLASSES, batch_size=batch, seed=7, stream=1)
        one = certification.sample_counts(single_fn, x, num, **kwargs)
        two = certification.sample_counts(mirrored_fn, x, num, strategy=mirrored, **kwargs)
        result["counts"][f"{num}/{batch}"] = {"single": one.tolist(), "mirrored": two.tolist()}

    smooth_one = certification.Smooth(single_fn, NUM_CLASSES, SIGMA, batch_size=200)
    smooth_two = certification.Smooth(mirrored_fn, NUM_CLASSES, SIGMA, batch_size=200, strategy=mirrored)
    result["certify"] = {
        "single": list(smooth_one.certify(x, 100, 2000, 0.001, seed=3)),
        "mirrored": list(smooth_two.certify(x, 100, 2000, 0.001, seed=3)),
    }
    result["predict"] = {
        "single": smooth_one.predict(x, 1000, 0.001, seed=3),
        "mirrored": smooth_two.predict(x, 1000, 0.001, seed=3),
    }
    # One trace per (logits_fn, shape, batch, strategy) however many images.
    for i in range(3):
        smooth_two.certify(x * 0.5 + 0.1 * i, 100, 2000, 0.001, seed=i)
    result["traces"] = [
        certification.get_sampler(
            mirrored_fn, x.shape, batch=b, num_classes=NUM_CLASSES, strategy=mirrored
        ).experimental_get_tracing_count()
        for b in (100, 200)
    ]
    print("RESULT " + json.dumps(result))


if __name__ == "__main__":
    main()
