"""Gradient caching: a contrastive training step over a batch larger than memory allows.

Gao et al., "Scaling Deep Contrastive Learning Batch Size under Memory Limited Setup"
(RepL4NLP 2021, arXiv:2101.06983). Every negative of a contrastive loss comes from the batch,
so the loss needs every embedding of the batch at once, but the encoder's activations are
needed only one mini-batch at a time. One step of :class:`samtone_tf.DualEncoder` with
``mini_batch_size`` set runs in three passes over each replica's batch:

1. embed the batch mini-batch by mini-batch, keeping no activations (no tape);
2. compute the loss on the whole batch (all-gathered over the replicas inside the loss, as
   without caching) and its gradient with respect to the embeddings only;
3. embed each mini-batch again under a tape and back-propagate the cached embedding
   gradients through the float32 surrogate ``sum(embeddings * cached_gradient)``, summing
   the variables' gradients over the mini-batches.

The gradients equal those of the uncached step on the same batch (up to float summation
order); the peak memory is one mini-batch's activations, the batch's embeddings and their
gradients, and one gradient accumulator per variable (the model's size again).

Dropout replays exactly. Random masks of Keras 3 layers (keras-hub backbones) and of
TF-Hub-layout SavedModels written by :func:`samtone_tf.towers.encoders.export_tfhub_layout` are
drawn from seed-generator state variables, integer variables that each draw advances by a
fixed amount, whatever the data. The step reads every integer non-trainable variable of the
model before pass 1 and writes it back before pass 3, so pass 3 walks through the same
states, and draws the same masks, as pass 1; it ends where pass 1 ended. Keras 2
(``tf_keras``) dropout layers draw from stateful random ops that cannot replay: a model
with such a layer (rate > 0) is refused.

Both passes loop with ``tf.while_loop`` (one mini-batch at a time,
``parallel_iterations=1``), so the traced step holds one copy of the encoder's graph
whatever the number of mini-batches. Every mini-batch has one static shape, as XLA needs:
the last one holds the remainder topped up with copies of the batch's first rows, whose
outputs are dropped (and whose cached gradients are zero).
"""

import numbers

import tensorflow as tf

from samtone_tf import _keras


