"""Texts -> embeddings: the one place where batches of strings become embedding rows.

Used by evaluation (:mod:`samtone_tf.evaluation.run`), the hard-negative miner, the TFRS
evaluation, the pretrained encoder's :func:`~samtone_tf.towers.pretrained.encode_texts`,
the analysis and the index export:

* :func:`iter_encoded_batches` / :func:`encode_corpus`: any ``list of str -> [n, dim]``
  function over a sequence of texts, in batches, with a progress bar and shape checks;
* :func:`encode_by_length`: the same with the texts batched longest first (less padding),
  the rows returned in input order;
* :func:`encoder_tf_functions` / :func:`dual_encoder_fns`: such functions over a live
  :class:`~samtone_tf.DualEncoder` and its tokenizers, each batch padded to its longest text;
* :func:`on_replicas`: a function spread over the replicas of a ``tf.distribute``
  strategy, each replica a slice of the rows, gathered back in order.
"""

import warnings
from typing import Callable, Sequence

import numpy as np
import tensorflow as tf
from tqdm.auto import tqdm

from samtone_tf._util import check_int
from samtone_tf.data.pairs import trim_to_longest


def as_text_list(texts):
    """A list of ``str`` from a list, 1-D array or string tensor (bytes are UTF-8 decoded)."""
    if isinstance(texts, str):
        raise ValueError("`texts` must be a list of strings, not one string")
    if isinstance(texts, tf.Tensor):
        texts = texts.numpy()
    items = np.asarray(texts, dtype=object).ravel().tolist()
    out = []
    for t in items:
        if isinstance(t, bytes):
            t = t.decode("utf-8")
        if not isinstance(t, str):
            raise ValueError(f"`texts` must hold strings; got {type(t).__name__}")
        out.append(t)
    return out


def length_order(lengths):
    """Indices sorting ``lengths`` (numbers, or texts by character count) longest first,
    stable: batches of similar length pad less."""
    lengths = [len(x) if isinstance(x, str) else x for x in lengths]
    return np.argsort(-np.asarray(lengths, dtype=np.int64), kind="stable")


def iter_encoded_batches(encode_fn: Callable, texts: Sequence[str], batch_size: int, *, progress=True,
                         desc="encoding"):
    """Yields ``encode_fn(texts[i:i + batch_size])`` as NumPy ``[b, dim]`` arrays, in order.

    Args:
      encode_fn: maps a list of ``b`` strings to ``[b, dim]`` embeddings (NumPy or a
        tensor with ``.numpy()``).
      texts: the texts (a sequence; its length sizes the progress bar).
      batch_size: texts per call; the last batch may be smaller.
      progress: show a tqdm progress bar (counting texts).

    Raises:
      ValueError: bad ``batch_size``, or ``encode_fn`` returned the wrong number of rows
        or not a 2-D array.
    """
    check_int(batch_size, "batch_size")
    texts = list(texts)
    with tqdm(total=len(texts), desc=desc, unit="text", disable=not progress) as bar:
        for i in range(0, len(texts), batch_size):
            chunk = texts[i : i + batch_size]
            out = encode_fn(chunk)
            if hasattr(out, "numpy"):
                out = out.numpy()
            out = np.asarray(out)
            if out.ndim != 2 or out.shape[0] != len(chunk):
                raise ValueError(
                    f"encode_fn returned shape {out.shape} for {len(chunk)} texts (texts {i}..{i + len(chunk) - 1}); "
                    "expected [num_texts, dim]."
                )
            bar.update(len(chunk))
            yield out


def encode_corpus(encode_fn: Callable, texts: Sequence[str], batch_size: int, *, progress=True):
    """Encodes all ``texts`` in batches (tqdm progress bar); returns ``[len(texts), dim]``.

    For corpora too large for memory, pass :func:`iter_encoded_batches` straight to
    :func:`search` instead.
    """
    batches = list(iter_encoded_batches(encode_fn, texts, batch_size, progress=progress))
    if not batches:
        raise ValueError("texts is empty.")
    return np.concatenate(batches, axis=0)


def trim_padding(features):
    """Cuts ``token_ids`` / ``padding_mask`` ``[B, L]`` to the longest text of the batch.

    The tokenizers pad every text to their ``max_length`` (static shapes for training under
    ``tf.distribute``); for encoding, the positions after the batch's longest text are
    padding in every row, and the encoders mask them out, so dropping them leaves the
    embeddings unchanged (up to float rounding) and saves their compute: short texts encode
    in proportion to their real length. Keeps at least one position.
    """
    return trim_to_longest(features)


def encoder_tf_functions(model, query_tokenizer, document_tokenizer, trim=True):
    """``(encode_queries, encode_documents)``: ``tf.function``s from a 1-D string tensor to
    the live DualEncoder's embeddings (usable inside ``strategy.run``). With ``trim`` (the
    default) each batch is padded only to its longest text (:func:`trim_padding`); pass
    ``trim=False`` for an encoder that only accepts the tokenizer's full length."""
    def prepare(features):
        return trim_padding(features) if trim else features

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string)], reduce_retracing=True)
    def encode_queries(texts):
        return model.encode_queries(prepare(query_tokenizer(texts)))

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string)], reduce_retracing=True)
    def encode_documents(texts):
        return model.encode_documents(prepare(document_tokenizer(texts)))

    return encode_queries, encode_documents


