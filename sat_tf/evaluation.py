"""Clean and adversarial top-1/top-5 accuracy under any distribution strategy.

`evaluate(model, strategy, dataset_fn, attacks)` runs every attack on every
batch inside `strategy.run` (each replica attacks its shard with BatchNorm in
inference mode) and returns `{name: {"top1": .., "top5": .., "count": ..}}`.
Attack seeds depend only on (seed, attack index, batch index, replica), so a
rerun gives the same numbers.
"""

import tensorflow as tf

from sat_tf import train_lib


def _identity_attack(logits_fn, x, y, seed=None):
    del logits_fn, y, seed
    return x


def evaluate(model, strategy, dataset_fn, attacks, *, top_k=5, seed=1234, progress=None):
    """Top-1 / top-k accuracy of `model` on clean and attacked inputs.

    Args:
        model: a Keras model mapping [0, 1] images to logits.
        strategy: a `tf.distribute.Strategy` the model was built under.
        dataset_fn: `fn(input_context) -> tf.data.Dataset` of per-replica
            (images, labels) batches, one pass over the evaluation set.
        attacks: dict name -> `attack(logits_fn, x, y, seed=...)`, or None for
            the clean row. Use `{"clean": None, "pgd10": ...}`.
        top_k: the k of the second accuracy column (clipped to the class count).
        seed: evaluation seed.
        progress: optional `fn(name, batches_done)` called after each batch.
    """
    results = {}
    for index, (name, attack) in enumerate(attacks.items()):
        attack = attack or _identity_attack

        def replica_fn(x, y, batch, attack=attack, index=index):
            y = tf.cast(y, tf.int32)
            replica = tf.distribute.get_replica_context().replica_id_in_sync_group
            seed_ = train_lib.make_seed(seed + 7919 * index, batch, replica)
            x_adv = attack(lambda z: model(z, training=False), tf.cast(x, tf.float32), y, seed=seed_)
            logits = tf.cast(model(x_adv, training=False), tf.float32)
            k = min(top_k, logits.shape[-1])
            top1 = tf.cast(tf.equal(tf.argmax(logits, -1, output_type=tf.int32), y), tf.float32)
            topk = tf.cast(tf.math.in_top_k(y, logits, k), tf.float32)
            count = tf.cast(tf.shape(y)[0], tf.float32)
            return tf.reduce_sum(top1), tf.reduce_sum(topk), count

        @tf.function
        def step(x, y, batch, replica_fn=replica_fn):
            values = strategy.run(replica_fn, args=(x, y, batch))
            return [strategy.reduce("SUM", v, axis=None) for v in values]

        totals = [0.0, 0.0, 0.0]
        dataset = strategy.distribute_datasets_from_function(dataset_fn)
        for batch, (x, y) in enumerate(dataset):
            values = step(x, y, tf.constant(batch))
            totals = [t + float(v) for t, v in zip(totals, values)]
            if progress is not None:
                progress(name, batch + 1)
        count = max(totals[2], 1.0)
        results[name] = {
            "top1": totals[0] / count,
            "top5": totals[1] / count,
            "count": int(totals[2]),
        }
    return results
