"""Text encoders: token ids and a padding mask in, a sequence of hidden states out.

Every encoder here is a Keras layer of the generation this process runs with
(see ``samtone_tf._keras``) with one contract::

    encoder({"token_ids": int32 [B, L], "padding_mask": int32/bool [B, L]})
        -> float [B, L, hidden]

Two families of pretrained towers are supported:

* ``KerasHubEncoder``: a ``keras_hub`` backbone such as ``keras_hub.models.BertBackbone``
  (an object, a local preset folder, or a preset name). keras-hub is Keras 3 only: a Keras 3
  layer inside a Keras 2 (``tf_keras``) model builds but trains nothing, so under
  ``TF_USE_LEGACY_KERAS=1`` this class refuses to build and points to
  ``export_tfhub_layout``.
* ``TFHubEncoder``: a SavedModel in the TF-Hub BERT encoder layout (a handle or a local path),
  ``__call__({"input_word_ids", "input_mask", "input_type_ids"}, training)`` returning a dict
  with ``"sequence_output"`` [B, L, H] and ``"pooled_output"`` [B, H]. Under Keras 2 it wraps
  ``hub.KerasLayer(handle, trainable=...)``; under Keras 3 (where ``hub.KerasLayer`` cannot be
  used in a model) it wraps ``hub.load`` and tracks the restored variables as Keras 3 weights,
  so they fine-tune.

``export_tfhub_layout`` is the bridge: it writes any keras-hub backbone as a TF-Hub-layout
SavedModel that both generations can load and fine-tune. ``make_encoder`` builds the right
encoder from a specification.
"""

import os

import tensorflow as tf

from samtone_tf._keras import IS_KERAS3, keras, register_serializable
from samtone_tf.precision import check_precision, policy_name

KERASHUB_PREFIX = "kerashub:"
TFHUB_PREFIX = "tfhub:"

# Input and output names of the TF-Hub BERT encoder layout.
TFHUB_INPUT_KEYS = ("input_word_ids", "input_mask", "input_type_ids")
TFHUB_SEQUENCE_OUTPUT = "sequence_output"
TFHUB_POOLED_OUTPUT = "pooled_output"

_KERAS2_KERASHUB_ERROR = (
    "keras-hub backbones are Keras 3 models and cannot be trained inside a Keras 2 "
    "(tf_keras, TF_USE_LEGACY_KERAS=1) model: they would build but train nothing. Export "
    "the backbone to the TF-Hub layout in a Keras 3 process with "
    "`samtone_tf.towers.encoders.export_tfhub_layout(backbone, output_dir)` and pass `output_dir` "
    "(a TF-Hub-layout SavedModel path) instead."
)


def _is_keras_hub_object(obj):
    """True for instances of keras-hub (or keras-nlp) classes, without importing them."""
    return any(
        (getattr(cls, "__module__", "") or "").split(".")[0] in ("keras_hub", "keras_nlp")
        for cls in type(obj).__mro__
    )


def _is_keras3_layer(obj):
    """True for Keras 3 layers in either generation's process (checked by module)."""
    return any(
        (getattr(cls, "__module__", "") or "").startswith("keras.src.")
        for cls in type(obj).__mro__
    )


def pooler_variables(backbone):
    """The variables of a keras-hub backbone's pooler (BERT's ``pooled_dense``), if any.

    The towers here read ``sequence_output`` only (mean pooling, or the first token for
    ``"cls"``), so the pooler takes no part in the loss: it is kept out of the trainable
    variables (no optimizer slots for it, no "gradients do not exist" warning)."""
    pooler = getattr(backbone, "pooled_dense", None)
    return list(pooler.weights) if pooler is not None else []


def _tfhub_inputs(inputs):
    token_ids = tf.cast(inputs["token_ids"], tf.int32)
    padding_mask = tf.cast(inputs["padding_mask"], tf.int32)
    return {
        "input_word_ids": token_ids,
        "input_mask": padding_mask,
        "input_type_ids": tf.zeros_like(token_ids),
    }


def _check_encoder_inputs(inputs):
    if not isinstance(inputs, dict) or not {"token_ids", "padding_mask"} <= set(inputs):
        raise ValueError(
            "Encoder `inputs` must be a dict with keys 'token_ids' and 'padding_mask'; "
            f"got {type(inputs).__name__}"
            + (f" with keys {sorted(inputs)}" if isinstance(inputs, dict) else "")
        )


