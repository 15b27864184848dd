"""The Keras generation this process runs with.

``tf.keras`` is Keras 3 unless ``TF_USE_LEGACY_KERAS=1`` was set before TensorFlow was
imported, in which case it is ``tf_keras`` (Keras 2). The library follows that choice and
never changes it.
"""

import tensorflow as tf

keras = tf.keras
try:
    KERAS_VERSION = keras.__version__
except AttributeError:  # tf_keras's tf.keras API module has no __version__
    import tf_keras

    KERAS_VERSION = tf_keras.__version__
IS_KERAS3 = int(KERAS_VERSION.split(".")[0]) >= 3


def register_serializable(name):
    """``register_keras_serializable`` under package ``samtone_tf`` for either generation."""
    return keras.utils.register_keras_serializable(package="samtone_tf", name=name)
