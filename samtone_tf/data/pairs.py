"""Training pairs and tokenised tf.data pipelines.

Pure Python / TensorFlow (no Keras). Tokenisation happens inside ``tf.data`` so that
models receive int32 ids and masks (string model inputs break Keras 3 ``fit`` under
``MirroredStrategy``); batches have a static size (``drop_remainder=True``) because the
cross-replica gathering in the losses needs it.
"""

import numpy as np
import tensorflow as tf

from samtone_tf import keys

__all__ = [
    "training_pairs_from_qrels",
    "dense_id_maps",
    "make_pair_dataset",
    "MAX_EXACT_FLOAT32_ID",
]

#: Labels are float32; integers above 2**24 are no longer exactly representable.
MAX_EXACT_FLOAT32_ID = 2**24


def training_pairs_from_qrels(corpus, queries, qrels):
    """Positive (query, document) pairs from relevance judgments.

    Args:
      corpus: doc id -> text. queries: query id -> text. qrels: query id -> {doc id: score}.

    Returns:
      list of ``(query_id, query_text, doc_id, doc_text)`` for every judgment with
      score > 0, in ``qrels`` order (queries, then their documents, as inserted).

    Raises:
      ValueError: a judgment names an id absent from ``corpus`` or ``queries``.
    """
    pairs = []
    for qid, judged in qrels.items():
        if qid not in queries:
            raise ValueError(f"qrels name query id {qid!r}, which is not in queries.")
        for doc_id, score in judged.items():
            if score <= 0:
                continue
            if doc_id not in corpus:
                raise ValueError(f"qrels for query {qid!r} name document id {doc_id!r}, which is not in corpus.")
            pairs.append((qid, queries[qid], doc_id, corpus[doc_id]))
    return pairs


def normalise_pairs(pairs):
    out = []
    for i, pair in enumerate(pairs):
        pair = tuple(pair)
        if len(pair) == 4:
            qid, qtext, did, dtext = pair
        elif len(pair) == 2:  # (query_text, doc_text): texts serve as ids
            qtext, dtext = pair
            qid, did = qtext, dtext
        else:
            raise ValueError(
                f"pair {i} has {len(pair)} fields; expected (query_id, query_text, doc_id, doc_text) "
                "or (query_text, doc_text)."
            )
        if not isinstance(qtext, str) or not isinstance(dtext, str):
            raise ValueError(f"pair {i}: query and document texts must be str.")
        out.append((qid, qtext, did, dtext))
    return out


def dense_id_maps(pairs, extra_document_ids=()):
    """Maps each distinct query id and document id to a dense integer.

    Ids are numbered in order of first appearance in ``pairs`` (query and document ids
    are separate spaces); ``extra_document_ids`` (e.g. mined hard negatives' ids) not among
    the pairs' documents are numbered after them. Returns ``(query_index, doc_index)`` dicts.

    Raises:
      ValueError: more than ``2**24`` distinct ids of one kind (not exact in float32).
    """
    query_index, doc_index = {}, {}
    for qid, _, did, _ in normalise_pairs(pairs):
        query_index.setdefault(qid, len(query_index))
        doc_index.setdefault(did, len(doc_index))
    for did in extra_document_ids:
        doc_index.setdefault(did, len(doc_index))
    for kind, index in (("query", query_index), ("document", doc_index)):
        if len(index) > MAX_EXACT_FLOAT32_ID:
            raise ValueError(
                f"{len(index)} distinct {kind} ids exceed 2**24, the largest count whose dense "
                "indices float32 labels represent exactly."
            )
    return query_index, doc_index


def split_tokenizers(tokenizer_or_tokenizers):
    if isinstance(tokenizer_or_tokenizers, (tuple, list)):
        if len(tokenizer_or_tokenizers) != 2:
            raise ValueError("Pass one tokenizer or a (query_tokenizer, document_tokenizer) pair.")
        return tuple(tokenizer_or_tokenizers)
    return tokenizer_or_tokenizers, tokenizer_or_tokenizers


