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

from samtone_tf import SamToNeLoss, contrastive_loss
from samtone_tf.data import reqa
from samtone_tf.data import load_beir, make_pair_dataset, training_pairs_from_qrels
from samtone_tf.evaluation import load_eval_data
from tests.numpy_reference import reference_loss

pytestmark = pytest.mark.keras_independent  # run once: tests/conftest.py

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
        # hard negatives' ids in the same small ranges: some are other anchors' positives
        for key, h, ids_key in (("hard_negative_documents", h_d, "hard_negative_document_ids"),
                                ("hard_negative_queries", h_q, "hard_negative_query_ids")):
            if key in kwargs and draw(st.booleans()):
                kwargs[ids_key] = rng.integers(0, 4, size=(b, kwargs[key].shape[1]))
    cast = {k: v.astype(dtype) for k, v in kwargs.items()
            if k.startswith("hard") and not k.endswith("_ids")}
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
        k: (v.astype(np.float64) if v.dtype.kind == "f" else v) if isinstance(v, np.ndarray)
        else v for k, v in kwargs.items()})
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


@pytest.mark.keras_dependent
@_settings(30)
@given(case=loss_cases(), mask=st.booleans())
def test_keras_loss_matches_reference(case, mask):
    q, d, kwargs = case
    b = len(q)
    hd = kwargs.pop("hard_negative_documents", None)
    hq = kwargs.pop("hard_negative_queries", None)
    qid = kwargs.pop("query_ids", np.arange(b))
    did = kwargs.pop("document_ids", np.arange(b))
    hdid = kwargs.pop("hard_negative_document_ids", None)
    hqid = kwargs.pop("hard_negative_query_ids", None)
    parts = [q[:, None], d[:, None]] + [h for h in (hd, hq) if h is not None]
    y_pred = np.concatenate(parts, axis=1).astype(np.float32)
    # labels: one id per slot when every hard negative has ids, else (query id, document id)
    slot_ids = [h_ids for h, h_ids in ((hd, hdid), (hq, hqid)) if h is not None]
    per_slot = all(x is not None for x in slot_ids) and slot_ids
    y_true = np.concatenate([qid[:, None], did[:, None]] + (slot_ids if per_slot else []),
                            axis=1).astype(np.float32)
    loss = SamToNeLoss(num_hard_negative_queries=0 if hq is None else hq.shape[1],
                       mask_duplicates=mask, **kwargs)
    ids = dict(query_ids=qid, document_ids=did) if mask else {}
    if mask and per_slot:
        ids.update(hard_negative_document_ids=hdid, hard_negative_query_ids=hqid)
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


@pytest.mark.keras_dependent
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
    (dict(mask_duplicates=True), np.zeros((3, 4)), Y_PRED, r"`y_true` must be \[batch, 2\]"),
    (dict(mask_duplicates=True), np.zeros((3,)), Y_PRED, r"`y_true` must be \[batch, 2\]"),
    (dict(), np.zeros((0, 2)), np.zeros((0, 3, 4), np.float32), r"empty batch"),
]


@pytest.mark.parametrize("in_graph", [False, True], ids=["eager", "tf.function"])
@pytest.mark.parametrize("options,y_true,y_pred,message", BAD_KERAS_CALLS,
                         ids=[m for *_, m in BAD_KERAS_CALLS])
@pytest.mark.keras_dependent
def test_invalid_keras_loss_inputs_raise_clear_errors(options, y_true, y_pred, message, in_graph):
    loss = SamToNeLoss(temperature=0.1, **options)
    call = tf.function(loss) if in_graph else loss
    with pytest.raises(ValueError, match=message) as info:
        call(y_true.astype(np.float32), y_pred)
    assert not isinstance(info.value, tf.errors.OpError)


@pytest.mark.keras_dependent
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
@pytest.mark.keras_dependent
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


# ============================================================================ BEIR files

_ID_TEXT = st.text(alphabet="abcdefghij XYZ\u00e9\u4e2d?.", min_size=1, max_size=10).filter(
    lambda t: t.strip())


