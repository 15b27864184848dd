"""samtone_tf: dual-encoder retrieval training with same-tower negatives (SamToNe) and
DANCE's dual objective, for TensorFlow with Keras 3 or Keras 2.

Importing this package never changes which Keras generation ``tf.keras`` is: set
``TF_USE_LEGACY_KERAS=1`` before importing TensorFlow for Keras 2.
"""

__version__ = "0.1.0"

from samtone_tf._keras import IS_KERAS3, KERAS_VERSION
from samtone_tf.distribute import gather_global_batch
from samtone_tf.losses import SamToNeLoss, contrastive_loss
from samtone_tf.model import DualEncoder, mean_pool
from samtone_tf.precision import precision_scope, resolve_precision
from samtone_tf.encoders import KerasHubEncoder, TFHubEncoder, export_tfhub_layout, make_encoder
from samtone_tf.tokenization import BertTextTokenizer
from samtone_tf.strategy import get_strategy
from samtone_tf.export import export_dual_encoder, export_index, load_exported
from samtone_tf.retrieval import evaluate_run, search
