"""Zero-shot check of the offline pretrained encoder against its published figure.

    python benchmarks/zero_shot.py [--data ../shared/data/scifact] [--output benchmarks/results/zero_shot.json]

Runs exactly what `samtone-tf evaluate --model pretrained:minilm-l6 --data <scifact>
--format beir --split test` runs, prints a markdown table, writes JSON, and exits 1 when
nDCG@10 is outside 0.645 ± 0.005 (the MTEB figure for all-MiniLM-L6-v2 on SciFact).
Takes about 10-17 minutes on 2 CPU cores (5,183 documents at length 256).
"""

import argparse
import json
import os
import sys
import time

PUBLISHED_NDCG10 = 0.645
TOLERANCE = 0.005


def main(argv=None):
    here = os.path.dirname(os.path.abspath(__file__))
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=os.path.join(here, "..", "..", "shared", "data", "scifact"))
    parser.add_argument("--output", default=os.path.join(here, "results", "zero_shot.json"))
    parser.add_argument("--batch-size", type=int, default=64)
    args = parser.parse_args(argv)

    import tensorflow as tf

    from samtone_tf import evaluation

    corpus, queries, qrels = evaluation.load_eval_data(args.data, "beir", "test")
    query_fn, doc_fn = evaluation.text_encoders("pretrained:minilm-l6", batch_size=args.batch_size)
    started = time.time()
    metrics = evaluation.evaluate_retrieval(query_fn, doc_fn, corpus, queries, qrels,
                                            batch_size=args.batch_size)
    seconds = time.time() - started
    ok = abs(metrics["ndcg@10"] - PUBLISHED_NDCG10) <= TOLERANCE
    result = dict(metrics, published_ndcg10=PUBLISHED_NDCG10, tolerance=TOLERANCE,
                  within_tolerance=ok, seconds=round(seconds, 1),
                  docs_per_second=round(len(corpus) / seconds, 2), tensorflow=tf.__version__)
    print("| model | data | nDCG@10 | published | within ±0.005 | seconds |")
    print("|---|---|---|---|---|---|")
    print(f"| pretrained:minilm-l6 | SciFact test ({metrics['num_queries']} q, "
          f"{metrics['num_documents']} docs) | {metrics['ndcg@10']:.4f} | {PUBLISHED_NDCG10} | "
          f"{'yes' if ok else 'NO'} | {seconds:.0f} |")
    os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
    with open(args.output, "w", encoding="utf-8") as f:
        json.dump(result, f, indent=2)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
