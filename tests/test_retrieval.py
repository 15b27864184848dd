"""Tests for samtone_tf.evaluation.retrieval (pure NumPy; identical under Keras 2 and Keras 3)."""

import math

import numpy as np
import pytest

from samtone_tf.evaluation.retrieval import (
    METRIC_KEYS,
    encode_corpus,
    evaluate_run,
    iter_encoded_batches,
    run_from_search,
    search,
)

pytestmark = pytest.mark.keras_independent  # run once: tests/conftest.py


def _batches(matrix, batch_size):
    for i in range(0, len(matrix), batch_size):
        yield matrix[i : i + batch_size]


def _brute_force(queries, corpus, k, normalize=True):
    """Full score matrix, then a full sort by (-score, corpus index)."""
    if normalize:
        queries = queries / np.linalg.norm(queries, axis=1, keepdims=True)
        corpus = corpus / np.linalg.norm(corpus, axis=1, keepdims=True)
    scores = queries @ corpus.T
    indices = np.empty((len(queries), min(k, len(corpus))), dtype=np.int64)
    for i, row in enumerate(scores):
        indices[i] = sorted(range(len(row)), key=lambda j: (-row[j], j))[:k]
    return np.take_along_axis(scores, indices, axis=1), indices


# 103 rows: 7, 10, 32 do not divide it; 1 is the per-row extreme; 103 and 500 are one batch.
@pytest.mark.parametrize("batch_size", [1, 7, 10, 32, 103, 500])
@pytest.mark.parametrize("k", [1, 5, 20])
def test_search_equals_brute_force_random(batch_size, k):
    rng = np.random.default_rng(batch_size * 100 + k)
    queries = rng.normal(size=(13, 16)).astype(np.float32)
    corpus = rng.normal(size=(103, 16)).astype(np.float32)
    scores, indices = search(queries, _batches(corpus, batch_size), k)
    ref_scores, ref_indices = _brute_force(queries.astype(np.float64), corpus.astype(np.float64), k)
    assert indices.shape == (13, k) and indices.dtype == np.int64
    np.testing.assert_array_equal(indices, ref_indices)
    np.testing.assert_allclose(scores, ref_scores, rtol=1e-5, atol=1e-6)
    assert np.all(np.diff(scores, axis=1) <= 0)  # descending


@pytest.mark.parametrize("batch_size", [1, 3, 4, 11, 40])
def test_search_ties_break_by_corpus_position(batch_size):
    # Integer vectors, raw dot product: every score is exact, so ties are real ties.
    rng = np.random.default_rng(0)
    corpus = rng.integers(0, 3, size=(40, 4)).astype(np.float32)  # many duplicate rows
    queries = rng.integers(0, 3, size=(6, 4)).astype(np.float32)
    queries[0] = 0.0  # every document scores 0: the ranking must be 0, 1, 2, ...
    scores, indices = search(queries, _batches(corpus, batch_size), 12, normalize=False)
    _, ref_indices = _brute_force(queries, corpus, 12, normalize=False)
    np.testing.assert_array_equal(indices, ref_indices)
    np.testing.assert_array_equal(indices[0], np.arange(12))
    # Within a run of equal scores the indices ascend.
    for s_row, i_row in zip(scores, indices):
        for a in range(len(s_row) - 1):
            if s_row[a] == s_row[a + 1]:
                assert i_row[a] < i_row[a + 1]