@register_serializable("KerasHubEncoder")
class KerasHubEncoder(keras.layers.Layer):
    """A keras-hub backbone as a text encoder (Keras 3 only).

    Maps ``{"token_ids": [B, L], "padding_mask": [B, L]}`` to the backbone's
    ``"sequence_output"`` [B, L, hidden]. Backbones that take ``"segment_ids"`` (BERT) get
    zeros for them.

    Args:
        backbone: a ``keras_hub.models.Backbone`` instance (e.g. ``BertBackbone``).
        **kwargs: forwarded to ``keras.layers.Layer`` (``name``, ``trainable``, ``dtype``).

    Example:
    ```python
    backbone = keras_hub.models.BertBackbone.from_preset("/path/to/all-MiniLM-L6-v2")
    encoder = KerasHubEncoder(backbone)
    hidden = encoder({"token_ids": ids, "padding_mask": mask})  # [B, L, 384]
    ```

    Under Keras 2 this raises ``RuntimeError``: export the backbone with
    ``export_tfhub_layout`` and use ``TFHubEncoder``.
    """

    def __init__(self, backbone, **kwargs):
        if not IS_KERAS3:
            raise RuntimeError(_KERAS2_KERASHUB_ERROR)
        if isinstance(backbone, dict):  # a serialised backbone, from get_config
            backbone = keras.utils.deserialize_keras_object(backbone)
        if not isinstance(backbone, keras.layers.Layer) or not hasattr(backbone, "input"):
            raise ValueError(
                "`backbone` must be a keras-hub backbone (e.g. keras_hub.models.BertBackbone); "
                f"got {type(backbone).__name__}"
            )
        super().__init__(**kwargs)
        if pooler_variables(backbone):
            backbone.pooled_dense.trainable = False  # unused: see pooler_variables
        self.backbone = backbone
        backbone_inputs = backbone.input
        self._input_names = (
            set(backbone_inputs) if isinstance(backbone_inputs, dict) else {"token_ids"}
        )
        if not {"token_ids", "padding_mask"} <= self._input_names:
            raise ValueError(
                "`backbone` must take 'token_ids' and 'padding_mask' inputs; it takes "
                f"{sorted(self._input_names)}"
            )
        self.built = True

    @classmethod
    def from_preset(cls, preset, load_weights=True, dropout=None, **kwargs):
        """Loads ``keras_hub.models.Backbone.from_preset(preset)`` (a name or a folder),
        with its dropout rate replaced by ``dropout`` unless that is ``None``."""
        if not IS_KERAS3:
            raise RuntimeError(_KERAS2_KERASHUB_ERROR)
        import keras_hub

        # A preset's config names its dtype; the policy in force (precision_scope) wins.
        overrides = {"dtype": keras.mixed_precision.global_policy().name}
        if dropout is not None:
            overrides["dropout"] = check_dropout(dropout)
        backbone = keras_hub.models.Backbone.from_preset(
            preset, load_weights=load_weights, **overrides)
        return cls(backbone, **kwargs)

    @property
    def hidden_dim(self):
        return self.backbone.hidden_dim

    @property
    def compute_precision(self):
        """The dtype the backbone computes in (``"float32"``, ``"bfloat16"``, ``"float16"``)."""
        return str(self.backbone.compute_dtype)

    def call(self, inputs, training=None):
        _check_encoder_inputs(inputs)
        token_ids = inputs["token_ids"]
        features = {"token_ids": token_ids, "padding_mask": inputs["padding_mask"]}
        if "segment_ids" in self._input_names:
            features["segment_ids"] = tf.zeros_like(token_ids)
        outputs = self.backbone(features, training=training)
        if isinstance(outputs, dict):
            outputs = outputs["sequence_output"]
        return outputs

    def compute_output_shape(self, input_shape):
        shape = tuple(input_shape["token_ids"])
        return shape + (self.backbone.hidden_dim,)

    def get_config(self):
        config = super().get_config()
        config["backbone"] = keras.utils.serialize_keras_object(self.backbone)
        return config

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        config["backbone"] = keras.utils.deserialize_keras_object(config["backbone"])
        return cls(**config)


def check_dropout(rate):
    """``rate`` as a float if it is a dropout rate in [0, 1), else ``ValueError``."""
    if isinstance(rate, bool) or not isinstance(rate, (int, float)) or not 0 <= rate < 1:
        raise ValueError(f"`dropout` must be a number in [0, 1) or None; got {rate!r}")
    return float(rate)


def backbone_with_dropout(backbone, rate):
    """``backbone``, or a copy of it (same weights) whose dropout rate is ``rate``: a
    keras-hub backbone whose config has a ``dropout`` entry."""
    rate = check_dropout(rate)
    config = dict(backbone.get_config())
    if "dropout" not in config:
        raise ValueError(
            f"cannot set the dropout rate of {type(backbone).__name__}: its config has no "
            "`dropout` entry")
    if float(config["dropout"]) == rate:
        return backbone
    config["dropout"] = rate
    clone = backbone.__class__.from_config(config)
    clone.set_weights(backbone.get_weights())
    return clone


