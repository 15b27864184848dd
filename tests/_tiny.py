"""Tiny random encoders for fast tests, in either Keras generation.

``tiny_backbone()`` is a random keras-hub ``BertBackbone`` (a Keras 3 model; keras-hub
imports in both generations' processes, but its backbone only trains inside Keras 3 models).
``tiny_tfhub_encoder_path(dir)`` exports one in TF-Hub BERT layout, which both generations
load and fine-tune through ``samtone_tf.towers.encoders.TFHubEncoder``.
"""

import os

import numpy as np

VOCAB_SIZE = 1000
HIDDEN_DIM = 32
MAX_LEN = 64


def tiny_backbone(seed=0, dropout=0.0):
    import keras_hub

    import keras as keras3  # the backbone is a Keras 3 model whatever tf.keras is

    keras3.utils.set_random_seed(seed)
    return keras_hub.models.BertBackbone(
        vocabulary_size=VOCAB_SIZE,
        num_layers=2,
        num_heads=2,
        hidden_dim=HIDDEN_DIM,
        intermediate_dim=64,
        dropout=dropout,
        max_sequence_length=MAX_LEN,
    )


def tiny_tfhub_encoder_path(directory, seed=0, precision="float32", dropout=0.0):
    """Exports a tiny backbone in TF-Hub layout under ``directory`` (once) and returns it;
    the SavedModel computes in ``precision`` with dropout rate ``dropout``."""
    from samtone_tf.towers.encoders import export_tfhub_layout

    suffix = "" if precision == "float32" else "_" + precision
    suffix += f"_dropout{dropout:g}" if dropout else ""
    path = os.path.join(os.fspath(directory), f"tiny_bert_tfhub_{seed}{suffix}")
    if not os.path.exists(os.path.join(path, "saved_model.pb")):
        export_tfhub_layout(tiny_backbone(seed, dropout=dropout), path, precision=precision)
    return path


def random_tokens(batch, length, seed=0, min_len=2):
    """int32 token ids [batch, length] and a right-padding mask with random lengths."""
    rng = np.random.default_rng(seed)
    ids = rng.integers(1, VOCAB_SIZE, size=(batch, length)).astype("int32")
    lengths = rng.integers(min_len, length + 1, size=(batch,))
    mask = (np.arange(length)[None, :] < lengths[:, None]).astype("int32")
    return ids * mask, mask
