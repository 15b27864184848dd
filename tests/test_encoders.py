"""Encoders: keras-hub backbones (Keras 3), TF-Hub-layout SavedModels (both generations),
the TF-Hub export, and ``make_encoder``. Runs under Keras 3 and under TF_USE_LEGACY_KERAS=1."""

import os

import numpy as np
import pytest
import tensorflow as tf

from samtone_tf._keras import IS_KERAS3, keras
from samtone_tf.towers.encoders import KerasHubEncoder, TFHubEncoder, export_tfhub_layout
from samtone_tf.towers.specs import make_encoder
from tests._tiny import HIDDEN_DIM, random_tokens, tiny_backbone, tiny_tfhub_encoder_path

keras3_only = pytest.mark.skipif(not IS_KERAS3, reason="keras-hub towers need Keras 3")
keras2_only = pytest.mark.skipif(IS_KERAS3, reason="Keras 2 (tf_keras) behaviour")

B, L = 3, 10


@pytest.fixture(scope="module")
def tfhub_path(tmp_path_factory):
    return tiny_tfhub_encoder_path(tmp_path_factory.mktemp("tfhub"))


def _features(seed=0):
    ids, mask = random_tokens(B, L, seed=seed)
    return {"token_ids": tf.constant(ids), "padding_mask": tf.constant(mask)}


def _backbone_sequence(backbone, features):
    out = backbone(
        {
            "token_ids": features["token_ids"],
            "segment_ids": tf.zeros_like(features["token_ids"]),
            "padding_mask": features["padding_mask"],
        }
    )
    return np.asarray(out["sequence_output"])


def _one_sgd_step(layer, features):
    """One SGD step on a loss that depends on every position; returns (before, after)."""
    weights = layer.trainable_weights
    before = [np.array(w.numpy()) for w in weights]
    target = tf.constant(np.random.default_rng(1).normal(size=(HIDDEN_DIM,)), tf.float32)
    optimizer = keras.optimizers.SGD(learning_rate=0.5)
    with tf.GradientTape() as tape:
        hidden = layer(features, training=True)
        loss = tf.reduce_mean(tf.square(tf.reduce_sum(hidden * target, axis=-1) - 1.0))
    grads = tape.gradient(loss, weights)
    assert all(g is not None for g in grads[:1])
    optimizer.apply_gradients(
        [(g, w) for g, w in zip(grads, weights) if g is not None]
    )
    after = [np.array(w.numpy()) for w in weights]
    return weights, before, after


def _has_zero_gradient(name):
    return "pooled_dense" in name or ("key" in name and "bias" in name)


# ---------------------------------------------------------------- TF-Hub layout export
def test_export_has_tfhub_bert_layout(tfhub_path):
    import tensorflow_hub as hub

    restored = hub.load(tfhub_path)
    # 2 layers of BERT: the trainable variables of the backbone, listed as hub expects,
    # except the pooler's kernel and bias (the towers read sequence_output only).
    backbone = tiny_backbone()
    pooler = {w.path if hasattr(w, "path") else w.name for w in backbone.pooled_dense.weights}
    assert len(pooler) == 2
    assert len(restored.trainable_variables) == len(backbone.trainable_weights) - 2
    trainable_names = [v.name for v in restored.trainable_variables]
    assert not [n for n in trainable_names if "pooled_dense" in n], trainable_names
    assert [v for v in restored.variables if "pooled_dense" in v.name]  # still saved
    assert len(restored.variables) >= len(restored.trainable_variables)
    ids, mask = random_tokens(B, L)
    inputs = {
        "input_word_ids": tf.constant(ids),
        "input_mask": tf.constant(mask),
        "input_type_ids": tf.zeros_like(ids),
    }
    for training in (False, True):
        outputs = restored(inputs, training=training)
        assert outputs["sequence_output"].shape == (B, L, HIDDEN_DIM)
        assert outputs["pooled_output"].shape == (B, HIDDEN_DIM)
        assert outputs["sequence_output"].dtype == tf.float32
    # Any sequence length works (the signature's length is dynamic).
    short = {k: v[:, :4] for k, v in inputs.items()}
    assert restored(short)["sequence_output"].shape == (B, 4, HIDDEN_DIM)