def check_mini_batch_size(value):
    """``value`` if it is ``None`` or a positive integer, else ``ValueError``."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise ValueError(
            f"`mini_batch_size` must be a positive integer (examples per mini-batch of "
            f"each replica's batch) or None (no gradient caching); got {value!r}")
    return int(value)


def random_state_variables(model):
    """The integer non-trainable variables of ``model``: the states of its random-number
    generators (Keras 3 seed generators, also inside TF-Hub SavedModels exported from
    Keras 3), deduplicated."""
    found, seen = [], set()
    for variable in model.non_trainable_variables:
        if not tf.as_dtype(variable.dtype).is_integer:
            continue
        key = _keras.variable_key(variable)
        if key not in seen:
            seen.add(key)
            found.append(variable)
    return found


def _first(x):
    return next(t for t in tf.nest.flatten(x) if t is not None)


def _layout(x, mini_batch_size):
    """``(batch, count, padded)``: the batch size, the number of mini-batches and
    ``count * mini_batch_size`` (Python ints when the batch size is static)."""
    batch = _first(x).shape[0]
    if batch is None:
        batch = tf.shape(_first(x))[0]
    count = (batch + mini_batch_size - 1) // mini_batch_size
    return batch, count, count * mini_batch_size


def _padded(x, batch, padded):
    """``x`` with ``padded - batch`` more rows, copies of its first rows (real examples, so
    the padding rows compute nothing non-finite; their outputs are dropped)."""
    rows = tf.range(padded) % batch
    return tf.nest.map_structure(lambda t: None if t is None else tf.gather(t, rows), x)


def _rows(t, start, size):
    """``t[start:start + size]`` as a slice of static size (an XLA dynamic slice)."""
    rank = t.shape.rank
    return tf.slice(t, [start] + [0] * (rank - 1), [size] + [-1] * (rank - 1))


def _mini_batch(x, start, size):
    return tf.nest.map_structure(lambda t: None if t is None else _rows(t, start, size), x)


def embed_in_mini_batches(forward, x, mini_batch_size):
    """``forward`` on each mini-batch of ``x`` in turn, concatenated, with no gradients.

    Args:
      forward: ``x_i -> [mini_batch_size, ...]`` float tensor for a mini-batch ``x_i`` (a
        nest of tensors with leading dimension ``mini_batch_size``).
      x: the batch, a nest of tensors sharing their leading dimension ``b``.
      mini_batch_size: examples per mini-batch. The last mini-batch holds the remainder,
        topped up with copies of the batch's first rows to the same shape (one shape for
        every mini-batch, which XLA needs); their outputs are dropped.

    Returns:
      ``[b, ...]``: the outputs in batch order (a tensor that stops gradients).
    """
    static_batch = _first(x).shape[0]
    batch, count, padded = _layout(x, mini_batch_size)
    x = _padded(x, batch, padded)

    def body(i, outputs):
        out = forward(_mini_batch(x, i * mini_batch_size, mini_batch_size))
        return i + 1, outputs.write(i, tf.stop_gradient(tf.cast(out, tf.float32)))

    outputs = tf.TensorArray(tf.float32, size=count)
    _, outputs = tf.while_loop(lambda i, _: i < count, body, (tf.constant(0), outputs),
                               parallel_iterations=1)
    stacked = outputs.stack()  # [count, mini_batch_size, ...]
    embedded = tf.reshape(stacked, tf.concat([[padded], tf.shape(stacked)[2:]], 0))[:batch]
    embedded.set_shape(tf.TensorShape([static_batch]).concatenate(stacked.shape[2:]))
    return tf.stop_gradient(embedded)


def backprop_in_mini_batches(forward, x, mini_batch_size, output_gradients, variables):
    """The gradients of ``sum(forward(x) * output_gradients)`` with respect to
    ``variables``, computed one mini-batch at a time (mini-batches as in
    :func:`embed_in_mini_batches`; the padding rows get zero output gradients).

    Returns:
      a list aligned with ``variables``: dense float tensors summed over the mini-batches,
      ``None`` for a variable that no mini-batch's output depends on.
    """
    variables = list(variables)
    batch, count, padded = _layout(x, mini_batch_size)
    x = _padded(x, batch, padded)
    output_gradients = tf.cast(output_gradients, tf.float32)
    output_gradients = tf.pad(output_gradients, [[0, padded - batch]]
                              + [[0, 0]] * (output_gradients.shape.rank - 1))
    reached = [False] * len(variables)

    def body(i, *totals):
        start = i * mini_batch_size
        with tf.GradientTape() as tape:
            out = tf.cast(forward(_mini_batch(x, start, mini_batch_size)), tf.float32)
            surrogate = tf.reduce_sum(out * _rows(output_gradients, start, mini_batch_size))
        grads = tape.gradient(surrogate, variables)
        updated = []
        for j, (total, grad) in enumerate(zip(totals, grads)):
            if grad is None:
                updated.append(total)
            else:
                reached[j] = True
                updated.append(total + tf.cast(tf.convert_to_tensor(grad), total.dtype))
        return (i + 1, *updated)

    zeros = tuple(tf.zeros(v.shape, tf.as_dtype(v.dtype)) for v in variables)
    results = tf.while_loop(lambda i, *_: i < count, body, (tf.constant(0), *zeros),
                            parallel_iterations=1)
    return [total if hit else None for total, hit in zip(results[1:], reached)]


def cached_step_gradients(model, x, y, sample_weight, mini_batch_size):
    """One gradient-cached step's ``(loss, y_pred, gradients)`` for a Keras model.

    ``loss`` is what ``model.train_step`` records (``compute_loss`` in training mode);
    ``gradients`` (aligned with ``model.trainable_variables``) are those of the loss scaled
    by the optimizer's loss scale, as the built-in step hands them to
    ``apply_gradients``.
    """
    unreplayable = _keras.unreplayable_dropout_layers(model)
    if unreplayable:
        raise ValueError(
            f"`mini_batch_size` replays each mini-batch's dropout masks, but the Keras 2 "
            f"layers {unreplayable} draw theirs from stateful random ops that cannot draw "
            "the same masks twice. Set their rate to 0, or use a TF-Hub-layout SavedModel "
            "(samtone_tf.towers.encoders.export_tfhub_layout) or a Keras 3 model, whose dropout "
            "replays.")

    def forward(x_i):
        return model(x_i, training=True)

    states = random_state_variables(model)
    before = [tf.identity(tf.convert_to_tensor(s)) for s in states]
    y_pred = embed_in_mini_batches(forward, x, mini_batch_size)
    if model.losses:
        raise ValueError(
            "`mini_batch_size` cannot cache the gradients of losses added by layers "
            f"({len(model.losses)} found: regularisers or add_loss); train without "
            "`mini_batch_size` or remove them.")
    with tf.GradientTape() as tape:
        tape.watch(y_pred)
        loss = _keras.training_loss(model, x, y, y_pred, sample_weight)
        scaled = _keras.scale_loss(model.optimizer, loss)
    output_gradients = tf.stop_gradient(tape.gradient(scaled, y_pred))
    # Back to the random states pass 1 started from, so pass 3 draws its masks. (Inside
    # tf.function, automatic control dependencies order these writes after pass 1's loop
    # and before pass 3's, which touch the same variables.)
    for state, value in zip(states, before):
        state.assign(value)
    gradients = backprop_in_mini_batches(forward, x, mini_batch_size, output_gradients,
                                         model.trainable_variables)
    return loss, y_pred, gradients
