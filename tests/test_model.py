"""DualEncoder: tower sharing per architecture, output layout, pooling, normalisation,
learnable temperature, training, config round trip and argument checks. Runs under Keras 3
(keras-hub and TF-Hub towers) and under TF_USE_LEGACY_KERAS=1 (TF-Hub towers)."""

import math

import numpy as np
import pytest
import tensorflow as tf

import samtone_tf

from samtone_tf._keras import IS_KERAS3, keras
from samtone_tf.towers.encoders import KerasHubEncoder, TFHubEncoder
from samtone_tf.towers.model import DualEncoder
from tests._tiny import HIDDEN_DIM, random_tokens, tiny_backbone, tiny_tfhub_encoder_path

B, LQ, LD, HD, HQ, DIM = 3, 6, 9, 2, 1, 8
TOWER_KINDS = ["kerashub", "tfhub"] if IS_KERAS3 else ["tfhub"]


@pytest.fixture(scope="module")
def tfhub_dir(tmp_path_factory):
    directory = tmp_path_factory.mktemp("tfhub")
    for seed in (0, 1):
        tiny_tfhub_encoder_path(directory, seed)
    return directory


@pytest.fixture
def make_spec(tfhub_dir):
    """make_spec(seed, kind) -> something DualEncoder accepts as an encoder."""

    def make(seed=0, kind=TOWER_KINDS[0]):
        if kind == "kerashub":
            return tiny_backbone(seed)
        return tiny_tfhub_encoder_path(tfhub_dir, seed)

    return make


def _inputs(hard_documents=0, hard_queries=0, seed=0):
    q, qm = random_tokens(B, LQ, seed=seed)
    d, dm = random_tokens(B, LD, seed=seed + 1)
    x = {
        "query_token_ids": q,
        "query_padding_mask": qm,
        "document_token_ids": d,
        "document_padding_mask": dm,
    }
    if hard_documents:
        n, nm = random_tokens(B * hard_documents, LD, seed=seed + 2)
        x["hard_negative_document_token_ids"] = n.reshape(B, hard_documents, LD)
        x["hard_negative_document_padding_mask"] = nm.reshape(B, hard_documents, LD)
    if hard_queries:
        m, mm = random_tokens(B * hard_queries, LQ, seed=seed + 3)
        x["hard_negative_query_token_ids"] = m.reshape(B, hard_queries, LQ)
        x["hard_negative_query_padding_mask"] = mm.reshape(B, hard_queries, LQ)
    return {k: tf.constant(v) for k, v in x.items()}


def _ids(variables):
    return {id(v) for v in variables}


def _model(make_spec, architecture, kind=TOWER_KINDS[0], **kwargs):
    document = None if architecture == "sde" else make_spec(1, kind)
    return DualEncoder(make_spec(0, kind), document, architecture=architecture, **kwargs)


# ------------------------------------------------------------------- architectures
@pytest.mark.parametrize("kind", TOWER_KINDS)
def test_sde_shares_one_tower(make_spec, kind):
    model = _model(make_spec, "sde", kind, projection_dim=DIM)
    model(_inputs())
    assert model.query_encoder is model.document_encoder
    assert model.query_projection is model.document_projection
    encoder_vars = model.query_encoder.trainable_weights
    assert _ids(encoder_vars) == _ids(model.document_encoder.trainable_weights)
    assert len(encoder_vars) > 0
    # One encoder + one projection kernel, no duplicates.
    assert len(model.trainable_weights) == len(encoder_vars) + 1
    assert len(_ids(model.trainable_weights)) == len(model.trainable_weights)
    # Same text through either tower gives the same embedding.
    x = _inputs()
    features = {"token_ids": x["query_token_ids"], "padding_mask": x["query_padding_mask"]}
    np.testing.assert_allclose(
        model.encode_queries(features).numpy(),
        model.encode_documents(features).numpy(),
        atol=1e-6,
    )


