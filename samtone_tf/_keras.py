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


def default_loss_reduction():
    """The reduction a ``keras.losses.Loss`` gets by default (mean over the batch)."""
    return "sum_over_batch_size" if IS_KERAS3 else keras.losses.Reduction.AUTO


def serialize_dtype_policy(layer):
    """A layer's dtype policy as its ``get_config`` stores it."""
    if IS_KERAS3:
        return keras.dtype_policies.serialize(layer.dtype_policy)
    return layer._dtype_policy.name


def deserialize_dtype_policy(value):
    """The inverse of :func:`serialize_dtype_policy` (a name passes through)."""
    if IS_KERAS3 and isinstance(value, dict):
        return keras.dtype_policies.deserialize(value)
    return value


def variable_key(variable):
    """An identity for a variable that is the same however Keras wraps it (Keras 3
    variables wrap a ``tf.Variable`` in ``.value``)."""
    return id(getattr(variable, "value", variable)) if IS_KERAS3 else id(variable)


def checked_compute_loss(check):
    """A ``Model.compute_loss`` override, with this generation's signature, that calls
    ``check(model, x)`` before the built-in ``compute_loss``."""
    if IS_KERAS3:
        def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, training=True):
            check(self, x)
            return keras.Model.compute_loss(self, x, y, y_pred, sample_weight,
                                            training=training)
    else:
        def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None):
            check(self, x)
            return keras.Model.compute_loss(self, x, y, y_pred, sample_weight)
    return compute_loss


# ----------------------------------------------------------------------------------------
# One training step's pieces, for steps that compute their gradients themselves (the
# gradient-cached step of ``DualEncoder``): what ``Model.train_step`` does around the tape
# differs between the generations.

def training_loss(model, x, y, y_pred, sample_weight):
    """The loss ``model.train_step`` would minimise (``compute_loss`` in training mode),
    recorded in the model's loss metric as the built-in step records it."""
    if IS_KERAS3:
        from keras.src.losses import loss as loss_module

        loss = model._compute_loss(x=x, y=y, y_pred=y_pred, sample_weight=sample_weight,
                                   training=True)
        batch = tf.shape(next(t for t in tf.nest.flatten(x) if t is not None))[0]
        model._loss_tracker.update_state(
            loss_module.unscale_loss_for_distribution(loss), sample_weight=batch)
        return loss
    loss = model.compute_loss(x, y, y_pred, sample_weight)
    model._validate_target_and_loss(y, loss)
    return loss


def scale_loss(optimizer, loss):
    """``loss`` multiplied by the optimizer's loss scale (float16 loss scaling), if any."""
    if optimizer is None:
        return loss
    if IS_KERAS3:
        return optimizer.scale_loss(loss)
    if hasattr(optimizer, "get_scaled_loss"):
        return optimizer.get_scaled_loss(loss)
    return loss


def apply_scaled_gradients(optimizer, gradients, variables):
    """Applies gradients of the *scaled* loss (see :func:`scale_loss`), as the built-in
    step does: the optimizer unscales them (and skips the step when they are not finite)."""
    gradients = list(gradients)
    if not IS_KERAS3 and hasattr(optimizer, "get_unscaled_gradients"):
        gradients = optimizer.get_unscaled_gradients(gradients)
    optimizer.apply_gradients(zip(gradients, variables))


def unreplayable_dropout_layers(model):
    """Names of the Keras 2 (``tf_keras``) layers under ``model`` that draw random masks
    from stateful random ops: their masks cannot be drawn a second time identically."""
    if IS_KERAS3:
        return []
    found = []
    for layer in model._flatten_layers(include_self=False):
        if getattr(layer, "_random_generator", None) is not None and (
                getattr(layer, "rate", 0) or 0) > 0:
            found.append(layer.name)
    return found
