"""Tests for samtone_tf.data.reqa (pure Python; identical under Keras 2 and Keras 3)."""

import copy
import doctest
import json
import os
import pickle
import warnings

import pytest

import samtone_tf.data.reqa as reqa_module
from samtone_tf.data import training_pairs_from_qrels
from samtone_tf.data.reqa import ARTICLE_INDEX_KEY, build_reqa, load_reqa, split_by_article, split_sentences
from tests._requirements import needs_data

pytestmark = pytest.mark.keras_independent  # run once: tests/conftest.py

SQUAD = os.path.normpath(
    os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data", "squad", "squad_v1.1_train_subset.json")
)
needs_squad = needs_data(SQUAD)


def _texts(text):
    return [text[s:e] for s, e in split_sentences(text)]


# ------------------------------------------------------------------ sentence split


@pytest.mark.parametrize(
    "text, expected",
    [
        ("One. Two! Three? Four", ["One.", "Two!", "Three?", "Four"]),
        ("  Lead space.  Two   spaces.  ", ["Lead space.", "Two   spaces."]),
        ('He said "Go." Then left.', ['He said "Go."', "Then left."]),
        ("Built (in 1990.) Later (1991) razed.", ["Built (in 1990.)", "Later (1991) razed."]),
        ("Mr. Smith and Dr. Jones met at St. Paul's.", ["Mr. Smith and Dr. Jones met at St. Paul's."]),
        ("J. R. R. Tolkien wrote. The U.S. Army came.", ["J. R. R. Tolkien wrote.", "The U.S. Army came."]),
        ("It was approx. five. 1990 came.", ["It was approx. five.", "1990 came."]),
        ("Lower case after. stays together", ["Lower case after. stays together"]),
        ("Wait... What?! Yes.", ["Wait...", "What?!", "Yes."]),
        ("He won in 2010. 2011 was worse.", ["He won in 2010.", "2011 was worse."]),
        ("Chopin's Op. 28 preludes. No. 4 is sad.", ["Chopin's Op. 28 preludes.", "No. 4 is sad."]),
        ("", []),
        ("   ", []),
    ],
)
def test_split_sentences_cases(text, expected):
    assert _texts(text) == expected


def test_split_sentences_offsets_cover_text_and_doctest():
    text = 'Dr. Who met J. K. Rowling. "Hi!" she said. It was 3 p.m. Then 1990 came.'
    spans = split_sentences(text)
    # Non-overlapping, ordered, stripped; only whitespace between sentences.
    for (s1, e1), (s2, e2) in zip(spans, spans[1:]):
        assert e1 <= s2 and text[e1:s2].isspace()
    assert all(text[s:e] == text[s:e].strip() for s, e in spans)
    assert doctest.testmod(reqa_module).failed == 0


# ------------------------------------------------------------------ build_reqa


def _squad(*articles):
    return {"version": "1.1", "data": list(articles)}


def _article(title, *paragraphs):
    return {"title": title, "paragraphs": list(paragraphs)}


def _para(context, *qas):
    return {"context": context, "qas": list(qas)}


def _qa(qid, question, context, answer, occurrence=0):
    start = -1
    for _ in range(occurrence + 1):
        start = context.index(answer, start + 1)
    return {"id": qid, "question": question, "answers": [{"text": answer, "answer_start": start}]}


C0 = "Paris is the capital of France. It has the Eiffel Tower. See also."
C1 = "Berlin is the capital of Germany. See also."
C2 = "Rome is old. Rome is in Italy."


def _small():
    return _squad(
        _article(
            "A",
            _para(C0, _qa("q0", "Capital of France?", C0, "Paris"), _qa("q1", "Tower?", C0, "Eiffel Tower")),
            _para(C1, _qa("q2", "Capital of Germany?", C1, "Berlin"), _qa("q3", "See?", C1, "See also")),
        ),
        _article("B", _para(C2, _qa("q4", "Where is Rome?", C2, "Italy"))),
    )


