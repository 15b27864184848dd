"""Property / fuzz tests: every loss option and input shape, and malformed data files.

Each generated case must end in a correct result (checked against an independent oracle:
the NumPy loop reference for the losses, what the file says for the loaders) or a clear
``ValueError`` / ``FileNotFoundError`` naming the problem (the option, the tensor, the file
and line or location), never an error from deep inside TensorFlow or a silent wrong answer.

Hypothesis runs derandomized, without an example database and with small example budgets,
so the file is reproducible and quick on CI (both Keras generations).
"""

import copy
import json
import math
import os
import re
import tempfile
import warnings

import numpy as np
import pytest
import tensorflow as tf
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from samtone_tf import SamToNeLoss, contrastive_loss, reqa
from samtone_tf.data import load_beir, make_pair_dataset, training_pairs_from_qrels
from samtone_tf.evaluation import load_eval_data
from tests.numpy_reference import reference_loss

FUZZ = settings(deadline=None, derandomize=True, database=None, print_blob=False,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


def _settings(max_examples):
    return settings(FUZZ, max_examples=max_examples)


# =============================================================================== losses

TEMPERATURES = st.one_of(
    st.sampled_from([1e-4, 1e-3, 0.01, 0.05, 1.0, 100.0, 1e4]),
    st.floats(min_value=1e-3, max_value=1e3, allow_nan=False, allow_infinity=False),
)


@st.composite
def loss_cases(draw):
    """A valid option set with matching inputs (NumPy arrays, float32 or float64)."""
    bidirectional = draw(st.booleans())
    same_tower = draw(st.sampled_from(
        ["none", "query", "document", "both"] if bidirectional else ["none", "query", "both"]))
    partition = draw(st.sampled_from(["separate", "joint"]))
    dual_weight = 1.0 if partition == "joint" else draw(
        st.sampled_from([0.0, 0.1, 1.0, 2.5]))
    b = draw(st.integers(1, 6))
    dim = draw(st.integers(1, 5))
    h_d = draw(st.integers(0, 3))
    h_q = draw(st.integers(0, 2)) if bidirectional else 0
    dtype = draw(st.sampled_from([np.float32, np.float64]))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))

    def vectors(*shape):
        x = rng.normal(size=shape + (dim,))
        x[np.linalg.norm(x, axis=-1) < 1e-3] = 1.0  # cosine needs a direction
        return x

    q, d = vectors(b), vectors(b)
    if b > 1 and draw(st.booleans()):  # an exact duplicate row: ties everywhere
        q[-1], d[-1] = q[0], d[0]
    kwargs = dict(temperature=draw(TEMPERATURES), similarity=draw(st.sampled_from(["cosine", "dot"])),
                  same_tower=same_tower, bidirectional=bidirectional, dual_weight=dual_weight,
                  partition=partition)
    if h_d or draw(st.booleans()):
        kwargs["hard_negative_documents"] = vectors(b, h_d)
    if h_q:
        kwargs["hard_negative_queries"] = vectors(b, h_q)
    if draw(st.booleans()):  # ids from a small range: duplicates are likely
        kwargs["query_ids"] = np.array(draw(st.lists(st.integers(0, 3), min_size=b, max_size=b)))
        kwargs["document_ids"] = np.array(draw(st.lists(st.integers(0, 3), min_size=b, max_size=b)))
    cast = {k: v.astype(dtype) for k, v in kwargs.items() if k.startswith("hard")}
    return q.astype(dtype), d.astype(dtype), {**kwargs, **cast}


def _tolerance(q, d, kwargs):
    """Absolute tolerance: a few ulps of the largest logit (|logit| <= scale) per term."""
    eps = np.finfo(q.dtype).eps
    if kwargs["similarity"] == "cosine":
        scale = 1.0 / kwargs["temperature"]
    else:
        norms = [np.linalg.norm(x, axis=-1).max() for x in
                 (q, d, kwargs.get("hard_negative_documents"), kwargs.get("hard_negative_queries"))
                 if x is not None and x.size]
        scale = max(norms) ** 2 / kwargs["temperature"]
    return float(64 * eps * (1.0 + scale))


