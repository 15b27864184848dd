"""Measures the cost of one hard-negative refresh (encode corpus + training queries, mine).

    python -m tests.mining_cost [NUM_DOCS] [NUM_QUERIES]

Tiny 2-layer, 32-wide encoder (tests/_tiny.py), document length 64, query length 24, a
SciFact slice (the first NUM_QUERIES train queries' positives plus the first documents up to
NUM_DOCS). Prints the second refresh's timing (the first one traces the encoders).
"""

import sys
import tempfile

from samtone_tf.training.mining import HardNegativeMiner
from samtone_tf.towers.model import DualEncoder
from tests import mining_worker


def main(argv):
    num_docs = int(argv[0]) if argv else 1000
    num_queries = int(argv[1]) if len(argv) > 1 else 200
    corpus, qrels, pairs = mining_worker.scifact_slice(num_queries, num_docs)
    corpus = dict(list(corpus.items())[:num_docs]) | {p[2]: p[3] for p in pairs}
    with tempfile.TemporaryDirectory() as directory:
        toks = mining_worker.tokenizers(directory, corpus, pairs, query_length=24,
                                        document_length=64)
        model = DualEncoder(mining_worker.encoder(directory), projection_dim=16)
        miner = HardNegativeMiner(pairs, corpus, toks, qrels=qrels, num_hard_documents=4,
                                  num_hard_queries=2, encode_batch_size=64)
        miner.refresh(model)
        timing = miner.refresh(model)
    texts = timing["documents"] + timing["queries"]
    print(f"{timing['documents']} documents + {timing['queries']} queries: "
          f"{timing['seconds']:.2f} s per refresh (encode {timing['encode_seconds']:.2f} s, "
          f"{texts / timing['encode_seconds']:.0f} texts/s, "
          f"{timing['docs_per_second']:.0f} docs/s counted over the encoding; "
          f"search {timing['search_seconds']:.3f} s)")


if __name__ == "__main__":
    main(sys.argv[1:])