def _short(error, limit=300):
    """An exception as ``Type: message``, without the trace TensorFlow wraps around it
    ("in user code: File ...", "Graph execution error: Detected at node ...")."""
    skip = ("File ", "in user code:", "Graph execution error:", "Detected at node", "[[")
    lines = [line.strip() for line in str(error).splitlines()]
    lines = [line for line in lines if line and not line.startswith(skip)]
    text = lines[-1] if lines else ""
    prefix = f"{type(error).__name__}: "
    if text.startswith(prefix):
        text = text[len(prefix):]
    if len(text) > limit:
        text = text[:limit] + "..."
    return prefix + text


def dual_encoder_fns(model, query_tokenizer, document_tokenizer):
    """``(query_fn, document_fn)`` over a live DualEncoder and its tokenizers: lists of
    strings to ``[n, dim]`` embeddings, each batch padded to its longest text.

    An encoder that rejects the shorter length on the first call (e.g. a SavedModel whose
    signature fixes the sequence length) is used at the tokenizer's full length from then
    on, with a warning naming the error. This happens only when the first batch fails
    with a ValueError, TypeError or ``tf.errors.InvalidArgumentError`` trimmed and then
    encodes at the full length; an error that the full length raises too (so not about
    the length) is raised, as is any other kind of error.
    """
    trimmed = encoder_tf_functions(model, query_tokenizer, document_tokenizer, trim=True)
    chosen = [None, None]
    names = ("query", "document")
    # What an encoder that only takes its full sequence length raises on a shorter batch:
    # a fixed-length signature refuses the [B, None] input when traced (ValueError "Could
    # not find matching concrete function", TypeError "Binding inputs to tf.function
    # failed"), or a shape-dependent op fails when it runs (InvalidArgumentError).
    length_errors = (ValueError, TypeError, tf.errors.InvalidArgumentError)

    def call(tower, texts):
        texts = tf.constant(texts)
        if chosen[tower] is not None:
            return chosen[tower](texts)
        try:
            out = trimmed[tower](texts)
        except length_errors as trim_error:
            full = encoder_tf_functions(model, query_tokenizer, document_tokenizer,
                                        trim=False)[tower]
            try:
                out = full(texts)
            except Exception:  # noqa: BLE001 - fails at the full length too: not the length
                raise trim_error from None
            warnings.warn(
                f"The {names[tower]} encoder failed on a batch padded only to its longest "
                f"text ({_short(trim_error)}) but works at the tokenizer's full length; "
                "encoding every batch at the full length from now on (slower for short "
                "texts).", RuntimeWarning, stacklevel=3)
            chosen[tower] = full
            return out
        chosen[tower] = trimmed[tower]
        return out

    return (lambda texts: call(0, texts)), (lambda texts: call(1, texts))


def encode_by_length(encode_fn, texts, batch_size, *, lengths=None, progress=False,
                     desc="encoding"):
    """``encode_fn`` over ``texts`` in batches of similar length (longest first: by
    ``lengths`` if given, e.g. token counts, else by characters); the rows come back in the
    order of ``texts``."""
    texts = list(texts)
    order = length_order(texts if lengths is None else lengths)
    ordered = [texts[i] for i in order]
    out = None
    start = 0
    for rows in iter_encoded_batches(encode_fn, ordered, batch_size, progress=progress, desc=desc):
        if out is None:
            out = np.empty((len(texts), rows.shape[1]), rows.dtype)
        out[order[start:start + len(rows)]] = rows
        start += len(rows)
    if out is None:
        raise ValueError("texts is empty.")
    return out


def on_replicas(encode, strategy=None):
    """``encode`` (a function of row-aligned tensors: a 1-D string tensor, or a dict of
    ``[n, ...]`` arrays) spread over the replicas of ``strategy`` (default: the current
    one). Each replica encodes a contiguous slice of the rows (the last row repeated to
    even the slices out) and the slices are gathered back in order, those of other workers
    too under ``MultiWorkerMirroredStrategy`` (every worker must make the same call), so
    every worker gets every row. The call always goes through ``strategy.run``: a TF-Hub
    SavedModel's restored functions fail in cross-replica context inside a strategy scope
    (as in callbacks during ``fit``). Returns a NumPy function."""
    strategy = strategy or tf.distribute.get_strategy()
    replicas = strategy.num_replicas_in_sync

    def fn(inputs):
        if isinstance(inputs, (list, tuple)):
            inputs = np.asarray(as_text_list(inputs), dtype=object)
        n = len(tf.nest.flatten(inputs)[0])
        if n == 0:
            raise ValueError("no rows to encode.")
        per = -(-n // replicas)
        take = np.minimum(np.arange(per * replicas), n - 1)  # pad with the last row
        padded = tf.nest.map_structure(lambda a: np.asarray(a)[take], inputs)
        if replicas == 1:
            values = tf.nest.map_structure(tf.constant, padded)
        else:
            values = strategy.experimental_distribute_values_from_function(
                lambda ctx: tf.nest.map_structure(
                    lambda a: tf.constant(a[ctx.replica_id_in_sync_group * per:
                                            (ctx.replica_id_in_sync_group + 1) * per]),
                    padded))
        # a plain function around `encode`: handed a tf.function with an input signature,
        # strategy.run would pass it the PerReplica value itself
        result = strategy.run(lambda v: encode(v), args=(values,))
        if replicas > 1:
            # every replica holds `per` rows: the gather (in replica order) is the row order
            result = strategy.gather(result, axis=0)
        return np.asarray(result)[:n]

    return fn
