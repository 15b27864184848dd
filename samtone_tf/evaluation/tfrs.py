"""TFRS ``FactorizedTopK`` retrieval metrics inside ``model.evaluate`` (Keras 2 mode only).

tensorflow-recommenders (TFRS) 0.7 imports only under Keras 2 (``TF_USE_LEGACY_KERAS=1``
set before TensorFlow is imported); under Keras 3 everything here raises an
``ImportError`` that says so (use :func:`samtone_tf.evaluation.retrieval.search` and
:func:`samtone_tf.evaluation.retrieval.evaluate_run` there, which need no TFRS).

``FactorizedTopK(candidates=dataset.map(...))`` (TFRS's streaming index) fails in a
mirrored ``evaluate``; an index built from *eagerly computed* corpus embeddings works. So:

* :func:`encode_corpus_embeddings` encodes the corpus eagerly with the document tower;
* :class:`FactorizedTopKEvaluator` is a Keras 2 model wrapping a trained ``DualEncoder``
  whose ``test_step`` encodes the queries with the query tower and updates
  ``tfrs.metrics.FactorizedTopK`` over a ``tfrs.layers.factorized_top_k.BruteForce`` index
  of those embeddings (id-based: a query counts as a hit at ``k`` when its positive
  document's corpus row is among the ``k`` best). ``evaluator.evaluate(dataset)`` returns
  ``factorized_top_k/top_{k}_categorical_accuracy`` for each ``k`` in ``ks``; under
  ``tf.distribute.MirroredStrategy`` (build it inside ``strategy.scope()``) the metric
  states are summed over replicas;
* :class:`FactorizedTopKCallback` does both at the end of training epochs and adds the
  numbers to the logs (``val_factorized_top_k/top_10_categorical_accuracy``, ...), so they
  appear in ``fit``'s history.

A query with several relevant documents is one evaluation example per (query, positive)
pair, as in TFRS: the metric is the fraction of pairs whose positive is in the top k
("positive within top k"), i.e. recall@k averaged over pairs, not over queries.

Evaluation dataset elements: a features dict (or ``(features, labels)``, labels ignored)
with ``"query_token_ids"``, ``"query_padding_mask"`` int32 ``[B, Lq]`` and
``"positive_index"`` int ``[B]``, the positive document's row in the corpus embeddings
(see :func:`make_query_eval_dataset`).
"""

import numpy as np
import tensorflow as tf

from samtone_tf import keys
from samtone_tf._keras import IS_KERAS3, KERAS_VERSION, keras
from samtone_tf._util import check_int, l2_normalize
from samtone_tf.towers import embedders

__all__ = [
    "TFRS_REQUIREMENT",
    "tfrs_available",
    "require_tfrs",
    "encode_corpus_embeddings",
    "make_query_eval_dataset",
    "FactorizedTopKEvaluator",
    "FactorizedTopKCallback",
    "DEFAULT_KS",
]

DEFAULT_KS = (1, 10, 100)
POSITIVE_INDEX_KEY = "positive_index"

TFRS_REQUIREMENT = (
    "samtone_tf.evaluation.tfrs needs tensorflow-recommenders, which works only with Keras 2: set "
    "TF_USE_LEGACY_KERAS=1 in the environment before TensorFlow is imported (this process "
    "runs Keras {version}; tf_keras must be installed). Under Keras 3 use "
    "samtone_tf.evaluation.retrieval.search + evaluate_run instead."
)


def _requirement_message():
    return TFRS_REQUIREMENT.format(version=KERAS_VERSION)


def require_tfrs():
    """Returns the ``tensorflow_recommenders`` module, or raises a clear ImportError.

    Raises:
      ImportError: this process runs Keras 3, or tensorflow-recommenders is not installed
        or fails to import; the message explains ``TF_USE_LEGACY_KERAS=1``.
    """
    if IS_KERAS3:
        raise ImportError(_requirement_message())
    try:
        import tensorflow_recommenders as tfrs
    except ImportError as error:
        raise ImportError(f"{_requirement_message()} (import failed: {error})") from error
    return tfrs


def tfrs_available():
    """``(available, reason)``: whether :func:`require_tfrs` succeeds, and why not.

    For test skips: ``ok, why = tfrs_available(); pytest.mark.skipif(not ok, reason=why)``.
    """
    try:
        require_tfrs()
    except ImportError as error:
        return False, str(error)
    return True, ""


