"""The contrastive loss family: in-batch softmax, SamToNe, DANCE's dual objective, GTE's joint form.

Every variant is one call of :func:`contrastive_loss`; :class:`SamToNeLoss` wraps it as a
Keras loss for ``model.compile``.
"""

import math
import numbers

import numpy as np
import tensorflow as tf

from samtone_tf import _keras, keys
from samtone_tf._keras import keras, register_serializable
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


def _validate_tensors(q, d, hd, hq, qid, did, hdid=None, hqid=None):
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
    for name, ids, h, h_name, needs, needs_name in (
            ("hard_negative_document_ids", hdid, hd, "hard_negative_documents", did,
             "document_ids"),
            ("hard_negative_query_ids", hqid, hq, "hard_negative_queries", qid, "query_ids")):
        if ids is None:
            continue
        if h is None:
            raise ValueError(f"`{name}` given without `{h_name}`.")
        if needs is None:
            raise ValueError(
                f"`{name}` needs `{needs_name}`: a hard negative is dropped when its id is one "
                f"of the anchor's positives, which are known by their `{needs_name}`.")
        _static_rank(name, ids, 2)
        _same_dim(name, ids, q, 0, 0, "batch size")
        _same_dim(name, ids, h, 1, 1, "count", other=h_name)
    for name, ids in (("query_ids", qid), ("document_ids", did),
                      ("hard_negative_document_ids", hdid), ("hard_negative_query_ids", hqid)):
        if ids is not None and not ids.dtype.is_integer:
            raise ValueError(f"`{name}` must be integers, got {ids.dtype.name}.")


def _compute_dtype(x):
    # Half-precision inputs are promoted: logsumexp over a large batch in float16 loses
    # the positive's gradient, and float16's range is too small for scaled logits.
    return tf.float32 if x.dtype in (tf.float16, tf.bfloat16) else x.dtype


def _masked(logits, keep):
    """Logits with entries where ``keep`` is False set to the dtype's most negative value
    (``keep=None`` keeps every entry).

    The finite minimum (not -inf) keeps gradients NaN-free; after the max-subtraction of
    ``reduce_logsumexp`` such entries contribute exp(-huge) = 0 exactly, and ``tf.where``
    passes them no gradient.
    """
    if keep is None:
        return logits
    return tf.where(keep, logits, tf.fill(tf.shape(logits), logits.dtype.min))


def _any_match(group, ids, candidate_ids):
    """``[b, C]`` bool: whether ``candidate_ids[c]`` equals ``ids[j]`` for some ``j`` with
    ``group[i, j]`` (``group`` ``[b, B]`` bool, ``ids`` ``[B]``, ``candidate_ids`` ``[C]``).

    A 0/1 matrix product instead of a ``[b, B, C]`` boolean tensor: counts are exact in
    float32 below 2**24, far above any batch.
    """
    equal = tf.cast(tf.equal(ids[:, None], candidate_ids[None, :]), tf.float32)  # [B, C]
    return tf.matmul(tf.cast(group, tf.float32), equal) > 0


def _ce_from_parts(positive, parts):
    """-log softmax of ``positive`` over the concatenation of ``parts`` (each [b, k])."""
    return tf.reduce_logsumexp(tf.concat(parts, axis=1), axis=1) - positive


