"""Tests for samtone_tf.data (pure TF; identical under Keras 2 and Keras 3)."""

import json
import os
import warnings

import numpy as np
import pytest
import tensorflow as tf

from samtone_tf.data import (
    EmptyTextWarning,
    dense_id_maps,
    load_beir,
    make_pair_dataset,
    refuse_empty_text,
    training_pairs_from_qrels,
)
from samtone_tf.data.tokenization import BertTextTokenizer, build_wordpiece_vocab
from tests._requirements import needs_data

pytestmark = pytest.mark.keras_independent  # run once: tests/conftest.py

SCIFACT = os.path.normpath(os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data", "scifact"))
needs_scifact = needs_data(SCIFACT)


# ---------------------------------------------------------------------------- BEIR


@needs_scifact
def test_load_real_scifact_counts():
    corpus, queries, qrels = load_beir(SCIFACT, "train")
    assert len(corpus) == 5183
    assert len(queries) == 1109
    assert len(qrels) == 809
    assert sum(len(v) for v in qrels.values()) == 919
    # First corpus line: _id 4983, title "Microstructural development ..."; title + " " + text.
    assert next(iter(corpus)) == "4983"
    assert corpus["4983"].startswith("Microstructural development of human newborn cerebral white matter")
    assert "imaging. Alterations of the architecture" in corpus["4983"]
    assert queries["0"] == "0-dimensional biomaterials lack inductive properties."
    assert qrels["0"] == {"31715818": 1}  # first qrels line after the header
    _, _, test_qrels = load_beir(SCIFACT, "test")
    assert (len(test_qrels), sum(len(v) for v in test_qrels.values())) == (300, 339)
    pairs = training_pairs_from_qrels(corpus, queries, qrels)
    assert len(pairs) == 919  # all SciFact scores are 1
    assert pairs[0] == ("0", queries["0"], "31715818", corpus["31715818"])


def _write_beir(root, corpus_lines, query_lines, qrels_text, split="train"):
    os.makedirs(os.path.join(root, "qrels"), exist_ok=True)
    with open(os.path.join(root, "corpus.jsonl"), "w", encoding="utf-8") as f:
        f.write("\n".join(corpus_lines) + "\n")
    with open(os.path.join(root, "queries.jsonl"), "w", encoding="utf-8") as f:
        f.write("\n".join(query_lines) + "\n")
    with open(os.path.join(root, "qrels", split + ".tsv"), "w", encoding="utf-8") as f:
        f.write(qrels_text)
    return str(root)


GOOD_CORPUS = [
    json.dumps({"_id": "d1", "title": "T1", "text": "body one"}),
    json.dumps({"_id": "d2", "title": "", "text": "body two"}),
    json.dumps({"_id": 3, "text": "no title"}),
]
GOOD_QUERIES = [json.dumps({"_id": "q1", "text": "first?"}), json.dumps({"_id": "q2", "text": "second?"})]
GOOD_QRELS = "query-id\tcorpus-id\tscore\nq1\td2\t1\nq1\td1\t2\nq2\t3\t0\nq2\td1\t1\n"


def test_load_beir_small_and_pairs(tmp_path):
    root = _write_beir(tmp_path, GOOD_CORPUS, GOOD_QUERIES, GOOD_QRELS)
    corpus, queries, qrels = load_beir(root, "train")
    assert corpus == {"d1": "T1 body one", "d2": "body two", "3": "no title"}
    assert queries == {"q1": "first?", "q2": "second?"}
    assert qrels == {"q1": {"d2": 1, "d1": 2}, "q2": {"3": 0, "d1": 1}}
    pairs = training_pairs_from_qrels(corpus, queries, qrels)
    # score 0 for (q2, 3) is dropped; qrels order kept.
    assert pairs == [
        ("q1", "first?", "d2", "body two"),
        ("q1", "first?", "d1", "T1 body one"),
        ("q2", "second?", "d1", "T1 body one"),
    ]
    with pytest.raises(ValueError, match="'zz'.*not in corpus"):
        training_pairs_from_qrels(corpus, queries, {"q1": {"zz": 1}})


@pytest.mark.parametrize(
    "corpus, queries, qrels, message",
    [
        (GOOD_CORPUS[:1] + ['{"_id": "d2", "text": '] + GOOD_CORPUS[2:], GOOD_QUERIES, GOOD_QRELS,
         r"corpus\.jsonl, line 2: malformed JSON"),
        (GOOD_CORPUS, GOOD_QUERIES[:1] + [json.dumps({"_id": "q2"})], GOOD_QRELS,
         r"queries\.jsonl, line 2: missing field 'text'"),
        (GOOD_CORPUS + [json.dumps({"_id": "d1", "text": "again"})], GOOD_QUERIES, GOOD_QRELS,
         r"corpus\.jsonl, line 4: duplicate document id 'd1' \(first on line 1\)"),
        (GOOD_CORPUS, GOOD_QUERIES, GOOD_QRELS + "q9\td1\t1\n",
         r"train\.tsv, line 6: query id 'q9' not in queries\.jsonl"),
        (GOOD_CORPUS, GOOD_QUERIES, GOOD_QRELS + "q1\tnope\t1\n",
         r"train\.tsv, line 6: document id 'nope' not in corpus\.jsonl"),
        (GOOD_CORPUS, GOOD_QUERIES, GOOD_QRELS + "q1 d1 1\n",
         r"train\.tsv, line 6: expected 3 tab-separated columns"),
        (GOOD_CORPUS, GOOD_QUERIES, GOOD_QRELS + "q1\td1\thigh\n",
         r"train\.tsv, line 6: score 'high' is not an integer"),
        (GOOD_CORPUS, [json.dumps({"_id": "q1", "text": 5})], GOOD_QRELS,
         r"queries\.jsonl, line 1: field 'text' must be a string"),
        (GOOD_CORPUS + [json.dumps({"text": "no id"})], GOOD_QUERIES, GOOD_QRELS,
         r"corpus\.jsonl, line 4: missing field '_id'"),
    ],
)
def test_load_beir_errors_name_file_and_line(tmp_path, corpus, queries, qrels, message):
    root = _write_beir(tmp_path, corpus, queries, qrels)
    with pytest.raises(ValueError, match=message):
        load_beir(root, "train")


@pytest.mark.parametrize("name, line", [("corpus.jsonl", 2), ("queries.jsonl", 1),
                                        (os.path.join("qrels", "train.tsv"), 3)])
def test_load_beir_non_utf8_bytes_name_file_and_line(tmp_path, name, line):
    root = _write_beir(tmp_path, GOOD_CORPUS, GOOD_QUERIES, GOOD_QRELS)
    path = os.path.join(root, name)
    with open(path, "rb") as f:
        rows = f.read().split(b"\n")
    rows[line - 1] = rows[line - 1].replace(b"d", b"\xff", 1)  # a byte UTF-8 never uses
    with open(path, "wb") as f:
        f.write(b"\n".join(rows))
    with pytest.raises(ValueError, match=rf"{os.path.basename(name)}, line {line}: not valid UTF-8"):
        load_beir(root, "train")


EMPTY_DOCS = [json.dumps({"_id": "d4", "title": "", "text": ""}),
              json.dumps({"_id": "d5", "title": None, "text": " \t"})]
EMPTY_QUERY = json.dumps({"_id": "q3", "text": "  "})


def _empty_text_warnings(record):
    return [str(w.message) for w in record if issubclass(w.category, EmptyTextWarning)]


def test_load_beir_keeps_empty_texts_with_one_warning_per_file(tmp_path):
    root = _write_beir(tmp_path, GOOD_CORPUS + EMPTY_DOCS, GOOD_QUERIES + [EMPTY_QUERY],
                       GOOD_QRELS + "q3\td4\t1\nq1\td5\t0\n")
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        corpus, queries, qrels = load_beir(root, "train")
    corpus_msg, queries_msg = _empty_text_warnings(record)
    assert corpus_msg == (
        f"{os.path.join(root, 'corpus.jsonl')}: 2 documents have an empty title and text "
        "(ids 'd4', 'd5'); they are embedded as empty text. Pass strict_text=True / --strict "
        "to refuse them.")
    assert queries_msg.startswith(f"{os.path.join(root, 'queries.jsonl')}: 1 query has an "
                                  "empty text (id 'q3'); they are embedded as empty text.")
    # kept, in file order, as "": every query and judgment is still there
    assert list(corpus) == ["d1", "d2", "3", "d4", "d5"] and corpus["d4"] == corpus["d5"] == ""
    assert queries == {"q1": "first?", "q2": "second?", "q3": ""}
    assert qrels["q3"] == {"d4": 1} and qrels["q1"]["d5"] == 0
    assert training_pairs_from_qrels(corpus, queries, qrels)[-1] == ("q3", "", "d4", "")


def test_load_beir_names_only_the_first_five_empty_ids(tmp_path):
    empty = [json.dumps({"_id": f"e{i}", "text": ""}) for i in range(7)]
    root = _write_beir(tmp_path, GOOD_CORPUS + empty, GOOD_QUERIES, GOOD_QRELS)
    with pytest.warns(EmptyTextWarning, match=r"7 documents have an empty title and text "
                      r"\(ids 'e0', 'e1', 'e2', 'e3', 'e4', \.\.\.\)"):
        corpus, _, _ = load_beir(root, "train")
    assert len(corpus) == 10


@pytest.mark.parametrize("corpus, queries, message", [
    (GOOD_CORPUS + EMPTY_DOCS, GOOD_QUERIES,
     r"corpus\.jsonl, line 4: document 'd4' has an empty title and text"),
    (GOOD_CORPUS, GOOD_QUERIES + [EMPTY_QUERY], r"queries\.jsonl, line 3: query 'q3' has an empty text"),
])
def test_load_beir_strict_text_refuses_empty_texts(tmp_path, corpus, queries, message):
    root = _write_beir(tmp_path, corpus, queries, GOOD_QRELS)
    with pytest.raises(ValueError, match=message):
        load_beir(root, "train", strict_text=True)
    with refuse_empty_text(), pytest.raises(ValueError, match=message):
        load_beir(root, "train")  # strict_text=None follows the context (the CLI's --strict)
    with refuse_empty_text(), pytest.warns(EmptyTextWarning):
        load_beir(root, "train", strict_text=False)  # an explicit argument wins
    with pytest.warns(EmptyTextWarning):
        load_beir(root, "train")  # the context is gone after the block


def test_load_beir_missing_file_and_lenient_mode(tmp_path):
    root = _write_beir(tmp_path, GOOD_CORPUS, GOOD_QUERIES, GOOD_QRELS + "q9\td1\t1\n")
    with pytest.raises(FileNotFoundError, match=r"qrels.*dev\.tsv"):
        load_beir(root, "dev")
    _, _, qrels = load_beir(root, "train", strict=False)
    assert "q9" not in qrels and len(qrels) == 2


# ------------------------------------------------------------------- pair dataset


@pytest.fixture(scope="module")
def tokenizers(tmp_path_factory):
    texts = ["what is a cat", "what is a dog", "cats purr", "dogs bark loudly", "fish swim"]
    path = str(tmp_path_factory.mktemp("v") / "vocab.txt")
    build_wordpiece_vocab(texts, 200, path)
    return BertTextTokenizer(path, max_length=6), BertTextTokenizer(path, max_length=9)


PAIRS = [
    ("q0", "what is a cat", "d0", "cats purr"),
    ("q1", "what is a dog", "d1", "dogs bark loudly"),
    ("q0", "what is a cat", "d2", "fish swim"),  # duplicate query q0
    ("q2", "fish", "d0", "cats purr"),  # duplicate document d0
    ("q3", "dog", "d1", "dogs bark loudly"),  # duplicate document d1
]


def test_dense_id_maps_first_appearance():
    q, d = dense_id_maps(PAIRS)
    assert q == {"q0": 0, "q1": 1, "q2": 2, "q3": 3}
    assert d == {"d0": 0, "d1": 1, "d2": 2}


def test_pair_dataset_shapes_dtypes_and_labels(tokenizers):
    qtok, dtok = tokenizers
    ds = make_pair_dataset(PAIRS, (qtok, dtok), batch_size=5, shuffle=False,
                           padding="max_length")
    features, labels = ds.element_spec
    assert features["query_token_ids"].shape.as_list() == [5, 6]  # static batch
    assert features["document_padding_mask"].shape.as_list() == [5, 9]
    assert all(spec.dtype == tf.int32 for spec in features.values())
    assert labels.shape.as_list() == [5, 2] and labels.dtype == tf.float32
    batches = list(ds.as_numpy_iterator())
    assert len(batches) == 1
    feats, labs = batches[0]
    np.testing.assert_array_equal(labs, [[0, 0], [1, 1], [0, 2], [2, 0], [3, 1]])
    # Rows with the same query text tokenise identically; same for documents.
    np.testing.assert_array_equal(feats["query_token_ids"][0], feats["query_token_ids"][2])
    np.testing.assert_array_equal(feats["document_token_ids"][0], feats["document_token_ids"][3])
    np.testing.assert_array_equal(feats["query_token_ids"][0], qtok(tf.constant("what is a cat"))["token_ids"])
    np.testing.assert_array_equal(feats["document_token_ids"][1], dtok(tf.constant("dogs bark loudly"))["token_ids"])


def test_pair_dataset_empty_texts_are_cls_sep(tokenizers):
    """An empty query / document (kept by load_beir with a warning) is the tokenizer's
    empty input: [CLS] [SEP] then padding, like a BERT tokenizer's encoding of ""."""
    qtok, dtok = tokenizers
    pairs = PAIRS[:1] + [("q9", "", "d9", ""), ("q8", " \t", "d8", "fish")]
    feats, _ = next(make_pair_dataset(pairs, (qtok, dtok), batch_size=3, shuffle=False,
                                      padding="max_length").as_numpy_iterator())
    for side, tok in (("query", qtok), ("document", dtok)):
        ids, mask = feats[f"{side}_token_ids"][1], feats[f"{side}_padding_mask"][1]
        np.testing.assert_array_equal(ids, [tok.cls_id, tok.sep_id] + [tok.pad_id] * (tok.max_length - 2))
        np.testing.assert_array_equal(mask, [1, 1] + [0] * (tok.max_length - 2))
    np.testing.assert_array_equal(feats["query_token_ids"][2], feats["query_token_ids"][1])


def test_pair_dataset_drop_remainder_shuffle_repeat(tokenizers):
    qtok, _ = tokenizers
    ds = make_pair_dataset(PAIRS, qtok, batch_size=2, shuffle=True, seed=3,
                           padding="max_length")
    batches = list(ds.as_numpy_iterator())
    assert len(batches) == 2  # 5 pairs -> 2 full batches, remainder dropped
    assert ds.element_spec[0]["document_token_ids"].shape.as_list() == [2, 6]  # single tokenizer
    order = [tuple(row) for b in batches for row in b[1]]
    again = [tuple(row) for b in make_pair_dataset(PAIRS, qtok, 2, seed=3).as_numpy_iterator() for row in b[1]]
    assert order == again  # same seed, same order
    rep = make_pair_dataset(PAIRS, qtok, 2, seed=3, repeat=True, padding="max_length")
    assert rep.cardinality().numpy() == tf.data.INFINITE_CARDINALITY
    first_epochs = [tuple(map(tuple, b[1])) for b in rep.take(6).as_numpy_iterator()]
    # Each epoch is 2 batches of 4 distinct pairs (no batch straddles epochs).
    for epoch in range(3):
        rows = first_epochs[2 * epoch] + first_epochs[2 * epoch + 1]
        assert len(set(rows)) == 4
    assert len(set(first_epochs)) > 2  # reshuffled across epochs
    # A repeated dataset's order depends on (seed, epoch) alone: a second iterator of the same
    # object, and skip(k), replay the same batches (resumed training relies on it).
    labels = lambda d, n: [tuple(map(tuple, b[1])) for b in d.take(n).as_numpy_iterator()]  # noqa: E731
    assert labels(rep, 6) == first_epochs
    assert labels(rep.skip(3), 3) == first_epochs[3:]
    assert labels(make_pair_dataset(PAIRS, qtok, 2, seed=4, repeat=True), 6) != first_epochs
    unshuffled = labels(make_pair_dataset(PAIRS, qtok, 2, shuffle=False, repeat=True), 4)
    assert unshuffled[:2] == unshuffled[2:] == [((0, 0), (1, 1)), ((0, 2), (2, 0))]
    # The texts travel with their labels.
    features, batch_labels = next(iter(rep))
    single = make_pair_dataset(PAIRS, qtok, 1, shuffle=False, padding="max_length")
    by_label = {tuple(l[0]): f["query_token_ids"][0] for f, l in single.as_numpy_iterator()}
    for row, ids in zip(batch_labels.numpy(), features["query_token_ids"].numpy()):
        np.testing.assert_array_equal(ids, by_label[tuple(row)])


def test_pair_dataset_hard_negatives(tokenizers):
    qtok, dtok = tokenizers
    hard = [["fish swim", "dogs bark loudly"]] * 4 + [["cats purr", "fish swim"]]
    ds = make_pair_dataset(PAIRS, (qtok, dtok), 5, shuffle=False, hard_negatives=hard,
                           padding="max_length")
    spec = ds.element_spec[0]
    assert spec["hard_negative_document_token_ids"].shape.as_list() == [5, 2, 9]
    feats, _ = next(iter(ds))
    expect = dtok(tf.constant(["cats purr", "fish swim"]))
    np.testing.assert_array_equal(feats["hard_negative_document_token_ids"][4], expect["token_ids"])
    np.testing.assert_array_equal(feats["hard_negative_document_padding_mask"][4], expect["padding_mask"])
    # labels: (query id, document id, the hard negatives' document ids); a hard negative is
    # known by its text: "fish swim" is d2, "dogs bark loudly" d1, "cats purr" d0
    labels = next(iter(ds))[1].numpy()
    np.testing.assert_array_equal(labels, [[0, 0, 2, 1], [1, 1, 2, 1], [0, 2, 2, 1],
                                           [2, 0, 2, 1], [3, 1, 0, 2]])
    # explicit ids, one unseen (numbered after the pairs' documents)
    ids = [["d2", "d9"]] * 4 + [["d0", "d2"]]
    labels = next(iter(make_pair_dataset(PAIRS, (qtok, dtok), 5, shuffle=False,
                                         hard_negatives=hard, hard_negative_ids=ids)))[1]
    np.testing.assert_array_equal(labels.numpy()[:, 2:], [[2, 3]] * 4 + [[0, 2]])
    unseen = [["not a document of any pair", "dogs bark loudly"]] * 5
    labels = next(iter(make_pair_dataset(PAIRS, (qtok, dtok), 5, shuffle=False,
                                         hard_negatives=unseen)))[1]
    np.testing.assert_array_equal(labels.numpy()[:, 2:], [[3, 1]] * 5)
    with pytest.raises(ValueError, match="one id per hard negative text"):
        make_pair_dataset(PAIRS, qtok, 2, hard_negatives=hard, hard_negative_ids=[["d0"]] * 5)
    with pytest.raises(ValueError, match="hard_negative_ids given without hard_negatives"):
        make_pair_dataset(PAIRS, qtok, 2, hard_negative_ids=ids)
    with pytest.raises(ValueError, match=r"hard_negatives\[2\] has 1 texts"):
        make_pair_dataset(PAIRS, qtok, 2, hard_negatives=[["a", "b"], ["a", "b"], ["a"], ["a", "b"], ["a", "b"]])
    with pytest.raises(ValueError, match="one list per pair"):
        make_pair_dataset(PAIRS, qtok, 2, hard_negatives=[["a"]])


def test_pair_dataset_argument_errors(tokenizers, monkeypatch):
    qtok, _ = tokenizers
    with pytest.raises(ValueError, match="exceeds the 5 pairs"):
        make_pair_dataset(PAIRS, qtok, 6)
    with pytest.raises(ValueError, match="positive int"):
        make_pair_dataset(PAIRS, qtok, 0)
    with pytest.raises(ValueError, match="pair 0 has 3 fields"):
        make_pair_dataset([("a", "b", "c")], qtok, 1)
    import samtone_tf.data.pairs as data_module

    monkeypatch.setattr(data_module, "MAX_EXACT_FLOAT32_ID", 3)  # 4 distinct query ids > 3
    with pytest.raises(ValueError, match="4 distinct query ids exceed"):
        dense_id_maps(PAIRS)