@st.composite
def beir_sets(draw):
    """A valid small BEIR data set as file lines, and what loading it must give."""
    n_docs, n_queries = draw(st.integers(1, 4)), draw(st.integers(1, 3))
    corpus_lines, corpus = [], {}
    for i in range(n_docs):
        record = {"_id": 100 + i if draw(st.booleans()) else f"d{i}", "text": draw(_ID_TEXT)}
        title = draw(st.one_of(st.none(), st.just(""), _ID_TEXT, st.just(None).map(lambda _: 0)))
        if title != 0:  # 0: no title field
            record["title"] = title
        corpus_lines.append(json.dumps(record, ensure_ascii=draw(st.booleans())))
        corpus[str(record["_id"])] = ((record.get("title") or "") + " " + record["text"]).strip()
    query_lines, queries = [], {}
    for i in range(n_queries):
        record = {"_id": f"q{i}", "text": draw(_ID_TEXT)}
        query_lines.append(json.dumps(record))
        queries[record["_id"]] = record["text"]
    judged = draw(st.lists(st.tuples(st.sampled_from(list(queries)), st.sampled_from(list(corpus))),
                           min_size=1, max_size=5, unique=True))
    qrels, qrels_lines = {}, []
    header = draw(st.booleans())
    if header:
        qrels_lines.append("query-id\tcorpus-id\tscore")
    for qid, doc_id in judged:
        score = draw(st.integers(-1, 2))
        qrels.setdefault(qid, {})[doc_id] = score
        qrels_lines.append(f"{qid}\t{doc_id}\t{score}")
    return dict(corpus=corpus_lines, queries=query_lines, qrels=qrels_lines, header=header,
                expected=(corpus, queries, qrels))


FILE_NAMES = {"corpus": "corpus.jsonl", "queries": "queries.jsonl",
              "qrels": os.path.join("qrels", "train.tsv")}


def _write_lines(root, files):
    os.makedirs(os.path.join(root, "qrels"), exist_ok=True)
    for key, name in FILE_NAMES.items():
        content = files[key]
        if isinstance(content, list):
            content = "".join(line + "\n" for line in content).encode("utf-8")
        with open(os.path.join(root, name), "wb") as f:
            f.write(content)


def _error(name, line, message, kind=ValueError):
    where = re.escape(name) + (f", line {line}:" if line else ":")
    return ("error", kind, where + ".*" + message)


BEIR_MUTATIONS = [
    "broken_json", "drop_field", "bad_text_type", "null_or_blank_text", "bad_id_type",
    "duplicate", "blank_lines", "bom", "empty_file", "not_object", "space_id", "crlf",
    "bad_utf8", "no_header", "delimiter", "column_count", "bad_score", "unknown_id",
    "duplicate_judgment", "late_header", "empty_qrels", "empty_qrels_id", "missing_file",
]