def contrastive_loss(queries, documents, *, temperature, similarity="cosine", same_tower="query",
                     bidirectional=False, dual_weight=1.0, partition="separate",
                     hard_negative_documents=None, hard_negative_queries=None,
                     query_ids=None, document_ids=None, hard_negative_document_ids=None,
                     hard_negative_query_ids=None):
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

    Self-similarities :math:`s(q_i, q_i)`, :math:`s(d_i, d_i)` never count.

    False negatives. Examples *i* and *j* are *linked* when they share a query id or a
    document id (``query_ids[i] == query_ids[j]`` or ``document_ids[i] == document_ids[j]``,
    for the ids given). No item of a linked example is a negative of the other: for a linked
    :math:`j \ne i`, :math:`q_j` and :math:`d_j` leave every row of anchor *i*
    (query->document, query->query, document->query, document->document; separate or joint
    partition). The positive :math:`s(q_i, d_i)` always stays. The *positives of* :math:`q_i`
    are the document ids of the examples sharing its query id (its own included); a
    hard-negative document whose id (``hard_negative_document_ids``) is one of them leaves
    anchor *i*'s rows. Likewise the *positives of* :math:`d_i` are the query ids of the
    examples sharing its document id, and a hard-negative query whose id
    (``hard_negative_query_ids``) is one of them leaves anchor *i*'s rows. Ids are gathered
    across replicas with the embeddings, so the rule holds over the global batch.

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
      query_ids: optional integer ``[b]``; examples with equal query ids are linked.
      document_ids: optional integer ``[b]``; examples with equal document ids are linked.
      hard_negative_document_ids: optional integer ``[b, H_d]``, the documents' ids in the
        space of ``document_ids`` (needs ``document_ids``).
      hard_negative_query_ids: optional integer ``[b, H_q]``, the queries' ids in the space
        of ``query_ids`` (needs ``query_ids``).

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
    qid, did, hdid, hqid = (None if ids is None else tf.convert_to_tensor(ids) for ids in (
        query_ids, document_ids, hard_negative_document_ids, hard_negative_query_ids))
    _validate_tensors(q, d, hd, hq, qid, did, hdid, hqid)
    qid, did, hdid, hqid = (None if ids is None else tf.cast(ids, tf.int64)
                            for ids in (qid, did, hdid, hqid))

    dtype = _compute_dtype(q)
    q, d = tf.cast(q, dtype), tf.cast(d, dtype)
    hd = None if hd is None else tf.cast(hd, dtype)
    hq = None if hq is None else tf.cast(hq, dtype)
    if similarity == "cosine":
        q, d = tf.math.l2_normalize(q, axis=-1), tf.math.l2_normalize(d, axis=-1)
        hd = None if hd is None else tf.math.l2_normalize(hd, axis=-1)
        hq = None if hq is None else tf.math.l2_normalize(hq, axis=-1)

    (g_q, g_d, g_hd, g_hq, g_qid, g_did, g_hdid, g_hqid), offset = gather_global_batch(
        (q, d, hd, hq, qid, did, hdid, hqid))
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
    is_self = tf.equal(rows[:, None], tf.range(global_b)[None, :])  # [b, B]
    same_query = same_document = is_self  # examples sharing anchor i's query / document
    if g_qid is not None:
        same_query = tf.equal(tf.gather(g_qid, rows)[:, None], g_qid[None, :])
    if g_did is not None:
        same_document = tf.equal(tf.gather(g_did, rows)[:, None], g_did[None, :])
    # an example always shares its own ids, so `unlinked` excludes the anchor itself too
    unlinked = tf.logical_not(same_query | same_document)  # may give negatives of anchor i
    hd_keep = hq_keep = None
    if g_hdid is not None:  # drop the hard-negative documents that are positives of q_i
        hd_keep = tf.logical_not(_any_match(same_query, g_did, tf.reshape(g_hdid, [-1])))
    if g_hqid is not None:  # drop the hard-negative queries that are positives of d_i
        hq_keep = tf.logical_not(_any_match(same_document, g_qid, tf.reshape(g_hqid, [-1])))

    positive = tf.reduce_sum(q * d, axis=-1) * inv_t  # s(q_i, d_i) = s(d_i, q_i)

    # Query -> document row: the positive column kept, linked examples' documents removed.
    query_parts = [_masked(sim(q, g_d), unlinked | is_self)]
    if g_hd is not None:
        query_parts.append(_masked(sim(q, g_hd), hd_keep))
    if same_tower in ("query", "both"):
        query_parts.append(_masked(sim(q, g_q), unlinked))

    doc_parts = []
    if bidirectional:
        doc_parts.append(_masked(sim(d, g_q), unlinked | is_self))
        if g_hq is not None:
            doc_parts.append(_masked(sim(d, g_hq), hq_keep))
        if same_tower in ("document", "both"):
            doc_parts.append(_masked(sim(d, g_d), unlinked))

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


