"""Data: loaders (BEIR folders, SQuAD as ReQA), the format registry, training pairs and
tokenised ``tf.data`` pipelines, the WordPiece tokenizer and checksummed downloads.

Modules: :mod:`~samtone_tf.data.text` (UTF-8 lines, empty texts), :mod:`~.beir`,
:mod:`~.reqa`, :mod:`~.formats` (the registry), :mod:`~.pairs`, :mod:`~.tokenization`,
:mod:`~.download`. The names below are importable from ``samtone_tf.data`` itself.
"""

from samtone_tf.data.beir import load_beir
from samtone_tf.data.formats import (DataFormat, format_names, get_format, load_data,
                                     register_format)
from samtone_tf.data.pairs import (DEFAULT_LENGTH_BUCKETS, MAX_EXACT_FLOAT32_ID, PADDINGS,
                                   bucket_width, check_padding, dense_id_maps,
                                   make_pair_dataset, pair_features, training_pairs_from_qrels,
                                   trim_to_bucket, trim_to_longest)
from samtone_tf.data.text import EmptyTextWarning, refuse_empty_text

__all__ = [
    "load_beir", "DataFormat", "format_names", "get_format", "load_data", "register_format",
    "DEFAULT_LENGTH_BUCKETS", "MAX_EXACT_FLOAT32_ID", "PADDINGS", "bucket_width",
    "check_padding", "dense_id_maps", "make_pair_dataset", "pair_features",
    "training_pairs_from_qrels", "trim_to_bucket", "trim_to_longest", "EmptyTextWarning",
    "refuse_empty_text",
]