def test_build_reqa_ids_qrels_and_dedup():
    corpus, queries, qrels = build_reqa(_small())
    assert corpus == {
        "0-0-0": "Paris is the capital of France.",
        "0-0-1": "It has the Eiffel Tower.",
        "0-0-2": "See also.",
        "0-1-0": "Berlin is the capital of Germany.",
        # "0-1-1" is "See also." again: merged into "0-0-2".
        "1-0-0": "Rome is old.",
        "1-0-1": "Rome is in Italy.",
    }
    assert queries == {
        "q0": "Capital of France?", "q1": "Tower?", "q2": "Capital of Germany?", "q3": "See?", "q4": "Where is Rome?"
    }
    assert qrels == {"q0": {"0-0-0": 1}, "q1": {"0-0-1": 1}, "q2": {"0-1-0": 1}, "q3": {"0-0-2": 1}, "q4": {"1-0-1": 1}}
    data = build_reqa(_small())
    assert (data.stats.articles, data.stats.paragraphs, data.stats.sentences) == (2, 3, 7)
    assert (data.stats.candidates, data.stats.duplicate_sentences, data.stats.kept_questions) == (6, 1, 5)
    assert data.sentence_spans["0-0-1"] == (0, 0, C0.index("It"), C0.index(" See"))
    clone = pickle.loads(pickle.dumps(data))
    assert clone == data and clone.stats == data.stats and copy.deepcopy(data).sentence_spans == data.sentence_spans
    pairs = training_pairs_from_qrels(*data)
    assert pairs[1] == ("q1", "Tower?", "0-0-1", "It has the Eiffel Tower.")

    corpus_nd, _, qrels_nd = build_reqa(_small(), deduplicate=False)
    assert corpus_nd["0-1-1"] == "See also." and len(corpus_nd) == 7
    assert qrels_nd["q3"] == {"0-1-1": 1}


def test_build_reqa_answer_crossing_and_multiple_answers():
    ctx = "Alpha beta. Gamma delta. Epsilon."
    qa = {
        "id": "m",
        "question": "?",
        "answers": [
            {"text": "beta. Gamma", "answer_start": ctx.index("beta")},  # starts in sentence 0
            {"text": "Epsilon", "answer_start": ctx.index("Epsilon")},
            {"text": "beta", "answer_start": ctx.index("beta")},  # same sentence again
        ],
    }
    data = build_reqa(_squad(_article("T", _para(ctx, qa))))
    assert data.qrels == {"m": {"0-0-0": 1, "0-0-2": 1}}
    assert data.stats.answers_crossing_sentences == 1
    assert data.stats.questions_with_several_sentences == 1


def _bad_answer_json():
    doc = _small()
    qas = doc["data"][0]["paragraphs"][1]["qas"]
    qas[0]["answers"][0]["answer_start"] = 999  # out of range
    qas[1]["answers"][0]["text"] = "Xee also"  # mismatch (same length as "See also")
    doc["data"][1]["paragraphs"][0]["qas"][0]["answers"] = []  # no answers
    return doc


def test_invalid_answers_strict_error_names_location(tmp_path):
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(_bad_answer_json()))
    with pytest.raises(ValueError, match=r"bad\.json: data\[0\]\.paragraphs\[1\]\.qas\[0\]\.answers\[0\] "
                                         r"\(question 'q2'\): answer_start 999 .*outside the context"):
        load_reqa(path)


def test_invalid_answers_skipped_and_counted_when_not_strict():
    with pytest.warns(UserWarning, match=r"skipped 3 of 5 questions and 2 answers \(1 answer_start out of range, "
                                         r"1 answer text mismatches, 1 questions without answers\)"):
        data = build_reqa(_bad_answer_json(), strict=False)
    assert set(data.queries) == set(data.qrels) == {"q0", "q1"}
    s = data.stats
    assert (s.questions, s.kept_questions, s.skipped_questions, s.skipped_answers) == (5, 2, 3, 2)
    assert (s.answers_out_of_range, s.answers_text_mismatch, s.questions_without_answers) == (1, 1, 1)
    # Their sentences stay candidates.
    assert "0-1-0" in data.corpus and "1-0-1" in data.corpus