def test_export_matches_backbone_and_keeps_vocab(tmp_path):
    backbone = tiny_backbone(seed=3)
    vocab = tmp_path / "vocab.txt"
    vocab.write_text("[PAD]\n[UNK]\nhello\n")
    path = export_tfhub_layout(backbone, tmp_path / "enc", vocabulary_file=vocab)
    import tensorflow_hub as hub

    restored = hub.load(path)
    assert open(restored.vocab_file.asset_path.numpy().decode()).read() == vocab.read_text()
    features = _features()
    ids, mask = features["token_ids"], features["padding_mask"]
    got = restored(
        {"input_word_ids": ids, "input_mask": mask, "input_type_ids": tf.zeros_like(ids)}
    )["sequence_output"]
    np.testing.assert_allclose(got.numpy(), _backbone_sequence(backbone, features), atol=1e-5)


def test_export_rejects_non_backbone(tmp_path):
    with pytest.raises(ValueError, match="backbone"):
        export_tfhub_layout(keras.layers.Dense(3), tmp_path / "x")


# ---------------------------------------------------------------- TFHubEncoder
def test_tfhub_encoder_output_matches_saved_model(tfhub_path):
    import tensorflow_hub as hub

    encoder = TFHubEncoder(tfhub_path)
    features = _features()
    hidden = encoder(features)
    assert hidden.shape == (B, L, HIDDEN_DIM)
    ids = features["token_ids"]
    reference = hub.load(tfhub_path)(
        {
            "input_word_ids": ids,
            "input_mask": features["padding_mask"],
            "input_type_ids": tf.zeros_like(ids),
        }
    )["sequence_output"]
    np.testing.assert_allclose(hidden.numpy(), reference.numpy(), atol=1e-6)
    # bool masks are accepted too
    bool_features = dict(features, padding_mask=tf.cast(features["padding_mask"], tf.bool))
    np.testing.assert_allclose(encoder(bool_features).numpy(), hidden.numpy(), atol=1e-6)


def test_tfhub_encoder_fine_tunes(tfhub_path):
    encoder = TFHubEncoder(tfhub_path, trainable=True)
    n_backbone = len(tiny_backbone().trainable_weights) - 2  # the pooler is frozen
    assert len(encoder.trainable_weights) == n_backbone > 0
    features = _features()
    out_before = encoder(features).numpy()
    weights, before, after = _one_sgd_step(encoder, features)
    changed = [w.name for w, b, a in zip(weights, before, after) if not np.allclose(b, a)]
    # Every weight on the sequence-output path moves. Only the unused pooler and the
    # attention key biases stay put: softmax is invariant to the per-query constant
    # q.b_k that a key bias adds to every score, so their gradient is exactly zero.
    unchanged = {w.name for w in weights} - set(changed)
    assert all(_has_zero_gradient(name) for name in unchanged), unchanged
    assert len(changed) >= n_backbone - 4
    # ...and the restored function really reads the updated variables.
    assert not np.allclose(encoder(features).numpy(), out_before)


def test_tfhub_encoder_passes_training_flag(tmp_path):
    # With dropout, training=True must reach the SavedModel's training trace; a frozen
    # (trainable=False) encoder runs in inference mode, like hub.KerasLayer.
    path = export_tfhub_layout(tiny_backbone(seed=5, dropout=0.5), tmp_path / "dropout")
    features = _features()
    encoder = TFHubEncoder(path)
    inference = encoder(features, training=False).numpy()
    np.testing.assert_allclose(encoder(features, training=False).numpy(), inference)
    assert not np.allclose(encoder(features, training=True).numpy(), inference, atol=1e-3)
    frozen = TFHubEncoder(path, trainable=False)
    np.testing.assert_allclose(frozen(features, training=True).numpy(), inference, atol=1e-6)


