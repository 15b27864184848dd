"""Loading what :mod:`samtone_tf.export` writes, with nothing but ``tensorflow`` and
``tensorflow_text``: this module imports only the standard library and TensorFlow, so a
serving process can vendor it by copying this one file.
"""

import json
import os

import tensorflow as tf

QUERY_SIGNATURE = "query_encoder"
DOCUMENT_SIGNATURE = "document_encoder"
INDEX_SIGNATURE = "serving_default"
#: JSON description written beside the SavedModel (``assets.extra`` is ignored by loaders).
EXPORT_METADATA_FILE = os.path.join("assets.extra", "samtone_tf_export.json")

_TF_TEXT_MISSING = (
    "Loading a samtone_tf export needs the `tensorflow-text` package: the exported "
    "tokenizer uses its ops (NormalizeUTF8, RegexSplitWithOffsets, WordpieceTokenizeWithOffsets), "
    "which are registered by `import tensorflow_text`. Install the release matching your "
    "TensorFlow ({tf_version}), e.g. `pip install \"tensorflow-text=={minor}.*\"`, and "
    "`import tensorflow_text` before `tf.saved_model.load`."
)


def _tf_text_message():
    minor = ".".join(tf.__version__.split(".")[:2])
    return _TF_TEXT_MISSING.format(tf_version=tf.__version__, minor=minor)


def load_exported(path):
    """Loads a SavedModel written by :func:`export_dual_encoder` or :func:`export_index`.

    Imports ``tensorflow_text`` first (it registers the tokenizer's ops), then
    ``tf.saved_model.load(path)``. Keep the returned object referenced while using its
    functions (``load_exported(p).query_encoder(...)`` on a temporary fails: the object and
    its variables are freed first).

    Raises:
      ImportError: tensorflow-text is not installed (the message says how to install it).
      RuntimeError: an op of the SavedModel is still not registered (a tensorflow-text
        release that does not match TensorFlow); the message names tensorflow-text.
    """
    try:
        import tensorflow_text  # noqa: F401  (registers the tokenizer's custom ops)
    except ImportError as error:
        raise ImportError(_tf_text_message()) from error
    try:
        return tf.saved_model.load(os.fspath(path))
    except (tf.errors.NotFoundError, ValueError) as error:
        if "not registered" in str(error) or "Op type not registered" in str(error):
            raise RuntimeError(
                f"{error}\n\n{_tf_text_message()} (tensorflow-text is imported, but its ops "
                "do not match this SavedModel: check that its version matches TensorFlow's.)"
            ) from error
        raise


def read_export_metadata(path):
    """The ``assets.extra/samtone_tf_export.json`` of an export (``{}`` where it is absent)."""
    meta_path = os.path.join(os.fspath(path), EXPORT_METADATA_FILE)
    if not os.path.isfile(meta_path):
        return {}
    with open(meta_path, encoding="utf-8") as f:
        return json.load(f)
