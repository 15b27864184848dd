"""Hard-negative mining (samtone_tf.training.mining) on a real SciFact slice with a tiny encoder:
mined tables against a brute-force NumPy top-k and the qrels, the dataset following the
tables, model.fit with the refresh callback, and 2 CPU replicas in a subprocess."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from samtone_tf import data as data_lib
from samtone_tf.training.mining import HardNegativeMiner, HardNegativeMiningCallback
from tests import mining_worker
from tests._multiworker import run_workers
from tests._requirements import require_data

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def sliced(tmp_path_factory):
    require_data(mining_worker.SCIFACT)
    directory = str(tmp_path_factory.mktemp("mining"))
    corpus, qrels, pairs = mining_worker.scifact_slice()
    return directory, corpus, qrels, pairs, mining_worker.tokenizers(directory, corpus, pairs)


@pytest.fixture(scope="module")
def model(sliced):
    from samtone_tf._keras import keras
    from samtone_tf.towers.model import DualEncoder

    keras.utils.set_random_seed(0)
    return DualEncoder(mining_worker.encoder(sliced[0], seed=4), architecture="sde",
                       projection_dim=16)


def _miner(sliced, **kwargs):
    _, corpus, qrels, pairs, toks = sliced
    return HardNegativeMiner(pairs, corpus, toks, qrels=qrels, **kwargs)


def _brute_force(anchors, candidates, excluded, count):
    a = anchors / np.linalg.norm(anchors, axis=1, keepdims=True)
    c = candidates / np.linalg.norm(candidates, axis=1, keepdims=True)
    scores = a @ c.T
    for r, ex in enumerate(excluded):
        scores[r, list(ex)] = -np.inf
    return scores, np.argsort(-scores, axis=1, kind="stable")[:, :count]


def _assert_top_k(table, scores, expected):
    # same rows where scores are untied; the chosen scores equal the brute-force ones always
    chosen = np.take_along_axis(scores, table.astype(np.int64), axis=1)
    best = np.take_along_axis(scores, expected, axis=1)
    np.testing.assert_allclose(chosen, best, rtol=0, atol=1e-5)
    assert np.mean(table == expected) > 0.95


def test_mined_negatives_avoid_positives_and_equal_brute_force(sliced, model):
    _, corpus, qrels, pairs, _ = sliced
    miner = _miner(sliced, num_hard_documents=3, num_hard_queries=2)
    random_docs = miner.document_table.copy()
    timing = miner.refresh(model)
    assert timing["documents"] == len(corpus) and timing["queries"] == len(miner.query_ids)
    assert timing["seconds"] >= timing["encode_seconds"] > 0 and timing["docs_per_second"] > 0
    assert not np.array_equal(miner.document_table, random_docs)
    q, d = miner.last_query_embeddings, miner.last_document_embeddings
    assert q.shape == (len(miner.query_ids), 16) and d.shape == (len(corpus), 16)

    # documents: never a qrels positive, and the top 3 of a brute-force ranking
    table = miner.document_table
    assert table.shape == (len(miner.query_ids), 3)
    for r, qid in enumerate(miner.query_ids):
        judged = {doc for doc, score in qrels[qid].items() if score > 0}
        assert not judged & {miner.doc_ids[j] for j in table[r]}, qid
        assert len(set(table[r].tolist())) == 3
    excluded = [{miner.doc_ids.index(doc) for doc, s in qrels[qid].items() if s > 0}
                for qid in miner.query_ids]
    scores, expected = _brute_force(q, d, excluded, 3)
    _assert_top_k(table, scores, expected)

    # queries (DANCE): never a query paired with the document, top 2 by brute force
    paired = {doc: {qid for qid, _, doc2, _ in pairs if doc2 == doc} for doc in
              miner.positive_doc_ids}
    for qid, judged in qrels.items():
        for doc, score in judged.items():
            if score > 0 and doc in paired:
                paired[doc].add(qid)
    qtable = miner.query_table
    assert qtable.shape == (len(miner.positive_doc_ids), 2)
    for p, doc in enumerate(miner.positive_doc_ids):
        assert not paired[doc] & {miner.query_ids[j] for j in qtable[p]}, doc
    positive = d[[miner.doc_ids.index(doc) for doc in miner.positive_doc_ids]]
    excluded = [{miner.query_ids.index(qid) for qid in paired[doc]}
                for doc in miner.positive_doc_ids]
    scores, expected = _brute_force(positive, q, excluded, 2)
    _assert_top_k(qtable, scores, expected)


def test_depth_sampling_and_skip_top_are_deterministic_within_the_ranking(sliced):
    rng = np.random.default_rng(0)
    miner = _miner(sliced, num_hard_documents=2, depth=6, skip_top=1, seed=3)
    q = rng.normal(size=(len(miner.query_ids), 8)).astype(np.float32)
    d = rng.normal(size=(len(miner.doc_ids), 8)).astype(np.float32)
    excluded = miner._excluded_docs
    scores, ranked = _brute_force(q, d, excluded, 7)
    miner.mine_from_embeddings(q, d)
    first = miner.document_table
    for r, row in enumerate(first):  # drawn from ranks 2..7 of the non-positives
        assert set(row.tolist()) <= set(ranked[r, 1:7].tolist())
        assert ranked[r, 0] not in row
    again = _miner(sliced, num_hard_documents=2, depth=6, skip_top=1, seed=3)
    again.mine_from_embeddings(q, d)
    np.testing.assert_array_equal(again.document_table, first)  # same seed, same draw
    miner.mine_from_embeddings(q, d)  # the next refresh draws anew
    assert not np.array_equal(miner.document_table, first)


def test_dataset_follows_the_tables_and_keeps_the_pair_order(sliced):
    _, corpus, qrels, pairs, toks = sliced
    miner = _miner(sliced, num_hard_documents=2, num_hard_queries=1)
    iterator = iter(miner.dataset(8, seed=5, prefetch=False))
    reference = iter(data_lib.make_pair_dataset(pairs, toks, 8, seed=5, repeat=True))

    query_index, doc_index = data_lib.dense_id_maps(pairs, miner.doc_ids)
    qid_of = {v: k for k, v in query_index.items()}
    did_of = {v: k for k, v in doc_index.items()}

    def check(features, labels):
        docs, queries = mining_worker.expected_hard_negatives(miner, labels.numpy())
        np.testing.assert_array_equal(features["hard_negative_document_token_ids"], docs)
        np.testing.assert_array_equal(features["hard_negative_query_token_ids"], queries)
        # labels: (query id, document id, 2 hard-negative document ids, 1 query id), each
        # the id of the corpus document / training query in that slot
        ids = labels.numpy().astype(np.int64)
        assert ids.shape == (8, 5)
        for row in ids:
            doc_rows = miner.document_table[miner._query_row[qid_of[row[0]]]]
            assert [did_of[i] for i in row[2:4]] == [miner.doc_ids[j] for j in doc_rows]
            query_rows = miner.query_table[miner._positive_row[did_of[row[1]]]]
            assert [qid_of[i] for i in row[4:]] == [miner.query_ids[j] for j in query_rows]
        return docs, queries

    features, labels = next(iterator)
    assert features["hard_negative_document_token_ids"].shape == (8, 2, 32)
    assert features["hard_negative_query_token_ids"].shape == (8, 1, 16)
    assert features["hard_negative_query_padding_mask"].shape == (8, 1, 16)
    ref_features, ref_labels = next(reference)
    np.testing.assert_array_equal(labels[:, :2], ref_labels)
    for key in ref_features:
        np.testing.assert_array_equal(features[key], ref_features[key])
    old_docs, old_queries = check(features, labels)
    old = mining_worker.expected_hard_negatives(miner, labels.numpy())
    miner.randomize(seed=11)
    new = mining_worker.expected_hard_negatives(miner, labels.numpy())
    assert not np.array_equal(old[0], new[0]) and not np.array_equal(old[1], new[1])
    for _ in range(3):  # every later batch follows the new tables, no rebuild
        features, labels = next(iterator)
        ref_features, ref_labels = next(reference)
        np.testing.assert_array_equal(labels[:, :2], ref_labels)
        check(features, labels)


def test_fit_with_the_callback_refreshes_and_trains(sliced, model):
    from samtone_tf import SamToNeLoss
    from samtone_tf._keras import keras

    miner = _miner(sliced, num_hard_documents=2, num_hard_queries=1)
    model.compile(optimizer=keras.optimizers.Adam(learning_rate=1e-3),
                  loss=SamToNeLoss(temperature=0.05, same_tower="both", bidirectional=True,
                                   dual_weight=0.1, num_hard_negative_queries=1,
                                   mask_duplicates=True))
    # the mined batches train through the gradient-cached step (mini-batches of 3, 3, 2);
    # tests/test_gradcache.py shows it equal to the uncached one with hard negatives
    model.mini_batch_size = 3
    before = [w.numpy().copy() for w in model.trainable_weights]
    callback = HardNegativeMiningCallback(miner, every_n_steps=2, initial="mine")
    history = model.fit(miner.dataset(8), epochs=2, steps_per_epoch=2, verbose=0,
                        callbacks=[callback])
    assert all(np.isfinite(history.history["loss"]))
    assert any(np.abs(w.numpy() - b).max() > 0 for w, b in zip(model.trainable_weights, before))
    assert [t["step"] for t in callback.refreshes] == [0, 2, 4]
    assert history.history["mining_refreshes"] == [1.0, 1.0]  # the initial one precedes epoch 0
    assert all(s > 0 for s in history.history["mining_seconds"])
    assert history.history["mining_docs_per_second"][-1] == callback.refreshes[-1]["docs_per_second"]
    # the last refresh ran after the last step: its tables are the final model's
    final_docs, final_queries = miner.document_table, miner.query_table
    miner.refresh(model)
    np.testing.assert_array_equal(miner.document_table, final_docs)
    np.testing.assert_array_equal(miner.query_table, final_queries)


def test_two_cpu_replicas_fit_and_follow_the_tables(sliced, tmp_path):
    out = tmp_path / "mirrored.json"
    # the slice's folder: its vocabulary (and, in Keras 2, the encoder export) are reused
    done = subprocess.run([sys.executable, "-m", "tests.mining_worker", "2", sliced[0],
                           str(out)], cwd=ROOT, env=os.environ.copy(), capture_output=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr.decode()[-3000:]
    result = json.loads(out.read_text())
    assert result["replicas"] == 2
    assert all(np.isfinite(result["loss"])) and result["refresh_steps"] == [2, 4]
    assert result["documents_changed"] and result["queries_changed"] and result["clean"]
    assert result["switch_before"] and result["switch_after"]


def test_multiworker_refresh_mines_from_the_whole_corpus(sliced, tmp_path):
    # Two worker processes (MultiWorkerMirroredStrategy on 127.0.0.1): each encodes its share
    # of the texts and gathers the other's, so both mine the tables one device mines.
    from samtone_tf._keras import IS_KERAS3

    if not IS_KERAS3:  # the workers load one TF-Hub export; two exporting at once would race
        mining_worker.encoder(sliced[0], seed=4)
    for result in run_workers(["tests.mining_worker", "multiworker", sliced[0]], tmp_path):
        assert result["replicas"] == 2
        assert result["document_table"] == result["reference_document_table"]
        assert result["query_table"] == result["reference_query_table"]


@pytest.mark.parametrize("kwargs,message", [
    (dict(num_hard_documents=0), "num_hard_documents"),
    (dict(num_hard_queries=-1), "num_hard_queries"),
    (dict(num_hard_documents=3, depth=2), "depth"),
    (dict(skip_top=True), "skip_top"),
    (dict(num_hard_documents=10**6), "corpus has"),
    (dict(num_hard_queries=10**4), "too few"),
    (dict(normalize="yes"), "normalize"),
])
def test_bad_miner_arguments(sliced, kwargs, message):
    with pytest.raises(ValueError, match=message):
        _miner(sliced, **kwargs)


def test_bad_pairs_tables_and_callback_arguments(sliced):
    _, corpus, qrels, pairs, toks = sliced
    with pytest.raises(ValueError, match="not in `corpus`"):
        HardNegativeMiner(pairs, {d: t for d, t in corpus.items() if d != pairs[0][2]}, toks)
    miner = _miner(sliced, num_hard_documents=2)
    table = miner.document_table.copy()
    table[0, 0] = miner.doc_ids.index(pairs[0][2])  # the first query's positive
    with pytest.raises(ValueError, match="positives"):
        miner.set_tables(table)
    with pytest.raises(ValueError, match="shape"):
        miner.set_tables(table[:, :1])
    with pytest.raises(ValueError, match="batch_size"):
        miner.dataset(0)
    with pytest.raises(ValueError, match="every_n_steps"):
        HardNegativeMiningCallback(miner, 0)
    with pytest.raises(ValueError, match="initial"):
        HardNegativeMiningCallback(miner, 1, initial="zero")
    with pytest.raises(ValueError, match="HardNegativeMiner"):
        HardNegativeMiningCallback(object(), 1)