@st.composite
def beir_mutations(draw, kind):
    """(files, expectation): one malformation (or harmless change) of a valid set."""
    s = draw(beir_sets())
    corpus, queries, qrels = copy.deepcopy(s["expected"])
    files = {k: list(s[k]) for k in FILE_NAMES}
    strict = draw(st.booleans())
    target = draw(st.sampled_from(["corpus", "queries"]))
    name = FILE_NAMES[target]
    lines = files[target]
    k = draw(st.integers(0, len(lines) - 1))
    record = json.loads(lines[k])
    judgment_lines = list(range(1 if s["header"] else 0, len(files["qrels"])))
    j = draw(st.sampled_from(judgment_lines))
    jcols = files["qrels"][j].split("\t")
    qname = FILE_NAMES["qrels"]
    ok = ("ok", (corpus, queries, qrels))

    if kind == "broken_json":
        lines[k] = lines[k][:draw(st.integers(1, len(lines[k]) - 1))]
        return files, strict, _error(name, k + 1, "malformed JSON")
    if kind == "drop_field":
        field = draw(st.sampled_from(["_id", "text"]))
        del record[field]
        lines[k] = json.dumps(record)
        return files, strict, _error(name, k + 1, f"missing field '{field}'")
    if kind == "bad_text_type":
        field = draw(st.sampled_from(["text", "title"] if target == "corpus" else ["text"]))
        record[field] = draw(st.sampled_from([5, 1.5, True, [], ["a"], {"a": 1}]))
        lines[k] = json.dumps(record)
        return files, strict, _error(name, k + 1, f"field '{field}' must be a string")
    if kind == "null_or_blank_text":
        # an empty text is kept as "" with a warning; strict_text=True refuses it (3rd item)
        record["text"] = draw(st.sampled_from([None, "", "  ", "\t"]))
        lines[k] = json.dumps(record)
        rid = str(record["_id"])
        if target == "queries":
            queries[rid] = ""
            return files, strict, ok + (_error(name, k + 1, f"query '{rid}' has an empty text"),)
        corpus[rid] = ((record.get("title") or "") + " " + (record["text"] or "")).strip()
        if not corpus[rid]:
            return files, strict, ok + (
                _error(name, k + 1, f"document '{rid}' has an empty title and text"),)
        return files, strict, ok
    if kind == "bad_id_type":
        record["_id"] = draw(st.sampled_from([None, 1.5, True, [1], {"a": 1}]))
        lines[k] = json.dumps(record)
        return files, strict, _error(name, k + 1, "field '_id' must be a string")
    if kind == "duplicate":
        lines.append(lines[k])
        what = "document" if target == "corpus" else "query"
        return files, strict, _error(name, len(lines), f"duplicate {what} id .*first on line {k + 1}")
    if kind == "blank_lines":
        for _ in range(draw(st.integers(1, 3))):
            lines.insert(draw(st.integers(0, len(lines))), draw(st.sampled_from(["", "  ", "\t"])))
        return files, strict, ok
    if kind == "bom":
        target = draw(st.sampled_from(list(FILE_NAMES)))
        files[target] = [("\ufeff" + files[target][0])] + files[target][1:]
        return files, strict, ok
    if kind == "empty_file":
        files[target] = draw(st.sampled_from([[], [""], ["", "  "]]))
        what = "documents" if target == "corpus" else "queries"
        return files, strict, _error(name, None, f"no {what}")
    if kind == "not_object":
        lines[k] = draw(st.sampled_from(["[1, 2]", '"text"', "3", "null"]))
        return files, strict, _error(name, k + 1, "expected a JSON object")
    if kind == "space_id":
        record["_id"] = draw(st.sampled_from([" ", "\t"])) + str(record["_id"])
        lines[k] = json.dumps(record)
        return files, strict, _error(name, k + 1, "surrounding whitespace")
    if kind == "crlf":
        for key in FILE_NAMES:
            files[key] = [line + "\r" for line in files[key]]
        return files, strict, ok
    if kind == "bad_utf8":
        raw = [line.encode("utf-8") for line in lines]
        raw[k] = raw[k][:1] + b"\xff" + raw[k][1:]
        files[target] = b"".join(r + b"\n" for r in raw)
        return files, strict, _error(name, k + 1, "not valid UTF-8")
    if kind == "no_header":
        if s["header"]:
            files["qrels"] = files["qrels"][1:]
        return files, strict, ok
    if kind == "delimiter":
        files["qrels"][j] = files["qrels"][j].replace("\t", draw(st.sampled_from([",", " ", ";", "  "])))
        return files, strict, _error(qname, j + 1, "expected 3 tab-separated columns")
    if kind == "column_count":
        cols = jcols[:draw(st.integers(1, 2))] if draw(st.booleans()) else jcols + ["0"]
        files["qrels"][j] = "\t".join(cols)
        return files, strict, _error(qname, j + 1, "expected 3 tab-separated columns")
    if kind == "bad_score":
        jcols[2] = draw(st.sampled_from(["1.5", "x", "", "1e3", "1_0", "\u0663", "one", "2.0"]))
        files["qrels"][j] = "\t".join(jcols)
        return files, strict, _error(qname, j + 1, "score .* is not an integer")
    if kind == "unknown_id":
        column = draw(st.sampled_from([0, 1]))
        old_q, old_d = jcols[0], jcols[1]
        jcols[column] = "zz" if column == 0 else "nope"
        files["qrels"][j] = "\t".join(jcols)
        if strict:
            what = "query id 'zz' not in queries" if column == 0 else "document id 'nope' not in corpus"
            return files, strict, _error(qname, j + 1, what)
        del qrels[old_q][old_d]
        if not qrels[old_q]:
            del qrels[old_q]
        if not qrels:
            return files, strict, _error(qname, None, "all 1 judgments name ids")
        return files, strict, ok
    if kind == "duplicate_judgment":
        files["qrels"].append(files["qrels"][j])
        return files, strict, _error(qname, len(files["qrels"]), "duplicate judgment")
    if kind == "late_header":
        files["qrels"].append("query-id\tcorpus-id\tscore")
        return files, strict, _error(qname, len(files["qrels"]), "header .* only allowed on line 1")
    if kind == "empty_qrels":
        files["qrels"] = draw(st.sampled_from([[], ["query-id\tcorpus-id\tscore"], ["", " "]]))
        return files, strict, _error(qname, None, "no judgments")
    if kind == "empty_qrels_id":
        jcols[draw(st.sampled_from([0, 1]))] = draw(st.sampled_from(["", " "]))
        files["qrels"][j] = "\t".join(jcols)
        return files, strict, _error(qname, j + 1, "empty (query|corpus) id")
    assert kind == "missing_file"
    target = draw(st.sampled_from(list(FILE_NAMES)))
    files[target] = None
    return files, strict, ("error", FileNotFoundError, re.escape(FILE_NAMES[target]))


