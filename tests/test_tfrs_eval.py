"""TFRS FactorizedTopK over a BruteForce index of eagerly computed embeddings, in
model.evaluate and in fit (callback), on one device and under a 2-replica
MirroredStrategy; its numbers must equal the exact evaluator's (retrieval.search).

Keras 2 only (TF_USE_LEGACY_KERAS=1): under Keras 3 tensorflow-recommenders refuses to
import, so those tests skip, and the Keras 3 test checks the ImportError instead. Under
Keras 2 an ImportError of tensorflow-recommenders is a failure, not a skip.
"""

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import tensorflow as tf

from samtone_tf import data as data_lib
from samtone_tf.evaluation import tfrs as tfrs_eval
from samtone_tf._keras import IS_KERAS3, keras
from samtone_tf.losses import SamToNeLoss
from samtone_tf.towers.model import DualEncoder
from samtone_tf.evaluation.retrieval import search
from samtone_tf.data.tokenization import BertTextTokenizer, build_wordpiece_vocab
from tests import _tiny
from tests._requirements import require_data

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCIFACT = os.path.join(REPO, "..", "shared", "data", "scifact")
TFRS_OK, TFRS_WHY = tfrs_eval.tfrs_available()
# Skipped only as the other generation's case; under Keras 2 a missing TFRS fails them.
requires_tfrs = pytest.mark.skipif(IS_KERAS3, reason=f"Keras 2 only: {TFRS_WHY}")
KS = (1, 10, 100)
QUERY_LEN, DOC_LEN = 16, 48
NAMES = [f"factorized_top_k/top_{k}_categorical_accuracy" for k in KS]


@pytest.mark.skipif(not IS_KERAS3, reason="checks the Keras 3 refusal")
def test_keras3_raises_clear_import_error():
    ok, why = tfrs_eval.tfrs_available()
    assert not ok and "TF_USE_LEGACY_KERAS=1" in why
    with pytest.raises(ImportError, match="TF_USE_LEGACY_KERAS=1"):
        tfrs_eval.require_tfrs()
    with pytest.raises(ImportError, match="tensorflow-recommenders"):
        tfrs_eval.FactorizedTopKEvaluator(object(), np.eye(3, dtype="float32"))


@pytest.mark.skipif(IS_KERAS3, reason="Keras 2 only (see test_keras3_raises_clear_import_error)")
def test_keras2_imports_tfrs():
    assert TFRS_OK, f"tensorflow-recommenders must import under Keras 2: {TFRS_WHY}"


# ------------------------------------------------------------------- data and a model
@pytest.fixture(scope="module")
def scifact(tmp_path_factory):
    """200 SciFact documents (the positives of the first test queries, then others), the
    (query, positive row) pairs of those queries, a vocabulary and tokenizers."""
    require_data(SCIFACT)
    corpus, queries, qrels = data_lib.load_beir(SCIFACT, "test")
    qids = list(qrels)[:60]
    docs = list(dict.fromkeys(d for q in qids for d in qrels[q]))
    docs += [d for d in corpus if d not in set(docs)][: 200 - len(docs)]
    row = {d: i for i, d in enumerate(docs)}
    pairs = [(q, row[d]) for q in qids for d in qrels[q]]
    directory = tmp_path_factory.mktemp("tfrs_eval")
    vocab = str(directory / "vocab.txt")
    build_wordpiece_vocab([corpus[d] for d in docs] + [queries[q] for q in qids], _tiny.VOCAB_SIZE, vocab)
    return {
        "dir": directory,
        "vocab": vocab,
        "doc_texts": [corpus[d] for d in docs],
        "query_texts": [queries[q] for q, _ in pairs],
        "positives": np.array([r for _, r in pairs], dtype=np.int64),
        "encoder": _tiny.tiny_tfhub_encoder_path(directory, 0),
    }


def _tokens(tokenizer, texts):
    return {k: v.numpy() for k, v in tokenizer(tf.constant(texts)).items()}


