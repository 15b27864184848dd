"""The contrastive loss family: in-batch softmax, SamToNe, DANCE's dual objective, GTE's joint form.

Every variant is one call of :func:`contrastive_loss`; :class:`SamToNeLoss` wraps it as a
Keras loss for ``model.compile``.
"""

import math
import numbers

import numpy as np
import tensorflow as tf

from samtone_tf._keras import IS_KERAS3, keras, register_serializable
from samtone_tf.distribute import gather_global_batch

SIMILARITIES = ("cosine", "dot")
SAME_TOWER = ("none", "query", "document", "both")
PARTITIONS = ("separate", "joint")


def _check_choice(name, value, choices):
    if value not in choices:
        raise ValueError(f"`{name}` must be one of {choices}, got {value!r}.")


def _check_temperature_value(value):
    if not value > 0:
        raise ValueError(f"`temperature` must be > 0, got {value!r}.")
    if not math.isfinite(value):
        raise ValueError(f"`temperature` must be finite, got {value!r}.")


def validate_loss_options(*, temperature, similarity, same_tower, bidirectional, dual_weight,
                          partition, has_hard_negative_queries=False):
    """Raises ``ValueError`` for option values the loss cannot honour.

    A tensor ``temperature`` is checked when its value is known (eager or constant);
    a symbolic one cannot be checked here.
    """
    if tf.is_tensor(temperature):
        value = tf.get_static_value(temperature)
        if value is not None:
            if np.ndim(value) != 0:
                raise ValueError(f"`temperature` must be a scalar, got shape {np.shape(value)}.")
            _check_temperature_value(float(value))
    elif isinstance(temperature, bool) or not isinstance(temperature, numbers.Real):
        raise ValueError(f"`temperature` must be a positive number, got {temperature!r}.")
    else:
        _check_temperature_value(temperature)
    _check_choice("similarity", similarity, SIMILARITIES)
    _check_choice("same_tower", same_tower, SAME_TOWER)
    _check_choice("partition", partition, PARTITIONS)
    if not isinstance(bidirectional, bool):
        raise ValueError(f"`bidirectional` must be a bool, got {bidirectional!r}.")
    if (isinstance(dual_weight, bool) or not isinstance(dual_weight, numbers.Real)
            or not math.isfinite(dual_weight) or dual_weight < 0):
        raise ValueError(f"`dual_weight` must be a finite number >= 0, got {dual_weight!r}.")
    if same_tower == "document" and not bidirectional:
        raise ValueError(
            '`same_tower="document"` adds document-document negatives to the document->query '
            "row, which only exists with `bidirectional=True`.")
    if has_hard_negative_queries and not bidirectional:
        raise ValueError(
            "`hard_negative_queries` are negatives of the document->query row, which only "
            "exists with `bidirectional=True`.")
    if partition == "joint" and dual_weight != 1:
        raise ValueError(
            '`dual_weight` must be 1 with `partition="joint"`: the joint partition has one '
            f"softmax per anchor and nothing to weight (got dual_weight={dual_weight!r}).")


def _static_rank(name, x, rank):
    if x.shape.rank is not None and x.shape.rank != rank:
        raise ValueError(f"`{name}` must have rank {rank}, got shape {x.shape}.")


def _same_dim(name, a, b, axis_a, axis_b, what, other="queries"):
    da, db = a.shape[axis_a], b.shape[axis_b]
    if da is not None and db is not None and da != db:
        raise ValueError(f"`{name}` {what} {da} does not match `{other}` ({db}).")


def _validate_tensors(q, d, hd, hq, qid, did):
    _static_rank("queries", q, 2)
    _static_rank("documents", d, 2)
    if q.shape[0] == 0:
        raise ValueError(f"`queries` is an empty batch (shape {q.shape}); the loss needs >= 1 example.")
    if q.shape[-1] == 0 or d.shape[-1] == 0:
        raise ValueError(f"embeddings have dimension 0 (`queries` {q.shape}, `documents` {d.shape}).")
    for name, x in (("queries", q), ("documents", d), ("hard_negative_documents", hd),
                    ("hard_negative_queries", hq)):
        if x is not None and not x.dtype.is_floating:
            raise ValueError(f"`{name}` must be floating point, got {x.dtype.name}.")
    _same_dim("documents", d, q, -1, -1, "embedding dimension")
    _same_dim("documents", d, q, 0, 0, "batch size")
    for name, h in (("hard_negative_documents", hd), ("hard_negative_queries", hq)):
        if h is not None:
            _static_rank(name, h, 3)
            _same_dim(name, h, q, -1, -1, "embedding dimension")
            _same_dim(name, h, q, 0, 0, "batch size")
    for name, ids in (("query_ids", qid), ("document_ids", did)):
        if ids is not None:
            _static_rank(name, ids, 1)
            _same_dim(name, ids, q, 0, 0, "batch size")


