"""Evaluation: whole-corpus retrieval runs (:mod:`~.run`), exact search and metrics
(:mod:`~.retrieval`), TFRS retrieval metrics (:mod:`~.tfrs`) and the embedding-space
analysis (:mod:`~.analysis`). The names below are importable from here; they are loaded on
first use."""

from samtone_tf._compat import lazy_exports

_RUN = "samtone_tf.evaluation.run"
_EMBEDDERS = "samtone_tf.towers.embedders"

__getattr__, __dir__ = lazy_exports(__name__, {
    "load_eval_data": _RUN, "evaluate_retrieval": _RUN, "model_precision": _RUN,
    "text_encoders": _RUN, "format_metrics": _RUN, "SEARCH_DEPTH": _RUN,
    "dual_encoder_fns": _EMBEDDERS, "encoder_tf_functions": _EMBEDDERS,
    "trim_padding": _EMBEDDERS,
})
