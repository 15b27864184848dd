"""The dual-encoder model: query and document towers to stacked embeddings for the loss."""

import math
import os

import tensorflow as tf

from samtone_tf import _keras
from samtone_tf._keras import keras, register_serializable
from samtone_tf.keys import (DOCUMENT_KEYS, HARD_NEGATIVE_DOCUMENT_KEYS,
                             HARD_NEGATIVE_QUERY_KEYS, QUERY_KEYS)
from samtone_tf.precision import precision_of_layer, precision_scope
from samtone_tf.towers import gradcache
from samtone_tf.towers.pooling import mean_pool
from samtone_tf.towers.specs import make_encoder

ARCHITECTURES = ("sde", "ade", "ade-spl")
POOLINGS = ("mean", "cls")


def _serialize(layer):
    return keras.utils.serialize_keras_object(layer)


def _deserialize(config):
    if config is None or isinstance(config, keras.layers.Layer):
        return config
    return keras.utils.deserialize_keras_object(config)


def _make_encoder(spec, argument, dropout=None):
    try:
        return make_encoder(spec, dropout=dropout)
    except ValueError as error:
        raise ValueError(f"`{argument}`: {error}") from error


@register_serializable("DualEncoder")
class DualEncoder(keras.Model):
    """A dual encoder whose output stacks query, document and hard-negative embeddings.

    The output layout is the one ``SamToNeLoss`` consumes, so the model trains with
    ``model.compile(loss=samtone_tf.SamToNeLoss(...)); model.fit(...)``. SamToNe
    (Moiseev et al., "SamToNe: Improving Contrastive Loss for Dual Encoder Retrieval Models
    with Same Tower Negatives", ACL Findings 2023, arXiv:2306.02516) adds same-tower
    negatives to the in-batch softmax; DANCE (Li et al., "More Robust Dense Retrieval with
    Contrastive Dual Learning", 2021, arXiv:2107.07773) adds the dual query-retrieval
    objective, for which hard-negative *queries* can be fed.

    Architectures (``architecture``):
        * ``"sde"``: symmetric dual encoder, one tower (encoder and projection) shared by
          queries and documents.
        * ``"ade"``: asymmetric dual encoder, two towers with separate encoders and separate
          projections.
        * ``"ade-spl"``: asymmetric dual encoder with a shared projection layer: separate
          encoders, ONE projection (``projection_dim`` is required).

    Each tower computes: encoder -> pooling (``"mean"`` over the padding mask, or ``"cls"``,
    the first position) -> optional linear projection to ``projection_dim`` (no bias) ->
    optional L2 normalisation -> float32.

    Inputs (a dict of int32 tensors; the padding masks may be bool):
        * ``"query_token_ids"``, ``"query_padding_mask"``: [B, Lq].
        * ``"document_token_ids"``, ``"document_padding_mask"``: [B, Ld].
        * optional ``"hard_negative_document_token_ids"``,
          ``"hard_negative_document_padding_mask"``: [B, Hd, Ld], through the document tower.
        * optional ``"hard_negative_query_token_ids"``,
          ``"hard_negative_query_padding_mask"``: [B, Hq, Lq], through the query tower.

    Output ``y_pred``: float32 [B, 2 + Hd + Hq, dim]; slot 0 the query, slot 1 its positive
    document, slots 2 .. 2+Hd-1 the hard-negative documents, the last Hq slots the
    hard-negative queries (the loss is told Hq by ``num_hard_negative_queries``).

    Learnable temperature (``learnable_temperature=True``, requires ``normalize=True``): the
    model holds a trainable scalar ``logit_scale`` initialised to
    ``log(1 / initial_temperature)``; the scale ``s = exp(min(logit_scale,
    log(max_logit_scale)))`` is clipped at ``max_logit_scale`` (100, as in CLIP) and the unit
    embeddings in ``y_pred`` are multiplied by ``sqrt(s)``. A loss with ``similarity="dot",
    temperature=1.0`` then sees ``s * cos(q, d) = cos(q, d) / tau`` with ``tau = 1 / s``
    learnt. (Do not combine it with a cosine-similarity loss, which would undo the scale.)
    ``encode_queries`` / ``encode_documents`` return the unscaled unit embeddings.

    Args:
        query_encoder: the query encoder, or the shared one for ``"sde"``; anything
            ``samtone_tf.towers.specs.make_encoder`` accepts (a keras-hub backbone, a
            ``"kerashub:..."`` string, a TF-Hub-layout SavedModel path, an encoder layer).
        document_encoder: the document encoder for ``"ade"`` / ``"ade-spl"``. ``None`` there
            is allowed only when ``query_encoder`` is a string spec (it is then loaded a
            second time, giving independent weights from the same checkpoint). For ``"sde"``
            it must be ``None`` or the very ``query_encoder`` object.
        architecture: ``"sde"``, ``"ade"`` or ``"ade-spl"``.
        projection_dim: output size of a linear projection after pooling, or ``None``.
        pooling: ``"mean"`` or ``"cls"``.
        normalize: L2-normalise the embeddings.
        learnable_temperature: learn the softmax temperature as described above.
        initial_temperature: initial temperature tau (> 0) for ``learnable_temperature``.
        max_logit_scale: upper bound of the learnt scale 1/tau.
        mini_batch_size: train with gradient caching (see ``samtone_tf.towers.gradcache``): each
            replica's batch is embedded and back-propagated ``mini_batch_size`` examples at
            a time (the last mini-batch holds the remainder), while the loss still sees
            the whole global batch; the gradients equal the uncached step's and the memory
            is that of one mini-batch, the batch's embeddings and one gradient accumulator
            per variable. ``None`` (default), or
            a value at least the per-replica batch size, runs Keras' own step. Settable
            later as ``model.mini_batch_size``.
        dropout: the dropout rate of encoders built here, overriding the checkpoint's
            (``None``, the default, keeps it); for keras-hub backbones and the pretrained
            encoders (see ``samtone_tf.towers.specs.make_encoder``).
        precision: ``"auto"``, ``"float32"``, ``"bfloat16"`` or ``"float16"``: build the
            projections and any encoder given as a string spec under that precision (see
            ``samtone_tf.precision``); ``None`` (default): the Keras global policy in force.
            Encoders passed as objects keep the precision they were built in; a TF-Hub
            SavedModel computes in the precision it was exported in. Embeddings, losses and
            softmaxes are float32 in every case.
        **kwargs: forwarded to ``keras.Model`` (``name``, ``dtype``, ...).

    Example:
    ```python
    backbone = keras_hub.models.BertBackbone.from_preset("/path/to/all-MiniLM-L6-v2")
    model = DualEncoder(backbone, architecture="sde", pooling="mean")
    model.compile(optimizer="adam", loss=samtone_tf.SamToNeLoss(temperature=0.05))
    model.fit(dataset)  # elements ({"query_token_ids": ..., ...}, dummy_labels)
    embeddings = model.encode_documents({"token_ids": ids, "padding_mask": mask})
    ```

    Serialisation: ``get_config`` serialises the encoders. Keras 3 ``KerasHubEncoder``
    towers round-trip completely (architecture; weights via ``save_weights``/``.keras``).
    ``TFHubEncoder`` towers store their handle and are reloaded from it, so the handle must
    still exist where the config is loaded; user-defined encoder layers must be serialisable
    themselves.
    """

    def __init__(
        self,
        query_encoder,
        document_encoder=None,
        architecture="sde",
        projection_dim=None,
        pooling="mean",
        normalize=True,
        learnable_temperature=False,
        initial_temperature=0.05,
        max_logit_scale=100.0,
        precision=None,
        mini_batch_size=None,
        dropout=None,
        **kwargs,
    ):
        mini_batch_size = gradcache.check_mini_batch_size(mini_batch_size)
        # Layers take the dtype policy in force when they are made: build everything of
        # this model (string-spec encoders included) under the requested precision.
        with precision_scope(precision):
            self._initialize(
                query_encoder, document_encoder, architecture, projection_dim, pooling,
                normalize, learnable_temperature, initial_temperature, max_logit_scale,
                dropout, **kwargs)
        self._mini_batch_size = mini_batch_size

    def _initialize(
        self,
        query_encoder,
        document_encoder,
        architecture,
        projection_dim,
        pooling,
        normalize,
        learnable_temperature,
        initial_temperature,
        max_logit_scale,
        dropout,
        **kwargs,
    ):
        if architecture not in ARCHITECTURES:
            raise ValueError(
                f"`architecture` must be one of {ARCHITECTURES}; got {architecture!r}"
            )
        if pooling not in POOLINGS:
            raise ValueError(f"`pooling` must be one of {POOLINGS}; got {pooling!r}")
        if projection_dim is not None and (
            isinstance(projection_dim, bool)
            or not isinstance(projection_dim, int)
            or projection_dim <= 0
        ):
            raise ValueError(
                f"`projection_dim` must be a positive int or None; got {projection_dim!r}"
            )
        if architecture == "ade-spl" and projection_dim is None:
            raise ValueError(
                "`projection_dim` is required for architecture='ade-spl' (the shared "
                "projection layer)"
            )
        if not isinstance(normalize, bool):
            raise ValueError(f"`normalize` must be a bool; got {normalize!r}")
        if not isinstance(learnable_temperature, bool):
            raise ValueError(
                f"`learnable_temperature` must be a bool; got {learnable_temperature!r}"
            )
        if learnable_temperature and not normalize:
            raise ValueError(
                "`learnable_temperature`=True requires `normalize`=True (the scale multiplies "
                "unit embeddings)"
            )
        if not isinstance(initial_temperature, (int, float)) or not initial_temperature > 0:
            raise ValueError(
                f"`initial_temperature` must be a positive number; got {initial_temperature!r}"
            )
        if not isinstance(max_logit_scale, (int, float)) or not max_logit_scale > 0:
            raise ValueError(
                f"`max_logit_scale` must be a positive number; got {max_logit_scale!r}"
            )
        if learnable_temperature and 1.0 / initial_temperature > max_logit_scale:
            raise ValueError(
                f"1 / `initial_temperature` ({1.0 / initial_temperature:g}) exceeds "
                f"`max_logit_scale` ({max_logit_scale:g})"
            )
        if query_encoder is None:
            raise ValueError("`query_encoder` is required")

        if isinstance(query_encoder, dict):  # from get_config
            query_encoder = _deserialize(query_encoder)
        if isinstance(document_encoder, dict):
            document_encoder = _deserialize(document_encoder)

        query_spec = query_encoder
        query_encoder = _make_encoder(query_encoder, "query_encoder", dropout)
        if architecture == "sde":
            if document_encoder is not None and document_encoder is not query_spec and (
                document_encoder is not query_encoder
            ):
                raise ValueError(
                    "`document_encoder` must be None (or the query encoder itself) for "
                    "architecture='sde', which shares one tower"
                )
            document_encoder = query_encoder
        else:
            if document_encoder is None:
                if not isinstance(query_spec, (str, os.PathLike)):
                    raise ValueError(
                        f"`document_encoder` is required for architecture={architecture!r} "
                        "unless `query_encoder` is a string spec that can be loaded twice"
                    )
                document_encoder = _make_encoder(query_spec, "query_encoder", dropout)
            elif document_encoder is query_spec or document_encoder is query_encoder:
                raise ValueError(
                    f"`document_encoder` must be a different encoder from `query_encoder` for "
                    f"architecture={architecture!r}; use architecture='sde' to share one"
                )
            else:
                document_encoder = _make_encoder(document_encoder, "document_encoder", dropout)
            shared = {id(v) for v in query_encoder.weights} & {
                id(v) for v in document_encoder.weights
            }
            if shared:
                raise ValueError(
                    f"`document_encoder` shares {len(shared)} variables with `query_encoder`; "
                    f"architecture={architecture!r} needs separate encoders"
                )

        super().__init__(**kwargs)
        self.query_encoder = query_encoder
        self.document_encoder = document_encoder
        self.architecture = architecture
        self.projection_dim = projection_dim
        self.pooling = pooling
        self.normalize = normalize
        self.learnable_temperature = learnable_temperature
        self.initial_temperature = float(initial_temperature)
        self.max_logit_scale = float(max_logit_scale)

        if projection_dim is None:
            self.query_projection = None
            self.document_projection = None
        elif architecture == "ade":
            self.query_projection = keras.layers.Dense(
                projection_dim, use_bias=False, name="query_projection"
            )
            self.document_projection = keras.layers.Dense(
                projection_dim, use_bias=False, name="document_projection"
            )
        else:  # "sde" and "ade-spl": one shared projection
            self.query_projection = keras.layers.Dense(
                projection_dim, use_bias=False, name="shared_projection"
            )
            self.document_projection = self.query_projection

        if learnable_temperature:
            self.logit_scale = self.add_weight(
                name="logit_scale",
                shape=(),
                initializer=keras.initializers.Constant(math.log(1.0 / initial_temperature)),
                trainable=True,
                dtype="float32",
            )
        else:
            self.logit_scale = None

    # ------------------------------------------------------------------ towers
    def _embed(self, encoder, projection, token_ids, padding_mask, training=None):
        sequence = encoder(
            {"token_ids": token_ids, "padding_mask": padding_mask}, training=training
        )
        # Pool in float32: a bfloat16 sum over hundreds of positions would lose the
        # embedding's low bits (a no-op for a float32 encoder).
        sequence = tf.cast(sequence, tf.float32)
        if self.pooling == "mean":
            pooled = mean_pool(sequence, padding_mask)
        else:
            pooled = sequence[:, 0, :]
        if projection is not None:
            pooled = projection(pooled)
        pooled = tf.cast(pooled, tf.float32)
        if self.normalize:
            pooled = tf.math.l2_normalize(pooled, axis=-1, epsilon=1e-12)
        return pooled

    def _embed_grouped(self, encoder, projection, token_ids, padding_mask, training=None):
        """[B, H, L] -> [B, H, dim] through one tower."""
        token_ids = tf.convert_to_tensor(token_ids)
        padding_mask = tf.convert_to_tensor(padding_mask)
        if token_ids.shape.rank != 3:
            raise ValueError(
                f"hard-negative token ids must have shape [B, H, L]; got {token_ids.shape}"
            )
        dynamic = tf.shape(token_ids)
        batch = token_ids.shape[0] if token_ids.shape[0] is not None else dynamic[0]
        group = token_ids.shape[1] if token_ids.shape[1] is not None else dynamic[1]
        length = token_ids.shape[2] if token_ids.shape[2] is not None else dynamic[2]
        flat = self._embed(
            encoder,
            projection,
            tf.reshape(token_ids, [-1, length]),
            tf.reshape(padding_mask, [-1, length]),
            training=training,
        )
        dim = flat.shape[-1] if flat.shape[-1] is not None else tf.shape(flat)[-1]
        return tf.reshape(flat, [batch, group, dim])

    def encode_queries(self, features, training=None):
        """``{"token_ids", "padding_mask"}`` [B, Lq] -> query embeddings [B, dim]."""
        return self._embed(
            self.query_encoder,
            self.query_projection,
            features["token_ids"],
            features["padding_mask"],
            training=training,
        )

    def encode_documents(self, features, training=None):
        """``{"token_ids", "padding_mask"}`` [B, Ld] -> document embeddings [B, dim]."""
        return self._embed(
            self.document_encoder,
            self.document_projection,
            features["token_ids"],
            features["padding_mask"],
            training=training,
        )

    @property
    def compute_precision(self):
        """The precision the towers compute in: ``"float32"``, ``"bfloat16"`` or
        ``"float16"`` (the query encoder's; a mix of precisions is reported as such)."""
        found = []
        for encoder in (self.query_encoder, self.document_encoder):
            value = getattr(encoder, "compute_precision", None) or precision_of_layer(encoder)
            if value not in found:
                found.append(value)
        return found[0] if len(found) == 1 else "+".join(found)

    def temperature_scale(self):
        """The clipped scale 1/tau (a scalar tensor), or None without a learnable temperature."""
        if self.logit_scale is None:
            return None
        return tf.exp(
            tf.minimum(tf.convert_to_tensor(self.logit_scale), math.log(self.max_logit_scale))
        )

    def _check_loss_slots(self, x):
        """Refuses a compiled loss whose count of hard-negative query slots is not the
        number of hard-negative queries in the inputs: the loss would otherwise read
        query slots as document slots (or the reverse) without a word."""
        expected = getattr(getattr(self, "loss", None), "num_hard_negative_queries", None)
        if expected is None or not isinstance(x, dict):
            return
        given = 0
        if HARD_NEGATIVE_QUERY_KEYS[0] in x:
            given = x[HARD_NEGATIVE_QUERY_KEYS[0]].shape[1]
        if given is not None and given != expected:
            raise ValueError(
                f"The inputs hold {given} hard-negative queries per example "
                f"(`{HARD_NEGATIVE_QUERY_KEYS[0]}`) but the loss was compiled with "
                f"num_hard_negative_queries={expected}; the loss reads the last "
                "num_hard_negative_queries output slots as queries. Pass "
                f"`SamToNeLoss(num_hard_negative_queries={given}, bidirectional=True, ...)`.")

    compute_loss = _keras.checked_compute_loss(lambda model, x: model._check_loss_slots(x))

    # ------------------------------------------------------- gradient caching
    @property
    def mini_batch_size(self):
        """Examples per mini-batch of the gradient-cached step, or ``None`` (no caching)."""
        return getattr(self, "_mini_batch_size", None)

    @mini_batch_size.setter
    def mini_batch_size(self, value):
        self._mini_batch_size = gradcache.check_mini_batch_size(value)
        # fit traces its step once: a new setting needs a new trace
        self.train_function = None

    def _caches(self, x):
        """Whether this batch takes the gradient-cached step: a mini-batch size is set and
        it is smaller than the (local) batch, or the batch size is unknown when traced."""
        if self.mini_batch_size is None:
            return False
        batch = next(t for t in tf.nest.flatten(x) if t is not None).shape[0]
        return batch is None or batch > self.mini_batch_size

    def compute_step_gradients(self, x, y=None, sample_weight=None):
        """What one training step computes, without applying it.

        Returns ``(loss, y_pred, gradients)``: the loss the step records, the model output
        it was computed from, and the gradients (aligned with ``self.trainable_variables``,
        ``None`` where a variable gets none) of that loss times the optimizer's loss scale,
        as ``train_step`` hands them to the optimizer. With ``mini_batch_size`` set and
        smaller than the batch they come from the gradient-cached passes, otherwise from
        one tape over the batch. Call it where ``train_step`` runs (inside
        ``strategy.run`` under a strategy) on a compiled model.
        """
        if self._caches(x):
            return gradcache.cached_step_gradients(self, x, y, sample_weight,
                                                   self.mini_batch_size)
        with tf.GradientTape() as tape:
            y_pred = self(x, training=True)
            loss = _keras.training_loss(self, x, y, y_pred, sample_weight)
            scaled = _keras.scale_loss(self.optimizer, loss)
        return loss, y_pred, tape.gradient(scaled, self.trainable_variables)

    def train_step(self, data):
        x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(data)
        if not self._caches(x):
            return super().train_step(data)  # Keras' own step, exactly
        loss, y_pred, gradients = self.compute_step_gradients(x, y, sample_weight)
        _keras.apply_scaled_gradients(self.optimizer, gradients, self.trainable_variables)
        return self.compute_metrics(x, y, y_pred, sample_weight=sample_weight)

    def call(self, inputs, training=None):
        if not isinstance(inputs, dict):
            raise ValueError(
                f"DualEncoder inputs must be a dict; got {type(inputs).__name__}"
            )
        missing = [k for k in QUERY_KEYS + DOCUMENT_KEYS if k not in inputs]
        if missing:
            raise ValueError(f"DualEncoder inputs lack {missing}; got keys {sorted(inputs)}")
        slots = [
            self._embed(
                self.query_encoder,
                self.query_projection,
                inputs["query_token_ids"],
                inputs["query_padding_mask"],
                training=training,
            )[:, None, :],
            self._embed(
                self.document_encoder,
                self.document_projection,
                inputs["document_token_ids"],
                inputs["document_padding_mask"],
                training=training,
            )[:, None, :],
        ]
        for keys, encoder, projection in (
            (HARD_NEGATIVE_DOCUMENT_KEYS, self.document_encoder, self.document_projection),
            (HARD_NEGATIVE_QUERY_KEYS, self.query_encoder, self.query_projection),
        ):
            present = [k in inputs for k in keys]
            if any(present) and not all(present):
                raise ValueError(f"DualEncoder inputs need both {keys} or neither")
            if all(present):
                slots.append(
                    self._embed_grouped(
                        encoder, projection, inputs[keys[0]], inputs[keys[1]], training
                    )
                )
        outputs = tf.concat(slots, axis=1)
        scale = self.temperature_scale()
        if scale is not None:
            outputs = outputs * tf.sqrt(scale)
        return outputs

    # ------------------------------------------------------------- serialisation
    def get_config(self):
        config = {"name": self.name, "trainable": self.trainable}
        config["dtype"] = _keras.serialize_dtype_policy(self)
        config.update(
            {
                "query_encoder": _serialize(self.query_encoder),
                "document_encoder": (
                    None if self.architecture == "sde" else _serialize(self.document_encoder)
                ),
                "architecture": self.architecture,
                "projection_dim": self.projection_dim,
                "pooling": self.pooling,
                "normalize": self.normalize,
                "learnable_temperature": self.learnable_temperature,
                "initial_temperature": self.initial_temperature,
                "max_logit_scale": self.max_logit_scale,
                "mini_batch_size": self.mini_batch_size,
            }
        )
        return config

    @classmethod
    def from_config(cls, config, custom_objects=None):
        config = dict(config)
        for key in ("query_encoder", "document_encoder"):
            config[key] = _deserialize(config.get(key))
        if "dtype" in config:
            config["dtype"] = _keras.deserialize_dtype_policy(config["dtype"])
        return cls(**config)