def _compute_dtype(x):
    # Half-precision inputs are promoted: logsumexp over a large batch in float16 loses
    # the positive's gradient, and float16's range is too small for scaled logits.
    return tf.float32 if x.dtype in (tf.float16, tf.bfloat16) else x.dtype


def _masked(logits, keep):
    """Logits with entries where ``keep`` is False set to the dtype's most negative value.

    The finite minimum (not -inf) keeps gradients NaN-free; after the max-subtraction of
    ``reduce_logsumexp`` such entries contribute exp(-huge) = 0 exactly.
    """
    return tf.where(keep, logits, tf.fill(tf.shape(logits), logits.dtype.min))


def _ce_from_parts(positive, parts):
    """-log softmax of ``positive`` over the concatenation of ``parts`` (each [b, k])."""
    return tf.reduce_logsumexp(tf.concat(parts, axis=1), axis=1) - positive


def contrastive_loss(queries, documents, *, temperature, similarity="cosine", same_tower="query",
                     bidirectional=False, dual_weight=1.0, partition="separate",
                     hard_negative_documents=None, hard_negative_queries=None,
                     query_ids=None, document_ids=None):
    r"""Per-example contrastive loss of a dual encoder, with same-tower negatives.

    With :math:`s(a, b)` the cosine (or dot) similarity divided by :math:`\tau`, the
    query->document row of anchor *i* has the positive :math:`s(q_i, d_i)` and the negatives

    * :math:`s(q_i, d_j)`, :math:`j \ne i` (in-batch documents),
    * :math:`s(q_i, n)` for every hard-negative document *n* of every example,
    * :math:`s(q_i, q_j)`, :math:`j \ne i`, when ``same_tower`` is ``"query"`` or ``"both"``
      (SamToNe's same-tower negatives).

    With ``bidirectional=True`` the document->query row (DANCE's query-retrieval objective)
    has the positive :math:`s(d_i, q_i)` and the negatives :math:`s(d_i, q_j)` (:math:`j \ne i`),
    :math:`s(d_i, m)` for every hard-negative query *m*, and :math:`s(d_i, d_j)`
    (:math:`j \ne i`) when ``same_tower`` is ``"document"`` or ``"both"``.

    * ``partition="separate"``: :math:`L_i = CE_{q \to d}(i) + w \cdot CE_{d \to q}(i)`, with
      ``w = dual_weight`` (SamToNe's symmetric loss with ``w = 1``; DANCE uses ``w = 0.1``).
    * ``partition="joint"`` (GTE's improved contrastive loss): one softmax over every enabled
      term of both rows, :math:`L_i = -s(q_i, d_i) + \log\sum \exp(\text{all terms})`; the
      positive then appears twice in the partition when bidirectional.

    Self-similarities :math:`s(q_i, q_i)`, :math:`s(d_i, d_i)` never count. When
    ``document_ids`` is given, every :math:`d_j` (:math:`j \ne i`) with ``document_ids[j] ==
    document_ids[i]`` leaves every denominator of anchor *i* (it is a false negative);
    likewise ``query_ids`` for :math:`q_j`.

    Inside a replica context with several replicas, queries, documents, hard negatives and ids
    of every replica are all-gathered (with gradients) and the local rows' losses are
    computed against the global batch, so the result equals one device on the same global
    batch.

    Args:
      queries: ``[b, dim]`` query embeddings.
      documents: ``[b, dim]`` embeddings of each query's positive document.
      temperature: positive float :math:`\tau` dividing every similarity.
      similarity: ``"cosine"`` (inputs are L2-normalised here) or ``"dot"``.
      same_tower: ``"none"`` (plain in-batch softmax), ``"query"``, ``"document"`` or ``"both"``.
      bidirectional: add the document->query row.
      dual_weight: weight of the document->query row with ``partition="separate"``.
      partition: ``"separate"`` or ``"joint"``.
      hard_negative_documents: optional ``[b, H_d, dim]``.
      hard_negative_queries: optional ``[b, H_q, dim]`` (needs ``bidirectional``).
      query_ids: optional integer ``[b]``; equal ids mark duplicate queries.
      document_ids: optional integer ``[b]``; equal ids mark duplicate documents.

    Returns:
      ``[b]`` per-example losses of the local rows, in float32 for half-precision inputs
      (the input dtype otherwise). Reduce with a mean over the global batch, never a sum.

    References:
      Moiseev et al., "SamToNe: Improving Contrastive Loss for Dual Encoder Retrieval Models
      with Same Tower Negatives", Findings of ACL 2023, arXiv:2306.02516.
      Li et al., "More Robust Dense Retrieval with Contrastive Dual Learning" (DANCE), ICTIR
      2021, arXiv:2107.07773.
    """
    validate_loss_options(temperature=temperature, similarity=similarity, same_tower=same_tower,
                          bidirectional=bidirectional, dual_weight=dual_weight,
                          partition=partition,
                          has_hard_negative_queries=hard_negative_queries is not None)
    q = tf.convert_to_tensor(queries)
    d = tf.convert_to_tensor(documents)
    hd = None if hard_negative_documents is None else tf.convert_to_tensor(hard_negative_documents)
    hq = None if hard_negative_queries is None else tf.convert_to_tensor(hard_negative_queries)
    qid = None if query_ids is None else tf.convert_to_tensor(query_ids)
    did = None if document_ids is None else tf.convert_to_tensor(document_ids)
    _validate_tensors(q, d, hd, hq, qid, did)

    dtype = _compute_dtype(q)
    q, d = tf.cast(q, dtype), tf.cast(d, dtype)
    hd = None if hd is None else tf.cast(hd, dtype)
    hq = None if hq is None else tf.cast(hq, dtype)
    if similarity == "cosine":
        q, d = tf.math.l2_normalize(q, axis=-1), tf.math.l2_normalize(d, axis=-1)
        hd = None if hd is None else tf.math.l2_normalize(hd, axis=-1)
        hq = None if hq is None else tf.math.l2_normalize(hq, axis=-1)

    (g_q, g_d, g_hd, g_hq, g_qid, g_did), offset = gather_global_batch((q, d, hd, hq, qid, did))
    dim = tf.shape(q)[-1]
    if g_hd is not None:
        g_hd = tf.reshape(g_hd, [-1, dim])  # every example's hard negatives, [B * H_d, dim]
    if g_hq is not None:
        g_hq = tf.reshape(g_hq, [-1, dim])

    if tf.is_tensor(temperature):
        inv_t = 1.0 / tf.cast(temperature, dtype)
    else:  # tf.cast of a Python float would round it through float32 first
        try:
            inv = 1.0 / float(temperature)
        except OverflowError:
            inv = math.inf
        if not inv <= float(dtype.max):
            raise ValueError(f"`temperature` {temperature!r} is too small for {dtype.name}: "
                             "1 / temperature overflows.")
        inv_t = tf.constant(inv, dtype)

    def sim(a, b):
        return tf.matmul(a, b, transpose_b=True) * inv_t

    b = tf.shape(q)[0]
    global_b = tf.shape(g_q)[0]
    rows = tf.range(b) + offset  # the local anchors' positions in the global batch
    cols = tf.range(global_b)
    not_self = tf.not_equal(rows[:, None], cols[None, :])  # [b, B]
    keep_d = not_self  # which d_j may be negatives of anchor i
    keep_q = not_self
    if g_did is not None:
        local_did = tf.gather(g_did, rows)
        keep_d = keep_d & tf.not_equal(local_did[:, None], g_did[None, :])
    if g_qid is not None:
        local_qid = tf.gather(g_qid, rows)
        keep_q = keep_q & tf.not_equal(local_qid[:, None], g_qid[None, :])
    is_self = tf.logical_not(not_self)

    positive = tf.reduce_sum(q * d, axis=-1) * inv_t  # s(q_i, d_i) = s(d_i, q_i)

    # Query -> document row: positive column kept, in-batch duplicates removed.
    qd = _masked(sim(q, g_d), keep_d | is_self)
    query_parts = [qd]
    if g_hd is not None:
        query_parts.append(sim(q, g_hd))
    if same_tower in ("query", "both"):
        query_parts.append(_masked(sim(q, g_q), keep_q))

    doc_parts = []
    if bidirectional:
        doc_parts.append(_masked(sim(d, g_q), keep_q | is_self))
        if g_hq is not None:
            doc_parts.append(sim(d, g_hq))
        if same_tower in ("document", "both"):
            doc_parts.append(_masked(sim(d, g_d), keep_d))

    if partition == "joint":
        return _ce_from_parts(positive, query_parts + doc_parts)
    loss = _ce_from_parts(positive, query_parts)
    if bidirectional:
        loss += tf.constant(dual_weight, dtype) * _ce_from_parts(positive, doc_parts)
    return loss


