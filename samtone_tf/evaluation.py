"""Whole-corpus retrieval evaluation of a text encoder on BEIR or ReQA (SQuAD) data.

Glue between the data loaders (:mod:`samtone_tf.data`, :mod:`samtone_tf.reqa`), the
encoders (a ``pretrained:<name>`` model, an exported SavedModel, or a live
:class:`~samtone_tf.DualEncoder`) and exact streaming search with the IR metrics
(:mod:`samtone_tf.retrieval`).
"""

import os
import warnings

import numpy as np

from samtone_tf import retrieval

FORMATS = ("beir", "squad")
SQUAD_SPLITS = ("all", "train", "dev")
SEARCH_DEPTH = 100  # recall@100 needs 100; MRR is the reciprocal rank within these 100


def load_eval_data(data, fmt, split="test", *, dev_fraction=0.2, seed=0):
    """``(corpus, queries, qrels)`` for evaluation.

    ``fmt="beir"``: ``data`` is a BEIR folder, ``split`` a qrels split (``test``, ...); only
    queries judged in that split are evaluated. ``fmt="squad"``: ``data`` is a SQuAD v1.1 JSON
    file turned into ReQA (candidates = every sentence of the chosen articles); ``split`` is
    ``all``, or ``train`` / ``dev`` of :func:`samtone_tf.reqa.split_by_article` with
    ``dev_fraction`` and ``seed``.
    """
    if fmt not in FORMATS:
        raise ValueError(f"`format` must be one of {FORMATS}, got {fmt!r}.")
    if not os.path.exists(data):
        raise FileNotFoundError(f"--data {data!r} does not exist.")
    if fmt == "beir":
        from samtone_tf.data import load_beir

        if not os.path.isdir(data):
            raise ValueError(f"--format beir expects a folder (corpus.jsonl, queries.jsonl, "
                             f"qrels/), got the file {data!r}.")
        corpus, queries, qrels = load_beir(data, split)
        queries = {q: queries[q] for q in qrels if q in queries}
        return corpus, queries, qrels
    from samtone_tf import reqa

    if split not in SQUAD_SPLITS:
        raise ValueError(f"--split for --format squad must be one of {SQUAD_SPLITS}, got {split!r}.")
    if os.path.isdir(data):
        raise ValueError(f"--format squad expects a SQuAD v1.1 JSON file (such as "
                         f"dev-v1.1.json), got the folder {data!r}.")
    source = data
    if split != "all":
        train, dev = reqa.split_by_article(data, dev_fraction, seed)
        source = dev if split == "dev" else train
    corpus, queries, qrels = reqa.build_reqa(source)
    return corpus, queries, qrels


def _length_order(texts):
    """Indices sorting texts longest first: batches of similar length pad less."""
    return np.argsort([-len(t) for t in texts], kind="stable")


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
      (see :func:`samtone_tf.retrieval.evaluate_run`), ``num_queries``, ``num_documents``.
    """
    if not corpus:
        raise ValueError("the corpus is empty.")
    query_ids = [q for q in queries if q in qrels]
    if not query_ids:
        raise ValueError("no query of `queries` is judged in `qrels`.")
    doc_ids = list(corpus)
    doc_texts = [corpus[d] for d in doc_ids]
    order = _length_order(doc_texts)
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
    from samtone_tf.precision import check_precision, resolve_precision

    if precision is not None:
        check_precision(precision)
    if isinstance(model, str) and model.startswith("pretrained:"):
        from samtone_tf.precision import current_precision

        return current_precision() if precision is None else resolve_precision(precision)
    from samtone_tf.export import read_export_metadata

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
    if isinstance(model, str) and model.startswith("pretrained:"):
        from samtone_tf import pretrained

        name = model[len("pretrained:"):]
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
    import tensorflow as tf

    from samtone_tf.export import load_exported

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


def trim_padding(features):
    """Cuts ``token_ids`` / ``padding_mask`` ``[B, L]`` to the longest text of the batch.

    The tokenizers pad every text to their ``max_length`` (static shapes for training under
    ``tf.distribute``); for encoding, the positions after the batch's longest text are
    padding in every row, and the encoders mask them out, so dropping them leaves the
    embeddings unchanged (up to float rounding) and saves their compute: short texts encode
    in proportion to their real length. Keeps at least one position.
    """
    from samtone_tf.data import trim_to_longest

    return trim_to_longest(features)


def encoder_tf_functions(model, query_tokenizer, document_tokenizer, trim=True):
    """``(encode_queries, encode_documents)``: ``tf.function``s from a 1-D string tensor to
    the live DualEncoder's embeddings (usable inside ``strategy.run``). With ``trim`` (the
    default) each batch is padded only to its longest text (:func:`trim_padding`); pass
    ``trim=False`` for an encoder that only accepts the tokenizer's full length."""
    import tensorflow as tf

    def prepare(features):
        return trim_padding(features) if trim else features

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string)], reduce_retracing=True)
    def encode_queries(texts):
        return model.encode_queries(prepare(query_tokenizer(texts)))

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string)], reduce_retracing=True)
    def encode_documents(texts):
        return model.encode_documents(prepare(document_tokenizer(texts)))

    return encode_queries, encode_documents


