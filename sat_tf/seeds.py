"""Stateless per-step, per-replica seeds shared by training and evaluation."""

import tensorflow as tf


def make_seed(run_seed, step, replica_id):
    """A stateless [2] int32 seed unique to (run, optimizer step, replica)."""
    base = tf.constant([int(run_seed) & 0x7FFFFFFF, 0x5A7], dtype=tf.int32)
    seed = tf.random.experimental.stateless_fold_in(base, tf.cast(step, tf.int32))
    return tf.random.experimental.stateless_fold_in(seed, tf.cast(replica_id, tf.int32))