def _expected_pairs(corpus, queries, qrels):
    return [(q, queries[q], d, corpus[d]) for q, judged in qrels.items()
            for d, score in judged.items() if score > 0]


def _check_beir(root, strict, expectation):
    from samtone_tf.data import EmptyTextWarning

    if expectation[0] == "ok":
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            corpus, queries, qrels = load_beir(root, "train", strict=strict)
        empty_text_error = expectation[2] if len(expectation) > 2 else None
        assert any(issubclass(w.category, EmptyTextWarning) for w in caught) == bool(empty_text_error)
        if empty_text_error:
            _, kind, pattern = empty_text_error
            with pytest.raises(kind, match=pattern):
                load_beir(root, "train", strict=strict, strict_text=True)
        assert (corpus, queries, qrels) == expectation[1]
        assert list(corpus) == list(expectation[1][0])  # file order
        assert list(qrels) == list(expectation[1][2])
        assert training_pairs_from_qrels(corpus, queries, qrels) == _expected_pairs(*expectation[1])
        if strict:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", EmptyTextWarning)
                e_corpus, e_queries, e_qrels = load_eval_data(root, "beir", "train")
            assert (e_corpus, e_qrels) == (corpus, qrels)
            assert e_queries == {q: queries[q] for q in qrels}
        return
    _, kind, pattern = expectation
    with pytest.raises(kind, match=pattern) as info:
        load_beir(root, "train", strict=strict)
    assert type(info.value) is kind
    if strict:
        with pytest.raises(kind, match=pattern):
            load_eval_data(root, "beir", "train")


@pytest.mark.parametrize("kind", BEIR_MUTATIONS)
@_settings(7)
@given(data=st.data())
def test_beir_mutations_load_correctly_or_name_file_and_line(kind, data):
    files, strict, expectation = data.draw(beir_mutations(kind))
    with tempfile.TemporaryDirectory() as root:
        present = {k: v for k, v in files.items() if v is not None}
        _write_lines(root, {**{k: [] for k in FILE_NAMES}, **present})
        for key, content in files.items():
            if content is None:
                os.remove(os.path.join(root, FILE_NAMES[key]))
        _check_beir(root, strict, expectation)


def _hash_tokenizer(texts):
    ids = tf.strings.to_hash_bucket_fast(tf.reshape(texts, [-1, 1]), 2**20)
    return {"token_ids": ids, "padding_mask": tf.ones_like(ids)}