def pair_features(query_tokenizer, document_tokenizer, query_texts, document_texts):
    """The model's int32 query/document features of a batch of texts (inside tf.data)."""
    features = {}
    for prefix, tokenizer, texts in ((keys.QUERY, query_tokenizer, query_texts),
                                     (keys.DOCUMENT, document_tokenizer, document_texts)):
        tokens = tokenizer(texts)
        for key in keys.TOKENIZER_KEYS:
            features[prefix + key] = tf.cast(tokens[key], tf.int32)
    return features


def add_grouped_features(features, tokenizer, texts, batch_size, count, prefix):
    """Tokenises ``texts`` ``[batch_size, count]`` (say, the hard negatives of each
    example) into ``features[prefix + key]`` int32 ``[batch_size, count, L]``."""
    tokens = tokenizer(tf.reshape(texts, [-1]))
    for key in keys.TOKENIZER_KEYS:
        value = tf.reshape(tf.cast(tokens[key], tf.int32), [batch_size, count, -1])
        features[prefix + key] = tf.ensure_shape(
            value, [batch_size, count, tokens[key].shape[-1]])
    return features


PADDINGS = ("longest", "max_length")
# Half-octave widths: a batch is padded at most ~1.5x past its longest text, and a length
# of 128 gives at most 7 shapes per side (few retraces; few XLA compilations).
DEFAULT_LENGTH_BUCKETS = (8, 16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512)


def check_padding(padding):
    """Returns ``padding`` or raises a ValueError naming ``PADDINGS``."""
    if padding not in PADDINGS:
        raise ValueError(f"`padding` must be one of {PADDINGS}; got {padding!r}")
    return padding


def check_length_buckets(length_buckets):
    if length_buckets is None:
        return DEFAULT_LENGTH_BUCKETS
    buckets = tuple(length_buckets)
    if not buckets or any(isinstance(b, bool) or not isinstance(b, (int, np.integer)) or b < 1
                          for b in buckets) or list(buckets) != sorted(set(buckets)):
        raise ValueError("`length_buckets` must be increasing positive ints; got "
                         f"{length_buckets!r}")
    return tuple(int(b) for b in buckets)


def trim_to_longest(features):
    """Cuts every ``[B, L]`` entry of ``features`` (``token_ids``, ``padding_mask``) to the
    longest text of the batch (keeping at least one position). The encoders mask padding,
    so the embeddings stay the same up to float rounding."""
    mask = features["padding_mask"]
    length = tf.maximum(tf.reduce_max(tf.reduce_sum(tf.cast(mask, tf.int32), axis=1)), 1)
    return {key: value[:, :length] for key, value in features.items()}


def bucket_width(width, max_length, length_buckets=None):
    """The padded width of a batch whose longest text has ``width`` tokens: the smallest
    bucket >= ``width`` (at least 1), capped at ``max_length`` (a scalar tensor)."""
    buckets = [b for b in check_length_buckets(length_buckets) if b < max_length]
    boundaries = tf.constant(buckets + [max_length], tf.int32)
    width = tf.clip_by_value(tf.cast(width, tf.int32), 1, max_length)
    index = tf.reduce_sum(tf.cast(boundaries < width, tf.int32))
    return tf.gather(boundaries, index)


def trim_to_bucket(features, prefix, length_buckets=None):
    """Cuts ``<prefix>token_ids`` / ``<prefix>padding_mask`` (``[..., L]``) to the bucket of
    their longest text (:func:`bucket_width`). The encoders mask padding, so this changes no
    embedding beyond float rounding and saves the work on padding."""
    ids_key, mask_key = prefix + "token_ids", prefix + "padding_mask"
    mask = features[mask_key]
    max_length = mask.shape[-1]
    if max_length is None:
        return features
    width = tf.reduce_max(tf.reduce_sum(tf.cast(mask, tf.int32), axis=-1))
    width = bucket_width(width, max_length, length_buckets)
    trimmed = dict(features)
    for key in (ids_key, mask_key):
        trimmed[key] = features[key][..., :width]
    return trimmed


def trim_all_to_buckets(features, length_buckets=None):
    """:func:`trim_to_bucket` for every tower input present in ``features``."""
    for prefix in keys.PREFIXES:
        if prefix + keys.TOKEN_IDS in features:
            features = trim_to_bucket(features, prefix, length_buckets)
    return features