@_settings(60)
@given(case=loss_cases(), in_graph=st.booleans())
def test_loss_matches_reference(case, in_graph):
    q, d, kwargs = case
    expected = reference_loss(q.astype(np.float64), d.astype(np.float64), **{
        k: (v.astype(np.float64) if k.startswith("hard") else v) for k, v in kwargs.items()})
    if in_graph:
        tensors = {k: v for k, v in kwargs.items() if isinstance(v, np.ndarray)}
        options = {k: v for k, v in kwargs.items() if k not in tensors}

        @tf.function
        def fn(q, d, tensors):
            return contrastive_loss(q, d, **tensors, **options)

        got = fn(q, d, tensors).numpy()
    else:
        got = contrastive_loss(q, d, **kwargs).numpy()
    assert got.shape == (len(q),) and got.dtype == q.dtype
    assert np.all(np.isfinite(got))
    np.testing.assert_allclose(got, expected, rtol=0, atol=_tolerance(q, d, kwargs))


@_settings(30)
@given(case=loss_cases(), mask=st.booleans())
def test_keras_loss_matches_reference(case, mask):
    q, d, kwargs = case
    b = len(q)
    hd = kwargs.pop("hard_negative_documents", None)
    hq = kwargs.pop("hard_negative_queries", None)
    qid = kwargs.pop("query_ids", np.arange(b))
    did = kwargs.pop("document_ids", np.arange(b))
    parts = [q[:, None], d[:, None]] + [h for h in (hd, hq) if h is not None]
    y_pred = np.concatenate(parts, axis=1).astype(np.float32)
    y_true = np.stack([qid, did], axis=1).astype(np.float32)
    loss = SamToNeLoss(num_hard_negative_queries=0 if hq is None else hq.shape[1],
                       mask_duplicates=mask, **kwargs)
    ids = dict(query_ids=qid, document_ids=did) if mask else {}
    expected = reference_loss(q, d, hard_negative_documents=hd, hard_negative_queries=hq,
                              **ids, **kwargs).mean()
    got = float(loss(y_true, y_pred))
    assert got == pytest.approx(expected, abs=_tolerance(y_pred, y_pred, dict(
        kwargs, hard_negative_documents=hd, hard_negative_queries=hq)) * 4, rel=1e-5)


# ---- invalid inputs: (arguments, expected message) ----

def _ones(*shape, dtype=np.float32):
    return np.ones(shape, dtype)


Q2, D2 = _ones(3, 4), np.arange(12, dtype=np.float32).reshape(3, 4) + 1