def _exact_hits(model, query_tokens, doc_embeddings, positives, normalize=True):
    """Fraction of (query, positive) pairs whose positive is in search's top k, per k."""
    q = model.encode_queries(query_tokens, training=False).numpy()
    _, idx = search(q, [doc_embeddings], max(KS), normalize=normalize)
    return [float(np.mean([p in idx[i, :k] for i, p in enumerate(positives)])) for k in KS]


@requires_tfrs
def test_factorized_top_k_equals_exact_recall(scifact):
    qt = BertTextTokenizer(scifact["vocab"], max_length=QUERY_LEN)
    dt = BertTextTokenizer(scifact["vocab"], max_length=DOC_LEN)
    model = DualEncoder(scifact["encoder"], projection_dim=16)
    doc_tokens, query_tokens = _tokens(dt, scifact["doc_texts"]), _tokens(qt, scifact["query_texts"])
    embeddings = tfrs_eval.encode_corpus_embeddings(model, doc_tokens, batch_size=64)
    assert embeddings.shape == (200, 16)

    evaluator = tfrs_eval.FactorizedTopKEvaluator(model, embeddings, ks=KS)
    evaluator.compile()
    results = {}
    for batch_size in (16, 7):  # the result is per pair, so independent of batching
        dataset = tfrs_eval.make_query_eval_dataset(query_tokens, scifact["positives"], batch_size)
        results[batch_size] = evaluator.evaluate(dataset, return_dict=True, verbose=0)
    assert sorted(results[16]) == sorted(NAMES)
    exact = _exact_hits(model, query_tokens, embeddings, scifact["positives"])
    print("FactorizedTopK", results[16], "exact", exact)
    for name, value in zip(NAMES, exact):
        assert results[16][name] == pytest.approx(value, abs=1e-6)
        assert results[7][name] == pytest.approx(value, abs=1e-6)
    # An untrained random tower still ranks above chance, and the numbers are ordered.
    assert 0 < exact[0] < exact[1] < exact[2] < 1


class _LookupEncoder(keras.layers.Layer):
    """encode_queries: row ``token_ids[:, 0]`` of a fixed matrix (no weights)."""

    def __init__(self, table, **kwargs):
        super().__init__(**kwargs)
        self.table = tf.constant(table, tf.float32)

    def encode_queries(self, features, training=None):
        return tf.gather(self.table, features["token_ids"][:, 0])


@requires_tfrs
def test_hand_computed_ranks_normalisation_and_clipped_k():
    # Documents: a=[1,0], b=[10,10], c=[0,1], d=[-1,0].
    docs = np.array([[1, 0], [10, 10], [0, 1], [-1, 0]], dtype=np.float32)
    # Query 0 = [1, 0.2], positive a: cosine ranks a (0.98) > b (0.83) > c > d -> rank 1;
    #   raw dot ranks b (12) > a (1) -> rank 2.
    # Query 1 = [0, 1], positive d: cosine c (1) > b (0.71) > a = d (0) -> a wins the tie
    #   (earlier row), d is rank 4; dot: b (10) > c (1) > a = d (0) -> rank 4.
    # Query 2 = [1, 1], positive c: cosine b (1) > a = c (0.71) -> a first (tie), c rank 3;
    #   dot: b (20) > a = c (1) -> c rank 3.
    queries = np.array([[1, 0.2], [0, 1], [1, 1]], dtype=np.float32)
    positives = np.array([0, 3, 2])
    encoder = _LookupEncoder(queries)
    tokens = {"token_ids": np.arange(3)[:, None], "padding_mask": np.ones((3, 1))}
    dataset = tfrs_eval.make_query_eval_dataset(tokens, positives, 2)
    expected = {
        True: {1: 1 / 3, 2: 1 / 3, 3: 2 / 3, 10: 1.0},  # ranks 1, 4, 3; k=10 clipped to 4
        False: {1: 0.0, 2: 1 / 3, 3: 2 / 3, 10: 1.0},  # ranks 2, 4, 3
    }
    for normalize, want in expected.items():
        evaluator = tfrs_eval.FactorizedTopKEvaluator(encoder, docs, ks=(1, 2, 3, 10), normalize=normalize)
        evaluator.compile()
        got = evaluator.evaluate(dataset, return_dict=True, verbose=0)
        for k, value in want.items():
            assert got[f"factorized_top_k/top_{k}_categorical_accuracy"] == pytest.approx(value), (
                normalize, k, got)
        # The exact evaluator agrees (search breaks ties by the earlier row too).
        _, idx = search(queries, [docs], 4, normalize=normalize)
        for k, value in want.items():
            assert np.mean([p in idx[i, :k] for i, p in enumerate(positives)]) == pytest.approx(value)