_LABELS = ("`y_true` must be [batch, 2] (query id, document id) or [batch, slots] (the ids of "
           "every slot of `y_pred`) with `mask_duplicates=True`")


def _checked_labels(y_true, y_pred):
    """``y_true`` as a tensor, checked to be finite ids ``[batch, 2]`` (query id, document id)
    or ``[batch, slots]`` (one id per slot of ``y_pred``: query, document, hard negatives)."""
    if y_true is None:
        raise ValueError("`mask_duplicates=True` needs `y_true` = [batch, 2] (query id, "
                         "document id) or one id per slot of `y_pred`.")
    y_true = tf.convert_to_tensor(y_true)
    slots = y_pred.shape[1] if y_pred.shape.rank == 3 else None
    width = y_true.shape[1] if y_true.shape.rank == 2 else None
    if y_true.shape.rank is not None and (
            y_true.shape.rank != 2
            or (width is not None and width != 2 and (slots is None or width != slots))):
        raise ValueError(f"{_LABELS}, got shape {y_true.shape}"
                         + (f" for {slots} slots." if slots is not None else "."))
    _batch_matches(y_true, y_pred)
    if y_true.shape.rank is None or width is None:  # known only when it runs
        width_now = tf.shape(y_true)[-1]
        with tf.control_dependencies([tf.debugging.Assert(
                tf.logical_or(tf.equal(width_now, 2), tf.equal(width_now, tf.shape(y_pred)[1])),
                [_LABELS, tf.shape(y_true), tf.shape(y_pred)])]):
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
    return _keras.default_loss_reduction()


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
    ``y_true``  ``[b, 2]`` or ``[b, 2 + H_d + H_q]``     the id of each slot of ``y_pred``:
                                                         query id, document id, then the
                                                         hard-negative documents' and queries'
                                                         ids, as integers (exact in float32,
                                                         i.e. < 2**24); ``[b, 2]`` gives no ids
                                                         to the hard negatives. Used only with
                                                         ``mask_duplicates=True``.
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
        ids = {}
        if self.mask_duplicates:
            y_true = _checked_labels(y_true, y_pred)
            labels = tf.cast(tf.round(tf.cast(y_true, tf.float64)), tf.int64)
            ids = {keys.QUERY_IDS: labels[:, 0], keys.DOCUMENT_IDS: labels[:, 1]}
            width = y_true.shape[1]
            if width is None or width > 2:  # one id per slot: the hard negatives' ids too
                slot_ids = labels
                if width is None:  # [b, 2] or [b, slots], known only when it runs
                    # a [b, 2] label gives the hard negatives an id no example has
                    slot_ids = tf.cond(
                        tf.equal(tf.shape(labels)[1], tf.shape(y_pred)[1]), lambda: labels,
                        lambda: tf.concat([labels[:, :2], tf.fill(
                            [tf.shape(labels)[0], tf.shape(y_pred)[1] - 2], labels.dtype.min)],
                            axis=1))
                if has_hard_docs:
                    ids[keys.HARD_NEGATIVE_DOCUMENT_IDS] = slot_ids[:, 2:end]
                if hq_count:
                    ids[keys.HARD_NEGATIVE_QUERY_IDS] = slot_ids[:, end:]
        elif y_true is not None:
            _batch_matches(tf.convert_to_tensor(y_true), y_pred)
        return contrastive_loss(
            queries, documents, temperature=self.temperature, similarity=self.similarity,
            same_tower=self.same_tower, bidirectional=self.bidirectional,
            dual_weight=self.dual_weight, partition=self.partition,
            hard_negative_documents=hard_docs if has_hard_docs else None,
            hard_negative_queries=y_pred[:, end:] if hq_count else None, **ids)

    def get_config(self):
        config = super().get_config()
        config.update(
            temperature=self.temperature, similarity=self.similarity,
            same_tower=self.same_tower, bidirectional=self.bidirectional,
            dual_weight=self.dual_weight, partition=self.partition,
            num_hard_negative_queries=self.num_hard_negative_queries,
            mask_duplicates=self.mask_duplicates)
        return config
