"""Hard-negative mining helpers for tests/test_mining.py, and a worker that fits with the
mining callback under MirroredStrategy over 2 logical CPU devices (its own process: logical
devices must be configured before TensorFlow initialises).

Usage: ``python -m tests.mining_worker REPLICAS WORKDIR OUTPUT.json``
"""

import json
import os
import sys

import numpy as np

SCIFACT = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data", "scifact")


def scifact_slice(num_queries=40, num_other_docs=200):
    """A real SciFact slice: the first ``num_queries`` train queries (sorted ids), their
    positives plus the first ``num_other_docs`` corpus documents; ``(corpus, qrels, pairs)``."""
    from samtone_tf import data as data_lib

    corpus, queries, qrels = data_lib.load_beir(SCIFACT, "train")
    train_q = sorted(qrels)[:num_queries]
    keep = {d for q in train_q for d in qrels[q]} | set(list(corpus)[:num_other_docs])
    corpus = {d: t for d, t in corpus.items() if d in keep}
    qrels = {q: qrels[q] for q in train_q}
    pairs = data_lib.training_pairs_from_qrels(corpus, queries, qrels)
    return corpus, qrels, pairs


def tokenizers(directory, corpus, pairs, query_length=16, document_length=32):
    from samtone_tf.data.tokenization import BertTextTokenizer, build_wordpiece_vocab
    from tests import _tiny

    vocab = os.path.join(directory, "vocab.txt")
    if not os.path.exists(vocab):
        build_wordpiece_vocab(list(corpus.values()) + [p[1] for p in pairs], _tiny.VOCAB_SIZE,
                              vocab)
    return (BertTextTokenizer(vocab, max_length=query_length),
            BertTextTokenizer(vocab, max_length=document_length))


def encoder(directory, seed=0):
    """The tiny encoder for this Keras generation (keras-hub backbone or TF-Hub export)."""
    from samtone_tf._keras import IS_KERAS3
    from tests import _tiny

    if IS_KERAS3:
        return _tiny.tiny_backbone(seed=seed)
    return _tiny.tiny_tfhub_encoder_path(directory, seed=seed)


def fit_with_mining(directory, strategy=None, *, steps=4, every=2, batch_size=8, hd=2, hq=1):
    """Fits a tiny DualEncoder with SamToNe + DANCE's dual loss and the mining callback.

    Returns a JSON-able dict: losses, refresh steps, whether the tables changed, whether all
    negatives avoid positives, and the replicas."""
    import tensorflow as tf

    from samtone_tf import SamToNeLoss
    from samtone_tf._keras import keras
    from samtone_tf.training.mining import HardNegativeMiner, HardNegativeMiningCallback
    from samtone_tf.towers.model import DualEncoder

    strategy = strategy or tf.distribute.get_strategy()
    corpus, qrels, pairs = scifact_slice()
    miner = HardNegativeMiner(pairs, corpus, tokenizers(directory, corpus, pairs), qrels=qrels,
                              num_hard_documents=hd, num_hard_queries=hq, seed=0)
    random_tables = (miner.document_table.copy(), miner.query_table.copy())
    dataset = miner.dataset(batch_size, seed=0)
    with strategy.scope():
        keras.utils.set_random_seed(0)
        model = DualEncoder(encoder(directory, seed=4), architecture="sde", projection_dim=16)
        model.compile(optimizer=keras.optimizers.Adam(learning_rate=1e-3),
                      loss=SamToNeLoss(temperature=0.05, same_tower="both", bidirectional=True,
                                       dual_weight=0.1, num_hard_negative_queries=hq,
                                       mask_duplicates=True))
    callback = HardNegativeMiningCallback(miner, every, initial="random")
    history = model.fit(dataset, epochs=2, steps_per_epoch=steps // 2, verbose=0,
                        callbacks=[callback])
    clean = all(not miner._excluded_docs[r].intersection(row.tolist())
                for r, row in enumerate(miner.document_table))
    clean = clean and all(not miner._excluded_queries[p].intersection(row.tolist())
                          for p, row in enumerate(miner.query_table))
    return {
        "replicas": strategy.num_replicas_in_sync,
        "loss": [float(x) for x in history.history["loss"]],
        "mining_refreshes": [float(x) for x in history.history["mining_refreshes"]],
        "mining_seconds": [float(x) for x in history.history["mining_seconds"]],
        "refresh_steps": [t["step"] for t in callback.refreshes],
        "documents_changed": bool(np.any(miner.document_table != random_tables[0])),
        "queries_changed": bool(np.any(miner.query_table != random_tables[1])),
        "clean": bool(clean),
    }


