"""SavedModel export: raw strings in, embeddings (or top-k documents) out.

Two artefacts, both plain TensorFlow SavedModels that a serving process loads with nothing
but ``tensorflow`` and ``tensorflow_text`` (no samtone_tf, no Keras, no keras-hub):

* :func:`export_dual_encoder` writes the towers and their tokenizers. Signatures:

  ======================  ===========================  ====================================
  signature               input                        output
  ======================  ===========================  ====================================
  ``query_encoder``       ``text``: string ``[N]``     ``embeddings``: float32 ``[N, dim]``
  ``document_encoder``    ``text``: string ``[N]``     ``embeddings``: float32 ``[N, dim]``
  ======================  ===========================  ====================================

  The restored object also has the same two functions as attributes
  (``loaded.query_encoder(tf.constant([...]))`` returns the ``[N, dim]`` tensor).

* :func:`export_index` writes a query tower plus an exact top-k index over a corpus.
  Signature ``serving_default`` (also ``search``): ``text`` string ``[N]`` ->
  ``scores`` float32 ``[N, k]`` (descending) and ``ids`` string ``[N, k]`` (corpus ids).
  Under Keras 2 (``TF_USE_LEGACY_KERAS=1``) the index is TFRS's
  ``tfrs.layers.factorized_top_k.BruteForce``; under Keras 3, where tensorflow-recommenders
  refuses to import, an equivalent pure-TF exact top-k. Both rank exactly like
  :func:`samtone_tf.evaluation.retrieval.search` (ties: the earlier corpus row first).

The tokenizer's WordPiece / normalisation ops come from tensorflow-text: a process must
``import tensorflow_text`` before ``tf.saved_model.load``. :func:`load_exported` does that
and says so clearly when tensorflow-text is missing.

Both writers are atomic: the SavedModel is written to a temporary sibling folder and
renamed into place, so ``output_dir`` is either absent, the old export (``overwrite=True``
with a failure) or complete. An existing ``output_dir`` is an error unless
``overwrite=True``.

Loading needs only :mod:`samtone_tf.serving` (standard library and TensorFlow), which a
serving process can vendor by copying that one file; :func:`load_exported` and
:func:`read_export_metadata` are importable from here as well.
"""

import json
import os

import numpy as np
import tensorflow as tf

from samtone_tf._keras import KERAS_VERSION
from samtone_tf._util import atomic_directory, check_int, l2_normalize
from samtone_tf.data.pairs import trim_to_longest
from samtone_tf.precision import current_precision
from samtone_tf.serving import (DOCUMENT_SIGNATURE, EXPORT_METADATA_FILE, INDEX_SIGNATURE,
                                QUERY_SIGNATURE, load_exported, read_export_metadata)
from samtone_tf.towers.embedders import encode_corpus

__all__ = [
    "export_dual_encoder",
    "export_index",
    "load_exported",
    "read_export_metadata",
    "tfrs_usable",
    "EXPORT_METADATA_FILE",
    "QUERY_SIGNATURE",
    "DOCUMENT_SIGNATURE",
    "INDEX_SIGNATURE",
]

_TEXT_SPEC = tf.TensorSpec([None], tf.string, name="text")


# ------------------------------------------------------------------------ atomic writes
def _check_output_dir(output_dir, overwrite):
    output_dir = os.path.abspath(os.fspath(output_dir))
    if os.path.lexists(output_dir):
        if not overwrite:
            raise FileExistsError(
                f"output_dir {output_dir!r} already exists; pass overwrite=True to replace it."
            )
        if not os.path.isdir(output_dir) or os.path.islink(output_dir):
            raise FileExistsError(
                f"output_dir {output_dir!r} exists and is not a folder; not replacing it."
            )
    parent = os.path.dirname(output_dir)
    os.makedirs(parent, exist_ok=True)
    return output_dir


