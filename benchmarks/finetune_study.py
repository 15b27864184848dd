"""Full fine-tuning study: in-batch vs SamToNe with the whole all-MiniLM-L6-v2 encoder trained.

    python benchmarks/finetune_study.py            # ReQA; SDE and ADE-SPL; 3 seeds (~45 min, 2 CPU cores)
    python benchmarks/finetune_study.py --quick    # 2 steps, 1 seed, 40 queries: a smoke run

Complements ``benchmarks/loss_study.py`` (which freezes the transformer and trains projections,
so it can afford every variant, both data sets and 5 seeds): here every weight of the encoder
is trained through the library's own path (``DualEncoder`` over the TF-Hub-layout checkpoint,
``make_pair_dataset``, ``SamToNeLoss``, ``model.fit``), at the cost of ~2.4 s per step of batch
32 on 2 CPU cores, so the grid is small: SQuAD ReQA (the articles split 80/20 with seed 0, as in
the loss study), the in-batch baseline vs SamToNe (query side) by default, architectures SDE
(one shared tower) and ADE-SPL (two encoders, one shared projection, ``projection_dim`` 384),
3 seeds. Evaluation: a fixed seeded sample of ``--eval-queries`` held-out questions against
*all* candidate sentences of the held-out articles (P@1, MRR).

Fixed for every run, chosen a priori (no sweep is affordable here): batch 32, temperature 0.05,
query/document lengths 32/64, Adam with a linear warm-up over the first 10% of the steps then
linear decay, peak learning rate 3e-5, ``--steps`` steps. The seed sets the initial projection
(ADE-SPL) and the batch order. The zero-shot row evaluates each architecture's untrained model (seed 0).

Outputs ``--output`` JSON (every run) and a markdown table beside it (``.md``), also printed.
"""

import argparse
import json
import os
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
SQUAD = os.path.join(HERE, "..", "..", "shared", "data", "squad", "squad_v1.1_train_subset.json")
VARIANTS = {
    "in-batch": dict(same_tower="none"),
    "samtone-q": dict(same_tower="query"),
    "samtone-both": dict(same_tower="both", bidirectional=True),
    "dance": dict(same_tower="none", bidirectional=True, dual_weight=0.1),
    "gte-joint": dict(same_tower="both", bidirectional=True, partition="joint"),
}
ARCHITECTURES = ("sde", "ade-spl", "ade")


def load(path, eval_queries, seed=0):
    from samtone_tf import data as data_lib
    from samtone_tf.data import reqa

    train_json, dev_json = reqa.split_by_article(path, 0.2, 0)
    corpus, queries, qrels = reqa.build_reqa(train_json)
    pairs = data_lib.training_pairs_from_qrels(corpus, queries, qrels)
    eval_corpus, eval_q, eval_qrels = reqa.build_reqa(dev_json)
    judged = sorted(q for q in eval_qrels if q in eval_q)
    rng = np.random.default_rng(seed)
    chosen = [judged[i] for i in sorted(rng.choice(len(judged), min(eval_queries, len(judged)),
                                                   replace=False))]
    return pairs, (eval_corpus, {q: eval_q[q] for q in chosen},
                   {q: eval_qrels[q] for q in chosen})