def encode_corpus_embeddings(model, document_tokens, batch_size=64):
    """Encodes tokenised documents eagerly with ``model.encode_documents``.

    Runs through ``model.distribute_strategy.run`` (the default strategy for plain
    models), so it works inside a strategy scope and in callbacks during ``fit``; each
    replica encodes a slice of each batch (:func:`samtone_tf.towers.embedders.on_replicas`).

    Args:
      model: a ``DualEncoder`` (anything with ``encode_documents``).
      document_tokens: ``{"token_ids", "padding_mask"}`` int arrays ``[N, Ld]`` (e.g. a
        tokenizer's output for the whole corpus).
      batch_size: documents per call.

    Returns:
      float32 NumPy ``[N, dim]``.
    """
    check_int(batch_size, "batch_size")
    ids = np.asarray(document_tokens[keys.TOKEN_IDS])
    mask = np.asarray(document_tokens[keys.PADDING_MASK])
    if ids.ndim != 2 or ids.shape != mask.shape:
        raise ValueError(
            f"token_ids {ids.shape} and padding_mask {mask.shape} must both be [N, L]."
        )
    strategy = getattr(model, "distribute_strategy", None) or tf.distribute.get_strategy()
    encode = embedders.on_replicas(
        tf.function(lambda f: model.encode_documents(f, training=False), reduce_retracing=True),
        strategy)
    out = [encode({keys.TOKEN_IDS: ids[start:start + batch_size].astype(np.int32),
                   keys.PADDING_MASK: mask[start:start + batch_size].astype(np.int32)})
           for start in range(0, len(ids), batch_size)]
    return np.concatenate(out, axis=0).astype(np.float32)


def make_query_eval_dataset(query_tokens, positive_index, batch_size):
    """``tf.data`` of ``{"query_token_ids", "query_padding_mask", "positive_index"}`` batches.

    Args:
      query_tokens: ``{"token_ids", "padding_mask"}`` ``[P, Lq]``, one row per
        (query, positive) pair (repeat a query for each of its positives).
      positive_index: int ``[P]``, the positive document's corpus row.
      batch_size: global batch size (the last batch may be smaller).
    """
    positive_index = np.asarray(positive_index, dtype=np.int64)
    ids = np.asarray(query_tokens[keys.TOKEN_IDS], dtype=np.int32)
    if positive_index.shape != (ids.shape[0],):
        raise ValueError(
            f"positive_index has shape {positive_index.shape}; expected ({ids.shape[0]},)."
        )
    return tf.data.Dataset.from_tensor_slices({
        keys.QUERY + keys.TOKEN_IDS: ids,
        keys.QUERY + keys.PADDING_MASK: np.asarray(query_tokens[keys.PADDING_MASK],
                                                   dtype=np.int32),
        POSITIVE_INDEX_KEY: positive_index,
    }).batch(batch_size)


