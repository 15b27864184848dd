"""The sentence-transformers side of ``benchmarks/speed.py`` (PyTorch; CPU, or CUDA if present).

Not part of samtone_tf and never imported by it: ``speed.py`` runs this file with the
interpreter of a throwaway virtualenv that has PyTorch and sentence-transformers
(see ``speed.py``'s docstring for how to create it)::

    /tmp/st-venv/bin/python benchmarks/speed_st.py --model-folder <all-MiniLM-L6-v2 folder> \
        --input texts.json --output st.json --query-length 32 --document-length 64 \
        --recipe-length 128 --warmup-steps 3 --rounds 10 --steps-per-round 4 \
        --encode-batch-size 128 --encode-repeats 3

``--input`` is a JSON object ``{"train_batches": [[[query, document], ...], ...],
"doc_texts": [...]}`` written by ``speed.py``: the very pairs, in the very batches and
order, that the TensorFlow side trained on (the first ``--warmup-steps`` batches are the
warm-up, then ``--rounds`` x ``--steps-per-round`` timed batches), and the documents it
encoded. ``"recipe_batches"`` (optional) are the batches of the user's recipe; by default
the same ``train_batches``.

Every measurement runs in each of ``--modes`` (default both):

* ``float32``: the model as users run it (float32 weights and compute);
* ``bfloat16-autocast``: the same under ``torch.autocast(device_type, dtype=torch.bfloat16)``
  as PyTorch recommends for mixed precision: in training the forward pass and the loss run
  inside autocast, ``backward()`` and the optimizer step outside it; in encoding
  ``model.encode`` runs inside it. Weights stay float32.

Each mode trains its own copy of the model (all copies start from the same weights, each
with its own optimizer). Warm-up: each mode runs the warm-up batches. Then in round ``r``
every mode runs ``--steps-per-round`` steps, the mode order rotated by ``r``, so machine drift
hits both modes alike (as ``speed.py`` does for the TensorFlow side).

Measured:

* training, ``fixed`` setting: ``MultipleNegativesRankingLoss(model, scale=20)`` (cosine
  similarity, in-batch negatives, i.e. temperature 0.05, samtone_tf's ``same_tower="none"``),
  ``torch.optim.AdamW(lr=2e-5)``, model in train mode, a plain PyTorch loop. Queries are
  tokenised at ``--query-length`` and documents at ``--document-length`` with
  ``padding="max_length"``, truncation on, before the timed region (the TF side pads to
  these fixed lengths too), so both sides do equal work. One step = zero_grad + loss (two
  forward passes) + backward + optimizer step + ``loss.item()`` (synchronises on CUDA).
* training, ``recipe`` setting: the same loop as sentence-transformers pads by default:
  ``model.max_seq_length = --recipe-length`` for both sides and the features from
  ``model.preprocess(texts)`` (``padding=True``: each batch padded to its longest text,
  truncation at ``--recipe-length``), tokenised before the timed region. Warm-up on the
  input's ``"recipe_warmup_positions"`` (the TF side's: the warm-up batches plus the first
  batch of each new padded shape) when given.
* encoding: ``model.encode(doc_texts, batch_size=..., convert_to_numpy=True)`` at
  ``max_length = --document-length``, with padding ``default`` (sentence-transformers'
  default: texts sorted by length, each batch padded to its longest text) and ``fixed``
  (``padding="max_length"``: every document padded to the document length, equal work to
  the TF side's fixed-length encode). One warm-up call per configuration, then
  ``--encode-repeats`` passes, configurations interleaved per repeat.

Prints the result JSON and writes it to ``--output``.
"""

import argparse
import contextlib
import copy
import json
import os
import platform
import statistics
import sys
import time

MODES = ("float32", "bfloat16-autocast")


def _median(values):
    return statistics.median(values) if values else None


def _rotated(names, r):
    return names[r % len(names):] + names[:r % len(names)]


def _parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-folder", required=True)
    parser.add_argument("--input", required=True)
    parser.add_argument("--output", required=True)
    parser.add_argument("--query-length", type=int, required=True)
    parser.add_argument("--document-length", type=int, required=True)
    parser.add_argument("--recipe-length", type=int, default=128)
    parser.add_argument("--warmup-steps", type=int, required=True)
    parser.add_argument("--rounds", type=int, default=None,
                        help="default: every batch after the warm-up in one round")
    parser.add_argument("--steps-per-round", type=int, default=1)
    parser.add_argument("--encode-batch-size", type=int, default=128)
    parser.add_argument("--encode-repeats", type=int, default=3)
    parser.add_argument("--learning-rate", type=float, default=2e-5)
    parser.add_argument("--scale", type=float, default=20.0)
    parser.add_argument("--threads", type=int, default=None,
                        help="torch.set_num_threads; default os.cpu_count()")
    parser.add_argument("--modes", default=",".join(MODES),
                        help="comma-separated subset of " + ", ".join(MODES))
    parser.add_argument("--device", default="auto", help="auto (cuda if available), cpu, cuda")
    parser.add_argument("--skip-training", action="store_true")
    parser.add_argument("--skip-recipe", action="store_true")
    parser.add_argument("--skip-encoding", action="store_true")
    args = parser.parse_args(argv)
    args.mode_names = [m.strip() for m in args.modes.split(",") if m.strip()]
    unknown = [m for m in args.mode_names if m not in MODES]
    if unknown or not args.mode_names:
        parser.error(f"unknown --modes {unknown}; choose from {list(MODES)}")
    return args