BAD_LOSS_CALLS = [
    # options
    (dict(temperature=0.0), r"`temperature` must be > 0"),
    (dict(temperature=-0.5), r"`temperature` must be > 0"),
    (dict(temperature=math.nan), r"`temperature` must be > 0, got nan"),
    (dict(temperature=math.inf), r"`temperature` must be finite"),
    (dict(temperature=None), r"`temperature` must be a positive number"),
    (dict(temperature=True), r"`temperature` must be a positive number"),
    (dict(temperature="0.1"), r"`temperature` must be a positive number"),
    (dict(temperature=1e-300), r"`temperature` 1e-300 is too small for float32"),
    (dict(temperature=tf.constant(-1.0)), r"`temperature` must be > 0"),
    (dict(temperature=tf.constant([0.1, 0.2])), r"`temperature` must be a scalar"),
    (dict(temperature=0.1, similarity="L2"), r"`similarity` must be one of"),
    (dict(temperature=0.1, similarity=None), r"`similarity` must be one of"),
    (dict(temperature=0.1, same_tower="Query"), r"`same_tower` must be one of"),
    (dict(temperature=0.1, partition="sum"), r"`partition` must be one of"),
    (dict(temperature=0.1, bidirectional=1), r"`bidirectional` must be a bool"),
    (dict(temperature=0.1, bidirectional=True, dual_weight=-0.1), r"`dual_weight` must be"),
    (dict(temperature=0.1, bidirectional=True, dual_weight=math.nan), r"`dual_weight` must be a finite"),
    (dict(temperature=0.1, bidirectional=True, dual_weight=math.inf), r"`dual_weight` must be a finite"),
    (dict(temperature=0.1, bidirectional=True, dual_weight="1"), r"`dual_weight` must be"),
    (dict(temperature=0.1, partition="joint", bidirectional=True, dual_weight=0.5),
     r"`dual_weight` must be 1 with `partition=\"joint\"`"),
    (dict(temperature=0.1, same_tower="document"), r"bidirectional=True"),
    (dict(temperature=0.1, hard_negative_queries=_ones(3, 1, 4)), r"`hard_negative_queries`"),
    # tensors
    (dict(queries=_ones(3, 4, 1)), r"`queries` must have rank 2"),
    (dict(queries=_ones(4)), r"`queries` must have rank 2"),
    (dict(documents=_ones(2, 4)), r"`documents` batch size 2 does not match"),
    (dict(documents=_ones(3, 5)), r"`documents` embedding dimension 5 does not match"),
    (dict(queries=_ones(0, 4), documents=_ones(0, 4)), r"empty batch"),
    (dict(queries=_ones(3, 0), documents=_ones(3, 0)), r"dimension 0"),
    (dict(queries=np.ones((3, 4), np.int32)), r"`queries` must be floating point"),
    (dict(documents=np.full((3, 4), "x")), r"`documents` must be floating point"),
    (dict(hard_negative_documents=_ones(3, 4)), r"`hard_negative_documents` must have rank 3"),
    (dict(hard_negative_documents=_ones(2, 1, 4)), r"`hard_negative_documents` batch size"),
    (dict(hard_negative_documents=_ones(3, 1, 2)), r"`hard_negative_documents` embedding dimension"),
    (dict(bidirectional=True, hard_negative_queries=_ones(3, 1, 3)),
     r"`hard_negative_queries` embedding dimension"),
    (dict(query_ids=[1, 2]), r"`query_ids` batch size 2"),
    (dict(document_ids=[[1, 2, 3]]), r"`document_ids` must have rank 1"),
]


def _call_loss(spec, in_graph):
    spec = dict(spec)
    q = spec.pop("queries", Q2)
    d = spec.pop("documents", D2)
    spec.setdefault("temperature", 0.1)
    if not in_graph:
        return contrastive_loss(q, d, **spec)
    tensors = {k: v for k, v in spec.items() if isinstance(v, np.ndarray)}
    options = {k: v for k, v in spec.items() if k not in tensors}
    return tf.function(lambda q, d, t: contrastive_loss(q, d, **t, **options))(q, d, tensors)


@pytest.mark.parametrize("in_graph", [False, True], ids=["eager", "tf.function"])
@pytest.mark.parametrize("spec,message", BAD_LOSS_CALLS, ids=[m for _, m in BAD_LOSS_CALLS])
def test_invalid_loss_inputs_raise_clear_errors(spec, message, in_graph):
    with pytest.raises(ValueError, match=message) as info:
        _call_loss(spec, in_graph)
    assert not isinstance(info.value, tf.errors.OpError)


@_settings(25)
@given(name=st.sampled_from(["similarity", "same_tower", "partition"]), value=st.text(max_size=8))
def test_unknown_option_strings_are_named(name, value):
    assume(value not in ("cosine", "dot", "none", "query", "document", "both", "separate", "joint"))
    with pytest.raises(ValueError, match=f"`{name}` must be one of"):
        contrastive_loss(Q2, D2, temperature=0.1, **{name: value})
    with pytest.raises(ValueError, match=f"`{name}` must be one of"):
        SamToNeLoss(**{name: value})


@_settings(25)
@given(temperature=st.one_of(st.floats(max_value=0.0), st.just(math.nan), st.just(math.inf),
                             st.floats(min_value=1e-300, max_value=1e-39)))
def test_invalid_or_overflowing_temperature_float32(temperature):
    with pytest.raises(ValueError, match="temperature"):
        contrastive_loss(Q2, D2, temperature=temperature)


Y_PRED = np.random.default_rng(0).normal(size=(3, 3, 4)).astype(np.float32)