def run_one(variant, architecture, seed, steps, pairs, eval_data, args, evaluate_before=False):
    import samtone_tf
    from samtone_tf import data as data_lib
    from samtone_tf import evaluation
    from samtone_tf.towers import pretrained
    import tensorflow as tf
    keras = tf.keras  # the generation TF_USE_LEGACY_KERAS picked
    from samtone_tf.training import TrainConfig, learning_rate_schedule

    qt, dt, spec = pretrained.dual_encoder_components(
        "minilm-l6", query_max_length=args.query_max_length,
        document_max_length=args.document_max_length, backend="tfhub")
    keras.utils.set_random_seed(seed)
    model = samtone_tf.DualEncoder(spec, architecture=architecture, pooling="mean",
                                   projection_dim=384 if architecture == "ade-spl" else None)
    schedule = learning_rate_schedule(
        TrainConfig(learning_rate=args.learning_rate, schedule="linear",
                    warmup_steps=max(1, steps // 10)), steps)
    model.compile(optimizer=keras.optimizers.Adam(schedule),
                  loss=samtone_tf.SamToNeLoss(temperature=0.05, mask_duplicates=True,
                                              **VARIANTS[variant]))
    dataset = data_lib.make_pair_dataset(pairs, (qt, dt), args.batch_size, shuffle=True,
                                         seed=seed, repeat=True)
    record = dict(variant=variant, architecture=architecture, seed=seed, steps=steps)

    def evaluate():
        query_fn, doc_fn = evaluation.dual_encoder_fns(model, qt, dt)
        started = time.perf_counter()
        metrics = evaluation.evaluate_retrieval(query_fn, doc_fn, *eval_data, batch_size=128,
                                                progress=False)
        metrics["seconds"] = round(time.perf_counter() - started, 1)
        return metrics

    model(next(iter(dataset))[0])  # build
    if evaluate_before:
        record["metrics_before"] = evaluate()
    started = time.perf_counter()
    history = model.fit(dataset, epochs=1, steps_per_epoch=steps, verbose=0, shuffle=False)
    record["train_seconds"] = round(time.perf_counter() - started, 1)
    record["loss"] = float(history.history["loss"][-1])
    record["metrics"] = evaluate()
    return record


def summarize(runs):
    rows = []
    keys = sorted({(r["architecture"], r["variant"]) for r in runs},
                  key=lambda k: (ARCHITECTURES.index(k[0]), list(VARIANTS).index(k[1])))
    for arch, variant in keys:
        group = sorted([r for r in runs if (r["architecture"], r["variant"]) == (arch, variant)],
                       key=lambda r: r["seed"])
        row = dict(architecture=arch, variant=variant, seeds=len(group))
        for name in ("p@1", "mrr"):
            v = np.array([r["metrics"][name] for r in group])
            row[name] = {"mean": float(v.mean()), "std": float(v.std(ddof=1)) if v.size > 1 else 0.0}
        base = {r["seed"]: r["metrics"]["mrr"] for r in runs
                if (r["architecture"], r["variant"]) == (arch, "in-batch")}
        diffs = np.array([r["metrics"]["mrr"] - base[r["seed"]] for r in group if r["seed"] in base])
        if variant != "in-batch" and diffs.size:
            row["paired_diff_mrr"] = {"mean": float(diffs.mean()),
                                      "std": float(diffs.std(ddof=1)) if diffs.size > 1 else 0.0,
                                      "better": int((diffs > 0).sum()), "of": int(diffs.size)}
        rows.append(row)
    return rows


def markdown(rows, zero_shot):
    lines = ["| loss | arch | P@1 | MRR | ΔMRR vs in-batch (better/seeds) |", "|---|---|---|---|---|"]
    for arch, metrics in zero_shot.items():
        lines.append(f"| zero-shot (untrained) | {arch.upper()} | {metrics['p@1']:.4f} | "
                     f"{metrics['mrr']:.4f} | – |")
    for row in rows:
        d = row.get("paired_diff_mrr")
        lines.append(f"| {row['variant']} | {row['architecture'].upper()} | "
                     f"{row['p@1']['mean']:.4f} ± {row['p@1']['std']:.4f} | "
                     f"{row['mrr']['mean']:.4f} ± {row['mrr']['std']:.4f} | "
                     + (f"{d['mean']:+.4f} ± {d['std']:.4f} ({d['better']}/{d['of']})" if d else "–")
                     + " |")
    return "\n".join(lines)


def write(output, runs, zero_shot, partial, commands=()):
    """Progress after each run (the final write replaces it with the full result)."""
    os.makedirs(os.path.dirname(os.path.abspath(output)), exist_ok=True)
    with open(output, "w", encoding="utf-8") as f:
        json.dump({"partial": partial, "runs": runs, "zero_shot": zero_shot,
                   "commands": list(commands)}, f, indent=2)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=SQUAD)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--variants", default="in-batch,samtone-q")
    parser.add_argument("--architectures", default="sde,ade-spl")
    parser.add_argument("--seeds", type=int, default=None, help="default 3 (quick: 1)")
    parser.add_argument("--steps", type=int, default=None, help="default 60 (quick: 2)")
    parser.add_argument("--learning-rate", type=float, default=3e-5)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--query-max-length", type=int, default=32)
    parser.add_argument("--document-max-length", type=int, default=64)
    parser.add_argument("--eval-queries", type=int, default=None, help="default 1000 (quick: 40)")
    parser.add_argument("--output", default=None)
    parser.add_argument("--resume", action="store_true",
                        help="keep the runs already in --output and do the missing ones")
    args = parser.parse_args(argv)
    variants, archs = args.variants.split(","), args.architectures.split(",")
    for v in variants:
        if v not in VARIANTS:
            parser.error(f"unknown variant {v!r}; known: {', '.join(VARIANTS)}")
    for a in archs:
        if a not in ARCHITECTURES:
            parser.error(f"unknown architecture {a!r}; known: {', '.join(ARCHITECTURES)}")
    seeds = args.seeds if args.seeds is not None else (1 if args.quick else 3)
    steps = args.steps if args.steps is not None else (2 if args.quick else 60)
    eval_queries = args.eval_queries if args.eval_queries is not None else (40 if args.quick else 1000)
    if min(seeds, steps, eval_queries) < 1 or not args.learning_rate > 0:
        parser.error("--seeds, --steps, --eval-queries must be >= 1 and --learning-rate > 0.")
    output = args.output or os.path.join(
        HERE, "results", "finetune_study" + ("_quick" if args.quick else "") + ".json")

    import tensorflow as tf

    import samtone_tf

    started = time.time()
    pairs, eval_data = load(args.data, eval_queries)
    print(f"{len(pairs)} training pairs; evaluation: {len(eval_data[2])} queries, "
          f"{len(eval_data[0])} candidates", flush=True)
    runs, zero_shot, earlier_commands = [], {}, []
    if args.resume and os.path.exists(output):
        with open(output, encoding="utf-8") as f:
            previous = json.load(f)
        runs, zero_shot = previous["runs"], previous["zero_shot"]
        # the runs kept may come from invocations with other --variants/--architectures
        earlier_commands = previous.get("commands") or (
            [previous["command"]] if previous.get("command") else [])
        print(f"resuming: {len(runs)} runs already in {output}", flush=True)
    done = {(r["architecture"], r["variant"], r["seed"]) for r in runs}
    # seed-major order: a run stopped early still has whole seeds of every cell
    for seed in range(seeds):
        for arch in archs:
            for variant in variants:
                if (arch, variant, seed) in done:
                    continue
                first = arch not in zero_shot
                record = run_one(variant, arch, seed, steps, pairs, eval_data, args,
                                 evaluate_before=first)
                if first:
                    zero_shot[arch] = dict(record["metrics_before"], seed=seed)
                runs.append(record)
                print(f"  {arch} {variant} seed {seed}: MRR {record['metrics']['mrr']:.4f} "
                      f"P@1 {record['metrics']['p@1']:.4f} (train {record['train_seconds']} s)",
                      flush=True)
                write(output, runs, zero_shot, partial=True, commands=earlier_commands)
    rows = summarize(runs)
    table = markdown(rows, zero_shot)
    settings = (f"SQuAD ReQA, 80/20 article split (seed 0), {len(pairs)} training pairs; "
                f"{len(eval_data[2])} held-out questions (seeded sample) against all "
                f"{len(eval_data[0])} held-out sentences; whole all-MiniLM-L6-v2 fine-tuned; "
                f"batch {args.batch_size}, {steps} steps, Adam peak lr {args.learning_rate:g} "
                f"(linear warm-up 10%, linear decay), temperature 0.05, lengths "
                f"{args.query_max_length}/{args.document_max_length}; seeds 0..{seeds - 1}; "
                "mean ± sample std over seeds.")
    command = "python " + " ".join([os.path.relpath(__file__)] + (
        sys.argv[1:] if argv is None else list(argv)))
    in_runs = sorted({r["variant"] for r in runs}, key=list(VARIANTS).index)
    result = dict(settings=dict(vars(args), seeds=seeds, steps=steps, eval_queries=eval_queries,
                                variant_definitions={v: VARIANTS[v] for v in in_runs}),
                  description=settings, zero_shot=zero_shot, summary=rows, runs=runs,
                  seconds=round(time.time() - started, 1), tensorflow=tf.__version__,
                  keras=samtone_tf.KERAS_VERSION, command=command,
                  commands=earlier_commands + [command])
    os.makedirs(os.path.dirname(os.path.abspath(output)), exist_ok=True)
    with open(output, "w", encoding="utf-8") as f:
        json.dump(result, f, indent=2)
    with open(os.path.splitext(output)[0] + ".md", "w", encoding="utf-8") as f:
        f.write(table + "\n\n" + settings + "\n")
    print(table)
    print(settings)
    print(f"wrote {output} ({result['seconds']:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
