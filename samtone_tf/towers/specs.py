"""Encoder specs -> encoder layers: the one factory behind ``DualEncoder``'s
``query_encoder`` / ``document_encoder`` arguments and ``samtone_tf.make_encoder``."""

import os

from samtone_tf._keras import IS_KERAS3, keras
from samtone_tf.towers import pretrained
from samtone_tf.towers.encoders import (_KERAS2_KERASHUB_ERROR, KERASHUB_PREFIX, TFHUB_PREFIX,
                                        KerasHubEncoder, TFHubEncoder, _is_keras3_layer,
                                        _is_keras_hub_object, backbone_with_dropout,
                                        check_dropout)


def pretrained_encoder(spec, backend=None, cache_dir=None, dropout=None, **kwargs):
    """The encoder layer for ``"pretrained:<name>"``, with dropout rate ``dropout``
    (``None``: the checkpoint's)."""
    resolved = pretrained.resolve_pretrained_spec(spec, backend, cache_dir, dropout=dropout)
    # a keras-hub preset takes the rate when it is built; the SavedModel variant has it
    keras_hub_spec = resolved.startswith(KERASHUB_PREFIX)
    return make_encoder(resolved, dropout=dropout if keras_hub_spec else None, **kwargs)


def _looks_like_saved_model(path):
    return os.path.isdir(path) and (
        os.path.exists(os.path.join(path, "saved_model.pb"))
        or os.path.exists(os.path.join(path, "saved_model.pbtxt"))
    )


def make_encoder(spec, dropout=None, **kwargs):
    """Builds a text encoder from a specification.

    Args:
        spec: one of
            * ``"pretrained:<name>"`` (e.g. ``"pretrained:minilm-l6"``) -> the offline
              pretrained encoder of ``samtone_tf.towers.pretrained``, converted once and cached;
            * a keras-hub backbone object -> ``KerasHubEncoder(spec)`` (Keras 3 only);
            * ``"kerashub:<preset name or folder>"`` -> ``KerasHubEncoder.from_preset``
              (Keras 3 only);
            * a path to a TF-Hub-layout SavedModel folder, ``"tfhub:<handle>"`` or an
              ``http(s)://`` TF-Hub handle -> ``TFHubEncoder``;
            * an encoder layer of this process's Keras generation (``KerasHubEncoder``,
              ``TFHubEncoder`` or your own layer with the same contract) -> returned as is.
        dropout: a dropout rate in [0, 1) replacing the encoder's own, or ``None`` (keep
            it). Possible for keras-hub backbones and presets, ``KerasHubEncoder`` s (a copy
            with the same weights) and ``"pretrained:"`` specs (a TF-Hub-layout SavedModel
            with that rate is written into the cache once); a SavedModel's rate is fixed
            when it is exported, so other TF-Hub specs refuse it.
        **kwargs: forwarded to the encoder constructor (``trainable``, ``name``, ...).

    Raises:
        ValueError: `spec` is none of the above, or `dropout` cannot be applied to it.
        RuntimeError: a keras-hub spec under Keras 2 (export it with ``export_tfhub_layout``).
    """
    if isinstance(spec, os.PathLike):
        spec = os.fspath(spec)
    if dropout is not None:
        dropout = check_dropout(dropout)
    if isinstance(spec, str):
        if pretrained.pretrained_name(spec) is not None:
            return pretrained_encoder(spec, dropout=dropout, **kwargs)
        if spec.startswith(KERASHUB_PREFIX):
            return KerasHubEncoder.from_preset(spec[len(KERASHUB_PREFIX):], dropout=dropout,
                                               **kwargs)
        if dropout is not None:
            raise ValueError(
                f"`dropout` cannot change the rate of {spec!r}: a SavedModel's dropout is "
                "fixed when it is exported. Export the backbone again with that rate "
                "(samtone_tf.towers.encoders.backbone_with_dropout, then export_tfhub_layout), or "
                "use a 'pretrained:' or 'kerashub:' spec.")
        if spec.startswith(TFHUB_PREFIX):
            return TFHubEncoder(spec[len(TFHUB_PREFIX):], **kwargs)
        if spec.startswith(("http://", "https://")) or _looks_like_saved_model(spec):
            return TFHubEncoder(spec, **kwargs)
        raise ValueError(
            f"`spec`={spec!r} is neither 'pretrained:<name>', 'kerashub:<preset or folder>', 'tfhub:<handle>', a "
            "TF-Hub handle URL, nor a folder holding a SavedModel (saved_model.pb)"
        )
    if _is_keras_hub_object(spec):
        if not IS_KERAS3:
            raise RuntimeError(_KERAS2_KERASHUB_ERROR)
        if dropout is not None:
            spec = backbone_with_dropout(spec, dropout)
        return KerasHubEncoder(spec, **kwargs)
    if isinstance(spec, KerasHubEncoder) and dropout is not None:
        backbone = backbone_with_dropout(spec.backbone, dropout)
        if backbone is spec.backbone and not kwargs:
            return spec
        return KerasHubEncoder(backbone, **kwargs)
    if isinstance(spec, keras.layers.Layer):
        if dropout is not None:
            raise ValueError(
                f"`dropout` cannot change the rate of a {type(spec).__name__} object; pass "
                "a keras-hub backbone, a KerasHubEncoder or a string spec, or build the "
                "layer with the rate you want.")
        if kwargs:
            raise ValueError(
                f"`spec` is already an encoder layer; unexpected keyword arguments {sorted(kwargs)}"
            )
        return spec
    if _is_keras3_layer(spec) and not IS_KERAS3:
        raise RuntimeError(
            "`spec` is a Keras 3 layer but this process runs Keras 2 (TF_USE_LEGACY_KERAS=1); "
            + _KERAS2_KERASHUB_ERROR
        )
    raise ValueError(
        f"`spec` must be a keras-hub backbone, an encoder layer, a 'kerashub:...' string or a "
        f"TF-Hub-layout SavedModel path; got {type(spec).__name__}"
    )