BAD_KERAS_CALLS = [
    (dict(), np.zeros((3, 2)), np.zeros((3, 4), np.float32), r"`y_pred` must be \[batch"),
    (dict(), np.zeros((3, 2)), np.zeros((3, 2, 4, 1), np.float32), r"`y_pred` must be \[batch"),
    (dict(bidirectional=True, num_hard_negative_queries=2), np.zeros((3, 2)), Y_PRED,
     r"`y_pred` has 3 slots"),
    (dict(), np.zeros((4, 2)), Y_PRED, r"`y_true` has batch size 4 but `y_pred` has 3"),
    (dict(mask_duplicates=True), np.zeros((4, 2)), Y_PRED, r"`y_true` has batch size 4"),
    (dict(mask_duplicates=True), np.zeros((3, 1)), Y_PRED, r"`y_true` must be \[batch, 2\]"),
    (dict(mask_duplicates=True), np.zeros((3, 3)), Y_PRED, r"`y_true` must be \[batch, 2\]"),
    (dict(mask_duplicates=True), np.zeros((3,)), Y_PRED, r"`y_true` must be \[batch, 2\]"),
    (dict(), np.zeros((0, 2)), np.zeros((0, 3, 4), np.float32), r"empty batch"),
]


@pytest.mark.parametrize("in_graph", [False, True], ids=["eager", "tf.function"])
@pytest.mark.parametrize("options,y_true,y_pred,message", BAD_KERAS_CALLS,
                         ids=[m for *_, m in BAD_KERAS_CALLS])
def test_invalid_keras_loss_inputs_raise_clear_errors(options, y_true, y_pred, message, in_graph):
    loss = SamToNeLoss(temperature=0.1, **options)
    call = tf.function(loss) if in_graph else loss
    with pytest.raises(ValueError, match=message) as info:
        call(y_true.astype(np.float32), y_pred)
    assert not isinstance(info.value, tf.errors.OpError)


def test_keras_loss_non_finite_ids():
    loss = SamToNeLoss(temperature=0.1, mask_duplicates=True)
    y_true = np.array([[0, 1], [np.nan, 2], [2, 3]], np.float32)
    with pytest.raises(ValueError, match="`y_true` ids must be finite"):
        loss(y_true, Y_PRED)
    # inside a graph the values are only known when it runs: the check runs there
    with pytest.raises(tf.errors.InvalidArgumentError, match="`y_true` ids must be finite"):
        tf.function(loss)(y_true, Y_PRED)
    # a width only known when the graph runs
    fn = tf.function(loss, input_signature=[tf.TensorSpec([None, None]),
                                            tf.TensorSpec([None, 3, 4])])
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"`y_true` must be \[batch, 2\]"):
        fn(np.zeros((3, 1), np.float32), Y_PRED)


@pytest.mark.parametrize("kwargs,message", [
    (dict(mask_duplicates="no"), "`mask_duplicates` must be a bool"),
    (dict(num_hard_negative_queries=1.0, bidirectional=True), "`num_hard_negative_queries`"),
    (dict(num_hard_negative_queries=True, bidirectional=True), "`num_hard_negative_queries`"),
    (dict(temperature=math.inf), "`temperature` must be finite"),
    (dict(dual_weight=math.nan, bidirectional=True), "`dual_weight`"),
])
def test_invalid_keras_loss_options(kwargs, message):
    with pytest.raises(ValueError, match=message):
        SamToNeLoss(**kwargs)


@_settings(20)
@given(case=loss_cases(), where=st.sampled_from(["q", "d", "hd", "hq"]),
       value=st.sampled_from([math.nan, math.inf, -math.inf]), data=st.data())
def test_non_finite_embeddings_never_give_a_finite_loss(case, where, value, data):
    # The loss does not check embeddings for NaN / inf; it must not hide them either.
    q, d, kwargs = case
    # an infinite dot product may be -inf, a negative that rightly contributes exp(-inf) = 0
    assume(math.isnan(value) or kwargs["similarity"] == "cosine")
    key = {"q": None, "d": None, "hd": "hard_negative_documents", "hq": "hard_negative_queries"}[where]
    target = q if where == "q" else d if where == "d" else kwargs.get(key)
    assume(target is not None and target.size > 0)
    index = data.draw(st.tuples(*[st.integers(0, n - 1) for n in target.shape]))
    target[index] = value
    got = contrastive_loss(q, d, **kwargs).numpy()
    assert not np.all(np.isfinite(got))