def _short(error, limit=300):
    """An exception as ``Type: message``, without the trace TensorFlow wraps around it
    ("in user code: File ...", "Graph execution error: Detected at node ...")."""
    skip = ("File ", "in user code:", "Graph execution error:", "Detected at node", "[[")
    lines = [line.strip() for line in str(error).splitlines()]
    lines = [line for line in lines if line and not line.startswith(skip)]
    text = lines[-1] if lines else ""
    prefix = f"{type(error).__name__}: "
    if text.startswith(prefix):
        text = text[len(prefix):]
    if len(text) > limit:
        text = text[:limit] + "..."
    return prefix + text


def dual_encoder_fns(model, query_tokenizer, document_tokenizer):
    """``(query_fn, document_fn)`` over a live DualEncoder and its tokenizers: lists of
    strings to ``[n, dim]`` embeddings, each batch padded to its longest text.

    An encoder that rejects the shorter length on the first call (e.g. a SavedModel whose
    signature fixes the sequence length) is used at the tokenizer's full length from then
    on, with a warning naming the error. This happens only when the first batch fails
    with a ValueError, TypeError or ``tf.errors.InvalidArgumentError`` trimmed and then
    encodes at the full length; an error that the full length raises too (so not about
    the length) is raised, as is any other kind of error.
    """
    import tensorflow as tf

    trimmed = encoder_tf_functions(model, query_tokenizer, document_tokenizer, trim=True)
    chosen = [None, None]
    names = ("query", "document")
    # What an encoder that only takes its full sequence length raises on a shorter batch:
    # a fixed-length signature refuses the [B, None] input when traced (ValueError "Could
    # not find matching concrete function", TypeError "Binding inputs to tf.function
    # failed"), or a shape-dependent op fails when it runs (InvalidArgumentError).
    length_errors = (ValueError, TypeError, tf.errors.InvalidArgumentError)

    def call(tower, texts):
        texts = tf.constant(texts)
        if chosen[tower] is not None:
            return chosen[tower](texts)
        try:
            out = trimmed[tower](texts)
        except length_errors as trim_error:
            full = encoder_tf_functions(model, query_tokenizer, document_tokenizer,
                                        trim=False)[tower]
            try:
                out = full(texts)
            except Exception:  # noqa: BLE001 - fails at the full length too: not the length
                raise trim_error from None
            warnings.warn(
                f"The {names[tower]} encoder failed on a batch padded only to its longest "
                f"text ({_short(trim_error)}) but works at the tokenizer's full length; "
                "encoding every batch at the full length from now on (slower for short "
                "texts).", RuntimeWarning, stacklevel=3)
            chosen[tower] = full
            return out
        chosen[tower] = trimmed[tower]
        return out

    return (lambda texts: call(0, texts)), (lambda texts: call(1, texts))


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
