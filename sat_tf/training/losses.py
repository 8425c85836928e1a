"""Per-example training losses (float32 whatever the compute dtype)."""

import tensorflow as tf


def soft_cross_entropy(logits, targets):
    """Per-example `-sum(targets * log_softmax(logits))`, [B] (timm `SoftTargetCrossEntropy` before its mean)."""
    return tf.nn.softmax_cross_entropy_with_logits(tf.cast(targets, tf.float32), tf.cast(logits, tf.float32))


def cross_entropy(logits, labels, num_classes, label_smoothing=0.0):
    """Per-example softmax cross-entropy with optional label smoothing, [B].

    `labels`: integer labels [B], or soft targets [B, C] (e.g. mixup's); smoothing
    maps targets t to `t (1 - s) + s / C` either way (for mixed one-hots this is
    timm's `mixup_target`, whose smoothing is linear in the mix).
    """
    labels = tf.convert_to_tensor(labels)
    if labels.shape.rank == 2:
        targets = tf.cast(labels, tf.float32)
    else:
        targets = tf.one_hot(labels, num_classes)
    if label_smoothing:
        targets = targets * (1.0 - label_smoothing) + label_smoothing / num_classes
    return soft_cross_entropy(logits, targets)


def default_loss(forward, batch, weights, *, num_classes, label_smoothing):
    """Cross-entropy on `batch = (rows, labels)`: `Objective.loss`'s default.

    Returns `(per_example_loss [R], logits [R, C], labels [R])`; see
    `sat_tf.training.objectives.Objective.loss` for the arguments.
    """
    del weights
    rows, labels = batch
    logits = tf.cast(forward(rows), tf.float32)
    return cross_entropy(logits, labels, num_classes, label_smoothing), logits, labels