def expected_hard_negatives(miner, labels):
    """Token ids the current tables give the pairs of a batch (``labels`` [B, 2 + Hd + Hq],
    of which the (query id, document id) columns are read):
    ``(documents [B, Hd, Ld], queries [B, Hq, Lq] or None)``."""
    from samtone_tf import data as data_lib

    query_index, doc_index = data_lib.dense_id_maps(miner.pairs)
    qid_of = {v: k for k, v in query_index.items()}
    did_of = {v: k for k, v in doc_index.items()}
    labels = np.asarray(labels).astype(np.int64)
    doc_table, query_table = miner.document_table, miner.query_table
    rows = [miner._query_row[qid_of[q]] for q in labels[:, 0]]
    texts = [miner.doc_texts[j] for r in rows for j in doc_table[r]]
    docs = np.asarray(miner.document_tokenizer(texts)["token_ids"]).reshape(
        len(labels), miner.num_hard_documents, -1)
    if not miner.num_hard_queries:
        return docs, None
    rows = [miner._positive_row[did_of[d]] for d in labels[:, 1]]
    texts = [miner.query_texts[j] for r in rows for j in query_table[r]]
    queries = np.asarray(miner.query_tokenizer(texts)["token_ids"]).reshape(
        len(labels), miner.num_hard_queries, -1)
    return docs, queries


def distributed_switch(miner, strategy, batch_size=8):
    """Whether a distributed iterator's batches follow the tables: (first batch matches the
    tables, a batch a few steps after a table change matches the new tables)."""
    dist = strategy.experimental_distribute_dataset(miner.dataset(batch_size, seed=1,
                                                                  prefetch=False))
    iterator = iter(dist)

    def matches():
        features, labels = next(iterator)
        ids = np.concatenate([np.asarray(x) for x in strategy.experimental_local_results(
            features["hard_negative_document_token_ids"])])
        labels = np.concatenate([np.asarray(x)
                                 for x in strategy.experimental_local_results(labels)])
        docs, _ = expected_hard_negatives(miner, labels)
        return bool(np.array_equal(ids, docs))

    before = matches()
    miner.randomize(seed=5)
    for _ in range(3):  # whatever the distributed iterator read ahead
        next(iterator)
    return before, matches()


def refresh_equals_one_device(directory, strategy):
    """Refreshes a miner inside ``strategy``'s scope (replica encoders, gathered across
    workers) and one outside any strategy with the same model; returns both tables."""
    import tensorflow as tf

    from samtone_tf._keras import keras
    from samtone_tf.training.mining import HardNegativeMiner
    from samtone_tf.towers.model import DualEncoder

    corpus, qrels, pairs = scifact_slice()
    toks = tokenizers(directory, corpus, pairs)
    miners = [HardNegativeMiner(pairs, corpus, toks, qrels=qrels, num_hard_documents=2,
                                num_hard_queries=1, seed=0) for _ in range(2)]
    with strategy.scope():
        keras.utils.set_random_seed(0)
        model = DualEncoder(encoder(directory, seed=4), architecture="sde", projection_dim=16)
        features = {k: tf.ones([1, 4], tf.int32) for k in (
            "query_token_ids", "query_padding_mask", "document_token_ids",
            "document_padding_mask")}
        # built in replica context, as fit builds it (a TF-Hub layer first called in
        # cross-replica context cannot be called in replica context afterwards)
        strategy.run(lambda: model(features))
        miners[0].refresh(model)
    # the reference: the same model encodes every text on one device
    from samtone_tf.evaluation import retrieval
    from samtone_tf.evaluation import dual_encoder_fns

    query_fn, document_fn = dual_encoder_fns(model, *toks)
    d = retrieval.encode_corpus(document_fn, miners[1].doc_texts, 64)
    q = retrieval.encode_corpus(query_fn, miners[1].query_texts, 64)
    miners[1].mine_from_embeddings(q, d)
    return {"replicas": strategy.num_replicas_in_sync,
            "document_table": miners[0].document_table.tolist(),
            "query_table": miners[0].query_table.tolist(),
            "reference_document_table": miners[1].document_table.tolist(),
            "reference_query_table": miners[1].query_table.tolist()}


def main(argv):
    import tensorflow as tf

    if argv[0] == "multiworker":  # TF_CONFIG names the cluster; one CPU replica per process
        strategy = tf.distribute.MultiWorkerMirroredStrategy()
        result = refresh_equals_one_device(argv[1], strategy)
        with open(argv[2], "w") as f:
            json.dump(result, f)
        return
    replicas, directory, output = int(argv[0]), argv[1], argv[2]
    cpus = tf.config.list_physical_devices("CPU")
    tf.config.set_logical_device_configuration(
        cpus[0], [tf.config.LogicalDeviceConfiguration()] * replicas)
    strategy = tf.distribute.MirroredStrategy([f"/cpu:{i}" for i in range(replicas)])
    result = fit_with_mining(directory, strategy)
    from samtone_tf.training.mining import HardNegativeMiner

    corpus, qrels, pairs = scifact_slice()
    miner = HardNegativeMiner(pairs, corpus, tokenizers(directory, corpus, pairs), qrels=qrels,
                              num_hard_documents=2)
    result["switch_before"], result["switch_after"] = distributed_switch(miner, strategy)
    with open(output, "w") as f:
        json.dump(result, f)


if __name__ == "__main__":
    main(sys.argv[1:])
