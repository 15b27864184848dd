"""Encoding pads each batch only to its longest text (evaluation.trim_padding), with the same
embeddings as the tokenizer's full length, and falls back to the full length for an encoder
that rejects shorter inputs."""

import numpy as np
import pytest
import tensorflow as tf

from samtone_tf import evaluation
from samtone_tf.evaluation import retrieval
from tests import mining_worker
from tests._requirements import require_data


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    require_data(mining_worker.SCIFACT)
    from samtone_tf._keras import keras
    from samtone_tf.towers.model import DualEncoder

    directory = str(tmp_path_factory.mktemp("trim"))
    corpus, _, pairs = mining_worker.scifact_slice(num_queries=10, num_other_docs=30)
    qt, dt = mining_worker.tokenizers(directory, corpus, pairs, query_length=24,
                                      document_length=64)
    keras.utils.set_random_seed(0)
    model = DualEncoder(mining_worker.encoder(directory, seed=2), architecture="sde")
    # real texts: claims (short) and abstract titles (short) and abstracts (long)
    short = [p[1] for p in pairs][:10]
    docs = list(corpus.values())[:20]
    return model, qt, dt, short, docs


def test_trim_padding_cuts_to_the_longest_text():
    features = {"token_ids": tf.constant([[5, 6, 7, 0, 0, 0], [5, 6, 0, 0, 0, 0]]),
                "padding_mask": tf.constant([[1, 1, 1, 0, 0, 0], [1, 1, 0, 0, 0, 0]])}
    out = evaluation.trim_padding(features)
    np.testing.assert_array_equal(out["token_ids"], [[5, 6, 7], [5, 6, 0]])
    np.testing.assert_array_equal(out["padding_mask"], [[1, 1, 1], [1, 1, 0]])
    empty = evaluation.trim_padding({"token_ids": tf.zeros([0, 6], tf.int32),
                                     "padding_mask": tf.zeros([0, 6], tf.int32)})
    assert empty["token_ids"].shape == (0, 1)


def test_trimmed_embeddings_equal_full_length(setup):
    model, qt, dt, short, docs = setup
    query_fn, doc_fn = evaluation.dual_encoder_fns(model, qt, dt)
    for fn, encode, tok, texts in ((query_fn, model.encode_queries, qt, short),
                                   (doc_fn, model.encode_documents, dt, docs + short)):
        full = encode(tok(tf.constant(texts))).numpy()
        trimmed = retrieval.encode_corpus(fn, texts, 4, progress=False)
        np.testing.assert_allclose(trimmed, full, atol=1e-5)
    # the short texts really are encoded shorter than the tokenizer's length
    lengths = evaluation.trim_padding(dt(tf.constant(short)))["token_ids"].shape[1]
    assert lengths < 64


def test_encoder_rejecting_short_inputs_falls_back_to_full_length(setup):
    model, qt, dt, short, _ = setup

    class FixedLength:
        """Raises like a SavedModel whose signature fixes the length at 24."""

        def encode_queries(self, features):
            if features["token_ids"].shape[1] != 24:
                raise ValueError("Could not find matching concrete function to call.")
            return model.encode_queries(features)

        encode_documents = encode_queries

    query_fn, _ = evaluation.dual_encoder_fns(FixedLength(), qt, dt)
    expected = model.encode_queries(qt(tf.constant(short))).numpy()
    with pytest.warns(RuntimeWarning, match="query encoder failed on a batch padded only to "
                      "its longest text .ValueError: Could not find matching concrete"):
        np.testing.assert_allclose(query_fn(short), expected, atol=1e-6)
    np.testing.assert_allclose(query_fn(short[:3]), expected[:3], atol=1e-6)


# Tiny stand-ins (no data files): a tokenizer padding to 8 positions, a "model" summing ids.
FULL = 8


def _tokenizer(texts):
    mask = tf.sequence_mask(tf.minimum(tf.strings.length(texts), FULL), FULL, dtype=tf.int32)
    return {"token_ids": mask * 3, "padding_mask": mask}


class _Summing:
    def __init__(self, fail=None):
        self.fail = fail  # token ids -> token ids (may raise)
        self.lengths = []  # the static length of each trace

    def encode_queries(self, features):
        ids = features["token_ids"]
        self.lengths.append(ids.shape[1])
        if self.fail is not None:
            ids = self.fail(ids)
        return tf.reduce_sum(tf.cast(ids, tf.float32), axis=1, keepdims=True)

    encode_documents = encode_queries


TEXTS = ["ab", "abcd", "a"]
EXPECTED = [[6.0], [12.0], [3.0]]


def test_runtime_length_error_falls_back_with_one_warning():
    def add_positions(ids):  # like position embeddings of a fixed length: fails when run
        return ids + 0 * tf.range(FULL)

    query_fn, document_fn = evaluation.dual_encoder_fns(_Summing(add_positions), _tokenizer,
                                                        _tokenizer)
    with pytest.warns(RuntimeWarning) as record:
        np.testing.assert_allclose(query_fn(TEXTS), EXPECTED)
        np.testing.assert_allclose(query_fn(TEXTS[:2]), EXPECTED[:2])  # no second warning
    assert len(record) == 1
    message = str(record[0].message)
    assert "The query encoder failed" in message
    assert "(InvalidArgumentError: Incompatible shapes: [8] vs. [3,4])" in message
    assert "at the full length from now on" in message
    with pytest.warns(RuntimeWarning, match="The document encoder failed"):
        np.testing.assert_allclose(document_fn(TEXTS), EXPECTED)


def test_trimmed_encoder_that_works_does_not_warn():
    import warnings

    query_fn, _ = evaluation.dual_encoder_fns(_Summing(), _tokenizer, _tokenizer)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        np.testing.assert_allclose(query_fn(TEXTS), EXPECTED)


def test_error_that_the_full_length_raises_too_is_raised():
    def broken(ids):
        raise ValueError("the encoder is broken, whatever the length")

    model = _Summing(broken)
    query_fn, _ = evaluation.dual_encoder_fns(model, _tokenizer, _tokenizer)
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no fallback warning either
        with pytest.raises(ValueError, match="the encoder is broken, whatever the length"):
            query_fn(TEXTS)
    assert model.lengths == [None, FULL]  # tried trimmed, then the full length
    # the failure did not switch the encoder to the full length for good
    model.fail = None
    np.testing.assert_allclose(query_fn(TEXTS), EXPECTED)
    assert model.lengths[2:] == [None]  # traced trimmed again


def test_other_kinds_of_error_propagate_without_a_retry():
    def out_of_memory(ids):
        raise RuntimeError("device out of memory")

    model = _Summing(out_of_memory)
    query_fn, _ = evaluation.dual_encoder_fns(model, _tokenizer, _tokenizer)
    with pytest.raises(RuntimeError, match="device out of memory"):
        query_fn(TEXTS)
    assert model.lengths == [None]  # no full-length retry