@pytest.mark.parametrize("kind", TOWER_KINDS)
def test_ade_towers_are_disjoint(make_spec, kind):
    model = _model(make_spec, "ade", kind, projection_dim=DIM)
    model(_inputs())
    q_vars, d_vars = model.query_encoder.trainable_weights, model.document_encoder.trainable_weights
    assert len(q_vars) == len(d_vars) > 0
    assert not _ids(q_vars) & _ids(d_vars)
    assert model.query_projection is not model.document_projection
    assert not _ids(model.query_projection.weights) & _ids(model.document_projection.weights)
    assert len(model.trainable_weights) == 2 * len(q_vars) + 2


@pytest.mark.parametrize("kind", TOWER_KINDS)
def test_ade_spl_shares_exactly_the_projection(make_spec, kind):
    model = _model(make_spec, "ade-spl", kind, projection_dim=DIM)
    model(_inputs())
    q_vars, d_vars = model.query_encoder.trainable_weights, model.document_encoder.trainable_weights
    assert not _ids(q_vars) & _ids(d_vars)
    assert model.query_projection is model.document_projection
    projection_vars = model.query_projection.trainable_weights
    assert len(projection_vars) == 1 and projection_vars[0].shape == (HIDDEN_DIM, DIM)
    assert len(model.trainable_weights) == 2 * len(q_vars) + 1
    # The only variables reached from both towers are the projection's.
    query_side = _ids(q_vars) | _ids(model.query_projection.trainable_weights)
    document_side = _ids(d_vars) | _ids(model.document_projection.trainable_weights)
    assert query_side & document_side == _ids(projection_vars)


def test_ade_loads_a_string_spec_twice(make_spec):
    path = make_spec(0, "tfhub")
    model = DualEncoder(path, architecture="ade")
    assert isinstance(model.query_encoder, TFHubEncoder)
    assert not _ids(model.query_encoder.weights) & _ids(model.document_encoder.weights)


# ------------------------------------------------------------------- outputs
def test_output_layout_without_and_with_hard_negatives(make_spec):
    model = _model(make_spec, "ade", projection_dim=DIM)
    plain = model(_inputs())
    assert plain.shape == (B, 2, DIM) and plain.dtype == tf.float32

    x = _inputs(hard_documents=HD, hard_queries=HQ)
    y = model(x).numpy()
    assert y.shape == (B, 2 + HD + HQ, DIM)
    np.testing.assert_allclose(y[:, :2], plain.numpy(), atol=1e-6)

    def encode(fn, ids, mask):
        return fn({"token_ids": ids, "padding_mask": mask}).numpy()

    np.testing.assert_allclose(
        y[:, 0], encode(model.encode_queries, x["query_token_ids"], x["query_padding_mask"]),
        atol=1e-6,
    )
    np.testing.assert_allclose(
        y[:, 1],
        encode(model.encode_documents, x["document_token_ids"], x["document_padding_mask"]),
        atol=1e-6,
    )
    for h in range(HD):  # hard-negative documents go through the document tower
        np.testing.assert_allclose(
            y[:, 2 + h],
            encode(
                model.encode_documents,
                x["hard_negative_document_token_ids"][:, h],
                x["hard_negative_document_padding_mask"][:, h],
            ),
            atol=1e-5,
        )
    for h in range(HQ):  # hard-negative queries, last, through the query tower
        np.testing.assert_allclose(
            y[:, 2 + HD + h],
            encode(
                model.encode_queries,
                x["hard_negative_query_token_ids"][:, h],
                x["hard_negative_query_padding_mask"][:, h],
            ),
            atol=1e-5,
        )
    # Only hard-negative queries: they directly follow the positive document.
    x_q = _inputs(hard_queries=HQ)
    np.testing.assert_allclose(model(x_q).numpy()[:, 2:], y[:, 2 + HD :], atol=1e-5)


def test_mean_pooling_ignores_padded_positions(make_spec):
    model = _model(make_spec, "sde", normalize=False)
    x = _inputs()
    mask = x["query_padding_mask"].numpy()
    assert (mask == 0).any()
    ids = x["query_token_ids"].numpy()
    changed_ids = np.where(mask == 1, ids, 7).astype("int32")
    features = {"token_ids": tf.constant(ids), "padding_mask": x["query_padding_mask"]}
    changed = {"token_ids": tf.constant(changed_ids), "padding_mask": x["query_padding_mask"]}
    got = model.encode_queries(features).numpy()
    np.testing.assert_allclose(model.encode_queries(changed).numpy(), got, atol=1e-5)
    # It is the masked mean of the encoder's sequence output.
    sequence = model.query_encoder(features).numpy()
    expected = (sequence * mask[:, :, None]).sum(1) / mask.sum(1, keepdims=True)
    np.testing.assert_allclose(got, expected, atol=1e-5)


