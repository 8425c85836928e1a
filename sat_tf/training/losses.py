"""Per-example training losses (float32 whatever the compute dtype)."""

import tensorflow as tf


def cross_entropy(logits, labels, num_classes, label_smoothing=0.0):
    """Per-example softmax cross-entropy with optional label smoothing, [B]."""
    targets = tf.one_hot(labels, num_classes)
    if label_smoothing:
        targets = targets * (1.0 - label_smoothing) + label_smoothing / num_classes
    return tf.nn.softmax_cross_entropy_with_logits(targets, tf.cast(logits, tf.float32))


def default_loss(forward, batch, weights, *, num_classes, label_smoothing):
    """Cross-entropy on `batch = (rows, labels)`: `Objective.loss`'s default.

    Returns `(per_example_loss [R], logits [R, C], labels [R])`; see
    `sat_tf.training.objectives.Objective.loss` for the arguments.
    """
    del weights
    rows, labels = batch
    logits = tf.cast(forward(rows), tf.float32)
    return cross_entropy(logits, labels, num_classes, label_smoothing), logits, labels
