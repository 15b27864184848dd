"""Pooling of a tower's token states into one vector per text."""

import tensorflow as tf


def mean_pool(sequence, padding_mask):
    """Mean of ``sequence`` [B, L, H] over positions where ``padding_mask`` [B, L] is set."""
    mask = tf.cast(padding_mask, sequence.dtype)[:, :, None]
    total = tf.reduce_sum(sequence * mask, axis=1)
    count = tf.maximum(tf.reduce_sum(mask, axis=1), tf.cast(1.0, sequence.dtype))
    return total / count