def _atomic_save(module, output_dir, overwrite, signatures, metadata):
    """tf.saved_model.save into a temporary sibling, then rename into ``output_dir``."""
    output_dir = _check_output_dir(output_dir, overwrite)
    try:
        with atomic_directory(output_dir, exists="replace" if overwrite else "error") as tmp:
            tf.saved_model.save(module, tmp, signatures=signatures)
            meta_path = os.path.join(tmp, EXPORT_METADATA_FILE)
            os.makedirs(os.path.dirname(meta_path), exist_ok=True)
            with open(meta_path, "w", encoding="utf-8") as f:
                json.dump(metadata, f, indent=2, sort_keys=True)
    except FileExistsError:  # appeared while we were writing
        raise FileExistsError(
            f"output_dir {output_dir!r} already exists; pass overwrite=True to replace it."
        ) from None
    return output_dir


# --------------------------------------------------------------------- encoder module
def _tf_variables(variables):
    """The tf.Variables behind Keras 3 (``.value``) or Keras 2 variables."""
    out, seen = [], set()
    for v in variables:
        v = getattr(v, "value", v) if not isinstance(v, tf.Variable) else v
        if isinstance(v, tf.Variable) and id(v) not in seen:
            seen.add(id(v))
            out.append(v)
    return out


class _EncoderModule(tf.Module):
    """Tokenizers + towers as two ``[N]`` string -> ``[N, dim]`` float32 functions."""

    def __init__(self, model, query_tokenizer, document_tokenizer):
        super().__init__(name="samtone_dual_encoder")
        self.query_tokenizer = query_tokenizer
        self.document_tokenizer = document_tokenizer
        # The model is reached only through the closures below, never as an attribute:
        # tracking it would make tf.saved_model.save serialise Keras objects.
        # Each batch is cut to its longest text: the towers mask padding, so this changes
        # the embeddings only by float rounding and saves the work on padding.
        @tf.function(input_signature=[_TEXT_SPEC])
        def query_encoder(text):
            features = trim_to_longest(query_tokenizer(text))
            return tf.cast(model.encode_queries(features, training=False), tf.float32)

        @tf.function(input_signature=[_TEXT_SPEC])
        def document_encoder(text):
            features = trim_to_longest(document_tokenizer(text))
            return tf.cast(model.encode_documents(features, training=False), tf.float32)

        self.query_encoder = query_encoder
        self.document_encoder = document_encoder
        concrete = [query_encoder.get_concrete_function(), document_encoder.get_concrete_function()]
        # Every variable the traced graphs read (the model's, and for Keras 3 TF-Hub towers
        # those of the restored SavedModel they call), so the SavedModel holds them.
        captured = []
        for fn in concrete:
            captured.extend(fn.variables)
        self.tower_variables = _tf_variables(list(model.variables) + captured)

    def signatures(self):
        def wrap(fn):
            @tf.function(input_signature=[_TEXT_SPEC])
            def signature(text):
                return {"embeddings": fn(text)}

            return signature.get_concrete_function()

        return {
            QUERY_SIGNATURE: wrap(self.query_encoder),
            DOCUMENT_SIGNATURE: wrap(self.document_encoder),
        }


def _check_tokenizer(tokenizer, what):
    if not callable(tokenizer) or not isinstance(tokenizer, tf.Module):
        raise TypeError(
            f"`{what}` must be a tf.Module tokenizer (e.g. samtone_tf.BertTextTokenizer) so its "
            f"vocabulary is saved with the model; got {type(tokenizer).__name__}"
        )


def _model_precision(model):
    """What the towers compute in (``DualEncoder.compute_precision``; else the policy's)."""
    if not hasattr(model, "encode_queries"):  # a loaded export: it does not say
        return None
    return getattr(model, "compute_precision", None) or current_precision()