def test_tfhub_encoder_frozen(tfhub_path):
    encoder = TFHubEncoder(tfhub_path, trainable=False)
    assert len(encoder.trainable_weights) == 0
    assert len(encoder.weights) > 0


def test_tfhub_encoder_config_round_trip(tfhub_path):
    encoder = TFHubEncoder(tfhub_path, name="tower")
    config = encoder.get_config()
    assert config["handle"] == tfhub_path and config["name"] == "tower"
    clone = TFHubEncoder.from_config(config)
    features = _features()
    np.testing.assert_allclose(clone(features).numpy(), encoder(features).numpy(), atol=1e-6)


def test_tfhub_encoder_rejects_bad_inputs(tfhub_path):
    encoder = TFHubEncoder(tfhub_path)
    with pytest.raises(ValueError, match="padding_mask"):
        encoder({"token_ids": tf.ones((1, 3), tf.int32)})
    with pytest.raises(ValueError, match="handle"):
        TFHubEncoder(42)


# ---------------------------------------------------------------- KerasHubEncoder
@keras3_only
def test_kerashub_encoder_matches_backbone_and_trains():
    backbone = tiny_backbone(seed=2)
    encoder = KerasHubEncoder(backbone)
    features = _features()
    np.testing.assert_allclose(
        encoder(features).numpy(), _backbone_sequence(backbone, features), atol=1e-6
    )
    # the backbone's own variables, less its unused pooler (frozen by the encoder)
    assert len(encoder.trainable_weights) == len(backbone.trainable_weights) > 0
    assert not backbone.pooled_dense.trainable
    weights, before, after = _one_sgd_step(encoder, features)
    unchanged = [w.path for w, b, a in zip(weights, before, after) if np.allclose(b, a)]
    assert all(_has_zero_gradient(name) for name in unchanged), unchanged
    assert len(unchanged) <= 4


@keras3_only
def test_kerashub_encoder_config_round_trip():
    encoder = KerasHubEncoder(tiny_backbone(), name="kh")
    clone = KerasHubEncoder.from_config(encoder.get_config())
    assert clone.name == "kh"
    assert clone.backbone.get_config() == encoder.backbone.get_config()
    clone.set_weights(encoder.get_weights())
    features = _features()
    np.testing.assert_allclose(clone(features).numpy(), encoder(features).numpy(), atol=1e-6)


@keras3_only
def test_make_encoder_kerashub_specs(tmp_path):
    backbone = tiny_backbone(seed=4)
    encoder = make_encoder(backbone)
    assert isinstance(encoder, KerasHubEncoder) and encoder.backbone is backbone
    assert make_encoder(encoder) is encoder
    backbone.save_to_preset(str(tmp_path / "preset"))
    loaded = make_encoder(f"kerashub:{tmp_path / 'preset'}")
    assert isinstance(loaded, KerasHubEncoder)
    features = _features()
    np.testing.assert_allclose(loaded(features).numpy(), encoder(features).numpy(), atol=1e-6)


@keras2_only
def test_kerashub_refused_under_keras2_with_export_hint():
    backbone = tiny_backbone()
    with pytest.raises(RuntimeError, match="export_tfhub_layout"):
        make_encoder(backbone)
    with pytest.raises(RuntimeError, match="export_tfhub_layout"):
        KerasHubEncoder(backbone)
    with pytest.raises(RuntimeError, match="export_tfhub_layout"):
        make_encoder("kerashub:/nowhere")


# ---------------------------------------------------------------- make_encoder
def test_make_encoder_tfhub_specs(tfhub_path):
    import pathlib

    for spec in (tfhub_path, pathlib.Path(tfhub_path), "tfhub:" + tfhub_path):
        encoder = make_encoder(spec, trainable=False)
        assert isinstance(encoder, TFHubEncoder)
        assert encoder.handle == os.fspath(tfhub_path)
        assert len(encoder.trainable_weights) == 0


@pytest.mark.parametrize("spec", [42, None, "/no/such/saved_model", object()])
def test_make_encoder_bad_spec(spec):
    with pytest.raises(ValueError, match="spec"):
        make_encoder(spec)