def _batch_matches(y_true, y_pred):
    if (y_true.shape.rank and y_pred.shape.rank and y_true.shape[0] is not None
            and y_pred.shape[0] is not None and y_true.shape[0] != y_pred.shape[0]):
        raise ValueError(f"`y_true` has batch size {y_true.shape[0]} but `y_pred` has "
                         f"{y_pred.shape[0]} (shapes {y_true.shape} and {y_pred.shape}).")


def _checked_labels(y_true, y_pred):
    """``y_true`` as a tensor, checked to be ``[batch, 2]`` finite (query id, document id)."""
    if y_true is None:
        raise ValueError("`mask_duplicates=True` needs `y_true` = [batch, 2] (query id, document id).")
    y_true = tf.convert_to_tensor(y_true)
    if y_true.shape.rank is not None and (y_true.shape.rank != 2 or y_true.shape[1] not in (None, 2)):
        raise ValueError("`y_true` must be [batch, 2] (query id, document id) with "
                         f"`mask_duplicates=True`, got shape {y_true.shape}.")
    _batch_matches(y_true, y_pred)
    if y_true.shape.rank is None or y_true.shape[1] is None:  # known only when it runs
        with tf.control_dependencies([tf.debugging.assert_equal(
                tf.shape(y_true)[-1], 2, message="`y_true` must be [batch, 2] (query id, "
                "document id) with `mask_duplicates=True`")]):
            y_true = tf.identity(y_true)
    if not (y_true.dtype.is_floating or y_true.dtype.is_integer):
        raise ValueError(f"`y_true` ids must be numbers, got {y_true.dtype.name}.")
    if y_true.dtype.is_floating:
        if tf.executing_eagerly():
            if not np.all(np.isfinite(y_true.numpy())):
                raise ValueError("`y_true` ids must be finite, got NaN or infinity.")
        else:
            y_true = tf.debugging.assert_all_finite(
                y_true, "`y_true` ids must be finite (query id, document id), got NaN or infinity")
    return y_true