def export_dual_encoder(model, query_tokenizer, document_tokenizer=None, output_dir=None, *,
                        overwrite=False):
    """Writes a DualEncoder and its tokenizers as a SavedModel taking raw strings.

    Signatures ``query_encoder`` and ``document_encoder`` each take ``text`` (string
    ``[N]``) and return ``{"embeddings": float32 [N, dim]}``, equal to
    ``model.encode_queries(query_tokenizer(text))`` /
    ``model.encode_documents(document_tokenizer(text))`` in inference mode. Works for
    models built under Keras 3 and under Keras 2 (``TF_USE_LEGACY_KERAS=1``). Reload with
    :func:`load_exported` (or ``import tensorflow_text`` then ``tf.saved_model.load``).

    Args:
      model: a ``samtone_tf.DualEncoder`` (anything with ``encode_queries`` /
        ``encode_documents`` taking ``{"token_ids", "padding_mask"}``).
      query_tokenizer: a tf.Module tokenizer, ``[N]`` strings ->
        ``{"token_ids", "padding_mask"}`` (e.g. ``samtone_tf.BertTextTokenizer``); its
        vocabulary file is copied into the SavedModel's assets.
      document_tokenizer: the documents' tokenizer; ``None`` means ``query_tokenizer``.
      output_dir: the SavedModel folder to create.
      overwrite: replace an existing ``output_dir`` (atomically).

    Returns:
      ``output_dir`` (absolute).

    Raises:
      FileExistsError: ``output_dir`` exists and ``overwrite`` is False.
      TypeError: a tokenizer is not a tf.Module.

    Example:
    ```python
    tok = samtone_tf.BertTextTokenizer("vocab.txt", max_length=128)
    export_dual_encoder(model, tok, tok, "/tmp/exported")
    loaded = load_exported("/tmp/exported")
    emb = loaded.signatures["query_encoder"](text=tf.constant(["a question"]))["embeddings"]
    ```
    """
    if output_dir is None:
        raise ValueError("`output_dir` is required")
    if document_tokenizer is None:
        document_tokenizer = query_tokenizer
    _check_tokenizer(query_tokenizer, "query_tokenizer")
    _check_tokenizer(document_tokenizer, "document_tokenizer")
    for method in ("encode_queries", "encode_documents"):
        if not callable(getattr(model, method, None)):
            raise TypeError(f"`model` must have an `{method}` method; got {type(model).__name__}")
    _check_output_dir(output_dir, overwrite)

    # Build every layer eagerly (variables must not be created while tracing).
    probe = tf.constant([""])
    dim = int(model.encode_queries(query_tokenizer(probe), training=False).shape[-1])
    model.encode_documents(document_tokenizer(probe), training=False)

    module = _EncoderModule(model, query_tokenizer, document_tokenizer)
    metadata = {
        "format": "samtone_tf.dual_encoder",
        "format_version": 1,
        "signatures": [QUERY_SIGNATURE, DOCUMENT_SIGNATURE],
        "embedding_dim": dim,
        "query_max_length": getattr(query_tokenizer, "max_length", None),
        "document_max_length": getattr(document_tokenizer, "max_length", None),
        "architecture": getattr(model, "architecture", None),
        "precision": _model_precision(model),
        "keras_version": KERAS_VERSION,
        "tensorflow_version": tf.__version__,
    }
    return _atomic_save(module, output_dir, overwrite, module.signatures(), metadata)


# ---------------------------------------------------------------------------- index
def tfrs_usable():
    """Whether tensorflow-recommenders imports in this process (Keras 2 mode only).

    Returns False only when the import raises ImportError (not installed, or Keras 3:
    TFRS refuses to import without ``TF_USE_LEGACY_KERAS=1``).

    Raises:
      RuntimeError: the import failed with any other error (a broken installation or
        version clash), naming it, rather than silently exporting without TFRS.
    """
    try:
        import tensorflow_recommenders  # noqa: F401
    except ImportError:
        return False
    except Exception as e:  # noqa: BLE001 - re-raised with the cause named
        raise RuntimeError(
            f"tensorflow_recommenders is installed but importing it failed with "
            f"{type(e).__name__}: {e}. Fix or uninstall it, or export with backend='tf'."
        ) from e
    return True


class _ExactTopK(tf.Module):
    """Pure-TF exact top-k by dot product over fixed candidates (BruteForce's maths)."""

    def __init__(self, candidates, identifiers, k):
        super().__init__(name="exact_top_k")
        self.candidates = tf.Variable(candidates, trainable=False, name="candidates")
        self.identifiers = tf.Variable(
            tf.constant(list(identifiers), dtype=tf.string), trainable=False, name="identifiers"
        )
        self.k = k

    def __call__(self, queries):
        scores = tf.matmul(queries, self.candidates, transpose_b=True)
        # top_k ranks equal values by lower index first: the earlier corpus row wins ties.
        values, indices = tf.math.top_k(scores, k=self.k)
        return values, tf.gather(self.identifiers, indices)


