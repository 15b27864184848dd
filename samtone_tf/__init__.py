"""samtone_tf: dual-encoder retrieval training with same-tower negatives (SamToNe) and
DANCE's dual objective, for TensorFlow with Keras 3 or Keras 2.

Importing this package never changes which Keras generation ``tf.keras`` is: set
``TF_USE_LEGACY_KERAS=1`` before importing TensorFlow for Keras 2.

Layout (docs/layout.md): ``data`` (loaders, format registry, pairs, tokenizer, downloads),
``towers`` (encoders, specs, pretrained, DualEncoder, texts -> embeddings), ``losses``,
``distribute``, ``training`` (run, resilience, mining, strategy), ``evaluation`` (run,
retrieval, TFRS, analysis), ``export`` / ``serving`` and ``cli``.
"""

__version__ = "0.1.0"

from samtone_tf import _compat
from samtone_tf._keras import IS_KERAS3, KERAS_VERSION
from samtone_tf.data.tokenization import BertTextTokenizer
from samtone_tf.distribute import gather_global_batch
from samtone_tf.evaluation.retrieval import evaluate_run, search
from samtone_tf.export import export_dual_encoder, export_index, load_exported
from samtone_tf.losses import SamToNeLoss, contrastive_loss
from samtone_tf.precision import precision_scope, resolve_precision
from samtone_tf.towers.encoders import KerasHubEncoder, TFHubEncoder, export_tfhub_layout
from samtone_tf.towers.model import DualEncoder
from samtone_tf.towers.pooling import mean_pool
from samtone_tf.towers.specs import make_encoder
from samtone_tf.training.strategy import get_strategy

_compat.install()

__all__ = [
    "BertTextTokenizer", "DualEncoder", "IS_KERAS3", "KERAS_VERSION", "KerasHubEncoder",
    "SamToNeLoss", "TFHubEncoder", "contrastive_loss", "evaluate_run", "export_dual_encoder",
    "export_index", "export_tfhub_layout", "gather_global_batch", "get_strategy",
    "load_exported", "make_encoder", "mean_pool", "precision_scope", "resolve_precision",
    "search",
]
