"""Exact top-k retrieval over a whole corpus, streamed in batches, and ranking metrics.

Pure NumPy (the embeddings come from any encoder): the corpus is never held in memory
as scores. :func:`search` keeps a running top-k per query, so memory is
``O(Q * k + Q * batch)`` however large the corpus.

Ties: equal scores are ranked by **corpus position, earlier first** (the order in
which the batches arrive), in :func:`search` and — through the run's insertion order —
in :func:`evaluate_run`. This is deterministic and independent of the batch size.
(trec_eval / ir-measures break score ties by document id *descending*; on runs with
tied scores their numbers may differ from :func:`evaluate_run`'s.)

Evaluation convention (BEIR's): only queries that are in ``qrels`` with at least one
judgment of relevance > 0 are evaluated; run queries absent from ``qrels`` are
ignored; a ``qrels`` query absent from the run scores 0 on every metric (as
``trec_eval -c``). Queries whose judgments are all <= 0 cannot be answered and are
left out of the averages (trec_eval would average them in as 0); ``num_queries`` is
the number evaluated.
"""

from typing import Dict, Iterable, Mapping, Sequence

import numpy as np

from samtone_tf._util import check_int, l2_normalize
# texts -> embeddings lives in samtone_tf.towers.embedders; importable from here too
from samtone_tf.towers.embedders import encode_corpus, iter_encoded_batches

__all__ = [
    "encode_corpus",
    "iter_encoded_batches",
    "search",
    "run_from_search",
    "evaluate_run",
    "METRIC_KEYS",
]

#: Keys of :func:`evaluate_run`'s result, with the ir-measures measure each equals.
METRIC_KEYS = {
    "ndcg@10": "nDCG@10",
    "mrr@10": "RR@10",
    "mrr": "RR",
    "p@1": "P@1",
    "recall@10": "R@10",
    "recall@100": "R@100",
}


def _as_float_matrix(x, what):
    x = np.asarray(x)
    if x.ndim != 2:
        raise ValueError(f"{what} must be a 2-D [n, dim] array, got shape {x.shape}.")
    if not np.issubdtype(x.dtype, np.floating):
        x = x.astype(np.float32)
    return x


def search(query_embeddings, corpus_embedding_batches: Iterable, k: int, *, normalize=True):
    """Exact top-k by dot product, streaming over corpus batches.

    Args:
      query_embeddings: ``[Q, dim]``.
      corpus_embedding_batches: iterable of ``[b_i, dim]`` arrays (any sizes), the
        corpus in order; corpus row ``j`` is the ``j``-th row over all batches.
      k: results per query (the result has ``min(k, corpus size)`` columns).
      normalize: L2-normalise queries and documents first (cosine similarity). With
        False the raw dot product is used.

    Returns:
      ``(scores, indices)``: ``[Q, min(k, N)]`` float scores (descending per row) and
      int64 corpus row indices. Ties: the earlier corpus row ranks first.

    Memory: the running ``[Q, k]`` top-k plus one ``[Q, b]`` score block.

    Raises:
      ValueError: bad ``k``, empty corpus, or a dimension mismatch.
    """
    check_int(k, "k")
    queries = _as_float_matrix(query_embeddings, "query_embeddings")
    if normalize:
        queries = l2_normalize(queries)
    num_queries = queries.shape[0]
    top_scores = np.empty((num_queries, 0), dtype=queries.dtype)
    top_indices = np.empty((num_queries, 0), dtype=np.int64)
    offset = 0
    for b, batch in enumerate(corpus_embedding_batches):
        if hasattr(batch, "numpy"):
            batch = batch.numpy()
        batch = _as_float_matrix(batch, f"corpus batch {b}")
        if batch.shape[1] != queries.shape[1]:
            raise ValueError(
                f"corpus batch {b} has dimension {batch.shape[1]}, queries have {queries.shape[1]}."
            )
        if batch.shape[0] == 0:
            continue
        if normalize:
            batch = l2_normalize(batch)
        scores = queries @ batch.T  # [Q, b]
        indices = np.broadcast_to(np.arange(offset, offset + batch.shape[0], dtype=np.int64), scores.shape)
        offset += batch.shape[0]
        # The running top-k is kept in ascending corpus order, and every index of this
        # batch is larger, so the concatenation is in corpus order; a *stable* sort on
        # descending score then breaks ties by corpus position.
        cand_scores = np.concatenate([top_scores, scores.astype(top_scores.dtype, copy=False)], axis=1)
        cand_indices = np.concatenate([top_indices, indices], axis=1)
        order = np.argsort(-cand_scores, axis=1, kind="stable")[:, :k]
        keep = np.sort(order, axis=1)  # positions in corpus order (indices ascend with position)
        top_scores = np.take_along_axis(cand_scores, keep, axis=1)
        top_indices = np.take_along_axis(cand_indices, keep, axis=1)
    if offset == 0:
        raise ValueError("the corpus is empty (no rows in corpus_embedding_batches).")
    order = np.argsort(-top_scores, axis=1, kind="stable")
    return np.take_along_axis(top_scores, order, axis=1), np.take_along_axis(top_indices, order, axis=1)