def test_cls_pooling_takes_the_first_position(make_spec):
    model = _model(make_spec, "sde", pooling="cls", normalize=False)
    x = _inputs()
    features = {"token_ids": x["document_token_ids"], "padding_mask": x["document_padding_mask"]}
    sequence = model.document_encoder(features).numpy()
    np.testing.assert_allclose(
        model.encode_documents(features).numpy(), sequence[:, 0], atol=1e-6
    )


def test_normalisation(make_spec):
    x = _inputs(hard_documents=HD, hard_queries=HQ)
    y = _model(make_spec, "ade-spl", projection_dim=DIM)(x).numpy()
    np.testing.assert_allclose(np.linalg.norm(y, axis=-1), 1.0, atol=1e-5)
    raw = _model(make_spec, "sde", normalize=False)(x).numpy()
    assert raw.shape == (B, 2 + HD + HQ, HIDDEN_DIM)
    assert not np.allclose(np.linalg.norm(raw, axis=-1), 1.0, atol=1e-3)


def test_learnable_temperature_scales_and_clips(make_spec):
    model = _model(make_spec, "sde", learnable_temperature=True, initial_temperature=0.05)
    x = _inputs(hard_documents=HD)
    y = model(x).numpy()
    # y = sqrt(1/tau) * unit vectors, so dot products are cos / tau.
    np.testing.assert_allclose(np.linalg.norm(y, axis=-1), math.sqrt(20.0), rtol=1e-5)
    assert any(w is model.logit_scale for w in model.trainable_weights)
    np.testing.assert_allclose(float(model.logit_scale.numpy()), math.log(20.0), rtol=1e-6)
    # encode_* return unscaled unit embeddings (for indexing).
    features = {"token_ids": x["query_token_ids"], "padding_mask": x["query_padding_mask"]}
    np.testing.assert_allclose(
        np.linalg.norm(model.encode_queries(features).numpy(), axis=-1), 1.0, atol=1e-5
    )
    model.logit_scale.assign(math.log(1000.0))  # clipped at max_logit_scale = 100
    np.testing.assert_allclose(np.linalg.norm(model(x).numpy(), axis=-1), 10.0, rtol=1e-5)


# ------------------------------------------------------------------- training
def _stand_in_loss(y_true, y_pred):
    """In-batch softmax of query vs all documents (positives and hard negatives)."""
    del y_true
    queries = y_pred[:, 0]
    documents = tf.reshape(y_pred[:, 1 : 1 + 1 + HD], [-1, y_pred.shape[-1]])
    logits = tf.matmul(queries, documents, transpose_b=True)
    labels = tf.range(tf.shape(queries)[0]) * (1 + HD)
    return tf.nn.sparse_softmax_cross_entropy_with_logits(labels, logits)


@pytest.mark.parametrize("kind", TOWER_KINDS)
def test_the_unused_pooler_is_not_trained_and_fit_warns_nothing(make_spec, kind):
    import logging
    import warnings

    model = _model(make_spec, "sde", kind)
    model.compile(optimizer=keras.optimizers.Adam(1e-3), loss=_stand_in_loss)
    x = _inputs(hard_documents=HD)
    model(x)
    names = [getattr(v, "path", v.name) for v in model.trainable_variables]
    assert names and not [n for n in names if "pooled_dense" in n], names
    saved = [getattr(v, "path", v.name) for v in model.weights]
    assert [n for n in saved if "pooled_dense" in n]  # still part of the weights
    records = []
    handler = logging.Handler()
    handler.emit = records.append
    logger = logging.getLogger("tensorflow")
    logger.addHandler(handler)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            dataset = tf.data.Dataset.from_tensor_slices((x, tf.zeros([B]))).batch(B)
            model.fit(dataset, epochs=1, verbose=0)
    finally:
        logger.removeHandler(handler)
    said = [str(w.message) for w in caught] + [r.getMessage() for r in records]
    assert not [m for m in said if "radients do not exist" in m], said