def _variable_name(variable):
    # Keras 3 variable names may contain neither '/' nor ':'.
    return variable.name.split(":")[0].replace("/", "_")


def _has_training_argument(restored):
    """Whether a restored SavedModel's ``__call__`` takes ``training`` (as hub checks it)."""
    from tensorflow_hub.keras_layer import func_has_training_argument

    return func_has_training_argument(restored)


@register_serializable("TFHubEncoder")
class TFHubEncoder(keras.layers.Layer):
    """A SavedModel in TF-Hub BERT encoder layout as a fine-tunable text encoder.

    Maps ``{"token_ids": [B, L], "padding_mask": [B, L]}`` to ``"sequence_output"``
    [B, L, hidden] of ``saved_model({"input_word_ids", "input_mask", "input_type_ids"})``;
    ``input_type_ids`` are zeros.

    Under Keras 2 the SavedModel is wrapped by ``hub.KerasLayer(handle, trainable=trainable)``.
    Under Keras 3 it is restored with ``hub.load`` and each restored ``tf.Variable`` is wrapped
    (not copied) as a ``keras.Variable``, trainable when the SavedModel lists it in
    ``trainable_variables`` and this layer is trainable, so optimizers update the very
    variables the restored function reads.

    Args:
        handle: a local path or a TF-Hub handle of a TF2 SavedModel with a
            ``__call__(inputs: dict, training=...)`` and ``variables`` /
            ``trainable_variables`` attributes (see ``export_tfhub_layout``).
        trainable: whether the encoder's weights are fine-tuned.
        **kwargs: forwarded to ``keras.layers.Layer``.

    Example:
    ```python
    export_tfhub_layout(backbone, "/tmp/encoder")   # in a Keras 3 process
    encoder = TFHubEncoder("/tmp/encoder")          # either generation
    hidden = encoder({"token_ids": ids, "padding_mask": mask})
    ```
    """

    def __init__(self, handle, trainable=True, **kwargs):
        if not isinstance(handle, (str, os.PathLike)):
            raise ValueError(
                f"`handle` must be a path or TF-Hub handle string; got {type(handle).__name__}"
            )
        handle = os.fspath(handle)
        super().__init__(trainable=trainable, **kwargs)
        self.handle = handle
        import tensorflow_hub as hub

        if IS_KERAS3:
            self._restored = hub.load(handle)
            if not callable(self._restored) or not hasattr(self._restored, "variables"):
                raise ValueError(
                    f"`handle`={handle!r} is not a TF2 SavedModel with a callable `__call__` "
                    "and a `variables` attribute (TF-Hub encoder layout)"
                )
            trainable_ids = {
                id(v) for v in getattr(self._restored, "trainable_variables", ())
            }
            self._restored_weights = [
                keras.Variable(
                    initializer=v,
                    trainable=id(v) in trainable_ids,
                    dtype=v.dtype,
                    shape=v.shape,
                    name=_variable_name(v),
                )
                for v in self._restored.variables
            ]
            self._call_takes_training = _has_training_argument(self._restored)
            self.built = True
            restored = self._restored
        else:
            self._hub_layer = hub.KerasLayer(handle, trainable=trainable)
            restored = getattr(self._hub_layer, "_func", None)
        self._compute_precision = saved_model_precision(restored)

    @property
    def compute_precision(self):
        """The dtype the SavedModel computes in (recorded by ``export_tfhub_layout``;
        ``"float32"`` for SavedModels that do not record it)."""
        return self._compute_precision

    def call(self, inputs, training=None):
        _check_encoder_inputs(inputs)
        features = _tfhub_inputs(inputs)
        if IS_KERAS3:
            if self._call_takes_training:
                outputs = self._restored(features, training=bool(training and self.trainable))
            else:
                outputs = self._restored(features)
        else:
            outputs = self._hub_layer(features, training=training)
        if isinstance(outputs, dict):
            outputs = outputs[TFHUB_SEQUENCE_OUTPUT]
        return outputs

    def get_config(self):
        config = super().get_config()
        config["handle"] = self.handle
        return config


def saved_model_precision(restored):
    """The compute precision a restored TF-Hub-layout SavedModel records (else float32)."""
    variable = getattr(restored, "compute_precision", None)
    if variable is None:
        return "float32"
    value = variable.numpy() if hasattr(variable, "numpy") else variable
    return value.decode() if isinstance(value, bytes) else str(value)


