"""The sentence-transformers side of ``benchmarks/speed.py`` (PyTorch, CPU).

Not part of samtone_tf and never imported by it: ``speed.py`` runs this file with the
interpreter of a throwaway virtualenv that has PyTorch and sentence-transformers
(see ``speed.py``'s docstring for how to create it)::

    /tmp/st-venv/bin/python benchmarks/speed_st.py --model-folder <all-MiniLM-L6-v2 folder> \
        --input texts.json --output st.json --query-length 32 --document-length 64 \
        --warmup-steps 3 --encode-batch-size 128 --encode-repeats 3

``--input`` is a JSON object ``{"train_batches": [[[query, document], ...], ...],
"doc_texts": [...]}`` written by ``speed.py``: the very pairs, in the very batches and
order, that the TensorFlow side trained on (the first ``--warmup-steps`` batches are the
warm-up), and the documents it encoded.

Measured:

* training: a plain PyTorch loop over the SentenceTransformer model with
  ``MultipleNegativesRankingLoss(model, scale=20)`` (cosine similarity, in-batch negatives,
  i.e. temperature 0.05, samtone_tf's ``same_tower="none"``), ``torch.optim.AdamW(lr=2e-5)``,
  model in train mode. Queries are tokenised at ``--query-length`` and documents at
  ``--document-length`` with ``padding="max_length"``, truncation on, before the timed
  region (the TF side also pads to these fixed lengths), so both sides do equal work. One
  step = zero_grad + loss (two forward passes) + backward + optimizer step + ``loss.item()``.
* encoding: ``model.encode(doc_texts, batch_size=..., convert_to_numpy=True)`` at
  ``max_length = --document-length``, twice: as sentence-transformers does it by default
  (texts sorted by length, each batch padded to its longest text: less work than fixed
  padding when texts are short), and with ``padding="max_length"`` (equal work to the TF
  side, which pads every document to the full length).

Prints the result JSON and writes it to ``--output``.
"""

import argparse
import json
import os
import platform
import statistics
import sys
import time