def test_search_k_larger_than_corpus_normalisation_and_errors():
    corpus = np.array([[3.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    queries = np.array([[1.0, 0.0]])
    scores, indices = search(queries, [corpus[:2], corpus[2:]], k=10)
    # cosine: [1, 0, 1/sqrt 2]
    np.testing.assert_array_equal(indices, [[0, 2, 1]])
    np.testing.assert_allclose(scores, [[1.0, 1 / math.sqrt(2), 0.0]])
    raw_scores, raw_indices = search(queries, [corpus], k=2, normalize=False)
    # raw dot: rows score 3, 0, 1
    np.testing.assert_allclose(raw_scores, [[3.0, 1.0]])
    np.testing.assert_array_equal(raw_indices, [[0, 2]])
    with pytest.raises(ValueError, match="dimension 3"):
        search(queries, [np.ones((2, 3))], 1)
    with pytest.raises(ValueError, match="corpus is empty"):
        search(queries, [], 1)
    with pytest.raises(ValueError, match="k must be a positive int"):
        search(queries, [corpus], 0)


def test_search_accepts_a_generator_of_encoded_batches():
    texts = [f"t{i}" for i in range(25)]
    table = np.random.default_rng(1).normal(size=(25, 8)).astype(np.float32)
    calls = []

    def encode(batch):
        calls.append(len(batch))
        return table[[int(t[1:]) for t in batch]]

    stream = iter_encoded_batches(encode, texts, 10, progress=False)
    assert calls == []  # lazy: nothing encoded before search pulls it
    scores, indices = search(table[:4], stream, 3)
    assert calls == [10, 10, 5]
    np.testing.assert_array_equal(indices[:, 0], [0, 1, 2, 3])  # each query finds itself
    np.testing.assert_allclose(scores[:, 0], 1.0, rtol=1e-6)


def test_encode_corpus_batches_and_checks():
    seen = []

    def encode(batch):
        seen.append(list(batch))
        return np.array([[len(t), 1.0] for t in batch])

    out = encode_corpus(encode, ["a", "bb", "ccc", "dddd", "e"], batch_size=2, progress=False)
    assert seen == [["a", "bb"], ["ccc", "dddd"], ["e"]]
    np.testing.assert_array_equal(out, [[1, 1], [2, 1], [3, 1], [4, 1], [1, 1]])
    with pytest.raises(ValueError, match=r"returned shape \(1, 2\) for 2 texts"):
        encode_corpus(lambda b: np.ones((1, 2)), ["a", "b"], 2, progress=False)
    with pytest.raises(ValueError, match="batch_size must be a positive int"):
        encode_corpus(encode, ["a"], 0, progress=False)


def test_run_from_search_names_rows():
    run = run_from_search([[0.9, 0.5]], [[2, 0]], ["q"], ["d0", "d1", "d2"])
    assert run == {"q": {"d2": 0.9, "d0": 0.5}}
    assert list(run["q"]) == ["d2", "d0"]


# ------------------------------------------------------------------------ metrics


def test_evaluate_run_hand_computed():
    qrels = {
        "q1": {"a": 1, "b": 1},  # a at rank 2, b at rank 12
        "q2": {"c": 2, "d": 1},  # graded: c at rank 1, d not retrieved
        "q3": {"e": 1},  # not in the run: 0 everywhere
        "q4": {"f": 0},  # no relevant judgment: not evaluated
    }
    run = {
        "q1": {f"x{i}": 100.0 - i for i in range(15)},
        "q2": {"c": 5.0, "x": 4.0},
        "q9": {"a": 1.0},  # not in qrels: ignored
    }
    run["q1"] = dict(run["q1"])
    run["q1"]["a"] = 99.5  # between x0 (100) and x1 (99): rank 2
    run["q1"]["b"] = 89.5  # after x0..x10 (100..90): rank 12
    m = evaluate_run(run, qrels)
    assert m["num_queries"] == 3
    ndcg_q1 = (1 / math.log2(3)) / (1 + 1 / math.log2(3))
    ndcg_q2 = 2 / (2 + 1 / math.log2(3))
    assert m["ndcg@10"] == pytest.approx((ndcg_q1 + ndcg_q2 + 0) / 3)
    assert m["mrr@10"] == pytest.approx((1 / 2 + 1 + 0) / 3)
    assert m["mrr"] == pytest.approx((1 / 2 + 1 + 0) / 3)
    assert m["p@1"] == pytest.approx(1 / 3)
    assert m["recall@10"] == pytest.approx((1 / 2 + 1 / 2 + 0) / 3)
    assert m["recall@100"] == pytest.approx((1 + 1 / 2 + 0) / 3)
    assert set(m) == set(METRIC_KEYS) | {"num_queries"}


def test_evaluate_run_mrr_beyond_10_and_ties_keep_insertion_order():
    qrels = {"q": {"rel": 1}}
    deep = {f"x{i}": 1.0 - i / 100 for i in range(11)}
    deep["rel"] = 0.0  # rank 12
    m = evaluate_run({"q": deep}, qrels)
    assert m["mrr@10"] == 0.0 and m["mrr"] == pytest.approx(1 / 12)
    # All scores tied: insertion order is the ranking.
    assert evaluate_run({"q": {"rel": 0.0, "x": 0.0}}, qrels)["p@1"] == 1.0
    assert evaluate_run({"q": {"x": 0.0, "rel": 0.0}}, qrels)["p@1"] == 0.0
    with pytest.raises(ValueError, match="no query in qrels has a relevant"):
        evaluate_run({"q": {"x": 1.0}}, {"q": {"x": 0}})


def test_evaluate_run_matches_ir_measures_on_random_run():
    from tests._requirements import require_package

    ir_measures = require_package("ir_measures")
    rng = np.random.default_rng(42)
    docs = [f"d{i}" for i in range(300)]
    qrels, run = {}, {}
    for q in range(60):
        qid = f"q{q}"
        judged = rng.choice(300, size=int(rng.integers(1, 8)), replace=False)
        qrels[qid] = {docs[j]: int(rng.integers(1, 4)) for j in judged}  # graded 1..3
        if q % 7 == 0:
            qrels[qid][docs[int(rng.integers(300))]] = 0  # a judged non-relevant document
        depth = int(rng.integers(5, 200))
        retrieved = rng.choice(300, size=depth, replace=False)
        scores = rng.permutation(depth).astype(float) + rng.random(depth) * 0.5  # distinct scores
        run[qid] = {docs[j]: float(s) for j, s in zip(retrieved, scores)}
    ours = evaluate_run(run, qrels)
    measures = {key: ir_measures.parse_measure(name) for key, name in METRIC_KEYS.items()}
    theirs = ir_measures.calc_aggregate(list(measures.values()), qrels, run)
    assert ours["num_queries"] == 60
    for key, measure in measures.items():
        assert ours[key] == pytest.approx(theirs[measure], abs=1e-9), key
    # The random run is not degenerate: the metrics differ from each other and from 0/1.
    assert 0.05 < ours["mrr"] < 0.95 and ours["recall@10"] < ours["recall@100"]
