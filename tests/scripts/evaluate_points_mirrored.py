"""evaluate_points on one device and on MirroredStrategy over 2 logical CPUs: prints whether every flag agrees.

Run in its own process (logical devices must be set before TensorFlow starts). Prints one line
`rows=<n> equal=<True|False> robust=<autoattack top-1> chunks=<per-replica chunk>` and, if they differ, the rows.
"""

import os
import sys

import numpy as np
import tensorflow as tf

cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import aa_reference  # noqa: E402

from sat_tf import evaluation  # noqa: E402
from sat_tf.attacks import AutoAttackRows, get_attack  # noqa: E402

trained, _, (x, y) = aa_reference.trained_mlp(0)
x, y = x[:150], y[:150]
options = {
    "apgd-ce": {"steps": 20},
    "apgd-t": {"steps": 20, "n_target_classes": 3},
    "fab-t": {"steps": 20, "n_target_classes": 3},
    "square": {"queries": 300},
}
rows = [
    evaluation.AttackRow("clean"),
    evaluation.AttackRow("pgd10", get_attack("pgd", eps=0.1, step_size=0.025, steps=10)),
    AutoAttackRows(eps=0.1, options=options),
]
mirrored = tf.distribute.MirroredStrategy([d.name for d in tf.config.list_logical_devices("CPU")])
results = {}
for name, strategy, batch in (("one device", tf.distribute.get_strategy(), 64), ("mirrored", mirrored, 40)):
    with strategy.scope():
        model = aa_reference.keras_mlp(0)
        model.set_weights(trained.get_weights())
    results[name] = evaluation.evaluate_points(
        lambda z, m=model: m(z, training=False), x, y, rows, strategy=strategy, batch_size=batch, seed=5
    )
one, two = results["one device"], results["mirrored"]
differ = [row for row in one["flags"] if not np.array_equal(one["flags"][row], two["flags"][row])]
print(
    f"rows={len(one['flags'])} equal={not differ} robust={one['rows']['autoattack']['top1']:.4f} "
    f"replicas={mirrored.num_replicas_in_sync}",
    flush=True,
)
if differ:
    print("differ:", differ)
