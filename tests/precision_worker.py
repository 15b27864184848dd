"""Trains a tiny DualEncoder computing in bfloat16 for two SGD steps under one strategy and
writes the loss, the embeddings before training and the weights after as JSON.

Started as a subprocess by tests/test_precision.py (logical CPU devices must be configured
before TensorFlow initialises). Usage::

    python -m tests.precision_worker MODE REPLICAS ENCODER_DIR OUTPUT.json

MODE is ``single`` or ``mirrored`` (MirroredStrategy over REPLICAS logical CPUs). Under
Keras 2 the tower is the tiny TF-Hub-layout SavedModel exported in bfloat16 under
ENCODER_DIR; under Keras 3 the tiny keras-hub backbone built under the bfloat16 policy.
"""

import json
import sys

import numpy as np
import tensorflow as tf

GLOBAL_BATCH, LENGTH, STEPS = 8, 12, 2


def main(argv):
    mode, replicas, encoder_dir, output = argv[0], int(argv[1]), argv[2], argv[3]
    from tests.dist_worker import make_strategy

    strategy = make_strategy(mode, replicas)

    import samtone_tf
    from samtone_tf._keras import IS_KERAS3, keras
    from samtone_tf.precision import precision_scope
    from tests import _tiny

    ids, mask = _tiny.random_tokens(GLOBAL_BATCH * STEPS, LENGTH, seed=11)
    features = {"query_token_ids": ids, "query_padding_mask": mask,
                "document_token_ids": ids[::-1].copy(), "document_padding_mask": mask[::-1].copy()}
    labels = np.stack([np.arange(GLOBAL_BATCH * STEPS)] * 2, 1).astype(np.float32)
    with strategy.scope(), precision_scope("bfloat16"):
        encoder = (_tiny.tiny_backbone(seed=2) if IS_KERAS3
                   else _tiny.tiny_tfhub_encoder_path(encoder_dir, seed=2, precision="bfloat16"))
        keras.utils.set_random_seed(0)
        model = samtone_tf.DualEncoder(encoder, architecture="sde", projection_dim=8)
        model.compile(optimizer=keras.optimizers.SGD(learning_rate=0.5),
                      loss=samtone_tf.SamToNeLoss(temperature=0.1, same_tower="both",
                                                  bidirectional=True))
    first = {k: v[:GLOBAL_BATCH] for k, v in features.items()}
    strategy.run(tf.function(lambda x: model(x)), args=(first,))  # build in replica context
    # the same projection everywhere (Keras 2 draws initialisers per strategy differently)
    kernel = model.query_projection.kernel
    kernel.assign(np.random.default_rng(7).normal(size=kernel.shape).astype(np.float32) * 0.2)
    before = np.asarray(model(first))
    initial = [np.asarray(w, dtype=np.float32).ravel().tolist() for w in model.trainable_weights]
    ds = tf.data.Dataset.from_tensor_slices((features, labels)).batch(GLOBAL_BATCH,
                                                                     drop_remainder=True)
    history = model.fit(ds, epochs=1, verbose=0, shuffle=False)
    result = {
        "replicas": strategy.num_replicas_in_sync,
        "precision": model.compute_precision,
        "output_dtype": str(before.dtype),
        "before": before.tolist(),
        "loss": [float(x) for x in history.history["loss"]],
        "initial_weights": initial,
        "weights": [np.asarray(w, dtype=np.float32).ravel().tolist()
                    for w in model.trainable_weights],
        "weight_dtypes": sorted({str(np.asarray(w).dtype) for w in model.trainable_weights}),
    }
    with open(output, "w") as f:
        json.dump(result, f)


if __name__ == "__main__":
    main(sys.argv[1:])