@_settings(8)
@given(s=beir_sets())
def test_pair_dataset_from_generated_files(s):
    with tempfile.TemporaryDirectory() as root:
        _write_lines(root, s)
        pairs = training_pairs_from_qrels(*load_beir(root, "train"))
    assert pairs == _expected_pairs(*s["expected"])
    if not pairs:  # every judgment <= 0
        with pytest.raises(ValueError, match="batch_size=1 exceeds the 0 pairs"):
            make_pair_dataset(pairs, _hash_tokenizer, 1)
        return
    with pytest.raises(ValueError, match=f"batch_size={len(pairs) + 1} exceeds the {len(pairs)} pairs"):
        make_pair_dataset(pairs, _hash_tokenizer, len(pairs) + 1)
    features, labels = next(iter(make_pair_dataset(pairs, _hash_tokenizer, len(pairs), shuffle=False)))
    q_index, d_index = {}, {}
    for qid, _, did, _ in pairs:
        q_index.setdefault(qid, len(q_index))
        d_index.setdefault(did, len(d_index))
    np.testing.assert_array_equal(labels.numpy(), [[q_index[p[0]], d_index[p[2]]] for p in pairs])
    for side, column in (("query", 1), ("document", 3)):
        expected = _hash_tokenizer(tf.constant([p[column] for p in pairs]))["token_ids"]
        np.testing.assert_array_equal(features[f"{side}_token_ids"].numpy(), expected.numpy())


# =========================================================================== SQuAD files

_WORDS = ["apple", "river", "stone", "cloud", "green", "table", "music", "light"]


@st.composite
def squad_sets(draw):
    """A valid small SQuAD v1.1 object whose sentences (capitalised words ending in '.')
    the splitter must find exactly; questions point at a word of a sentence."""
    articles, qid = [], 0
    for a in range(draw(st.integers(2, 4))):
        paragraphs = []
        for _ in range(draw(st.integers(1, 2))):
            sentences = [" ".join(w.capitalize() if i == 0 else w for i, w in enumerate(
                draw(st.lists(st.sampled_from(_WORDS), min_size=1, max_size=3)))) + "."
                for _ in range(draw(st.integers(1, 3)))]
            context = " ".join(sentences)
            starts = [sum(len(x) + 1 for x in sentences[:i]) for i in range(len(sentences))]
            qas = []
            for _ in range(draw(st.integers(0, 2))):
                s = draw(st.integers(0, len(sentences) - 1))
                word = sentences[s].split()[0].rstrip(".")
                qas.append({"id": f"id{qid}", "question": f"which {word}?",
                            "answers": [{"text": word, "answer_start": starts[s]}]})
                qid += 1
            paragraphs.append({"context": context, "qas": qas})
        articles.append({"title": f"A{a}", "paragraphs": paragraphs})
    return {"version": "1.1", "data": articles}


def _reqa_oracle(articles):
    """(corpus, queries, qrels) of (original index, article) pairs, from the construction."""
    corpus, queries, qrels, first = {}, {}, {}, {}
    for a, article in articles:
        for p, para in enumerate(article["paragraphs"]):
            ids, starts, pos = [], [], 0
            for s, sentence in enumerate(para["context"].split(". ")):
                sentence = sentence if sentence.endswith(".") else sentence + "."
                cid = first.setdefault(sentence, f"{a}-{p}-{s}")
                corpus.setdefault(cid, sentence)
                ids.append(cid)
                starts.append(pos)
                pos += len(sentence) + 1
            for qa in para["qas"]:
                start = qa["answers"][0]["answer_start"]
                queries[qa["id"]] = qa["question"] if qa["question"].strip() else ""
                qrels[qa["id"]] = {ids[max(i for i, x in enumerate(starts) if x <= start)]: 1}
    return corpus, queries, qrels


