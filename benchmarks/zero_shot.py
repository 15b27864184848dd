"""Zero-shot SciFact check of the offline pretrained encoder, in float32 and in the default
precision, against the published figure and against each other.

    python benchmarks/zero_shot.py [--data ../shared/data/scifact] \
        [--precisions float32,auto] [--output benchmarks/results/zero_shot.json]

For each precision it runs exactly what `samtone-tf evaluate --model pretrained:minilm-l6
--data <scifact> --format beir --split test --precision P` runs, one after the other in one
process, and prints a markdown table and writes JSON. The exit status is 1 when a check
fails:
- float32 nDCG@10 outside 0.645 ± 0.005 (the MTEB figure for all-MiniLM-L6-v2 on SciFact);
- any other precision more than 0.003 nDCG@10 from float32.
The wall time of each evaluation and the ratio to float32 are reported (the target for the
default precision is at most half the float32 time), with the 1-minute load average before
each run. Takes about 10-20 minutes on 2 CPU cores (5,183 documents at length 256, twice).
"""

import argparse
import json
import os
import sys
import time

PUBLISHED_NDCG10 = 0.645
TOLERANCE = 0.005
PRECISION_TOLERANCE = 0.003


def main(argv=None):
    here = os.path.dirname(os.path.abspath(__file__))
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=os.path.join(here, "..", "..", "shared", "data", "scifact"))
    parser.add_argument("--output", default=os.path.join(here, "results", "zero_shot.json"))
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--precisions", default="float32,auto",
                        help="comma-separated; the first must be float32 (the reference)")
    args = parser.parse_args(argv)
    precisions = [p.strip() for p in args.precisions.split(",") if p.strip()]
    if not precisions or precisions[0] != "float32":
        parser.error("--precisions must start with float32 (the reference)")

    import tensorflow as tf

    from samtone_tf import evaluation
    from samtone_tf.precision import check_precision, cpu_flags, resolve_precision

    for p in precisions:
        check_precision(p)
    corpus, queries, qrels = evaluation.load_eval_data(args.data, "beir", "test")
    runs = []
    for requested in precisions:
        resolved = resolve_precision(requested)
        load = os.getloadavg()[0]
        started = time.time()
        query_fn, doc_fn = evaluation.text_encoders("pretrained:minilm-l6",
                                                    batch_size=args.batch_size,
                                                    precision=resolved)
        metrics = evaluation.evaluate_retrieval(query_fn, doc_fn, corpus, queries, qrels,
                                                batch_size=args.batch_size)
        seconds = time.time() - started
        runs.append(dict(metrics, requested_precision=requested, precision=resolved,
                         seconds=round(seconds, 1), load_average_1min_before=load,
                         docs_per_second=round(len(corpus) / seconds, 2)))
    reference = runs[0]
    ok = abs(reference["ndcg@10"] - PUBLISHED_NDCG10) <= TOLERANCE
    reference["within_published_tolerance"] = ok
    for run in runs[1:]:
        run["ndcg@10_minus_float32"] = run["ndcg@10"] - reference["ndcg@10"]
        run["within_float32_tolerance"] = abs(run["ndcg@10_minus_float32"]) <= PRECISION_TOLERANCE
        run["seconds_over_float32"] = run["seconds"] / reference["seconds"]
        ok = ok and run["within_float32_tolerance"]
    result = {"published_ndcg10": PUBLISHED_NDCG10, "tolerance": TOLERANCE,
              "precision_tolerance": PRECISION_TOLERANCE, "passed": ok, "runs": runs,
              "cpu_bf16_flags": sorted(cpu_flags() & {"amx_bf16", "avx512_bf16"}),
              "tensorflow": tf.__version__}
    print("| precision | nDCG@10 | MRR | R@100 | vs float32 | seconds | time vs float32 | load before |")
    print("|---|---|---|---|---|---|---|---|")
    for run in runs:
        delta = run.get("ndcg@10_minus_float32")
        print(f"| {run['requested_precision']} -> {run['precision']} | {run['ndcg@10']:.4f} | "
              f"{run['mrr']:.4f} | {run['recall@100']:.4f} | "
              f"{'reference' if delta is None else f'{delta:+.4f}'} | {run['seconds']:.0f} | "
              f"{run.get('seconds_over_float32', 1.0):.2f}x | {run['load_average_1min_before']:.2f} |")
    os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
    with open(args.output, "w", encoding="utf-8") as f:
        json.dump(result, f, indent=2)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
