"""In-graph BERT WordPiece tokenisation for raw strings.

The tokenizer is a ``tf.Module`` whose only state is a vocabulary lookup table (a TF
resource initialised from the vocabulary file, which ``tf.saved_model.save`` copies into
the SavedModel's ``assets/``), so it runs inside ``tf.data`` pipelines, inside
``tf.function`` graphs and inside an exported SavedModel that takes raw strings.

Pure TensorFlow / tensorflow-text; no Keras.
"""

import collections
import os
import unicodedata

import tensorflow as tf

__all__ = [
    "BertTextTokenizer",
    "build_wordpiece_vocab",
    "normalize_text",
    "SPECIAL_TOKENS",
]

#: Tokens every vocabulary must contain (``[MASK]`` is optional).
REQUIRED_SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]")
#: Special tokens written first, in this order, by :func:`build_wordpiece_vocab`.
SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")

def _tf_text():
    """``tensorflow_text``, imported on first use so that ``import samtone_tf`` (and with it
    :func:`samtone_tf.load_exported`'s clear message) works where it is not installed."""
    try:
        import tensorflow_text
    except ImportError as error:
        minor = ".".join(tf.__version__.split(".")[:2])
        raise ImportError(
            "Tokenising text needs the `tensorflow-text` package (its WordPiece and UTF-8 "
            f"normalisation ops). Install the release matching TensorFlow {tf.__version__}, "
            f"e.g. `pip install \"tensorflow-text=={minor}.*\"`.") from error
    return tensorflow_text


# Normalisation of the all-MiniLM-L6-v2 / uncased-BERT checkpoint tokenizer (HF
# `BertNormalizer`: clean_text, lowercase, strip_accents), replayed with RE2 / ICU ops.
# 1. whitespace (tab, newline, CR, space separators, line/paragraph separators) -> " ";
_WHITESPACE_RE = r"[\t\n\r\p{Zs}\x{2028}\x{2029}]"
# 2. remaining control / format / private-use / surrogate chars and U+FFFD are dropped;
_CONTROL_RE = r"[\p{C}\x{FFFD}]"
# 3. (lower_case) per-character Unicode lower-casing, 4. (strip_accents) NFD then drop nonspacing marks.
_MARK_RE = r"\p{Mn}"


def normalize_text(texts, lower_case=True, strip_accents=None):
    """Normalises a string tensor in-graph like the uncased BERT checkpoint tokenizer.

    Steps: whitespace characters become a space; control/format characters and U+FFFD
    are dropped; if ``lower_case``, Unicode lower-casing (ICU, not NFKC case folding);
    if ``strip_accents`` (defaults to ``lower_case``), NFD decomposition and removal of
    nonspacing combining marks (category Mn).

    Args:
      texts: string tensor of any shape.
      lower_case: whether to lower-case.
      strip_accents: whether to strip accents; ``None`` means ``lower_case``.

    Returns:
      string tensor of the same shape.

    Example:
      >>> normalize_text(tf.constant("Café\\tNOIR\\u200b")).numpy().decode()
      'cafe noir'
    """
    if strip_accents is None:
        strip_accents = lower_case
    texts = tf.convert_to_tensor(texts, dtype=tf.string)
    texts = tf.strings.regex_replace(texts, _WHITESPACE_RE, " ")
    texts = tf.strings.regex_replace(texts, _CONTROL_RE, "")
    if lower_case:
        # The reference lower-cases character by character (no context rules); ICU would
        # turn a word-final capital sigma into final-form "ς", the reference into "σ".
        texts = tf.strings.regex_replace(texts, "\u03a3", "\u03c3")
        texts = tf.strings.lower(texts, encoding="utf-8")
    if strip_accents:
        texts = _tf_text().normalize_utf8(texts, "NFD")
        texts = tf.strings.regex_replace(texts, _MARK_RE, "")
    return texts


def _read_vocab(vocab_file):
    """Reads and validates a vocabulary file; returns the list of tokens."""
    vocab_file = os.fspath(vocab_file)
    if not os.path.isfile(vocab_file):
        raise ValueError(f"Vocabulary file {vocab_file!r} does not exist.")
    with open(vocab_file, encoding="utf-8") as f:
        tokens = [line.rstrip("\n").rstrip("\r") for line in f]
    # A trailing empty line is a file ending with "\n\n"; anything empty elsewhere is an error.
    while tokens and tokens[-1] == "":
        tokens.pop()
    seen = {}
    for i, tok in enumerate(tokens):
        if tok == "":
            raise ValueError(f"Vocabulary file {vocab_file!r}, line {i + 1}: empty token.")
        if tok in seen:
            raise ValueError(
                f"Vocabulary file {vocab_file!r}, line {i + 1}: duplicate token {tok!r} "
                f"(first on line {seen[tok] + 1})."
            )
        seen[tok] = i
    missing = [t for t in REQUIRED_SPECIAL_TOKENS if t not in seen]
    if missing:
        raise ValueError(
            f"Vocabulary file {vocab_file!r} lacks required special token(s) {missing}; "
            f"a BERT vocabulary must contain {list(REQUIRED_SPECIAL_TOKENS)}."
        )
    return tokens


