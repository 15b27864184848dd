"""How often the loss studies' training pairs are linked (share a query id or a document id),
overall and within random batches: the pairs whose false negatives the loss masks.

    python benchmarks/linked_pairs.py [--batch-size 32] [--batches 2000]

Prints one line per data set (the training pairs of ``benchmarks/loss_study.py``).
"""

import argparse
import collections
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))


def linked_counts(pairs, batch_size, batches, seed=0):
    """``(pairs with a linked partner, linked pairs expected per random batch, fraction of
    random batches holding at least one linked pair)``."""
    by_query, by_document = collections.defaultdict(set), collections.defaultdict(set)
    for i, (qid, _, did, _) in enumerate(pairs):
        by_query[qid].add(i)
        by_document[did].add(i)
    partners = [len((by_query[q] | by_document[d]) - {i}) for i, (q, _, d, _) in enumerate(pairs)]
    n = len(pairs)
    per_batch = sum(partners) / 2 * batch_size * (batch_size - 1) / (n * (n - 1))
    rng = np.random.default_rng(seed)
    hits = 0
    for _ in range(batches):
        rows = rng.choice(n, batch_size, replace=False)
        queries = collections.Counter(pairs[i][0] for i in rows)
        documents = collections.Counter(pairs[i][2] for i in rows)
        hits += max(queries.values()) > 1 or max(documents.values()) > 1
    return sum(1 for x in partners if x), per_batch, hits / batches


def main(argv=None):
    import loss_study

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--batches", type=int, default=2000)
    args = parser.parse_args(argv)
    if args.batch_size < 2 or args.batches < 1:
        parser.error("--batch-size must be >= 2 and --batches >= 1.")
    for dataset in sorted(loss_study.DATASETS):
        pairs = loss_study.load_study_data(dataset, None, False)["pairs"]
        with_partner, per_batch, share = linked_counts(pairs, args.batch_size, args.batches)
        print(f"{dataset}: {len(pairs)} training pairs, {with_partner} "
              f"({with_partner / len(pairs):.1%}) have a linked partner; {per_batch:.3f} linked "
              f"pairs per random batch of {args.batch_size}; {share:.1%} of {args.batches} "
              "random batches hold at least one")
    return 0


if __name__ == "__main__":
    sys.exit(main())