def _backbone_in_precision(backbone, precision):
    """``backbone``, or a copy of it (same weights) computing in ``precision``."""
    check_precision(precision, allow_auto=False)
    if str(backbone.compute_dtype) == precision:
        return backbone
    config = dict(backbone.get_config())
    config["dtype"] = policy_name(precision)
    clone = backbone.__class__.from_config(config)
    clone.set_weights(backbone.get_weights())
    return clone


def export_tfhub_layout(backbone, output_dir, vocabulary_file=None, precision=None):
    """Writes a keras-hub backbone as a SavedModel in TF-Hub BERT encoder layout.

    The SavedModel has
    ``__call__(inputs, training=False)`` with ``inputs`` a dict of int32 [B, L] tensors
    ``"input_word_ids"``, ``"input_mask"``, ``"input_type_ids"`` (any B and L up to the
    backbone's maximum length), returning float32 ``"sequence_output"`` [B, L, H] and
    ``"pooled_output"`` [B, H]; traced for ``training=True`` and ``False`` so it fine-tunes;
    plus ``variables`` and ``trainable_variables`` lists, as ``hub.KerasLayer(trainable=True)``
    and ``hub.load`` expect; the pooler (``pooled_output``) is not among the trainable ones
    (see :func:`pooler_variables`). ``"encoder_outputs"`` (per-layer outputs) is not written.

    Must run in a process where keras-hub works (it is a Keras 3 library; it also imports
    under ``TF_USE_LEGACY_KERAS=1``, where the backbone is still a Keras 3 model).

    Args:
        backbone: a keras-hub backbone or a ``KerasHubEncoder``.
        output_dir: where to write the SavedModel.
        vocabulary_file: optional path of the tokenizer vocabulary, saved as the asset
            ``vocab_file`` beside the encoder (tokenisation itself is done in ``data``).
        precision: ``"float32"``, ``"bfloat16"`` or ``"float16"``: the dtype the SavedModel
            computes in (its variables stay float32 and its outputs float32); ``None``: the
            backbone's own. Recorded as the string variable ``compute_precision``
            (:func:`saved_model_precision`, ``TFHubEncoder.compute_precision``).

    Returns:
        ``output_dir``.
    """
    if isinstance(backbone, KerasHubEncoder):
        backbone = backbone.backbone
    if not _is_keras_hub_object(backbone) or not hasattr(backbone, "input"):
        raise ValueError(
            f"`backbone` must be a keras-hub backbone; got {type(backbone).__name__}"
        )
    backbone_inputs = backbone.input
    input_names = set(backbone_inputs) if isinstance(backbone_inputs, dict) else set()
    if not {"token_ids", "padding_mask"} <= input_names:
        raise ValueError(
            "`backbone` must take 'token_ids' and 'padding_mask' inputs; it takes "
            f"{sorted(input_names)}"
        )
    if precision is not None:
        backbone = _backbone_in_precision(backbone, precision)
    precision = str(backbone.compute_dtype)

    def encode(inputs, training=False):
        features = {
            "token_ids": inputs["input_word_ids"],
            "padding_mask": inputs["input_mask"],
        }
        if "segment_ids" in input_names:
            features["segment_ids"] = inputs["input_type_ids"]
        outputs = backbone(features, training=training)
        if isinstance(outputs, dict):
            sequence = outputs["sequence_output"]
            pooled = outputs.get("pooled_output", sequence[:, 0, :])
        else:
            sequence, pooled = outputs, outputs[:, 0, :]
        return {
            TFHUB_SEQUENCE_OUTPUT: tf.cast(sequence, tf.float32),
            TFHUB_POOLED_OUTPUT: tf.cast(pooled, tf.float32),
        }

    module = tf.__internal__.tracking.AutoTrackable()
    # The tf.Variables behind the Keras 3 variables: these are what the function captures.
    module.variables = [getattr(v, "value", v) for v in backbone.variables]
    # the pooler is exported frozen: the towers read sequence_output (see pooler_variables)
    frozen = {id(getattr(v, "value", v)) for v in pooler_variables(backbone)}
    module.trainable_variables = [getattr(v, "value", v) for v in backbone.trainable_variables
                                  if id(getattr(v, "value", v)) not in frozen]
    module.regularization_losses = []
    module.compute_precision = tf.Variable(precision, trainable=False, name="compute_precision")
    call = tf.function(encode)
    spec = {k: tf.TensorSpec([None, None], tf.int32, name=k) for k in TFHUB_INPUT_KEYS}
    for training in (True, False):
        call.get_concrete_function(spec, training=training)
    module.__call__ = call
    if vocabulary_file is not None:
        module.vocab_file = tf.saved_model.Asset(os.fspath(vocabulary_file))
    output_dir = os.fspath(output_dir)
    tf.saved_model.save(module, output_dir)
    return output_dir
