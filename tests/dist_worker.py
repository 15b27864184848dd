"""Runs the loss under one tf.distribute configuration and writes what it computed as JSON.

Started as a subprocess by tests/test_distribute.py (one strategy per process, see
DESIGN.md). Usage:

    python -m tests.dist_worker MODE REPLICAS OUTPUT.json [--keras-fit]

MODE is ``single`` (no strategy), ``mirrored`` (MirroredStrategy over REPLICAS logical CPU
devices) or ``multiworker`` (MultiWorkerMirroredStrategy; TF_CONFIG names the cluster, one
CPU replica per process).

Every configuration sees the same global batch of ``GLOBAL_BATCH`` distinct rows; replica r
gets rows [r*b, (r+1)*b). The tiny "towers" are linear maps, so gradients reach real
variables through the gathered embeddings.
"""

import json
import sys

import numpy as np
import tensorflow as tf

GLOBAL_BATCH, IN_DIM, DIM, H = 8, 6, 4, 2
LOSS_OPTIONS = dict(temperature=0.2, same_tower="both", bidirectional=True, dual_weight=0.3)


def global_batch():
    rng = np.random.default_rng(1234)
    return dict(
        q=rng.normal(size=(GLOBAL_BATCH, IN_DIM)).astype(np.float32),
        d=rng.normal(size=(GLOBAL_BATCH, IN_DIM)).astype(np.float32),
        hd=rng.normal(size=(GLOBAL_BATCH, H, IN_DIM)).astype(np.float32),
        hq=rng.normal(size=(GLOBAL_BATCH, H, IN_DIM)).astype(np.float32),
        # linked examples that cross replica boundaries for 2 and 4 replicas: rows 0 and 5
        # share a query, rows 1 and 4 and rows 2 and 7 share a document
        qid=np.array([0, 1, 2, 3, 4, 0, 6, 7], np.int64),
        did=np.array([10, 11, 12, 13, 11, 15, 16, 12], np.int64),
        # mined negatives' ids, some of them positives of anchors on other replicas:
        # document 15 (row 0) is a positive of q0 and q5, 12 (row 1) of q2 and q7, ...
        hdid=np.array([[15, 50], [51, 12], [52, 53], [11, 54], [55, 56], [10, 57], [13, 58],
                       [59, 16]], np.int64),
        # ... query 4 (row 0) is paired with document 11 (rows 1, 4), query 0 (row 6) with
        # documents 10 and 15 (rows 0, 5), query 2 (row 7) with document 12 (rows 2, 7)
        hqid=np.array([[4, 60], [61, 7], [62, 63], [64, 65], [1, 66], [67, 68], [0, 69],
                       [70, 2]], np.int64),
    )


def initial_weights():
    rng = np.random.default_rng(99)
    return (rng.normal(size=(IN_DIM, DIM)).astype(np.float32),
            rng.normal(size=(IN_DIM, DIM)).astype(np.float32))


def make_strategy(mode, replicas):
    if mode == "multiworker":
        return tf.distribute.MultiWorkerMirroredStrategy()
    cpus = tf.config.list_physical_devices("CPU")
    tf.config.set_logical_device_configuration(
        cpus[0], [tf.config.LogicalDeviceConfiguration()] * max(replicas, 1))
    if mode == "single":
        return tf.distribute.get_strategy()
    return tf.distribute.MirroredStrategy([f"/cpu:{i}" for i in range(replicas)])