def test_no_warning_when_nothing_skipped():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        build_reqa(_small(), strict=False)


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda d: d.pop("data"), r"top level: missing field 'data'"),
        (lambda d: d["data"][1].pop("paragraphs"), r"data\[1\]: missing field 'paragraphs'"),
        (lambda d: d["data"][0]["paragraphs"][1].pop("context"), r"data\[0\]\.paragraphs\[1\]: missing field 'context'"),
        (lambda d: d["data"][0]["paragraphs"][0]["qas"][1].pop("question"),
         r"data\[0\]\.paragraphs\[0\]\.qas\[1\]: missing field 'question'"),
        (lambda d: d["data"][0]["paragraphs"][0]["qas"][1]["answers"][0].update(answer_start="7"),
         r"data\[0\]\.paragraphs\[0\]\.qas\[1\]\.answers\[0\]\.answer_start must be int, got '7'"),
        (lambda d: d["data"][1]["paragraphs"][0]["qas"][0].update(id="q0"),
         r"data\[1\]\.paragraphs\[0\]\.qas\[0\]: duplicate question id 'q0' \(first at data\[0\]\.paragraphs\[0\]\.qas\[0\]\)"),
        (lambda d: d["data"].__setitem__(0, ["not", "an", "object"]), r"data\[0\] must be a JSON object"),
    ],
)
def test_structural_errors_always_raise_with_location(tmp_path, mutate, message):
    doc = _small()
    mutate(doc)
    path = tmp_path / "squad.json"
    path.write_text(json.dumps(doc))
    for strict in (True, False):
        with pytest.raises(ValueError, match=r"squad\.json: " + message):
            build_reqa(str(path), strict=strict)


def test_malformed_json_and_missing_file(tmp_path):
    path = tmp_path / "broken.json"
    path.write_text('{"data": [')
    with pytest.raises(ValueError, match=r"broken\.json: malformed JSON at line 1"):
        build_reqa(path)
    with pytest.raises(FileNotFoundError, match="nope.json"):
        build_reqa(tmp_path / "nope.json")


def test_a_folder_is_named_as_a_folder_not_missing(tmp_path, capsys):
    folder = tmp_path / "squad_dir"
    folder.mkdir()
    for load in (build_reqa, lambda path: split_by_article(path, 0.2, 0)):
        with pytest.raises(ValueError, match=r"squad_dir' is a folder; SQuAD data is one JSON "
                           r"file \(a SQuAD v1\.1 file"):
            load(str(folder))
    from samtone_tf import cli, evaluation

    for split in ("all", "dev"):
        with pytest.raises(ValueError, match=r"--format squad expects a SQuAD v1\.1 JSON file "
                           r"\(such as dev-v1\.1\.json\), got the folder '.*squad_dir'"):
            evaluation.load_eval_data(str(folder), "squad", split)
    assert cli.main(["evaluate", "--model", "unused", "--data", str(folder),
                     "--format", "squad"]) == 2
    err = capsys.readouterr().err
    assert "expects a SQuAD v1.1 JSON file" in err and "got the folder" in err
    assert "does not exist" not in err


# ------------------------------------------------------------------ split_by_article


def _many_articles(n):
    articles = []
    for a in range(n):
        ctx = f"Article {a} first. Article {a} second."
        articles.append(_article(f"T{a}", _para(ctx, _qa(f"q{a}", f"Which {a}?", ctx, "second"))))
    return _squad(*articles)