SQUAD_MUTATIONS = ["missing_key", "wrong_type", "answer_out_of_range", "answer_mismatch",
                   "empty_answers", "duplicate_qid", "empty_data", "empty_article",
                   "top_level_list", "broken_json", "bom", "empty_question", "valid"]


@st.composite
def squad_mutations(draw, kind):
    """(raw file bytes, strict, original article index of the problem or None,
    expectation for the whole file) for one malformation of a valid SQuAD object."""
    data = draw(squad_sets())
    original = copy.deepcopy(data)
    strict = draw(st.booleans())
    articles = data["data"]
    base = _reqa_oracle(list(enumerate(original["data"])))
    with_qas = [(a, p, q) for a, art in enumerate(articles) for p, para in enumerate(art["paragraphs"])
                for q in range(len(para["qas"]))]
    a = draw(st.integers(0, len(articles) - 1))
    ok = lambda: ("ok", _reqa_oracle(list(enumerate(articles))), False)  # noqa: E731
    if kind in ("answer_out_of_range", "answer_mismatch", "empty_answers", "duplicate_qid",
                "empty_question") or (kind in ("missing_key", "wrong_type") and with_qas
                                      and draw(st.booleans())):
        assume(with_qas)
        a, p, q = draw(st.sampled_from(with_qas))
        qa = articles[a]["paragraphs"][p]["qas"][q]
        where = f"data[{a}].paragraphs[{p}].qas[{q}]"
        if kind in ("missing_key", "wrong_type"):
            key = draw(st.sampled_from(["id", "question", "answers", "text", "answer_start"]))
            obj = qa if key in ("id", "question", "answers") else qa["answers"][0]
            where += "" if obj is qa else ".answers[0]"
            if kind == "missing_key":
                del obj[key]
                return data, strict, a, ("error", re.escape(where) + f": missing field '{key}'"), original
            obj[key] = {"id": 1.5, "question": 3, "answers": {}, "text": None,
                        "answer_start": "0"}[key]
            return data, strict, a, ("error", re.escape(f"{where}.{key} must be")), original
        if kind == "duplicate_qid":
            assume(len(with_qas) > 1)
            other = next(x for x in with_qas if x != (a, p, q))
            first, second = sorted([other, (a, p, q)])
            articles[second[0]]["paragraphs"][second[1]]["qas"][second[2]]["id"] = (
                articles[first[0]]["paragraphs"][first[1]]["qas"][first[2]]["id"])
            where = f"data[{second[0]}].paragraphs[{second[1]}].qas[{second[2]}]"
            return data, strict, None, ("error", re.escape(where) + ": duplicate question id"), original
        if kind == "empty_question":  # kept as "" with a warning (strict_text=True refuses it)
            qa["question"] = draw(st.sampled_from(["", "  "]))
            return data, strict, None, ok(), copy.deepcopy(data)
        if kind == "empty_answers":
            qa["answers"] = []
            message = re.escape(where) + r".*no answers"
        else:
            answer = qa["answers"][0]
            if kind == "answer_out_of_range":
                answer["answer_start"] = draw(st.sampled_from(
                    [-1, len(articles[a]["paragraphs"][p]["context"]) + 3]))
                message = re.escape(where + ".answers[0]") + r".*outside the context"
            else:
                answer["text"] = draw(st.sampled_from(["zzz", "", " "]))
                message = re.escape(where + ".answers[0]") + r".*(is not at|empty)"
        if strict:
            return data, strict, a, ("error", message), original
        expected = copy.deepcopy(base)
        del expected[1][qa["id"]], expected[2][qa["id"]]
        return data, strict, a, ("ok", expected, True), original
    if kind == "missing_key":
        key = draw(st.sampled_from(["paragraphs", "context", "qas"]))
        if key == "paragraphs":
            del articles[a]["paragraphs"]
            return data, strict, a, ("error", re.escape(f"data[{a}]: missing field 'paragraphs'")), original
        del articles[a]["paragraphs"][0][key]
        return data, strict, a, ("error", re.escape(f"data[{a}].paragraphs[0]: missing field '{key}'")), original
    if kind == "wrong_type":
        key = draw(st.sampled_from(["article", "paragraphs", "context", "qas"]))
        if key == "article":
            articles[a] = draw(st.sampled_from([[], "text", 3, None]))
            return data, strict, None, ("error", re.escape(f"data[{a}] must be a JSON object")), original
        if key == "paragraphs":
            articles[a]["paragraphs"] = {}
            return data, strict, a, ("error", re.escape(f"data[{a}].paragraphs must be list")), original
        articles[a]["paragraphs"][0][key] = 7
        return data, strict, a, ("error", re.escape(f"data[{a}].paragraphs[0].{key} must be")), original
    if kind == "empty_data":
        data["data"] = []
        return data, strict, None, ("error", "'data' is empty"), original
    if kind == "empty_article":
        articles[a]["paragraphs"] = []  # a valid change: the article has no candidates
        return data, strict, None, ok(), copy.deepcopy(data)
    if kind == "top_level_list":
        return articles, strict, None, ("error", "top level must be a JSON object"), original
    if kind == "broken_json":
        raw = json.dumps(data).encode()
        return raw[:draw(st.integers(1, len(raw) - 1))], strict, None, ("error", "malformed JSON"), original
    if kind == "bom":
        return b"\xef\xbb\xbf" + json.dumps(data).encode(), strict, None, ok(), original
    assert kind == "valid"
    return data, strict, None, ok(), original


