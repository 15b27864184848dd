"""Gradient caching: peak memory and training speed against the batch size, cached
(``DualEncoder(mini_batch_size=32)``) against uncached, for all-MiniLM-L6-v2.

Commands (from the repository root)::

    .venv/bin/python benchmarks/gradcache.py            # ~18 min on 2 quiet CPU cores
    .venv/bin/python benchmarks/gradcache.py --quick --allow-busy --output /tmp/gc.json

Every configuration (batch size, cached or not) runs in its own child process, so each
peak is that process's own:

* **model**: ``DualEncoder("pretrained:minilm-l6", architecture="sde", pooling="mean",
  precision=--precision)``, ``Adam(2e-5)``, ``SamToNeLoss(temperature=0.05,
  same_tower="query")``; ``mini_batch_size=--mini-batch-size`` for the cached runs.
* **data**: the SQuAD training articles of ``../shared/data`` (11,877 question/sentence
  pairs), queries 32 and sentences 128 tokens, padded to those lengths
  (``padding="max_length"``: every step has the same shapes, so the steps and the peaks
  are comparable), shuffled with seed 0; the cached and uncached runs see the same batches.
* **timing**: ``model.fit`` for ``1 + --timed-steps`` steps; the first (tracing) is not
  timed; the step time is the median of the others (``on_train_batch_begin`` to ``_end``).
  pairs/s = batch / step time.
* **memory**: on CPU the peak resident set of the child (``VmHWM`` of ``/proc/self/status``,
  which includes TensorFlow, the model, the optimizer state and the data); on a GPU
  ``tf.config.experimental.get_memory_info("GPU:0")["peak"]``. The parent also polls the
  child's resident set and stops it above ``--memory-limit-gib`` (default 18 GiB, this
  machine has 24): that run is reported as failed ("over the memory limit"), as is a run
  that dies of ``ResourceExhaustedError``. After the first uncached failure larger uncached
  batches are not tried.

Targets (issue 11): the cached step costs at most 1.4x the uncached step at equal batch;
the peak memory at batch 2048 cached is no more than at batch 64 uncached plus the batch's
embeddings (2048 x 2 x 384 float32 = 6 MiB, and their gradients as much again).

The quiet-machine check is benchmarks/speed.py's (``--allow-busy`` to run anyway; the JSON
says whether it was quiet). Output: JSON at ``--output`` (default
``benchmarks/results/gradcache.json``) and the table printed and written beside it as
``.md``.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
DEFAULT_DATA = os.path.join(ROOT, "..", "shared", "data", "squad",
                            "squad_v1.1_train_subset.json")
sys.path.insert(0, HERE)
sys.path.insert(0, ROOT)


def _rss_bytes(pid, field="VmRSS"):
    try:
        with open(f"/proc/{pid}/status", encoding="utf-8") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


# ----------------------------------------------------------------------------- child
def child(args):
    import numpy as np
    import tensorflow as tf

    import samtone_tf
    from samtone_tf import data as data_lib
    from samtone_tf.towers import pretrained
    from samtone_tf.data import reqa
    keras = tf.keras  # the generation TF_USE_LEGACY_KERAS picked
    from samtone_tf.precision import resolve_precision

    keras.utils.set_random_seed(0)
    precision = resolve_precision(args.precision)
    corpus, queries, qrels = reqa.build_reqa(args.data)
    pairs = data_lib.training_pairs_from_qrels(corpus, queries, qrels)
    model_info = pretrained.load_pretrained("minilm-l6")
    tokenizers = (model_info.tokenizer(args.query_max_length),
                  model_info.tokenizer(args.document_max_length))
    dataset = data_lib.make_pair_dataset(pairs, tokenizers, args.batch_size, shuffle=True,
                                         seed=0, repeat=True, padding="max_length")
    model = samtone_tf.DualEncoder("pretrained:minilm-l6", architecture="sde",
                                   pooling="mean", precision=precision,
                                   mini_batch_size=args.mini_batch_size or None)
    model.compile(optimizer=keras.optimizers.Adam(2e-5),
                  loss=samtone_tf.SamToNeLoss(temperature=0.05, same_tower="query",
                                              mask_duplicates=True))

    class Timer(keras.callbacks.Callback):
        def __init__(self):
            super().__init__()
            self.times = []

        def on_train_batch_begin(self, batch, logs=None):
            self._start = time.perf_counter()

        def on_train_batch_end(self, batch, logs=None):
            self.times.append(time.perf_counter() - self._start)

    timer = Timer()
    gpus = tf.config.list_physical_devices("GPU")
    if gpus:
        tf.config.experimental.reset_memory_stats("GPU:0")
    history = model.fit(dataset, epochs=1, steps_per_epoch=1 + args.timed_steps,
                        callbacks=[timer], verbose=0)
    result = {"batch_size": args.batch_size, "mini_batch_size": model.mini_batch_size,
              "precision": model.compute_precision, "step_seconds": timer.times,
              "loss": [float(x) for x in history.history["loss"]]}
    timed = timer.times[1:]
    result["median_step_seconds"] = statistics.median(timed)
    result["pairs_per_second"] = args.batch_size / result["median_step_seconds"]
    result["peak_rss_bytes"] = _rss_bytes("self", "VmHWM")
    if gpus:
        result["gpu_peak_bytes"] = int(tf.config.experimental.get_memory_info("GPU:0")["peak"])
    result["finite_loss"] = bool(np.all(np.isfinite(result["loss"])))
    if (model.mini_batch_size is not None) != bool(args.mini_batch_size):
        raise SystemExit("the model's mini_batch_size is not the one asked for")
    with open(args.child_output, "w", encoding="utf-8") as f:
        json.dump(result, f)


# ---------------------------------------------------------------------------- parent
def run_child(args, batch_size, mini_batch_size, scratch):
    output = os.path.join(scratch, f"b{batch_size}_m{mini_batch_size}.json")
    command = [sys.executable, os.path.abspath(__file__), "--child", "--child-output", output,
               "--batch-size", str(batch_size), "--data", args.data,
               "--precision", args.precision, "--timed-steps", str(args.timed_steps),
               "--query-max-length", str(args.query_max_length),
               "--document-max-length", str(args.document_max_length)]
    command += ["--mini-batch-size", str(mini_batch_size or 0)]  # 0: uncached
    limit = int(args.memory_limit_gib * 2 ** 30)
    started = time.time()
    log = open(os.path.join(scratch, f"b{batch_size}_m{mini_batch_size}.log"), "w")
    process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
    peak_seen, over = 0, False
    while process.poll() is None:
        rss = _rss_bytes(process.pid) or 0
        peak_seen = max(peak_seen, rss)
        if rss > limit:
            over = True
            process.kill()
            process.wait()
            break
        time.sleep(0.2)
    log.close()
    entry = {"batch_size": batch_size, "mini_batch_size": mini_batch_size,
             "cached": bool(mini_batch_size), "wall_seconds": round(time.time() - started, 1),
             "polled_peak_rss_bytes": peak_seen}
    if over:
        entry.update(ok=False, failure=f"over the memory limit ({args.memory_limit_gib} GiB "
                                         "resident): stopped")
    elif process.returncode != 0:
        with open(log.name, encoding="utf-8", errors="replace") as f:
            tail = f.read()[-2000:]
        reason = ("out of memory (ResourceExhaustedError)" if "ResourceExhausted" in tail
                  else f"exit status {process.returncode}")
        entry.update(ok=False, failure=reason, log_tail=tail)
    else:
        with open(output, encoding="utf-8") as f:
            entry.update(json.load(f), ok=True)
    return entry


def _gib(value):
    return "-" if value is None else f"{value / 2 ** 30:.2f}"


def markdown(report):
    lines = [f"Gradient caching, all-MiniLM-L6-v2, {report['precision']}, "
             f"{report['device']['name']}; "
             + ("quiet machine" if report["quiet_check"]["quiet_machine"]
                else "busy machine: not comparable"),
             "",
             "| batch | step | pairs/s | step s (median) | peak memory GiB | note |",
             "|---:|---|---:|---:|---:|---|"]
    for entry in report["runs"]:
        kind = f"cached (mini-batch {entry['mini_batch_size']})" if entry["cached"] else "uncached"
        if entry["ok"]:
            memory = entry.get("gpu_peak_bytes", entry.get("peak_rss_bytes"))
            lines.append(f"| {entry['batch_size']} | {kind} | {entry['pairs_per_second']:.1f} | "
                         f"{entry['median_step_seconds']:.2f} | {_gib(memory)} | |")
        else:
            lines.append(f"| {entry['batch_size']} | {kind} | - | - | "
                         f"> {_gib(entry['polled_peak_rss_bytes'])} | failed: "
                         f"{entry['failure']} |")
    lines.append("")
    for target in report["targets"]:
        lines.append(f"- {target['name']}: {target['value']} (target {target['target']}): "
                     f"**{'met' if target['met'] else 'not met'}**")
    return "\n".join(lines) + "\n"


def targets(report, args):
    runs = {(e["batch_size"], e["cached"]): e for e in report["runs"] if e["ok"]}
    found = []
    for batch in args.batch_sizes:
        if (batch, True) in runs and (batch, False) in runs:
            cost = runs[(batch, True)]["median_step_seconds"] / runs[(batch, False)][
                "median_step_seconds"]
            found.append({"name": f"cached step cost at batch {batch} (cached / uncached "
                                  "step time)", "value": round(cost, 3), "target": "<= 1.4",
                          "met": cost <= 1.4})
    largest = max(args.batch_sizes)
    key = "gpu_peak_bytes" if report["device"]["type"] == "GPU" else "peak_rss_bytes"
    if (largest, True) in runs and (args.memory_reference_batch, False) in runs:
        embeddings = largest * 2 * 384 * 4 * 2  # the embeddings and their gradients
        cached = runs[(largest, True)][key]
        reference = runs[(args.memory_reference_batch, False)][key] + embeddings
        found.append({"name": f"peak memory at batch {largest} cached vs batch "
                              f"{args.memory_reference_batch} uncached + embeddings (GiB)",
                      "value": f"{_gib(cached)} vs {_gib(reference)}",
                      "target": "cached <= reference", "met": cached <= reference})
    return found


def parent(args):
    from speed import _cpu_model, measure_quiet

    quiet = measure_quiet(args.busy_sample_seconds)
    if not quiet["quiet_machine"] and not args.allow_busy:
        print(f"The machine is busy ({quiet['reasons']}); rerun when it is quiet or pass "
              "--allow-busy.", file=sys.stderr)
        return 2
    import tempfile

    scratch = tempfile.mkdtemp(prefix="gradcache-bench-")
    report = {"benchmark": "gradcache", "command": " ".join(sys.argv),
              "quiet_check": quiet, "precision_setting": args.precision,
              "mini_batch_size": args.mini_batch_size, "timed_steps": args.timed_steps,
              "query_max_length": args.query_max_length,
              "document_max_length": args.document_max_length,
              "memory_limit_gib": args.memory_limit_gib,
              "started": time.strftime("%Y-%m-%d %H:%M:%S"), "runs": []}
    uncached_batches = sorted(set(args.batch_sizes) | {args.memory_reference_batch})
    uncached_failed = False
    plan = [(b, None) for b in uncached_batches] + [
        (b, args.mini_batch_size) for b in args.batch_sizes if b > args.mini_batch_size]
    for batch, mini in plan:
        if mini is None and uncached_failed:
            report["runs"].append({"batch_size": batch, "mini_batch_size": None,
                                   "cached": False, "ok": False, "polled_peak_rss_bytes": None,
                                   "failure": "not tried: a smaller uncached batch failed"})
            continue
        entry = run_child(args, batch, mini, scratch)
        report["runs"].append(entry)
        if mini is None and not entry["ok"]:
            uncached_failed = True
        state = (f"{entry['pairs_per_second']:.1f} pairs/s, peak "
                 f"{_gib(entry.get('gpu_peak_bytes', entry.get('peak_rss_bytes')))} GiB"
                 if entry["ok"] else f"failed: {entry['failure']}")
        print(f"batch {batch:5d} {'cached mb ' + str(mini) if mini else 'uncached':>14}: "
              f"{state} ({entry['wall_seconds']} s)", flush=True)
    ok = [e for e in report["runs"] if e["ok"]]
    report["precision"] = ok[0]["precision"] if ok else args.precision
    import tensorflow as tf

    gpus = tf.config.list_physical_devices("GPU")
    report["device"] = {"type": "GPU" if gpus else "CPU", "cpu_model": _cpu_model(),
                        "name": (tf.config.experimental.get_device_details(gpus[0]).get(
                            "device_name") if gpus else _cpu_model()) or "unknown"}
    report["loadavg_after"] = os.getloadavg()
    report["targets"] = targets(report, args)
    os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
    with open(args.output, "w", encoding="utf-8") as f:
        json.dump(report, f, indent=2)
    table = markdown(report)
    with open(os.path.splitext(args.output)[0] + ".md", "w", encoding="utf-8") as f:
        f.write(table)
    print(table)
    return 0


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=DEFAULT_DATA, help="SQuAD v1.1 JSON")
    parser.add_argument("--output", default=os.path.join(HERE, "results", "gradcache.json"))
    parser.add_argument("--batch-sizes", default="32,128,512,2048")
    parser.add_argument("--memory-reference-batch", type=int, default=64)
    parser.add_argument("--mini-batch-size", type=int, default=32)
    parser.add_argument("--timed-steps", type=int, default=2)
    parser.add_argument("--precision", default="auto")
    parser.add_argument("--query-max-length", type=int, default=32)
    parser.add_argument("--document-max-length", type=int, default=128)
    parser.add_argument("--memory-limit-gib", type=float, default=18.0)
    parser.add_argument("--quick", action="store_true",
                        help="batches 8 and 16, mini-batch 4, lengths 16/32, 1 timed step")
    parser.add_argument("--allow-busy", action="store_true")
    parser.add_argument("--busy-sample-seconds", type=float, default=2.0)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--child-output", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--batch-size", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.quick and not args.child:
        args.batch_sizes, args.memory_reference_batch, args.mini_batch_size = "8,16", 8, 4
        args.query_max_length, args.document_max_length, args.timed_steps = 16, 32, 1
    args.batch_sizes = [int(b) for b in str(args.batch_sizes).split(",")]
    return args


def main(argv=None):
    args = parse_args(argv)
    if args.child:
        child(args)
        return 0
    return parent(args)


if __name__ == "__main__":
    sys.exit(main())