class _TFRSBruteForce(tf.Module):
    """``tfrs.layers.factorized_top_k.BruteForce`` with only its variables tracked.

    The Keras 2 layer itself is not an attribute (tf.saved_model.save would add Keras
    layer metadata and trace its call); the exported graph is the layer's call.
    """

    def __init__(self, candidates, identifiers, k):
        super().__init__(name="tfrs_brute_force")
        import tensorflow_recommenders as tfrs

        layer = tfrs.layers.factorized_top_k.BruteForce(k=k)
        layer.index(tf.constant(candidates), tf.constant(list(identifiers), dtype=tf.string))
        self.index_variables = list(layer.variables)
        self.k = k
        self._search = lambda queries: layer(queries, k=k)  # a closure: not tracked

    def __call__(self, queries):
        return self._search(queries)


class _IndexModule(tf.Module):
    def __init__(self, encoder, query_fn, top_k, normalize):
        super().__init__(name="samtone_index")
        self.encoder = encoder  # tracks the tokenizer, tower variables and their functions
        self.top_k = top_k

        @tf.function(input_signature=[_TEXT_SPEC])
        def search(text):
            queries = tf.cast(query_fn(text), tf.float32)
            if normalize:
                queries = tf.math.l2_normalize(queries, axis=-1, epsilon=1e-12)
            scores, ids = top_k(queries)
            return {"scores": scores, "ids": ids}

        self.search = search


def _encoder_functions(export_dir_or_model, query_tokenizer, document_tokenizer):
    """-> (trackable holding the towers, query fn, document fn)."""
    source = export_dir_or_model
    if isinstance(source, (str, os.PathLike)):
        source = load_exported(source)
    if hasattr(source, "encode_queries") and hasattr(source, "encode_documents"):
        if query_tokenizer is None:
            raise ValueError(
                "`query_tokenizer` is required when `export_dir_or_model` is a model "
                "(an export folder carries its own tokenizers)"
            )
        document_tokenizer = document_tokenizer or query_tokenizer
        _check_tokenizer(query_tokenizer, "query_tokenizer")
        _check_tokenizer(document_tokenizer, "document_tokenizer")
        probe = tf.constant([""])
        source.encode_queries(query_tokenizer(probe), training=False)
        source.encode_documents(document_tokenizer(probe), training=False)
        source = _EncoderModule(source, query_tokenizer, document_tokenizer)
    for name in (QUERY_SIGNATURE, DOCUMENT_SIGNATURE):
        if not callable(getattr(source, name, None)):
            raise TypeError(
                "`export_dir_or_model` must be a folder written by export_dual_encoder, its "
                f"loaded object, or a DualEncoder; got {type(export_dir_or_model).__name__} "
                f"without `{name}`"
            )
    return source, source.query_encoder, source.document_encoder


