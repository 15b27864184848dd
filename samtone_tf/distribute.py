"""Global-batch gathering for losses computed inside a ``tf.distribute`` replica context.

Contrastive losses want every example of the *global* batch as a negative, not only the
rows of the local replica. :func:`gather_global_batch` is the one place where that happens:
it all-gathers a nest of per-replica tensors along axis 0 (with gradients: the gradient of
``ReplicaContext.all_gather`` all-reduces and slices back) and says where this replica's
rows sit in the gathered tensors, so the caller can compute the local rows' losses against
the whole batch.

Outside a strategy, in a one-replica strategy, or in the cross-replica context, the tensors
are returned unchanged with offset 0.

Every replica must hold the same number of rows: Keras scales each replica's mean loss by
``1 / num_replicas``, so a replica with fewer rows would weigh its examples more than the
others. :func:`gather_global_batch` checks it at run time (an ``InvalidArgumentError``
that says to batch with ``drop_remainder=True`` and a global batch divisible by the number
of replicas). The check is an ``Assert`` op, which XLA ignores: with ``jit_compile=True``
(not Keras' default under ``tf.distribute``) it does not run.
"""

import tensorflow as tf


def gather_global_batch(tensors):
    """All-gathers ``tensors`` (a nest) over the replicas of the current context.

    Args:
      tensors: a nest of tensors sharing their leading (batch) dimension ``b``; ``None``
        leaves are kept as ``None``.

    Returns:
      ``(gathered, offset)``: the same nest with leading dimension ``B = sum of every
      replica's b``, in replica order, and the int32 scalar index of this replica's first
      row in the gathered tensors (``gathered[offset:offset + b]`` are the local rows).

    Raises:
      tf.errors.InvalidArgumentError: (when run) the replicas' batches differ in size.
    """
    ctx = tf.distribute.get_replica_context()
    if ctx is None or ctx.num_replicas_in_sync == 1:
        return tensors, tf.constant(0, tf.int32)

    def gather(t):
        # One collective per tensor: a nested all_gather fails under
        # MultiWorkerMirroredStrategy, and its gradient fails for leaves of different ranks.
        # tf.identity places tensors that come straight from the input pipeline on the
        # replica's device (MultiWorkerMirroredStrategy refuses them otherwise).
        return ctx.all_gather(tf.identity(t), axis=0)

    flat = tf.nest.flatten(tensors)
    present = [t for t in flat if t is not None]
    sizes = gather(tf.shape(present[0], out_type=tf.int32)[:1])
    # The static batch size can differ between replicas too (a tf.function traced on an
    # uneven split sees [4, ...] on one replica and [3, ...] on the other), so the check
    # is on the gathered sizes, at run time.
    check = tf.debugging.assert_equal(
        sizes, tf.fill(tf.shape(sizes), sizes[0]),
        message=(f"the {ctx.num_replicas_in_sync} replicas got batches of different sizes "
                 "(the gathered per-replica sizes follow); contrastive losses over the "
                 "global batch, and Keras' averaging of the replicas' losses, need equal "
                 "per-replica batches: batch the dataset with drop_remainder=True and a "
                 "global batch size divisible by the number of replicas"),
        summarize=ctx.num_replicas_in_sync)
    with tf.control_dependencies([check]):
        sizes = tf.identity(sizes)
    replica_id = tf.cast(ctx.replica_id_in_sync_group, tf.int32)
    offset = tf.reduce_sum(sizes[:replica_id])
    gathered = [None if t is None else gather(t) for t in flat]
    return tf.nest.pack_sequence_as(tensors, gathered), offset