@requires_tfrs
def test_evaluator_arguments():
    docs = np.eye(3, dtype=np.float32)
    with pytest.raises(ValueError, match="ks"):
        tfrs_eval.FactorizedTopKEvaluator(_LookupEncoder(docs), docs, ks=(0,))
    with pytest.raises(ValueError, match="non-empty"):
        tfrs_eval.FactorizedTopKEvaluator(_LookupEncoder(docs), np.zeros((0, 3)))
    with pytest.raises(TypeError, match="encode_queries"):
        tfrs_eval.FactorizedTopKEvaluator(object(), docs)
    evaluator = tfrs_eval.FactorizedTopKEvaluator(_LookupEncoder(docs), docs)
    evaluator.compile()
    bad = tf.data.Dataset.from_tensor_slices(
        {"query_token_ids": [[0]], "query_padding_mask": [[1]]}).batch(1)
    with pytest.raises(ValueError, match="positive_index"):
        evaluator.evaluate(bad, verbose=0)


def _pair_dataset(scifact, tokenizers, batch_size):
    pairs = [(q, scifact["doc_texts"][p]) for q, p in zip(scifact["query_texts"], scifact["positives"])]
    return data_lib.make_pair_dataset(pairs, tokenizers, batch_size, shuffle=True, seed=0)


@requires_tfrs
def test_callback_reports_metrics_in_fit(scifact):
    qt = BertTextTokenizer(scifact["vocab"], max_length=QUERY_LEN)
    dt = BertTextTokenizer(scifact["vocab"], max_length=DOC_LEN)
    keras.utils.set_random_seed(0)
    model = DualEncoder(scifact["encoder"], projection_dim=16)
    model.compile(optimizer=keras.optimizers.Adam(1e-3), loss=SamToNeLoss(temperature=0.05))
    doc_tokens, query_tokens = _tokens(dt, scifact["doc_texts"]), _tokens(qt, scifact["query_texts"])
    callback = tfrs_eval.FactorizedTopKCallback(
        tfrs_eval.make_query_eval_dataset(query_tokens, scifact["positives"], 16), doc_tokens, ks=KS,
        every_n_epochs=2,
    )
    before = [w.numpy().copy() for w in model.trainable_weights]
    history = model.fit(_pair_dataset(scifact, (qt, dt), 16), epochs=2, callbacks=[callback], verbose=0)
    assert any(np.abs(a - w.numpy()).max() > 0 for a, w in zip(before, model.trainable_weights))
    for name in NAMES:
        # every_n_epochs=2: only the second epoch has the numbers.
        assert history.history[f"val_{name}"] == [history.history[f"val_{name}"][0]]
    embeddings = tfrs_eval.encode_corpus_embeddings(model, doc_tokens)
    exact = _exact_hits(model, query_tokens, embeddings, scifact["positives"])
    for name, value in zip(NAMES, exact):
        assert history.history[f"val_{name}"][0] == pytest.approx(value, abs=1e-6)


