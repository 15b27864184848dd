"""Runs the gradient-cached and the uncached step of a real DualEncoder under one
tf.distribute configuration and writes what they computed as JSON.

Started as a subprocess by tests/test_gradcache_distribute.py (one strategy per process).
Usage:

    python -m tests.gradcache_worker MODE REPLICAS ENCODER_PATH [--fit] OUTPUT.json

It writes, for the uncached and the cached step, the per-example losses and the summed
gradients of one step, and with ``--fit`` the weights before and after one cached SGD step
of ``model.fit`` on the same batch.

MODE is ``single``, ``mirrored`` (REPLICAS logical CPU devices) or ``multiworker`` (TF_CONFIG
names the cluster, one CPU replica per process). The model is an ADE over two copies of the
tiny TF-Hub-layout encoder at ENCODER_PATH, with no projection, so every configuration
starts from the same weights. Every configuration sees the same global batch of 8 rows with
linked ids and one hard-negative document each; replica r gets rows [r*b, (r+1)*b) and
embeds them in mini-batches of 3 (a remainder mini-batch on every replica count).
"""

import json
import sys

import numpy as np
import tensorflow as tf

GLOBAL_BATCH, MINI, LQ, LD = 8, 3, 6, 10
LEARNING_RATE = 0.5
LOSS_OPTIONS = dict(temperature=0.1, same_tower="both", bidirectional=True,
                    mask_duplicates=True)


def global_batch(seed=0):
    from tests import _tiny

    q, qm = _tiny.random_tokens(GLOBAL_BATCH, LQ, seed=seed)
    d, dm = _tiny.random_tokens(GLOBAL_BATCH, LD, seed=seed + 1)
    n, nm = _tiny.random_tokens(GLOBAL_BATCH, LD, seed=seed + 2)
    x = {"query_token_ids": q, "query_padding_mask": qm, "document_token_ids": d,
         "document_padding_mask": dm,
         "hard_negative_document_token_ids": n[:, None], "hard_negative_document_padding_mask":
         nm[:, None]}
    # rows 0 and 5 share a query (across replicas), rows 1 and 6 a document; row 2's hard
    # negative is document 12, its own positive
    y = np.stack([[0, 1, 2, 3, 4, 0, 6, 7], [10, 11, 12, 13, 14, 15, 11, 17],
                  [20, 21, 12, 23, 24, 25, 26, 27]], axis=1).astype(np.float32)
    return x, y


def build(strategy, encoder_path, mini_batch_size):
    import samtone_tf
    from samtone_tf._keras import keras

    x, _ = global_batch()
    with strategy.scope():
        model = samtone_tf.DualEncoder(encoder_path, architecture="ade",
                                       mini_batch_size=mini_batch_size)
        model.compile(optimizer=keras.optimizers.SGD(LEARNING_RATE),
                      loss=samtone_tf.SamToNeLoss(**LOSS_OPTIONS))
    # build in replica context (a TF-Hub SavedModel cannot first be called cross-replica)
    strategy.run(tf.function(lambda f: model(f)), args=({k: v[:1] for k, v in x.items()},))
    return model


def step_results(strategy, model, mini_batch_size):
    """Per-example losses of the global batch and the summed gradients of the step."""
    import samtone_tf

    x, y = global_batch()
    replicas = strategy.num_replicas_in_sync
    b = GLOBAL_BATCH // replicas

    def value_fn(ctx):
        r = ctx.replica_id_in_sync_group
        return ({k: tf.constant(v[r * b:(r + 1) * b]) for k, v in x.items()},
                tf.constant(y[r * b:(r + 1) * b]))

    inputs = strategy.experimental_distribute_values_from_function(value_fn)
    per_example = samtone_tf.SamToNeLoss(reduction="none", **LOSS_OPTIONS)
    model.mini_batch_size = mini_batch_size

    def step(features, labels):
        _, y_pred, grads = model.compute_step_gradients(features, labels)
        grads = [tf.zeros_like(v) if g is None else tf.convert_to_tensor(g)
                 for g, v in zip(grads, model.trainable_variables)]
        ctx = tf.distribute.get_replica_context()
        return per_example(labels, y_pred), ctx.all_reduce(tf.distribute.ReduceOp.SUM, grads)

    losses, grads = strategy.run(tf.function(step), args=inputs)
    if replicas > 1:
        losses = strategy.gather(losses, axis=0)
    first = strategy.experimental_local_results(grads)[0]
    return {"losses": np.asarray(losses).tolist(),
            "grads": [np.asarray(g).ravel().tolist() for g in first]}


def fit_results(strategy, model, mini_batch_size):
    """Weights before and after one SGD fit step on the global batch."""
    x, y = global_batch()
    dataset = tf.data.Dataset.from_tensor_slices((x, y)).batch(GLOBAL_BATCH,
                                                               drop_remainder=True)
    model.mini_batch_size = mini_batch_size
    before = [np.asarray(v).ravel().tolist() for v in model.trainable_variables]
    history = model.fit(dataset, epochs=1, verbose=0, shuffle=False)
    return {"before": before,
            "weights": [np.asarray(v).ravel().tolist() for v in model.trainable_variables],
            "loss": float(history.history["loss"][-1]), "learning_rate": LEARNING_RATE}


def main(argv):
    from tests.dist_worker import make_strategy

    mode, replicas, encoder_path = argv[0], int(argv[1]), argv[2]
    output = argv[-1]
    strategy = make_strategy(mode, replicas)
    result = {"replicas": strategy.num_replicas_in_sync}
    model = build(strategy, encoder_path, None)
    for name, mini in (("uncached", None), ("cached", MINI)):
        result[name] = step_results(strategy, model, mini)
    if "--fit" in argv:  # one cached SGD step of fit, from the weights the steps saw
        result["fit_cached"] = fit_results(strategy, model, MINI)
    with open(output, "w") as f:
        json.dump(result, f)


if __name__ == "__main__":
    main(sys.argv[1:])
