"""Mixed precision: the DualEncoder + SamToNeLoss stay finite and close to float32 on the same
batch, and model.fit trains under ``mixed_float16`` and ``mixed_bfloat16``.

Under Keras 3 the keras-hub tower follows the policy; under Keras 2 the TF-Hub-layout tower
runs in its SavedModel's dtype (float32) and the projection follows the policy."""

import numpy as np
import pytest
import tensorflow as tf

import samtone_tf
from samtone_tf._keras import IS_KERAS3, keras
from tests import _tiny

BATCH, LENGTH = 8, 16
# float16 keeps 11 mantissa bits, bfloat16 8; the loss's logits are scaled by 1/tau = 20.
TOLERANCE = {"mixed_float16": 5e-3, "mixed_bfloat16": 5e-2}


def _batch():
    ids, mask = _tiny.random_tokens(BATCH, LENGTH, seed=3)
    features = {"query_token_ids": ids, "query_padding_mask": mask,
                "document_token_ids": ids[::-1].copy(), "document_padding_mask": mask[::-1].copy()}
    return features, np.stack([np.arange(BATCH), np.arange(BATCH)], 1).astype(np.float32)


def _model(policy, tmp_path):
    keras.mixed_precision.set_global_policy(policy)
    encoder = (_tiny.tiny_backbone(seed=1) if IS_KERAS3
               else _tiny.tiny_tfhub_encoder_path(tmp_path, seed=1))
    keras.utils.set_random_seed(0)
    return samtone_tf.DualEncoder(encoder, architecture="sde", projection_dim=16)


@pytest.fixture(autouse=True)
def _restore_policy():
    yield
    keras.mixed_precision.set_global_policy("float32")


@pytest.mark.parametrize("policy", ["mixed_float16", "mixed_bfloat16"])
def test_mixed_precision_loss_close_to_float32_and_fit_trains(policy, tmp_path):
    features, labels = _batch()
    loss = samtone_tf.SamToNeLoss(temperature=0.05, same_tower="both", bidirectional=True,
                                  mask_duplicates=True)
    reference = float(loss(labels, _model("float32", tmp_path)(features)))

    model = _model(policy, tmp_path)
    y_pred = model(features)
    value = float(loss(labels, y_pred))
    assert np.isfinite(value)
    assert value == pytest.approx(reference, abs=TOLERANCE[policy])
    # the projection really computes in half precision; its variables stay float32
    assert model.query_projection.compute_dtype == policy.split("_")[1]
    assert all(w.dtype == tf.float32 for w in model.query_projection.weights)

    model.compile(optimizer=keras.optimizers.Adam(1e-3), loss=loss)
    before = [np.array(w, dtype=np.float32) for w in model.trainable_weights]
    history = model.fit(tf.data.Dataset.from_tensors((features, labels)).repeat(10), verbose=0)
    after = [np.array(w, dtype=np.float32) for w in model.trainable_weights]
    assert all(np.isfinite(history.history["loss"]))
    assert all(np.all(np.isfinite(w)) for w in after)
    changed = sum(not np.array_equal(b, a) for b, a in zip(before, after))
    assert changed > len(after) // 2, f"only {changed} of {len(after)} weights moved"
    # and the model got better at the batch it trained on
    assert float(loss(labels, model(features))) < value