def run_custom_step(strategy):
    """Per-example losses of the global batch and gradients of its mean loss."""
    from samtone_tf import contrastive_loss

    data = global_batch()
    wq0, wd0 = initial_weights()
    with strategy.scope():
        wq, wd = tf.Variable(wq0), tf.Variable(wd0)
    replicas = strategy.num_replicas_in_sync
    b = GLOBAL_BATCH // replicas

    def value_fn(ctx):
        r = ctx.replica_id_in_sync_group
        return {k: tf.constant(v[r * b:(r + 1) * b]) for k, v in data.items()}

    inputs = strategy.experimental_distribute_values_from_function(value_fn)

    def step(x):
        with tf.GradientTape() as tape:
            losses = contrastive_loss(
                x["q"] @ wq, x["d"] @ wd, hard_negative_queries=tf.einsum("bhi,id->bhd", x["hq"], wq),
                hard_negative_documents=tf.einsum("bhi,id->bhd", x["hd"], wd),
                query_ids=x["qid"], document_ids=x["did"], hard_negative_document_ids=x["hdid"],
                hard_negative_query_ids=x["hqid"], **LOSS_OPTIONS)
            # each replica's share of the global mean, as Keras scales it
            loss = tf.reduce_sum(losses) / GLOBAL_BATCH
        grads = tape.gradient(loss, [wq, wd])
        ctx = tf.distribute.get_replica_context()
        grads = ctx.all_reduce(tf.distribute.ReduceOp.SUM, grads)
        return losses, grads

    losses, grads = strategy.run(tf.function(step), args=(inputs,))
    if replicas > 1:
        losses = strategy.gather(losses, axis=0)  # replica order = global row order
    first = strategy.experimental_local_results(grads)[0]
    return {"losses": np.asarray(losses).tolist(),
            "grad_wq": np.asarray(first[0]).tolist(), "grad_wd": np.asarray(first[1]).tolist()}


def run_keras_fit(strategy):
    """Weights after two SGD steps of model.fit with SamToNeLoss on the same global batches."""
    from samtone_tf import SamToNeLoss
    from samtone_tf._keras import keras

    data = global_batch()
    wq0, wd0 = initial_weights()
    rng = np.random.default_rng(5)
    # two global batches: the second is a shuffled, perturbed copy of the first
    perm = rng.permutation(GLOBAL_BATCH)
    feats = {k: np.concatenate([data[k], data[k][perm] * 0.5]) for k in ("q", "d", "hd")}
    # one id per output slot: query, document, the hard-negative documents
    ids = np.concatenate([data["qid"][:, None], data["did"][:, None], data["hdid"]], axis=1)
    labels = np.concatenate([ids, ids[perm] + 100]).astype(np.float32)

    class Towers(keras.Model):
        def __init__(self):
            super().__init__()
            self.query_tower = keras.layers.Dense(DIM, use_bias=False)
            self.document_tower = keras.layers.Dense(DIM, use_bias=False)

        def call(self, x):
            q = self.query_tower(x["q"])[:, None]
            d = self.document_tower(x["d"])[:, None]
            hd = self.document_tower(x["hd"])
            return tf.concat([q, d, hd], axis=1)

    with strategy.scope():
        model = Towers()
        model({k: v[:1] for k, v in feats.items()})
        model.query_tower.kernel.assign(wq0)
        model.document_tower.kernel.assign(wd0)
        model.compile(optimizer=keras.optimizers.SGD(learning_rate=0.5),
                      loss=SamToNeLoss(temperature=0.2, same_tower="both", bidirectional=True,
                                       mask_duplicates=True))
    ds = tf.data.Dataset.from_tensor_slices((feats, labels)).batch(GLOBAL_BATCH,
                                                                     drop_remainder=True)
    history = model.fit(ds, epochs=1, verbose=0, shuffle=False)
    return {"wq": np.asarray(model.query_tower.kernel).tolist(),
            "wd": np.asarray(model.document_tower.kernel).tolist(),
            "loss": float(history.history["loss"][-1])}


def main(argv):
    mode, replicas, output = argv[0], int(argv[1]), argv[2]
    strategy = make_strategy(mode, replicas)
    result = {"replicas": strategy.num_replicas_in_sync}
    if "--keras-fit" in argv:
        result.update(run_keras_fit(strategy))
    else:
        result.update(run_custom_step(strategy))
    with open(output, "w") as f:
        json.dump(result, f)


if __name__ == "__main__":
    main(sys.argv[1:])