class BertTextTokenizer(tf.Module):
    """Raw strings -> fixed-length BERT token ids and padding mask, in-graph.

    ``[CLS] wordpieces... [SEP] [PAD]...``, truncated so that the whole sequence fits
    in exactly ``max_length`` positions (the last kept position before padding is always
    ``[SEP]``).

    With ``lower_case=True`` the input is first normalised like the uncased BERT /
    all-MiniLM-L6-v2 tokenizer (see :func:`normalize_text`), then split by
    ``tensorflow_text.BertTokenizer(lower_case=False)``; tf-text's own
    ``lower_case=True`` applies NFKC case folding, which does not reproduce the
    checkpoint's ids. With ``lower_case=False`` only whitespace/control cleaning is done
    (a cased vocabulary).

    Inputs: string tensor of shape ``[B]`` or a scalar.
    Outputs: dict with
      - ``"token_ids"``: int32 ``[B, max_length]`` (``[max_length]`` for a scalar),
      - ``"padding_mask"``: int32, same shape, 1 for real tokens (incl. CLS/SEP), 0 for pad.
    Shapes are static in the last dimension (and in ``B`` when the input's is).

    State: a ``tf.lookup.StaticHashTable`` initialised from ``vocab_file`` (a
    ``TextFileInitializer``, so SavedModel export copies the file as an asset). The
    ``serve`` method is a ``tf.function`` with signature ``[None]`` strings, exported
    with the module.

    Args:
      vocab_file: path to a WordPiece vocabulary (one token per line, id = line number).
        Must contain ``[PAD]``, ``[UNK]``, ``[CLS]``, ``[SEP]``.
      max_length: total sequence length including ``[CLS]`` and ``[SEP]``; >= 2.
      lower_case: lower-case (and by default strip accents) before WordPiece.
      strip_accents: NFD + drop combining marks; ``None`` means ``lower_case``.
      max_chars_per_token: words longer than this become ``[UNK]`` (BERT uses 100).
      name: module name.

    Example:
      >>> tok = BertTextTokenizer(vocab_path, max_length=8)
      >>> out = tok(tf.constant(["Hello world!"]))
      >>> out["token_ids"].shape   # [1, 8]: [CLS] hello world ! [SEP] [PAD] [PAD] [PAD]
    """

    def __init__(
        self,
        vocab_file,
        max_length,
        lower_case=True,
        strip_accents=None,
        max_chars_per_token=100,
        name=None,
    ):
        super().__init__(name=name)
        if isinstance(max_length, bool) or not isinstance(max_length, int):
            raise TypeError(f"max_length must be an int, got {max_length!r}.")
        if max_length < 2:
            raise ValueError(
                f"max_length must be >= 2 (room for [CLS] and [SEP]), got {max_length}."
            )
        self.vocab_file = os.fspath(vocab_file)
        self.max_length = max_length
        self.lower_case = bool(lower_case)
        self.strip_accents = strip_accents
        self.max_chars_per_token = max_chars_per_token

        tokens = _read_vocab(self.vocab_file)
        self.vocab_size = len(tokens)
        index = {t: i for i, t in enumerate(tokens)}
        self.pad_id = index["[PAD]"]
        self.unk_id = index["[UNK]"]
        self.cls_id = index["[CLS]"]
        self.sep_id = index["[SEP]"]
        self.mask_id = index.get("[MASK]")

        initializer = tf.lookup.TextFileInitializer(
            self.vocab_file,
            key_dtype=tf.string,
            key_index=tf.lookup.TextFileIndex.WHOLE_LINE,
            value_dtype=tf.int64,
            value_index=tf.lookup.TextFileIndex.LINE_NUMBER,
        )
        self.vocab_table = tf.lookup.StaticHashTable(initializer, default_value=-1)
        self._bert_tokenizer = _tf_text().BertTokenizer(
            self.vocab_table,
            token_out_type=tf.int64,
            unknown_token="[UNK]",
            max_chars_per_token=max_chars_per_token,
            lower_case=False,
        )

    def get_config(self):
        """Constructor arguments (all of them), for re-creating the tokenizer."""
        return {
            "vocab_file": self.vocab_file,
            "max_length": self.max_length,
            "lower_case": self.lower_case,
            "strip_accents": self.strip_accents,
            "max_chars_per_token": self.max_chars_per_token,
            "name": self.name,
        }

    @classmethod
    def from_config(cls, config):
        return cls(**config)

    def normalize(self, texts):
        """The in-graph normalisation applied before WordPiece."""
        return normalize_text(texts, lower_case=self.lower_case, strip_accents=self.strip_accents)

    def wordpiece_ids(self, texts):
        """Ragged int64 ``[B, (tokens)]`` WordPiece ids, no special tokens, no truncation."""
        texts = self.normalize(texts)
        ragged = self._bert_tokenizer.tokenize(texts)  # [B, (words), (pieces)]
        return ragged.merge_dims(-2, -1)

    # Control flow below is on static shapes only; AutoGraph conversion would just be slow.
    @tf.autograph.experimental.do_not_convert
    def __call__(self, texts):
        texts = tf.convert_to_tensor(texts, dtype=tf.string)
        rank = texts.shape.rank
        if rank is None:
            raise ValueError("BertTextTokenizer needs inputs of known rank (0 or 1).")
        if rank == 0:
            out = self(tf.expand_dims(texts, 0))
            return {k: tf.squeeze(v, 0) for k, v in out.items()}
        if rank != 1:
            raise ValueError(
                f"BertTextTokenizer expects a scalar or a [B] string tensor; got shape "
                f"{texts.shape}. Reshape to [-1] first."
            )
        pieces = self.wordpiece_ids(texts)[:, : self.max_length - 2]
        n = pieces.nrows(out_type=tf.int64)
        cls = tf.RaggedTensor.from_tensor(tf.fill(tf.stack([n, 1]), tf.constant(self.cls_id, tf.int64)))
        sep = tf.RaggedTensor.from_tensor(tf.fill(tf.stack([n, 1]), tf.constant(self.sep_id, tf.int64)))
        seq = tf.concat([cls, pieces, sep], axis=1)
        ids = seq.to_tensor(default_value=tf.constant(self.pad_id, tf.int64),
                            shape=[None, self.max_length])
        mask = tf.ones_like(seq.values, dtype=tf.int32)
        mask = seq.with_flat_values(mask).to_tensor(default_value=0, shape=[None, self.max_length])
        ids = tf.cast(ids, tf.int32)
        static = tf.TensorShape([texts.shape[0], self.max_length])
        ids = tf.ensure_shape(ids, static)
        mask = tf.ensure_shape(mask, static)
        return {"token_ids": ids, "padding_mask": mask}

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string)])
    def serve(self, texts):
        """Exported entry point: ``[B]`` strings -> ``{"token_ids", "padding_mask"}``."""
        return self(texts)


