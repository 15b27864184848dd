"""A deliberately plain NumPy reference of the loss family: one Python loop per anchor,
every term listed explicitly, float64 throughout. Shared by the loss and distribute tests."""

import numpy as np


def _sim(a, b, similarity, temperature):
    a = np.asarray(a, np.float64)
    b = np.asarray(b, np.float64)
    if similarity == "cosine":
        a = a / np.linalg.norm(a)
        b = b / np.linalg.norm(b)
    return float(a @ b) / temperature


def _logsumexp(values):
    m = max(values)
    return m + np.log(sum(np.exp(v - m) for v in values))


def reference_loss(queries, documents, *, temperature, similarity="cosine", same_tower="query",
                   bidirectional=False, dual_weight=1.0, partition="separate",
                   hard_negative_documents=None, hard_negative_queries=None,
                   query_ids=None, document_ids=None):
    q, d = np.asarray(queries), np.asarray(documents)
    n = len(q)
    hd = [] if hard_negative_documents is None else [
        h for example in hard_negative_documents for h in example]
    hq = [] if hard_negative_queries is None else [
        h for example in hard_negative_queries for h in example]

    def s(a, b):
        return _sim(a, b, similarity, temperature)

    def dup_doc(i, j):
        return document_ids is not None and document_ids[i] == document_ids[j]

    def dup_query(i, j):
        return query_ids is not None and query_ids[i] == query_ids[j]

    losses = []
    for i in range(n):
        pos = s(q[i], d[i])
        query_row = [pos]
        query_row += [s(q[i], d[j]) for j in range(n) if j != i and not dup_doc(i, j)]
        query_row += [s(q[i], h) for h in hd]
        if same_tower in ("query", "both"):
            query_row += [s(q[i], q[j]) for j in range(n) if j != i and not dup_query(i, j)]
        doc_row = []
        if bidirectional:
            doc_row = [s(d[i], q[i])]
            doc_row += [s(d[i], q[j]) for j in range(n) if j != i and not dup_query(i, j)]
            doc_row += [s(d[i], h) for h in hq]
            if same_tower in ("document", "both"):
                doc_row += [s(d[i], d[j]) for j in range(n) if j != i and not dup_doc(i, j)]
        if partition == "joint":
            losses.append(_logsumexp(query_row + doc_row) - pos)
        else:
            loss = _logsumexp(query_row) - pos
            if bidirectional:
                loss += dual_weight * (_logsumexp(doc_row) - pos)
            losses.append(loss)
    return np.array(losses)
