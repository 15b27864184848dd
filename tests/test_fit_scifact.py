"""End to end: tokenise real SciFact training pairs in tf.data, fit a DualEncoder with
SamToNeLoss through model.fit, and check that the loss falls and in-batch recall rises.

Keras 3 uses the keras-hub backbone natively; Keras 2 the same kind of tiny backbone
through its TF-Hub-layout export (hub.KerasLayer)."""

import os

import numpy as np
import pytest
import tensorflow as tf

import samtone_tf
from samtone_tf import data as data_lib
from samtone_tf._keras import IS_KERAS3, keras
from samtone_tf.towers.model import DualEncoder
from samtone_tf.data.tokenization import BertTextTokenizer, build_wordpiece_vocab
from tests import _tiny
from tests._requirements import require_data

SCIFACT = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data", "scifact")
BATCH = 32


@pytest.fixture(scope="module")
def scifact_pairs():
    require_data(SCIFACT)
    corpus, queries, qrels = data_lib.load_beir(SCIFACT, "train")
    return data_lib.training_pairs_from_qrels(corpus, queries, qrels)


@pytest.fixture(scope="module")
def tokenizers(scifact_pairs, tmp_path_factory):
    vocab = tmp_path_factory.mktemp("vocab") / "vocab.txt"
    texts = [p[1] for p in scifact_pairs] + [p[3] for p in scifact_pairs]
    build_wordpiece_vocab(texts, _tiny.VOCAB_SIZE, str(vocab))
    return (BertTextTokenizer(str(vocab), max_length=24),
            BertTextTokenizer(str(vocab), max_length=_tiny.MAX_LEN))


def _in_batch_recall_at_1(model, dataset):
    hits = total = 0
    for features, _ in dataset:
        y = model(features, training=False).numpy()
        scores = y[:, 0] @ y[:, 1].T
        hits += int(np.sum(np.argmax(scores, axis=1) == np.arange(len(scores))))
        total += len(scores)
    return hits / total


def _mean_loss(model, loss, dataset):
    return float(np.mean([float(loss(labels, model(features, training=False)))
                          for features, labels in dataset]))


def test_fit_on_scifact_lowers_loss_and_raises_recall(scifact_pairs, tokenizers, tmp_path):
    # Train on all pairs; measure on a fixed, unshuffled slice of them (in-batch recall of
    # training data: the point is that fit optimises what the loss says).
    train = data_lib.make_pair_dataset(scifact_pairs, tokenizers, BATCH, shuffle=True, seed=0)
    probe = data_lib.make_pair_dataset(scifact_pairs[:4 * BATCH], tokenizers, BATCH,
                                       shuffle=False)
    if IS_KERAS3:
        encoder = _tiny.tiny_backbone(seed=1)
    else:
        encoder = _tiny.tiny_tfhub_encoder_path(tmp_path, seed=1)
    keras.utils.set_random_seed(0)
    model = DualEncoder(encoder, architecture="sde", projection_dim=32)
    loss = samtone_tf.SamToNeLoss(temperature=0.05, same_tower="query", mask_duplicates=True)
    model.compile(optimizer=keras.optimizers.Adam(learning_rate=1e-3), loss=loss)

    recall_before = _in_batch_recall_at_1(model, probe)
    loss_before = _mean_loss(model, loss, probe)
    history = model.fit(train, epochs=3, verbose=0)
    recall_after = _in_batch_recall_at_1(model, probe)
    loss_after = _mean_loss(model, loss, probe)

    print("scifact fit:", loss_before, loss_after, recall_before, recall_after, history.history["loss"])
    assert len(model.trainable_weights) > 0
    assert history.history["loss"][-1] < history.history["loss"][0]
    assert loss_after < loss_before - 0.5, (loss_before, loss_after)
    # chance is 1/32; a trained lexical matcher does far better on its training pairs
    assert recall_after > recall_before + 0.15, (recall_before, recall_after)