def epoch_ordered_batches(columns, num_pairs, batch_size, shuffle, seed):
    """Endless batches whose order is a function of ``(seed, epoch)`` alone.

    Epoch ``e`` is a stateless permutation seeded by ``(seed, e)``, so every iterator of the
    dataset (and of ``dataset.skip(k)``) yields the same batches at the same positions,
    however many iterators were made before it (a ``shuffle(seed=...)`` dataset draws a new
    order per iterator; distribution strategies and resumed runs create extra ones).
    """
    table = {key: tf.constant(np.asarray(value) if key != "labels" else value)
             for key, value in columns.items()}
    seed = tf.constant(int(seed), tf.int64)

    def epoch_batches(epoch):
        order = tf.range(num_pairs, dtype=tf.int64)
        if shuffle:
            order = tf.random.experimental.stateless_shuffle(order, seed=tf.stack([seed, epoch]))
        return tf.data.Dataset.from_tensor_slices(order).batch(batch_size, drop_remainder=True)

    def gather(indices):
        return {key: tf.gather(value, indices) for key, value in table.items()}

    epochs = tf.data.Dataset.range(np.iinfo(np.int64).max)
    batches = epochs.flat_map(epoch_batches).map(gather)
    return batches.apply(tf.data.experimental.assert_cardinality(tf.data.INFINITE_CARDINALITY))