def test_split_by_article_deterministic_disjoint_and_ids_stable():
    doc = _many_articles(10)
    original = copy.deepcopy(doc)
    train, dev = split_by_article(doc, 0.3, seed=5)
    assert doc == original  # input untouched
    assert len(dev["data"]) == 3 and len(train["data"]) == 7
    train_idx = [a[ARTICLE_INDEX_KEY] for a in train["data"]]
    dev_idx = [a[ARTICLE_INDEX_KEY] for a in dev["data"]]
    assert sorted(train_idx + dev_idx) == list(range(10)) and train_idx == sorted(train_idx)
    assert split_by_article(doc, 0.3, seed=5) == (train, dev)
    other = [split_by_article(doc, 0.3, seed=s)[1] for s in range(6)]
    assert len({tuple(a["title"] for a in d["data"]) for d in other}) > 1  # seed matters
    # Candidate ids keep the unsplit file's article index.
    full = build_reqa(doc)
    dev_data = build_reqa(dev)
    for cid, text in dev_data.corpus.items():
        assert full.corpus[cid] == text
    assert all(full.qrels[q] == r for q, r in dev_data.qrels.items())
    assert split_by_article(_many_articles(3), 0.01, 0)[1]["data"].__len__() == 1  # at least one dev article
    assert len(split_by_article(_many_articles(3), 0.99, 0)[0]["data"]) == 1  # at least one train article
    with pytest.raises(ValueError, match=r"dev_fraction must be a number in \(0, 1\)"):
        split_by_article(doc, 1.0, 0)
    with pytest.raises(ValueError, match="at least 2"):
        split_by_article(_many_articles(1), 0.5, 0)


# ------------------------------------------------------------------ real data


@pytest.fixture(scope="module")
def real():
    return build_reqa(SQUAD)


@needs_squad
def test_real_squad_counts(real):
    s = real.stats
    # MANIFEST.md: 44 articles, 2,430 paragraphs, 11,877 questions.
    assert (s.articles, s.paragraphs, s.questions) == (44, 2430, 11877)
    # Measured with this splitter (pin them: a splitter change must be deliberate).
    assert (s.sentences, s.duplicate_sentences, s.candidates) == (10293, 16, 10277)
    assert (s.skipped_questions, s.skipped_answers, s.kept_questions) == (0, 0, 11877)
    assert s.answers_crossing_sentences == 3
    assert len(real.corpus) == 10277 and len(real.queries) == len(real.qrels) == 11877
    q = "5733be284776f41900661182"  # first question; answer_start 515 in the first paragraph
    assert real.queries[q] == "To whom did the Virgin Mary allegedly appear in 1858 in Lourdes France?"
    (cid,) = real.qrels[q]
    assert cid.startswith("0-0-") and "Saint Bernadette Soubirous" in real.corpus[cid]


@needs_squad
def test_real_squad_every_relevant_sentence_contains_its_answer_start(real):
    with open(SQUAD, encoding="utf-8") as f:
        doc = json.load(f)
    checked = 0
    for a, article in enumerate(doc["data"]):
        for p, para in enumerate(article["paragraphs"]):
            for qa in para["qas"]:
                (cid,) = real.qrels[qa["id"]]
                art, par, start, end = real.sentence_spans[cid]
                answer = qa["answers"][0]
                if (art, par) == (a, p):  # not a de-duplicated sentence from elsewhere
                    assert start <= answer["answer_start"] < end or para["context"][end:answer["answer_start"]].isspace()
                else:
                    assert real.corpus[cid] in para["context"]
                checked += 1
    assert checked == 11877


@needs_squad
def test_real_squad_split_has_no_paragraph_leak(real):
    train, dev = split_by_article(SQUAD, 0.2, seed=0)
    assert (len(train["data"]), len(dev["data"])) == (35, 9)
    train_ctx = {p["context"] for a in train["data"] for p in a["paragraphs"]}
    dev_ctx = {p["context"] for a in dev["data"] for p in a["paragraphs"]}
    assert not train_ctx & dev_ctx
    assert sum(len(a["paragraphs"]) for d in (train, dev) for a in d["data"]) == 2430  # none lost
    # 2,429 distinct contexts: article 39 repeats one paragraph (its paragraphs 7 and 11).
    assert len(train_ctx) + len(dev_ctx) == 2429
    train_data, dev_data = build_reqa(train), build_reqa(dev)
    assert not set(train_data.queries) & set(dev_data.queries)
    assert len(train_data.queries) + len(dev_data.queries) == 11877
    # Dev candidates come only from dev articles.
    dev_articles = {a[ARTICLE_INDEX_KEY] for a in dev["data"]}
    assert {int(cid.split("-")[0]) for cid in dev_data.corpus} == dev_articles