@pytest.mark.parametrize("kind", TOWER_KINDS)
def test_fit_step_updates_towers_projection_and_temperature(make_spec, kind):
    # Two separate towers once (TF-Hub, both generations); the keras-hub tower shared (SDE)
    # to keep the test fast.
    architecture = "ade" if kind == "tfhub" else "sde"
    model = _model(
        make_spec, architecture, kind, projection_dim=DIM, learnable_temperature=True
    )
    model.compile(optimizer=keras.optimizers.SGD(learning_rate=0.1), loss=_stand_in_loss)
    x = _inputs(hard_documents=HD)
    model(x)
    tracked = {
        "query token embedding": model.query_encoder.trainable_weights[0],
        "document token embedding": model.document_encoder.trainable_weights[0],
        "query projection": model.query_projection.kernel,
        "document projection": model.document_projection.kernel,
        "logit scale": model.logit_scale,
    }
    before = {k: np.array(v.numpy()) for k, v in tracked.items()}
    dataset = tf.data.Dataset.from_tensor_slices((x, tf.zeros([B]))).batch(B)
    history = model.fit(dataset, epochs=1, verbose=0)
    assert np.isfinite(history.history["loss"][0])
    for key, variable in tracked.items():
        assert not np.allclose(before[key], variable.numpy()), f"{key} did not change"


@pytest.mark.parametrize("given,compiled", [(1, 0), (0, 1), (1, 2)])
def test_fit_refuses_a_loss_with_another_count_of_hard_negative_queries(make_spec, given,
                                                                         compiled):
    # Without the check, fit trains with query slots read as documents (or the reverse).
    model = _model(make_spec, "sde", projection_dim=DIM)
    model.compile(optimizer=keras.optimizers.SGD(learning_rate=0.1),
                  loss=samtone_tf.SamToNeLoss(temperature=0.1, bidirectional=True,
                                              num_hard_negative_queries=compiled))
    x = _inputs(hard_documents=HD, hard_queries=given)
    dataset = tf.data.Dataset.from_tensor_slices((x, tf.zeros([B, 2]))).batch(B)
    with pytest.raises(ValueError, match=f"inputs hold {given} hard-negative queries .* "
                                         f"num_hard_negative_queries={compiled}"):
        model.fit(dataset, epochs=1, verbose=0)
    # the matching count trains
    model.compile(optimizer=keras.optimizers.SGD(learning_rate=0.1),
                  loss=samtone_tf.SamToNeLoss(temperature=0.1, bidirectional=True,
                                              num_hard_negative_queries=given))
    assert np.isfinite(model.fit(dataset, epochs=1, verbose=0).history["loss"][0])


# ------------------------------------------------------------------- config
# "ade" round-trips through from_config in test_weights_round_trip_after_fine_tuning.
@pytest.mark.parametrize("architecture", ["sde", "ade-spl"])
def test_config_round_trip(make_spec, architecture):
    model = _model(
        make_spec, architecture, projection_dim=DIM, pooling="cls", learnable_temperature=True,
        initial_temperature=0.1, name="retriever",
    )
    x = _inputs(hard_documents=1, hard_queries=1)
    expected = model(x).numpy()
    config = model.get_config()
    assert config["architecture"] == architecture and config["name"] == "retriever"
    assert config["projection_dim"] == DIM and config["pooling"] == "cls"
    assert config["initial_temperature"] == 0.1 and config["learnable_temperature"] is True
    assert (config["document_encoder"] is None) == (architecture == "sde")
    clone = DualEncoder.from_config(config)
    assert clone.get_config() == config
    clone(x)
    assert len(clone.weights) == len(model.weights)
    clone.set_weights(model.get_weights())
    np.testing.assert_allclose(clone(x).numpy(), expected, atol=1e-5)
    if architecture == "sde":
        assert clone.query_encoder is clone.document_encoder
    if architecture == "ade-spl":
        assert clone.query_projection is clone.document_projection


