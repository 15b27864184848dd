"""A deliberately plain NumPy reference of the loss family, written from the definition:
one Python loop per anchor that lists every term of each denominator explicitly, float64
throughout. Shared by the loss, fuzz and distribute tests.

Definition of the false-negative rule (the library's docstring states the same in words):
- examples i and j are *linked* when they share a query id or a document id (for the ids
  given); a linked j != i contributes none of q_j, d_j to any row of anchor i;
- the positives of q_i are the document ids of every example with q_i's query id (its own
  included); a hard-negative document with one of those ids is not a negative of anchor i;
- the positives of d_i are the query ids of every example with d_i's document id; a
  hard-negative query with one of those ids is not a negative of anchor i.
"""

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
                   query_ids=None, document_ids=None, hard_negative_document_ids=None,
                   hard_negative_query_ids=None):
    q, d = np.asarray(queries), np.asarray(documents)
    n = len(q)

    def flat(per_example, ids):
        """Every example's hard negatives as (embedding, id or None) in one list."""
        if per_example is None:
            return []
        return [(per_example[k][h], None if ids is None else ids[k][h])
                for k in range(n) for h in range(len(per_example[k]))]

    hd = flat(hard_negative_documents, hard_negative_document_ids)
    hq = flat(hard_negative_queries, hard_negative_query_ids)

    def s(a, b):
        return _sim(a, b, similarity, temperature)

    def shares_query(i, j):
        return i == j or (query_ids is not None and query_ids[i] == query_ids[j])

    def shares_document(i, j):
        return i == j or (document_ids is not None and document_ids[i] == document_ids[j])

    def linked(i, j):
        return shares_query(i, j) or shares_document(i, j)

    losses = []
    for i in range(n):
        positive_docs = {document_ids[j] for j in range(n)
                         if shares_query(i, j)} if document_ids is not None else set()
        positive_queries = {query_ids[j] for j in range(n)
                            if shares_document(i, j)} if query_ids is not None else set()
        others = [j for j in range(n) if not linked(i, j)]  # the examples that give negatives

        pos = s(q[i], d[i])
        query_row = [pos]
        query_row += [s(q[i], d[j]) for j in others]
        query_row += [s(q[i], h) for h, hid in hd if hid is None or hid not in positive_docs]
        if same_tower in ("query", "both"):
            query_row += [s(q[i], q[j]) for j in others]
        doc_row = []
        if bidirectional:
            doc_row = [s(d[i], q[i])]
            doc_row += [s(d[i], q[j]) for j in others]
            doc_row += [s(d[i], h) for h, hid in hq
                        if hid is None or hid not in positive_queries]
            if same_tower in ("document", "both"):
                doc_row += [s(d[i], d[j]) for j in others]
        if partition == "joint":
            losses.append(_logsumexp(query_row + doc_row) - pos)
        else:
            loss = _logsumexp(query_row) - pos
            if bidirectional:
                loss += dual_weight * (_logsumexp(doc_row) - pos)
            losses.append(loss)
    return np.array(losses)