class FactorizedTopKEvaluator(keras.Model):
    """Evaluates a DualEncoder's query tower with ``tfrs.metrics.FactorizedTopK`` (Keras 2).

    ``test_step``: ``q = dual_encoder.encode_queries(query features)`` [B, dim]
    (L2-normalised when ``normalize``), then
    ``FactorizedTopK.update_state(q, candidates[positive_index], true_candidate_ids=positive_index)``
    over a ``BruteForce`` index whose identifiers are the corpus rows ``0 .. N-1``:
    top-k categorical accuracy at each ``k`` = fraction of (query, positive) pairs whose
    positive row is among the ``k`` highest dot-product scores (``tf.math.top_k``; ties
    go to the earlier row, as in ``samtone_tf.evaluation.retrieval.search``).

    Args:
      dual_encoder: a trained ``DualEncoder`` (its query tower is used; it is not trained).
      corpus_embeddings: float ``[N, dim]``, computed eagerly (see
        :func:`encode_corpus_embeddings`).
      ks: the cut-offs; those above ``N`` are clipped to ``N``.
      normalize: L2-normalise queries and candidates (cosine, ``search``'s default).
      **kwargs: forwarded to ``keras.Model``.

    Build it (and compile it, ``evaluator.compile()``) inside the strategy's scope when
    evaluating under ``tf.distribute``.

    Example (Keras 2 process):
    ```python
    emb = encode_corpus_embeddings(model, doc_tokenizer(corpus_texts))
    evaluator = FactorizedTopKEvaluator(model, emb, ks=(1, 10, 100))
    evaluator.compile()
    evaluator.evaluate(make_query_eval_dataset(query_tokens, positives, 64), return_dict=True)
    ```
    """

    def __init__(self, dual_encoder, corpus_embeddings, ks=DEFAULT_KS, normalize=True, **kwargs):
        tfrs = require_tfrs()
        corpus_embeddings = np.asarray(corpus_embeddings, dtype=np.float32)
        if corpus_embeddings.ndim != 2 or corpus_embeddings.shape[0] == 0:
            raise ValueError(
                f"corpus_embeddings must be a non-empty [N, dim] array; got {corpus_embeddings.shape}."
            )
        ks = tuple(ks)
        if not ks or any(isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1 for k in ks):
            raise ValueError(f"ks must be a non-empty sequence of positive ints; got {ks!r}.")
        if not callable(getattr(dual_encoder, "encode_queries", None)):
            raise TypeError(
                f"`dual_encoder` must have `encode_queries`; got {type(dual_encoder).__name__}"
            )
        super().__init__(**kwargs)
        num_docs = corpus_embeddings.shape[0]
        if normalize:
            corpus_embeddings = l2_normalize(corpus_embeddings)
        self.dual_encoder = dual_encoder
        self.normalize = normalize
        self.ks = ks
        self.index = tfrs.layers.factorized_top_k.BruteForce(k=min(max(ks), num_docs))
        self.index.index(
            tf.constant(corpus_embeddings), tf.range(num_docs, dtype=tf.int64)
        )
        # The metric's names keep the requested k; retrieval depth is clipped at N.
        self.factorized_top_k = tfrs.metrics.FactorizedTopK(
            candidates=self.index, ks=[min(k, num_docs) for k in ks]
        )
        for k, metric in zip(ks, self.factorized_top_k._top_k_metrics):
            metric._name = f"factorized_top_k/top_{k}_categorical_accuracy"

    @property
    def metrics(self):
        return list(self.factorized_top_k.metrics)

    def call(self, inputs, training=False):
        queries = self.dual_encoder.encode_queries(
            {key: inputs[keys.QUERY + key] for key in keys.TOKENIZER_KEYS},
            training=False,
        )
        if self.normalize:
            queries = tf.math.l2_normalize(queries, axis=-1, epsilon=1e-12)
        return queries

    def test_step(self, data):
        features = data[0] if isinstance(data, (tuple, list)) else data
        if POSITIVE_INDEX_KEY not in features:
            raise ValueError(
                f"evaluation features need {POSITIVE_INDEX_KEY!r} (the positive document's "
                f"corpus row); got keys {sorted(features)}"
            )
        queries = self(features, training=False)
        positive = tf.cast(tf.reshape(features[POSITIVE_INDEX_KEY], [-1]), tf.int64)
        true_embeddings = tf.gather(self.index._candidates, positive)
        self.factorized_top_k.update_state(queries, true_embeddings, true_candidate_ids=positive)
        return {m.name: m.result() for m in self.metrics}

    def train_step(self, data):
        raise NotImplementedError(
            "FactorizedTopKEvaluator only evaluates; train the DualEncoder itself."
        )


class FactorizedTopKCallback(keras.callbacks.Callback):
    """Adds FactorizedTopK accuracies of the model being fit to the epoch logs (Keras 2).

    At the end of every ``every_n_epochs``-th epoch: encodes the tokenised corpus eagerly
    with ``model.encode_documents``, builds a :class:`FactorizedTopKEvaluator` in the
    model's distribution strategy scope and evaluates ``query_dataset``; the results go
    into ``logs`` as ``prefix + "factorized_top_k/top_{k}_categorical_accuracy"``.

    Args:
      query_dataset: as :func:`make_query_eval_dataset` returns.
      document_tokens: ``{"token_ids", "padding_mask"}`` ``[N, Ld]``, the tokenised corpus
        (row ``i`` is ``positive_index == i``).
      ks: the cut-offs. normalize: as :class:`FactorizedTopKEvaluator`.
      batch_size: documents per encoding call.
      every_n_epochs: evaluate every this many epochs (and never in between).
      prefix: prepended to the metric names in the logs.
    """

    def __init__(self, query_dataset, document_tokens, ks=DEFAULT_KS, normalize=True,
                 batch_size=64, every_n_epochs=1, prefix="val_"):
        require_tfrs()
        super().__init__()
        check_int(every_n_epochs, "every_n_epochs")
        self.query_dataset = query_dataset
        self.document_tokens = document_tokens
        self.ks = tuple(ks)
        self.normalize = normalize
        self.batch_size = batch_size
        self.every_n_epochs = every_n_epochs
        self.prefix = prefix
        self.last_results = None

    def evaluate(self):
        """Runs the evaluation now; returns ``{metric name: value}`` (unprefixed)."""
        embeddings = encode_corpus_embeddings(self.model, self.document_tokens, self.batch_size)
        with self.model.distribute_strategy.scope():
            evaluator = FactorizedTopKEvaluator(
                self.model, embeddings, ks=self.ks, normalize=self.normalize
            )
            evaluator.compile()
        results = evaluator.evaluate(self.query_dataset, return_dict=True, verbose=0)
        self.last_results = {k: float(v) for k, v in results.items()}
        return self.last_results

    def on_epoch_end(self, epoch, logs=None):
        if (epoch + 1) % self.every_n_epochs:
            return
        results = self.evaluate()
        if logs is not None:
            logs.update({self.prefix + k: v for k, v in results.items()})