def _default_reduction():
    return "sum_over_batch_size" if IS_KERAS3 else keras.losses.Reduction.AUTO


@register_serializable("SamToNeLoss")
class SamToNeLoss(keras.losses.Loss):
    r"""Keras loss for dual encoders: in-batch softmax, SamToNe, DANCE dual, GTE joint.

    Wraps :func:`samtone_tf.contrastive_loss` for ``model.compile(loss=...)``.

    Inputs:

    ==========  =======================================  ==========================================
    argument    shape                                    meaning
    ==========  =======================================  ==========================================
    ``y_pred``  ``[b, 2 + H_d + H_q, dim]``              slot 0: query, slot 1: its positive
                                                         document, then ``H_d`` hard-negative
                                                         documents, then the last
                                                         ``num_hard_negative_queries`` slots:
                                                         hard-negative queries. This is what
                                                         :class:`samtone_tf.DualEncoder` outputs.
    ``y_true``  ``[b, 2]``                               (query id, document id) as integers
                                                         (exact in float32, i.e. < 2**24); used
                                                         only with ``mask_duplicates=True``.
    ==========  =======================================  ==========================================

    For anchor *i*, with :math:`s = \text{sim}/\tau`:

    .. math::

       L_q(i) = -\log \frac{e^{s(q_i,d_i)}}{\sum_j e^{s(q_i,d_j)} + \sum_h e^{s(q_i,n_h)}
                + \sum_{j\ne i} e^{s(q_i,q_j)}}

    and, with ``bidirectional=True``, :math:`L_d(i)` with the roles of queries and documents
    exchanged; the loss is :math:`L_q + w L_d` (``partition="separate"``) or one joint
    softmax over all terms (``partition="joint"``). ``same_tower`` selects which same-tower
    terms are present: ``"none"`` gives the plain in-batch softmax (TFRS ``Retrieval``,
    sentence-transformers' ``MultipleNegativesRankingLoss``), ``"query"`` SamToNe,
    ``"both"`` + ``bidirectional`` SamToNe's symmetric form; ``bidirectional`` with
    ``dual_weight=0.1`` is DANCE's dual objective; ``partition="joint"`` is GTE's improved
    contrastive loss. Under a ``tf.distribute`` strategy the negatives come from the global
    batch (replicas are all-gathered) and the reduction is a mean over the global batch.

    Example:

    >>> loss = SamToNeLoss(temperature=0.05, same_tower="query")
    >>> model.compile(optimizer="adam", loss=loss)  # model: samtone_tf.DualEncoder

    For a learnable temperature, build ``DualEncoder(learnable_temperature=True)`` and use
    ``SamToNeLoss(similarity="dot", temperature=1.0)``: the model scales normalised
    embeddings so that dot products are cosine / tau with a trained tau.

    References:
      Moiseev et al., Findings of ACL 2023, arXiv:2306.02516 (SamToNe).
      Li et al., ICTIR 2021, arXiv:2107.07773 (DANCE).
    """

    def __init__(self, temperature=0.05, similarity="cosine", same_tower="query",
                 bidirectional=False, dual_weight=1.0, partition="separate",
                 num_hard_negative_queries=0, mask_duplicates=False,
                 reduction=None, name="samtone_loss", **kwargs):
        if reduction is None:
            reduction = _default_reduction()
        super().__init__(reduction=reduction, name=name, **kwargs)
        if (isinstance(num_hard_negative_queries, bool)
                or not isinstance(num_hard_negative_queries, numbers.Integral)
                or num_hard_negative_queries < 0):
            raise ValueError("`num_hard_negative_queries` must be an integer >= 0, got "
                             f"{num_hard_negative_queries!r}.")
        validate_loss_options(temperature=temperature, similarity=similarity,
                              same_tower=same_tower, bidirectional=bidirectional,
                              dual_weight=dual_weight, partition=partition,
                              has_hard_negative_queries=num_hard_negative_queries > 0)
        self.temperature = float(temperature)
        self.similarity = similarity
        self.same_tower = same_tower
        self.bidirectional = bidirectional
        self.dual_weight = float(dual_weight)
        self.partition = partition
        self.num_hard_negative_queries = int(num_hard_negative_queries)
        if not isinstance(mask_duplicates, bool):
            raise ValueError(f"`mask_duplicates` must be a bool, got {mask_duplicates!r}.")
        self.mask_duplicates = mask_duplicates

    def call(self, y_true, y_pred):
        y_pred = tf.convert_to_tensor(y_pred)
        if y_pred.shape.rank is not None and y_pred.shape.rank != 3:
            raise ValueError("`y_pred` must be [batch, 2 + hard negatives, dim] (the output of "
                             f"DualEncoder), got shape {y_pred.shape}.")
        slots = y_pred.shape[1]
        hq_count = self.num_hard_negative_queries
        if slots is not None and slots < 2 + hq_count:
            raise ValueError(f"`y_pred` has {slots} slots; it needs 2 (query, document) + "
                             f"num_hard_negative_queries={hq_count}.")
        queries, documents = y_pred[:, 0], y_pred[:, 1]
        end = tf.shape(y_pred)[1] - hq_count
        hard_docs = y_pred[:, 2:end]
        has_hard_docs = slots is None or slots > 2 + hq_count
        query_ids = document_ids = None
        if self.mask_duplicates:
            y_true = _checked_labels(y_true, y_pred)
            ids = tf.cast(tf.round(tf.cast(y_true, tf.float64)), tf.int64)
            query_ids, document_ids = ids[:, 0], ids[:, 1]
        elif y_true is not None:
            _batch_matches(tf.convert_to_tensor(y_true), y_pred)
        return contrastive_loss(
            queries, documents, temperature=self.temperature, similarity=self.similarity,
            same_tower=self.same_tower, bidirectional=self.bidirectional,
            dual_weight=self.dual_weight, partition=self.partition,
            hard_negative_documents=hard_docs if has_hard_docs else None,
            hard_negative_queries=y_pred[:, end:] if hq_count else None,
            query_ids=query_ids, document_ids=document_ids)

    def get_config(self):
        config = super().get_config()
        config.update(
            temperature=self.temperature, similarity=self.similarity,
            same_tower=self.same_tower, bidirectional=self.bidirectional,
            dual_weight=self.dual_weight, partition=self.partition,
            num_hard_negative_queries=self.num_hard_negative_queries,
            mask_duplicates=self.mask_duplicates)
        return config