def make_pair_dataset(
    pairs,
    tokenizer_or_tokenizers,
    batch_size,
    *,
    shuffle=True,
    seed=0,
    repeat=False,
    hard_negatives=None,
    hard_negative_ids=None,
    padding="longest",
    length_buckets=None,
):
    """Batched, tokenised ``(features, labels)`` dataset of positive pairs.

    Args:
      pairs: sequence of ``(query_id, query_text, doc_id, doc_text)`` (as from
        :func:`training_pairs_from_qrels`) or ``(query_text, doc_text)`` (texts as ids).
      tokenizer_or_tokenizers: one tokenizer for both sides, or a
        ``(query_tokenizer, document_tokenizer)`` pair (lengths may differ). A tokenizer
        maps ``[B]`` strings to ``{"token_ids", "padding_mask"}`` int32 ``[B, L]``.
      batch_size: global batch size; batches are dropped if incomplete.
      shuffle: shuffle pairs (reshuffled each epoch, deterministically from ``seed``).
      seed: shuffle seed.
      repeat: repeat indefinitely (whole batches per epoch; a batch never straddles epochs).
        The order of a repeated dataset is then a function of ``(seed, epoch)`` alone: every
        iterator yields the same batches, which resumable training relies on. Without
        ``repeat`` each iteration (Keras epoch) reshuffles, and a second iterator of the
        same dataset object sees a different order than the first.
      hard_negatives: optional sequence (one per pair) of ``H`` document texts each.
      hard_negative_ids: optional sequence (one per pair) of the ``H`` hard negatives'
        document ids, in the id space of the pairs' document ids. Without it a hard negative
        is known by its text: one equal to a pair's document text has that document's id.
        A hard negative whose id is a positive of an anchor leaves that anchor's
        denominators (``SamToNeLoss(mask_duplicates=True)``).
      padding: ``"longest"`` (default): each side of a batch is padded to its longest
        text, rounded up to a length bucket (so only a few shapes are traced or compiled);
        ``"max_length"``: every text padded to its tokenizer's length (static shapes).
      length_buckets: increasing widths for ``"longest"`` (default
        ``DEFAULT_LENGTH_BUCKETS``: 8, 16, 24, 32, 48, 64, 96, 128, ...); the tokenizer's
        length is always the last bucket.

    Returns:
      ``tf.data.Dataset`` of ``(features, labels)``:
        - ``query_token_ids``, ``query_padding_mask``: int32 ``[B, Lq]`` (``Lq`` the
          batch's bucket with ``padding="longest"``, the tokenizer's length otherwise);
        - ``document_token_ids``, ``document_padding_mask``: int32 ``[B, Ld]``;
        - with hard negatives, ``hard_negative_document_token_ids`` /
          ``hard_negative_document_padding_mask``: int32 ``[B, H, Ld]``;
        - ``labels``: float32 ``[B, 2]`` = (dense query index, dense document index),
          see :func:`dense_id_maps`, and with hard negatives ``[B, 2 + H]``: then the
          hard negatives' dense document indices follow, one id per slot of the model's
          output. Examples with an equal query or document index are linked, and the losses
          mask linked examples and mined positives as false negatives.

    Raises:
      ValueError: bad ``batch_size`` (< 1 or more than the number of pairs), malformed
        pairs or hard negatives, or more than 2**24 distinct ids.
    """
    pairs = normalise_pairs(pairs)
    if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}.")
    if batch_size > len(pairs):
        raise ValueError(
            f"batch_size={batch_size} exceeds the {len(pairs)} pairs; with drop_remainder the "
            "dataset would be empty."
        )
    check_padding(padding)
    length_buckets = check_length_buckets(length_buckets)
    query_tokenizer, doc_tokenizer = split_tokenizers(tokenizer_or_tokenizers)
    if hard_negative_ids is not None and hard_negatives is None:
        raise ValueError("hard_negative_ids given without hard_negatives.")
    if hard_negatives is not None:
        hard_negatives = [list(h) for h in hard_negatives]
        if len(hard_negatives) != len(pairs):
            raise ValueError(
                f"hard_negatives has {len(hard_negatives)} entries for {len(pairs)} pairs; need one list per pair."
            )
        num_hard = len(hard_negatives[0])
        if num_hard == 0:
            raise ValueError("hard_negatives lists are empty; pass hard_negatives=None instead.")
        for i, h in enumerate(hard_negatives):
            if len(h) != num_hard:
                raise ValueError(f"hard_negatives[{i}] has {len(h)} texts; expected {num_hard} like hard_negatives[0].")
            if not all(isinstance(t, str) for t in h):
                raise ValueError(f"hard_negatives[{i}] must contain only str texts.")
        if hard_negative_ids is None:  # known by text: a pair's document text has its id
            by_text = {}
            for _, _, did, text in pairs:
                by_text.setdefault(text, did)
            hard_negative_ids = [[by_text.get(t, ("hard negative text", t)) for t in h]
                                 for h in hard_negatives]
        hard_negative_ids = [list(h) for h in hard_negative_ids]
        if [len(h) for h in hard_negative_ids] != [len(h) for h in hard_negatives]:
            raise ValueError("hard_negative_ids must hold one id per hard negative text "
                             "(the same lengths as hard_negatives).")
    query_index, doc_index = dense_id_maps(
        pairs, [i for h in (hard_negative_ids or []) for i in h])

    labels = [[query_index[p[0]], doc_index[p[2]]] for p in pairs]
    if hard_negatives is not None:
        labels = [row + [doc_index[i] for i in ids] for row, ids in zip(labels, hard_negative_ids)]
    columns = {
        "query_text": [p[1] for p in pairs],
        "document_text": [p[3] for p in pairs],
        "labels": np.array(labels, dtype=np.float32),
    }
    if hard_negatives is not None:
        columns["hard_negative_text"] = hard_negatives

    if repeat:
        ds = epoch_ordered_batches(columns, len(pairs), batch_size, shuffle, seed)
    else:
        ds = tf.data.Dataset.from_tensor_slices(columns)
        if shuffle:
            ds = ds.shuffle(len(pairs), seed=seed, reshuffle_each_iteration=True)
        ds = ds.batch(batch_size, drop_remainder=True)

    # Python control flow here is on static values only: skip (slow) AutoGraph conversion.
    @tf.autograph.experimental.do_not_convert
    def tokenize(batch):
        features = pair_features(query_tokenizer, doc_tokenizer, batch["query_text"],
                                 batch["document_text"])
        if "hard_negative_text" in batch:
            add_grouped_features(features, doc_tokenizer, batch["hard_negative_text"],
                                 batch_size, num_hard, keys.HARD_NEGATIVE_DOCUMENT)
        if padding == "longest":
            features = trim_all_to_buckets(features, length_buckets)
        return features, batch["labels"]

    ds = ds.map(tokenize, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    return ds.prefetch(tf.data.AUTOTUNE)