def run_from_search(scores, indices, query_ids: Sequence[str], doc_ids: Sequence[str]):
    """Turns :func:`search` output into a run ``{query id: {doc id: score}}``.

    Documents are inserted in rank order (which :func:`evaluate_run` uses to break
    score ties). ``query_ids[i]`` names row ``i``; ``doc_ids[j]`` names corpus row ``j``.
    """
    scores = np.asarray(scores)
    indices = np.asarray(indices)
    if scores.shape != indices.shape or scores.ndim != 2 or scores.shape[0] != len(query_ids):
        raise ValueError(
            f"scores {scores.shape} and indices {indices.shape} must both be [len(query_ids)={len(query_ids)}, k]."
        )
    doc_ids = list(doc_ids)
    run = {}
    for qid, row_scores, row_indices in zip(query_ids, scores, indices):
        run[qid] = {doc_ids[j]: float(s) for s, j in zip(row_scores, row_indices)}
    return run


def _ranked(docs: Mapping[str, float]):
    """Doc ids by descending score; ties keep insertion order (sorted() is stable)."""
    return [d for d, _ in sorted(docs.items(), key=lambda item: -item[1])]


def evaluate_run(run: Mapping[str, Mapping[str, float]], qrels: Mapping[str, Mapping[str, int]]) -> Dict[str, float]:
    """Ranking metrics averaged over queries (see the module doc for conventions).

    Definitions (those of trec_eval / ir-measures; relevant = judgment >= 1):
      - ``ndcg@10``: sum over the top 10 of ``rel / log2(rank + 1)`` divided by the same
        sum for the ideal ordering of the query's judgments (gain = the judgment value).
      - ``mrr@10`` / ``mrr``: 1 / rank of the first relevant document in the top 10 /
        anywhere in the run (0 if none). The run is only as deep as ``k`` of
        :func:`search`: ``mrr`` is exact when every relevant document is retrieved.
      - ``p@1``: 1 if the top document is relevant.
      - ``recall@10`` / ``recall@100``: relevant documents in the top 10 / 100 over the
        query's relevant documents.

    Args:
      run: query id -> {doc id: score}.
      qrels: query id -> {doc id: int judgment}.

    Returns:
      dict with keys ``ndcg@10``, ``mrr@10``, ``mrr``, ``p@1``, ``recall@10``,
      ``recall@100`` (floats, means over evaluated queries) and ``num_queries`` (int).

    Raises:
      ValueError: no query in ``qrels`` has a relevant judgment.
    """
    totals = dict.fromkeys(METRIC_KEYS, 0.0)
    num_queries = 0
    for qid, judged in qrels.items():
        relevant = {d for d, rel in judged.items() if rel >= 1}
        if not relevant:
            continue
        num_queries += 1
        ranking = _ranked(run.get(qid, {}))
        gains = [max(judged.get(d, 0), 0) for d in ranking[:10]]
        dcg = sum(g / np.log2(r + 2) for r, g in enumerate(gains) if g > 0)
        ideal = sorted((rel for rel in judged.values() if rel > 0), reverse=True)[:10]
        idcg = sum(g / np.log2(r + 2) for r, g in enumerate(ideal))
        totals["ndcg@10"] += dcg / idcg
        first = next((r for r, d in enumerate(ranking) if d in relevant), None)
        if first is not None:
            totals["mrr"] += 1.0 / (first + 1)
            if first < 10:
                totals["mrr@10"] += 1.0 / (first + 1)
            if first == 0:
                totals["p@1"] += 1.0
        totals["recall@10"] += len(relevant.intersection(ranking[:10])) / len(relevant)
        totals["recall@100"] += len(relevant.intersection(ranking[:100])) / len(relevant)
    if num_queries == 0:
        raise ValueError("no query in qrels has a relevant (>= 1) judgment; nothing to evaluate.")
    result = {key: float(value / num_queries) for key, value in totals.items()}
    result["num_queries"] = num_queries
    return result