def main(argv=None):
    args = _parse_args(argv)
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
    device = args.device
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    device_type = "cuda" if device.startswith("cuda") else "cpu"

    def autocast(mode):
        if mode == "bfloat16-autocast":
            return torch.autocast(device_type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def synchronize():
        if device_type == "cuda":
            torch.cuda.synchronize()

    with open(args.input, encoding="utf-8") as f:
        inputs = json.load(f)
    batches = inputs["train_batches"]
    recipe_batches = inputs.get("recipe_batches") or batches
    doc_texts = inputs["doc_texts"]
    lq, ld, lr = args.query_length, args.document_length, args.recipe_length
    modes = args.mode_names

    base_model = SentenceTransformer(args.model_folder, device=device)
    tokenizer = base_model.tokenizer
    auto_model = getattr(base_model[0], "auto_model", None)
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
        "device": device,
        "device_name": (torch.cuda.get_device_name(torch.device(device)) if device_type == "cuda"
                        else platform.processor() or "cpu"),
        "modes": modes,
        "mode_notes": {
            "float32": "float32 weights and compute (as users run it)",
            "bfloat16-autocast": f"torch.autocast('{device_type}', dtype=torch.bfloat16): "
                                 "training forward + loss inside, backward and optimizer step "
                                 "outside; encoding: model.encode inside",
        },
        "attention_implementation": getattr(config, "_attn_implementation", None),
        "model_folder": args.model_folder,
        "model_modules": [type(m).__name__ for m in base_model],
        "query_length": lq,
        "document_length": ld,
        "recipe_length": lr,
    }

    warm = args.warmup_steps
    if not args.skip_training:
        # One model copy and optimizer per mode, all from the same weights.
        models = {modes[0]: base_model}
        for mode in modes[1:]:
            models[mode] = copy.deepcopy(base_model)
        losses_fns = {m: MultipleNegativesRankingLoss(models[m], scale=args.scale) for m in modes}
        optimizers = {m: torch.optim.AdamW(models[m].parameters(), lr=args.learning_rate)
                      for m in modes}

        def fixed_features(batch):
            def tok(texts, length):
                out = tokenizer(texts, padding="max_length", truncation=True, max_length=length,
                                return_tensors="pt")
                return {k: v.to(device) for k, v in out.items()}
            return (tok([p[0] for p in batch], lq), tok([p[1] for p in batch], ld))

        def recipe_features(batch):
            # sentence-transformers' own preprocessing: padding=True (longest in the batch),
            # truncation at model.max_seq_length.
            def tok(texts):
                out = base_model.preprocess(texts)
                return {k: (v.to(device) if hasattr(v, "to") else v) for k, v in out.items()}
            return (tok([p[0] for p in batch]), tok([p[1] for p in batch]))

        settings = [("fixed", batches, fixed_features, list(range(warm)),
                     f"max_length (fixed: queries {lq}, documents {ld} tokens), truncation=True")]
        if not args.skip_recipe:
            # The TF side warms up on one extra batch per new padded shape; so does this side.
            recipe_warm = inputs.get("recipe_warmup_positions") or list(range(warm))
            settings.append(("recipe", recipe_batches, recipe_features, recipe_warm,
                             f"sentence-transformers default: model.preprocess (padding=True: "
                             f"each batch padded to its longest text), max_seq_length {lr}"))
        result["training"] = {}
        for setting, setting_batches, featurize, warm_positions, padding in settings:
            for m in modes:
                models[m].max_seq_length = lr if setting == "recipe" else max(lq, ld)
            # Tokenised before the timed region (the TF side feeds pre-tokenised tensors too).
            features = [featurize(b) for b in setting_batches]
            widths = [[int(q["input_ids"].shape[1]), int(d["input_ids"].shape[1])]
                      for q, d in features]
            n_timed = len(features) - warm
            rounds = args.rounds or 1
            spr = args.steps_per_round if args.rounds else n_timed
            if rounds * spr > n_timed:
                raise SystemExit(f"{n_timed} timed batches < rounds x steps per round")

            def step(mode, position):
                q, d = features[position]
                optimizer = optimizers[mode]
                started = time.perf_counter()
                optimizer.zero_grad(set_to_none=True)
                with autocast(mode):
                    # Fresh dicts: the modules add their outputs to the features they are given.
                    loss = losses_fns[mode]([dict(q), dict(d)], None)
                loss.backward()
                optimizer.step()
                value = loss.item()
                return time.perf_counter() - started, value

            per_mode = {m: {"warmup_step_seconds": [], "step_seconds": [], "step_positions": [],
                            "losses": []} for m in modes}
            for m in modes:
                models[m].train()
                for position in warm_positions:
                    seconds, _ = step(m, position)
                    per_mode[m]["warmup_step_seconds"].append(seconds)
            order_log = []
            for r in range(rounds):
                order = _rotated(modes, r)
                order_log.append(order)
                for m in order:
                    for s in range(spr):
                        position = warm + r * spr + s
                        seconds, value = step(m, position)
                        per_mode[m]["step_seconds"].append(seconds)
                        per_mode[m]["step_positions"].append(position - warm)
                        per_mode[m]["losses"].append(value)
            batch_size = len(setting_batches[0])
            entry = {"padding": padding, "order_per_round": order_log,
                     "token_widths": widths, "batch_size": batch_size,
                     "warmup_positions": list(warm_positions),
                     "mean_query_width": float(np.mean([w[0] for w in widths[warm:]])),
                     "mean_document_width": float(np.mean([w[1] for w in widths[warm:]])),
                     "loss": "MultipleNegativesRankingLoss(model, scale=%g) (cosine, in-batch "
                             "negatives, query_to_doc)" % args.scale,
                     "optimizer": "torch.optim.AdamW(lr=%g)" % args.learning_rate}
            for m in modes:
                med = _median(per_mode[m]["step_seconds"])
                entry[m] = dict(per_mode[m], warmup_steps=warm,
                                timed_steps=len(per_mode[m]["step_seconds"]),
                                median_step_seconds=med,
                                pairs_per_second=batch_size / med if med else None)
            result["training"][setting] = entry
        del models, optimizers, losses_fns

    if not args.skip_encoding:
        model = base_model
        model.eval()
        model.max_seq_length = ld
        bs = args.encode_batch_size
        paddings = {
            "default": {"text": {"max_length": ld, "truncation": True}},
            "fixed": {"text": {"max_length": ld, "truncation": True, "padding": "max_length"}},
        }
        encoding = {"batch_size": bs, "num_docs": len(doc_texts), "repeats": args.encode_repeats}
        order = (np.argsort([-model._input_length(t) for t in doc_texts])
                 if hasattr(model, "_input_length") else np.arange(len(doc_texts)))
        ordered = [doc_texts[i] for i in order]
        configs = [(p, m) for p in paddings for m in modes]
        for padding, kwargs in paddings.items():
            # Which widths the batches get (tokenisation only, same sorted order as encode).
            batch_widths = []
            for start in range(0, len(ordered), bs):
                chunk = ordered[start:start + bs]
                feats = model.preprocess(chunk, processing_kwargs=kwargs)
                batch_widths.append([len(chunk), int(feats["input_ids"].shape[1])])
            encoding[padding] = {
                "padding": ("each batch padded to its longest text (sentence-transformers' "
                            "default; texts sorted by length)" if padding == "default"
                            else "max_length: every document padded to %d tokens" % ld),
                "batch_widths": batch_widths,
            }

        def encode_pass(padding, mode):
            with autocast(mode):
                started = time.perf_counter()
                out = model.encode(doc_texts, batch_size=bs, convert_to_numpy=True,
                                   show_progress_bar=False, processing_kwargs=paddings[padding])
                synchronize()
                return time.perf_counter() - started, out

        seconds = {c: [] for c in configs}
        warmup = {}
        shapes = {}
        for c in configs:
            started = time.perf_counter()
            with autocast(c[1]):
                model.encode(doc_texts[:bs], batch_size=bs, convert_to_numpy=True,
                             show_progress_bar=False, processing_kwargs=paddings[c[0]])
            warmup[c] = time.perf_counter() - started
        for r in range(args.encode_repeats):
            for c in _rotated(configs, r):
                t, out = encode_pass(*c)
                seconds[c].append(t)
                shapes[c] = list(out.shape)
        for padding, mode in configs:
            med = _median(seconds[(padding, mode)])
            encoding[padding][mode] = {
                "call": "model.encode(doc_texts, batch_size=%d, convert_to_numpy=True, "
                        "processing_kwargs=%r)%s" % (
                            bs, paddings[padding],
                            " inside torch.autocast(bfloat16)" if mode != "float32" else ""),
                "embedding_shape": shapes[(padding, mode)],
                "warmup_seconds": warmup[(padding, mode)],
                "pass_seconds": seconds[(padding, mode)],
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