def export_index(export_dir_or_model, corpus_ids, corpus_texts, output_dir, k=100, batch_size=64,
                 *, normalize=True, backend="auto", query_tokenizer=None, document_tokenizer=None,
                 overwrite=False):
    """Writes a SavedModel that answers raw-string queries with the corpus's top-k ids.

    The corpus is encoded now (eagerly, in batches, with the document tower); the
    SavedModel holds the query tower with its tokenizer and the ``[num_docs, dim]``
    embeddings. Signature ``serving_default`` (and the restored attribute ``search``):
    ``text`` string ``[N]`` -> ``{"scores": float32 [N, k'], "ids": string [N, k']}``
    with ``k' = min(k, num_docs)``, scores descending; equal to
    ``samtone_tf.evaluation.retrieval.search(queries, [corpus], k, normalize=normalize)`` on the same
    embeddings (ids = ``corpus_ids[indices]``; ties: the earlier corpus row first).

    Args:
      export_dir_or_model: a folder written by :func:`export_dual_encoder`, the object
        :func:`load_exported` returned for one, or a ``DualEncoder`` (then pass
        ``query_tokenizer`` and optionally ``document_tokenizer``).
      corpus_ids: one id per document (converted to ``str``); must be unique.
      corpus_texts: the documents' texts, in the same order.
      output_dir: the SavedModel folder to create.
      k: results per query.
      batch_size: documents per encoding call.
      normalize: L2-normalise queries and documents (cosine), as ``search``'s default;
        False scores by the raw dot product.
      backend: ``"auto"`` (TFRS ``BruteForce`` when tensorflow-recommenders imports, i.e.
        under Keras 2; the pure-TF exact top-k otherwise), ``"tfrs"`` or ``"tf"``.
      overwrite: replace an existing ``output_dir`` (atomically).

    Returns:
      ``output_dir`` (absolute). Its ``assets.extra/samtone_tf_export.json`` records the
      backend used.

    Raises:
      ValueError: bad ``k``/``batch_size``/``backend``, empty corpus, ids and texts of
        different lengths, duplicate ids.
      ImportError: ``backend="tfrs"`` where tensorflow-recommenders cannot be imported.
      RuntimeError: tensorflow-recommenders is installed but its import fails with an
        error other than ImportError (``backend`` ``"auto"`` or ``"tfrs"``).
      FileExistsError: ``output_dir`` exists and ``overwrite`` is False.
    """
    check_int(k, "k")
    check_int(batch_size, "batch_size")
    if backend not in ("auto", "tfrs", "tf"):
        raise ValueError(f"backend must be 'auto', 'tfrs' or 'tf'; got {backend!r}.")
    corpus_ids = [str(i) for i in corpus_ids]
    corpus_texts = list(corpus_texts)
    if not corpus_texts:
        raise ValueError("the corpus is empty.")
    if len(corpus_ids) != len(corpus_texts):
        raise ValueError(
            f"{len(corpus_ids)} corpus_ids for {len(corpus_texts)} corpus_texts; need one id per text."
        )
    if len(set(corpus_ids)) != len(corpus_ids):
        raise ValueError("corpus_ids must be unique.")
    if backend == "auto":
        backend = "tfrs" if tfrs_usable() else "tf"
    elif backend == "tfrs" and not tfrs_usable():
        import tensorflow_recommenders  # noqa: F401  (re-raises TFRS's own ImportError)
    _check_output_dir(output_dir, overwrite)

    holder, query_fn, document_fn = _encoder_functions(
        export_dir_or_model, query_tokenizer, document_tokenizer
    )
    embeddings = encode_corpus(
        lambda texts: document_fn(tf.constant(texts, dtype=tf.string)),
        corpus_texts, batch_size, progress=False,
    ).astype(np.float32)
    if normalize:
        embeddings = l2_normalize(embeddings)
    top = min(int(k), len(corpus_texts))
    identifiers = np.array(corpus_ids, dtype=object)
    if backend == "tfrs":
        top_k = _TFRSBruteForce(embeddings, identifiers, top)
    else:
        top_k = _ExactTopK(embeddings, identifiers, top)
    module = _IndexModule(holder, query_fn, top_k, normalize)
    signature = module.search.get_concrete_function()
    metadata = {
        "format": "samtone_tf.index",
        "format_version": 1,
        "backend": "tfrs.layers.factorized_top_k.BruteForce" if backend == "tfrs" else "tf.math.top_k",
        "k": top,
        "num_documents": len(corpus_texts),
        "embedding_dim": int(embeddings.shape[1]),
        "normalize": bool(normalize),
        "precision": (read_export_metadata(export_dir_or_model).get("precision", "float32")
                      if isinstance(export_dir_or_model, (str, os.PathLike))
                      else _model_precision(export_dir_or_model)),
        "keras_version": KERAS_VERSION,
        "tensorflow_version": tf.__version__,
    }
    return _atomic_save(
        module, output_dir, overwrite, {INDEX_SIGNATURE: signature, "search": signature}, metadata
    )
