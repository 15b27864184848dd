"""Whole-corpus retrieval evaluation of a text encoder on BEIR or ReQA (SQuAD) data.

Glue between the data loaders (:mod:`samtone_tf.data`, :mod:`samtone_tf.data.reqa`), the
encoders (a ``pretrained:<name>`` model, an exported SavedModel, or a live
:class:`~samtone_tf.DualEncoder`) and exact streaming search with the IR metrics
(:mod:`samtone_tf.evaluation.retrieval`).
"""

import os

import tensorflow as tf

from samtone_tf.data.formats import load_data
from samtone_tf.evaluation import retrieval
from samtone_tf.precision import check_precision, current_precision, resolve_precision
from samtone_tf.serving import load_exported, read_export_metadata
from samtone_tf.towers import pretrained
from samtone_tf.towers.embedders import length_order

SEARCH_DEPTH = 100  # recall@100 needs 100; MRR is the reciprocal rank within these 100


def load_eval_data(data, fmt, split=None, *, dev_fraction=0.2, seed=0):
    """``(corpus, queries, qrels)`` for evaluation: :func:`samtone_tf.data.load_data`.

    ``fmt="beir"``: ``data`` is a BEIR folder, ``split`` a qrels split (default ``test``);
    only queries judged in that split are evaluated. ``fmt="squad"``: ``data`` is a SQuAD
    v1.1 JSON file turned into ReQA (candidates = every sentence of the chosen articles);
    ``split`` is ``all`` (the default), or ``train`` / ``dev`` of
    :func:`samtone_tf.data.reqa.split_by_article` with ``dev_fraction`` and ``seed``.
    Other formats: see :mod:`samtone_tf.data.formats`.
    """
    return load_data(data, fmt, split, dev_fraction=dev_fraction, seed=seed)


def evaluate_retrieval(query_fn, document_fn, corpus, queries, qrels, *, batch_size=64,
                       progress=True):
    """Encodes the corpus and the queries, searches exactly and scores the run.

    Args:
      query_fn, document_fn: map a list of strings to ``[n, dim]`` embeddings.
      corpus, queries, qrels: as from :func:`load_eval_data`.
      batch_size: texts per encoder call.
      progress: tqdm progress bars while encoding.

    Returns:
      dict with ``ndcg@10``, ``mrr@10``, ``mrr``, ``p@1``, ``recall@10``, ``recall@100``
      (see :func:`samtone_tf.evaluation.retrieval.evaluate_run`), ``num_queries``, ``num_documents``.
    """
    if not corpus:
        raise ValueError("the corpus is empty.")
    query_ids = [q for q in queries if q in qrels]
    if not query_ids:
        raise ValueError("no query of `queries` is judged in `qrels`.")
    doc_ids = list(corpus)
    doc_texts = [corpus[d] for d in doc_ids]
    order = length_order(doc_texts)
    doc_ids = [doc_ids[i] for i in order]
    doc_texts = [doc_texts[i] for i in order]
    query_emb = retrieval.encode_corpus(query_fn, [queries[q] for q in query_ids], batch_size,
                                        progress=progress)
    batches = retrieval.iter_encoded_batches(document_fn, doc_texts, batch_size,
                                             progress=progress, desc="encoding corpus")
    scores, indices = retrieval.search(query_emb, batches, SEARCH_DEPTH)
    run = retrieval.run_from_search(scores, indices, query_ids, doc_ids)
    metrics = retrieval.evaluate_run(run, qrels)
    metrics["num_documents"] = len(doc_ids)
    return metrics


def model_precision(model, precision="auto"):
    """The precision ``text_encoders(model, precision=precision)`` computes in.

    ``"pretrained:<name>"``: ``precision`` resolved for this hardware. An exported SavedModel
    computes in the precision it was exported in (its ``samtone_tf_export.json``; float32
    for exports that do not record it): ``"auto"`` or ``None`` accept it, another value must
    equal it (a ValueError says how to export in that precision).
    """
    if precision is not None:
        check_precision(precision)
    if pretrained.pretrained_name(model) is not None:
        return current_precision() if precision is None else resolve_precision(precision)
    exported = read_export_metadata(model).get("precision", "float32")
    if precision not in (None, "auto") and precision != exported:
        raise ValueError(
            f"{model!r} was exported in {exported} and computes in it; --precision "
            f"{precision} cannot change that. Use --precision auto (or {exported}), or "
            f"export the model again under --precision {precision}.")
    return exported


def text_encoders(model, *, batch_size=64, query_max_length=None, document_max_length=None,
                  precision=None):
    """``(query_fn, document_fn)`` for ``model``: ``"pretrained:<name>"`` or an exported
    SavedModel folder (from ``samtone-tf export`` / :func:`samtone_tf.export.export_dual_encoder`).

    ``precision`` (``"auto"``, ``"float32"``, ``"bfloat16"``, ``"float16"``; ``None``: the
    Keras global policy's) is what a pretrained model computes in; an exported SavedModel
    computes in its own (see :func:`model_precision`). The embeddings are float32.
    The returned functions keep the loaded SavedModel alive.
    """
    name = pretrained.pretrained_name(model)
    if name is not None:
        pretrained.load_pretrained(name)  # fail early (unknown name, missing package)
        precision = model_precision(model, precision)

        def query_fn(texts):
            return pretrained.encode_texts(texts, batch_size=batch_size, name=name,
                                           max_length=query_max_length, precision=precision)

        def document_fn(texts):
            return pretrained.encode_texts(texts, batch_size=batch_size, name=name,
                                           max_length=document_max_length,
                                           precision=precision)

        return query_fn, document_fn
    if not os.path.isfile(os.path.join(os.fspath(model), "saved_model.pb")):
        raise ValueError(f"--model {model!r} is neither 'pretrained:<name>' nor a SavedModel "
                         "folder written by `samtone-tf export`.")
    model_precision(model, precision)
    if query_max_length or document_max_length:
        raise ValueError("max lengths are fixed inside an exported SavedModel's tokenizers.")
    loaded = load_exported(model)
    for name in ("query_encoder", "document_encoder"):
        if name not in loaded.signatures:
            raise ValueError(f"{model!r} has no `{name}` signature; export it with "
                             "`samtone-tf export`.")

    def query_fn(texts, _loaded=loaded):
        return _loaded.signatures["query_encoder"](text=tf.constant(texts))["embeddings"]

    def document_fn(texts, _loaded=loaded):
        return _loaded.signatures["document_encoder"](text=tf.constant(texts))["embeddings"]

    return query_fn, document_fn


def format_metrics(metrics):
    """A small markdown table of the metrics."""
    keys = list(retrieval.METRIC_KEYS) + ["num_queries", "num_documents"]
    lines = ["| metric | value |", "|---|---|"]
    for key in keys:
        if key in metrics:
            value = metrics[key]
            lines.append(f"| {key} | {value:.4f} |" if isinstance(value, float)
                         else f"| {key} | {value} |")
    return "\n".join(lines)
