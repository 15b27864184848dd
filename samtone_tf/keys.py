"""The names of the feature and label entries that data, towers, miner and loss share.

A training batch is ``(features, labels)``. ``features`` holds, per tower input, a
``<prefix>token_ids`` and a ``<prefix>padding_mask`` (int32): the prefixes are
:data:`QUERY`, :data:`DOCUMENT` and, with mined or given hard negatives,
:data:`HARD_NEGATIVE_DOCUMENT` ``[B, H, L]`` (through the document tower) and
:data:`HARD_NEGATIVE_QUERY` (through the query tower). A tokenizer's output is
``{TOKEN_IDS, PADDING_MASK}``. The labels are a float32 ``[B, slots]`` of ids, which the
loss names :data:`QUERY_IDS`, :data:`DOCUMENT_IDS`, :data:`HARD_NEGATIVE_DOCUMENT_IDS`,
:data:`HARD_NEGATIVE_QUERY_IDS`.
"""

TOKEN_IDS = "token_ids"
PADDING_MASK = "padding_mask"
TOKENIZER_KEYS = (TOKEN_IDS, PADDING_MASK)

QUERY = "query_"
DOCUMENT = "document_"
HARD_NEGATIVE_DOCUMENT = "hard_negative_document_"
HARD_NEGATIVE_QUERY = "hard_negative_query_"
PREFIXES = (QUERY, DOCUMENT, HARD_NEGATIVE_DOCUMENT, HARD_NEGATIVE_QUERY)


def feature_keys(prefix):
    """``(<prefix>token_ids, <prefix>padding_mask)``."""
    return (prefix + TOKEN_IDS, prefix + PADDING_MASK)


QUERY_KEYS = feature_keys(QUERY)
DOCUMENT_KEYS = feature_keys(DOCUMENT)
HARD_NEGATIVE_DOCUMENT_KEYS = feature_keys(HARD_NEGATIVE_DOCUMENT)
HARD_NEGATIVE_QUERY_KEYS = feature_keys(HARD_NEGATIVE_QUERY)

QUERY_IDS = "query_ids"
DOCUMENT_IDS = "document_ids"
HARD_NEGATIVE_DOCUMENT_IDS = "hard_negative_document_ids"
HARD_NEGATIVE_QUERY_IDS = "hard_negative_query_ids"