def test_weights_round_trip_after_fine_tuning(make_spec, tmp_path):
    # TF-Hub towers reload the original SavedModel from their handle; the fine-tuned
    # values must come back from the weights file.
    model = _model(make_spec, "ade", "tfhub", projection_dim=DIM, learnable_temperature=True)
    x = _inputs(hard_documents=1)
    model(x)
    embedding = model.query_encoder.trainable_weights[0]
    embedding.assign(embedding + 0.5)
    model.logit_scale.assign(2.0)
    expected = model(x).numpy()
    path = str(tmp_path / ("tower.weights.h5" if IS_KERAS3 else "tower.h5"))
    model.save_weights(path)
    clone = DualEncoder.from_config(model.get_config())
    clone(x)
    assert not np.allclose(clone(x).numpy(), expected, atol=1e-3)
    clone.load_weights(path)
    np.testing.assert_allclose(clone(x).numpy(), expected, atol=1e-6)


@pytest.mark.skipif(not IS_KERAS3, reason="keras-hub towers need Keras 3")
def test_keras_file_round_trip(make_spec, tmp_path):
    model = _model(make_spec, "ade-spl", "kerashub", projection_dim=DIM)
    x = _inputs(hard_queries=1)
    expected = model(x).numpy()
    model.save(str(tmp_path / "model.keras"))
    loaded = keras.models.load_model(str(tmp_path / "model.keras"))
    assert isinstance(loaded, DualEncoder) and loaded.architecture == "ade-spl"
    np.testing.assert_allclose(loaded(x).numpy(), expected, atol=1e-6)


@pytest.mark.skipif(not IS_KERAS3, reason="keras-hub towers need Keras 3")
def test_kerashub_towers_wrapped(make_spec):
    model = _model(make_spec, "ade", "kerashub")
    assert isinstance(model.query_encoder, KerasHubEncoder)
    assert isinstance(model.document_encoder, KerasHubEncoder)


# ------------------------------------------------------------------- argument checks
@pytest.mark.parametrize(
    "kwargs, argument",
    [
        ({"architecture": "tde"}, "architecture"),
        ({"pooling": "max"}, "pooling"),
        ({"projection_dim": 0}, "projection_dim"),
        ({"projection_dim": 2.5}, "projection_dim"),
        ({"architecture": "ade-spl", "projection_dim": None}, "projection_dim"),
        ({"normalize": "yes"}, "normalize"),
        ({"learnable_temperature": 1}, "learnable_temperature"),
        ({"learnable_temperature": True, "normalize": False}, "normalize"),
        ({"initial_temperature": 0.0}, "initial_temperature"),
        ({"learnable_temperature": True, "initial_temperature": 0.001}, "max_logit_scale"),
        ({"max_logit_scale": -1.0}, "max_logit_scale"),
    ],
)
def test_bad_arguments_name_the_argument(make_spec, kwargs, argument):
    with pytest.raises(ValueError, match=argument):
        DualEncoder(make_spec(0), **kwargs)


def test_bad_encoder_arguments(make_spec):
    with pytest.raises(ValueError, match="query_encoder"):
        DualEncoder(None)
    with pytest.raises(ValueError, match="query_encoder"):
        DualEncoder(12345)
    with pytest.raises(ValueError, match="document_encoder"):
        DualEncoder(make_spec(0), "/no/such/model", architecture="ade")
    spec = make_spec(0)
    with pytest.raises(ValueError, match="document_encoder"):
        DualEncoder(spec, make_spec(1), architecture="sde")
    encoder = DualEncoder(spec).query_encoder
    with pytest.raises(ValueError, match="document_encoder"):
        DualEncoder(encoder, encoder, architecture="ade")
    with pytest.raises(ValueError, match="document_encoder"):
        DualEncoder(encoder, architecture="ade-spl", projection_dim=4)


def test_bad_inputs(make_spec):
    model = _model(make_spec, "sde")
    x = _inputs(hard_documents=1)
    with pytest.raises(ValueError, match="document_token_ids"):
        model({k: v for k, v in x.items() if k != "document_token_ids"})
    with pytest.raises(ValueError, match="hard_negative_document"):
        model({k: v for k, v in x.items() if k != "hard_negative_document_padding_mask"})