def _check_reqa(build, expectation, path):
    if expectation[0] == "error":
        with pytest.raises(ValueError, match=re.escape(path) + ".*" + expectation[1]):
            build()
        return
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        got = build()
    assert tuple(got) == expectation[1]
    assert list(got[0]) == list(expectation[1][0])  # file order
    assert any("skipped" in str(w.message) for w in caught) == expectation[2]


@pytest.mark.parametrize("kind", SQUAD_MUTATIONS)
@_settings(6)
@given(data=st.data())
def test_squad_mutations_build_correctly_or_name_file_and_location(kind, data):
    obj, strict, bad_article, expectation, original = data.draw(squad_mutations(kind))
    with tempfile.TemporaryDirectory() as root:
        path = os.path.join(root, "squad.json")
        with open(path, "wb") as f:
            f.write(obj if isinstance(obj, bytes) else json.dumps(obj).encode())
        _check_reqa(lambda: reqa.build_reqa(path, strict=strict), expectation, path)
        if strict:
            _check_reqa(lambda: load_eval_data(path, "squad", "all"), expectation, path)
        if kind == "empty_question":
            from samtone_tf.data import EmptyTextWarning

            with pytest.warns(EmptyTextWarning, match=re.escape(path) + ": 1 question has an empty text"):
                reqa.build_reqa(path, strict=strict)
            with pytest.raises(ValueError, match=re.escape(path) + r".*\.question is empty"):
                reqa.build_reqa(path, strict=strict, strict_text=True)
        if expectation[0] == "error" and bad_article is None:
            # a file-level problem: splitting fails too, naming the file
            if kind != "duplicate_qid":
                with pytest.raises(ValueError, match=re.escape(path)):
                    reqa.split_by_article(path, 0.5, 0)
            return
        parts = dict(zip(("train", "dev"), reqa.split_by_article(path, 0.5, 0)))
        for split, part in parts.items():
            indices = [art[reqa.ARTICLE_INDEX_KEY] for art in part["data"]]
            if expectation[0] == "error" and bad_article in indices:
                part_expectation = expectation
            else:
                corpus, queries, qrels = _reqa_oracle([(i, original["data"][i]) for i in indices])
                skipped = expectation[0] == "ok" and expectation[2] and set(queries) - set(expectation[1][1])
                for qid in skipped or ():
                    del queries[qid], qrels[qid]
                part_expectation = ("ok", (corpus, queries, qrels), bool(skipped))
            _check_reqa(lambda part=part: reqa.build_reqa(part, strict=strict), part_expectation, path)
            if strict:
                _check_reqa(lambda split=split: load_eval_data(path, "squad", split, dev_fraction=0.5),
                            part_expectation, path)