def _median(values):
    return statistics.median(values) if values else None


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-folder", required=True)
    parser.add_argument("--input", required=True)
    parser.add_argument("--output", required=True)
    parser.add_argument("--query-length", type=int, required=True)
    parser.add_argument("--document-length", type=int, required=True)
    parser.add_argument("--warmup-steps", type=int, required=True)
    parser.add_argument("--encode-batch-size", type=int, default=128)
    parser.add_argument("--encode-repeats", type=int, default=3)
    parser.add_argument("--learning-rate", type=float, default=2e-5)
    parser.add_argument("--scale", type=float, default=20.0)
    parser.add_argument("--threads", type=int, default=None,
                        help="torch.set_num_threads; default os.cpu_count()")
    parser.add_argument("--skip-training", action="store_true")
    parser.add_argument("--skip-encoding", action="store_true")
    args = parser.parse_args(argv)

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    import numpy as np
    import sentence_transformers
    import torch
    import transformers
    from sentence_transformers import SentenceTransformer
    try:  # sentence-transformers >= 6
        from sentence_transformers.sentence_transformer.losses import MultipleNegativesRankingLoss
    except ImportError:
        from sentence_transformers.losses import MultipleNegativesRankingLoss

    threads = args.threads or os.cpu_count() or 1
    torch.set_num_threads(threads)
    torch.manual_seed(0)

    with open(args.input, encoding="utf-8") as f:
        inputs = json.load(f)
    batches = inputs["train_batches"]
    doc_texts = inputs["doc_texts"]
    lq, ld = args.query_length, args.document_length

    model = SentenceTransformer(args.model_folder, device="cpu")
    tokenizer = model.tokenizer
    auto_model = getattr(model[0], "auto_model", None)
    config = getattr(auto_model, "config", None)
    result = {
        "versions": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "sentence_transformers": sentence_transformers.__version__,
            "transformers": transformers.__version__,
            "numpy": np.__version__,
        },
        "torch_num_threads": torch.get_num_threads(),
        "torch_num_threads_set_to": (f"--threads {threads}" if args.threads
                                     else f"os.cpu_count() = {threads}"),
        "torch_num_interop_threads": torch.get_num_interop_threads(),
        "torch_parallel_info": torch.__config__.parallel_info().strip().splitlines()[:6],
        "device": "cpu",
        "attention_implementation": getattr(config, "_attn_implementation", None),
        "model_folder": args.model_folder,
        "model_modules": [type(m).__name__ for m in model],
        "query_length": lq,
        "document_length": ld,
    }

    if not args.skip_training:
        model.max_seq_length = max(lq, ld)
        loss_fn = MultipleNegativesRankingLoss(model, scale=args.scale)
        optimizer = torch.optim.AdamW(model.parameters(), lr=args.learning_rate)

        def tokenize(texts, length):
            return dict(tokenizer(texts, padding="max_length", truncation=True,
                                  max_length=length, return_tensors="pt"))

        # Tokenised before the timed region (the TF side feeds pre-tokenised tensors too).
        features = [(tokenize([p[0] for p in batch], lq), tokenize([p[1] for p in batch], ld))
                    for batch in batches]
        widths = sorted({(q["input_ids"].shape[1], d["input_ids"].shape[1]) for q, d in features})
        model.train()
        times, losses = [], []
        for q, d in features:
            started = time.perf_counter()
            optimizer.zero_grad(set_to_none=True)
            # Fresh dicts: the modules add their outputs to the features dict they are given.
            loss = loss_fn([dict(q), dict(d)], None)
            loss.backward()
            optimizer.step()
            value = loss.item()
            times.append(time.perf_counter() - started)
            losses.append(value)
        warmup = args.warmup_steps
        timed = times[warmup:]
        batch_size = len(batches[0])
        med = _median(timed)
        result["training"] = {
            "loss": "MultipleNegativesRankingLoss(model, scale=%g) (cosine, in-batch negatives, "
                    "query_to_doc)" % args.scale,
            "optimizer": "torch.optim.AdamW(lr=%g)" % args.learning_rate,
            "padding": "max_length (fixed: queries %d, documents %d tokens), truncation=True"
                       % (lq, ld),
            "token_widths_seen": [list(w) for w in widths],
            "batch_size": batch_size,
            "warmup_steps": warmup,
            "timed_steps": len(timed),
            "warmup_step_seconds": times[:warmup],
            "step_seconds": timed,
            "median_step_seconds": med,
            "pairs_per_second": batch_size / med if med else None,
            "losses": losses,
        }

    if not args.skip_encoding:
        model.eval()
        model.max_seq_length = ld
        bs = args.encode_batch_size
        modes = {
            "default": {"text": {"max_length": ld, "truncation": True}},
            "fixed": {"text": {"max_length": ld, "truncation": True, "padding": "max_length"}},
        }
        encoding = {"batch_size": bs, "num_docs": len(doc_texts), "repeats": args.encode_repeats}
        for mode, processing_kwargs in modes.items():
            # Which widths the batches get (tokenisation only, same sorted order as encode).
            order = np.argsort([-model._input_length(t) for t in doc_texts]) \
                if hasattr(model, "_input_length") else np.arange(len(doc_texts))
            ordered = [doc_texts[i] for i in order]
            batch_widths = []
            for start in range(0, len(ordered), bs):
                chunk = ordered[start:start + bs]
                feats = model.preprocess(chunk, processing_kwargs=processing_kwargs)
                batch_widths.append([len(chunk), int(feats["input_ids"].shape[1])])
            model.encode(doc_texts[:bs], batch_size=bs, convert_to_numpy=True,
                         show_progress_bar=False, processing_kwargs=processing_kwargs)  # warm-up
            seconds = []
            for _ in range(args.encode_repeats):
                started = time.perf_counter()
                out = model.encode(doc_texts, batch_size=bs, convert_to_numpy=True,
                                   show_progress_bar=False, processing_kwargs=processing_kwargs)
                seconds.append(time.perf_counter() - started)
            med = _median(seconds)
            encoding[mode] = {
                "call": "model.encode(doc_texts, batch_size=%d, convert_to_numpy=True, "
                        "processing_kwargs=%r)" % (bs, processing_kwargs),
                "padding": ("each batch padded to its longest text (sentence-transformers' "
                            "default; texts sorted by length)" if mode == "default"
                            else "max_length: every document padded to %d tokens" % ld),
                "batch_widths": batch_widths,
                "embedding_shape": list(out.shape),
                "pass_seconds": seconds,
                "median_pass_seconds": med,
                "docs_per_second": len(doc_texts) / med if med else None,
            }
        real = tokenizer(doc_texts, truncation=True, max_length=ld)["input_ids"]
        encoding["mean_real_tokens_per_doc"] = float(np.mean([len(ids) for ids in real]))
        result["encoding"] = encoding

    text = json.dumps(result, indent=2)
    with open(args.output, "w", encoding="utf-8") as f:
        f.write(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