MIRRORED_CHILD = """
    import json, sys
    import tensorflow as tf
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    import numpy as np
    from samtone_tf import data as data_lib
    from samtone_tf.evaluation import tfrs as tfrs_eval
    from samtone_tf._keras import IS_KERAS3, keras
    from samtone_tf.losses import SamToNeLoss
    from samtone_tf.towers.model import DualEncoder
    from samtone_tf.evaluation.retrieval import search
    from samtone_tf.data.tokenization import BertTextTokenizer

    assert not IS_KERAS3
    spec = json.load(open(sys.argv[1], encoding="utf-8"))
    qt = BertTextTokenizer(spec["vocab"], max_length={qlen})
    dt = BertTextTokenizer(spec["vocab"], max_length={dlen})
    tokens = lambda tok, texts: {{k: v.numpy() for k, v in tok(tf.constant(texts)).items()}}
    doc_tokens, query_tokens = tokens(dt, spec["doc_texts"]), tokens(qt, spec["query_texts"])
    positives = np.array(spec["positives"])
    strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    keras.utils.set_random_seed(0)
    with strategy.scope():
        model = DualEncoder(spec["encoder"], projection_dim=16)
        model.compile(optimizer=keras.optimizers.Adam(1e-3), loss=SamToNeLoss(temperature=0.05))
    queries = tfrs_eval.make_query_eval_dataset(query_tokens, positives, 16)
    callback = tfrs_eval.FactorizedTopKCallback(queries, doc_tokens, ks={ks})
    pairs = [(q, spec["doc_texts"][p]) for q, p in zip(spec["query_texts"], positives)]
    train = data_lib.make_pair_dataset(pairs, (qt, dt), 16, shuffle=True, seed=0)
    history = model.fit(train, epochs=1, callbacks=[callback], verbose=0)

    embeddings = tfrs_eval.encode_corpus_embeddings(model, doc_tokens, batch_size=33)
    plain = model.encode_documents(doc_tokens, training=False).numpy()  # outside the scope
    with strategy.scope():
        evaluator = tfrs_eval.FactorizedTopKEvaluator(model, embeddings, ks={ks})
        evaluator.compile()
    direct = evaluator.evaluate(queries, return_dict=True, verbose=0)
    q = model.encode_queries(query_tokens, training=False).numpy()
    _, idx = search(q, [embeddings], max({ks}))
    exact = [float(np.mean([p in idx[i, :k] for i, p in enumerate(positives)])) for k in {ks}]
    print(json.dumps({{
        "replicas": strategy.num_replicas_in_sync,
        "history": {{k: [float(x) for x in v] for k, v in history.history.items()}},
        "direct": {{k: float(v) for k, v in direct.items()}},
        "exact": exact,
        "embedding_diff": float(np.abs(embeddings - plain).max()),
        "shape": list(embeddings.shape),
    }}))
"""


@requires_tfrs
def test_mirrored_strategy_two_replicas(scifact, tmp_path):
    """In a subprocess: logical devices must be set before TF initialises, and one
    MirroredStrategy per process (tensorflow#62790)."""
    spec_file = tmp_path / "spec.json"
    spec_file.write_text(json.dumps({
        "vocab": scifact["vocab"], "encoder": scifact["encoder"],
        "doc_texts": scifact["doc_texts"], "query_texts": scifact["query_texts"],
        "positives": scifact["positives"].tolist(),
    }))
    script = tmp_path / "mirrored.py"
    script.write_text(textwrap.dedent(MIRRORED_CHILD.format(qlen=QUERY_LEN, dlen=DOC_LEN, ks=KS)))
    env = dict(os.environ, TF_USE_LEGACY_KERAS="1", PYTHONPATH=REPO)
    result = subprocess.run([sys.executable, str(script), str(spec_file)], cwd=str(tmp_path),
                            env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-4000:]
    out = json.loads(result.stdout.strip().splitlines()[-1])
    print(out)
    assert out["replicas"] == 2
    # Replica-sliced corpus encoding (batches of 33 over 2 replicas) keeps the row order.
    assert out["shape"] == [200, 16] and out["embedding_diff"] < 1e-5
    for name, value in zip(NAMES, out["exact"]):
        # fit's last epoch (callback) and a direct mirrored evaluate after it: same model.
        assert out["history"][f"val_{name}"] == [pytest.approx(value, abs=1e-6)]
        assert out["direct"][name] == pytest.approx(value, abs=1e-6)
    assert 0 < out["exact"][0] < out["exact"][2] < 1