# ---------------------------------------------------------------------------------------
# Small deterministic vocabulary builder (for tests and toy examples).


def _is_punctuation(ch):
    cp = ord(ch)
    # BERT treats all non-letter/number ASCII as punctuation.
    if 33 <= cp <= 47 or 58 <= cp <= 64 or 91 <= cp <= 96 or 123 <= cp <= 126:
        return True
    return unicodedata.category(ch).startswith("P")


def _python_normalize(text):
    """Pure-Python mirror of :func:`normalize_text` (lower_case=True)."""
    out = []
    for ch in text:
        cat = unicodedata.category(ch)
        if ch in "\t\n\r" or cat == "Zs" or ch in "\u2028\u2029":
            out.append(" ")
        elif cat.startswith("C") or ch == "\ufffd":
            continue
        else:
            out.append(ch)
    text = "".join(out).replace("\u03a3", "\u03c3").lower()
    text = unicodedata.normalize("NFD", text)
    return "".join(ch for ch in text if unicodedata.category(ch) != "Mn")


def _basic_words(text):
    words = []
    for chunk in text.split():
        cur = []
        for ch in chunk:
            if _is_punctuation(ch):
                if cur:
                    words.append("".join(cur))
                    cur = []
                words.append(ch)
            else:
                cur.append(ch)
        if cur:
            words.append("".join(cur))
    return words


def build_wordpiece_vocab(texts, size, path):
    """Writes a small deterministic WordPiece vocabulary and returns its token list.

    Layout (ids = line numbers): ``[PAD]=0, [UNK]=1, [CLS]=2, [SEP]=3, [MASK]=4``, then
    every character of the normalised texts (sorted by code point), then the same
    characters prefixed with ``##``, then the most frequent normalised words of length
    >= 2 (ties broken alphabetically) until ``size`` entries. Normalisation is the
    tokenizer's ``lower_case=True`` one (lower-case, accents stripped), and words are
    split on whitespace and punctuation like BERT's basic tokenizer. Because every
    character is present, any of these texts tokenizes without ``[UNK]``.

    Args:
      texts: iterable of strings.
      size: total vocabulary size; must hold the special tokens and both character sets.
      path: output file path (parent directory must exist).

    Returns:
      the list of tokens written.
    """
    texts = list(texts)
    counts = collections.Counter()
    chars = set()
    for text in texts:
        for word in _basic_words(_python_normalize(text)):
            chars.update(word)
            if len(word) >= 2:
                counts[word] += 1
    chars = sorted(chars)
    tokens = list(SPECIAL_TOKENS) + chars + ["##" + c for c in chars]
    if size < len(tokens):
        raise ValueError(
            f"size={size} is too small: the special tokens and characters of these texts "
            f"already need {len(tokens)} entries."
        )
    words = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))
    tokens += [w for w, _ in words[: size - len(tokens)]]
    with open(path, "w", encoding="utf-8") as f:
        for tok in tokens:
            f.write(tok + "\n")
    return tokens
