"""ReQA / MultiReQA sentence-retrieval data from SQuAD v1.1 JSON.

ReQA (Ahmad et al. 2019, arXiv:1907.04780) and MultiReQA (Guo et al. 2021,
arXiv:2005.02507) turn a reading-comprehension set into a retrieval task: the
candidates are *all sentences of all paragraphs*, and a question's relevant
candidate is the sentence that contains its answer. Metrics are P@1 and MRR
(see :func:`samtone_tf.evaluation.retrieval.evaluate_run`).

The output has the shape of :func:`samtone_tf.data.load_beir`: ``corpus`` (candidate
id -> sentence), ``queries`` (SQuAD question id -> question), ``qrels`` (question id ->
``{candidate id: 1}``), so :func:`samtone_tf.data.training_pairs_from_qrels` gives the
(question, answer sentence) training pairs.

Choices (deterministic; all documented here and in the functions):

* **Sentence splitter** (:func:`split_sentences`): a regular expression, no model.
  A boundary is one or more of ``.!?``, then any closing quotes/brackets, then
  whitespace, then (optionally an opening quote/bracket and) an upper-case letter or a
  digit. A single ``.`` does *not* end a sentence after a known abbreviation
  (``Mr.``, ``Dr.``, ``St.``, ``e.g.``, ``No.``, months, ... see ``ABBREVIATIONS``) or
  after a single letter (initials and ``U.S.``). Sentences keep their character
  offsets into the paragraph; a sentence is the text from its first non-space character
  to its last, and the whitespace after it belongs to it for locating answers, so
  every offset of the paragraph falls in exactly one sentence.
* **Relevant sentence**: the sentence containing the answer's ``answer_start``
  (an answer running over a sentence boundary counts for the sentence it starts in;
  :class:`ReQAStats` counts those). With several answers (SQuAD dev) every valid
  answer's sentence is relevant.
* **Candidate ids**: ``f"{article_index}-{paragraph_index}-{sentence_index}"``,
  indices into the *original* file (kept across :func:`split_by_article`).
* **Duplicate sentences**: with ``deduplicate=True`` (default) identical sentence texts
  (after stripping surrounding whitespace) are one candidate, with the id of the first
  occurrence in file order, and questions about any copy point to it. Identical texts
  get identical embeddings, so keeping copies would make "which copy is relevant"
  a coin flip in the metrics. ``deduplicate=False`` keeps every occurrence.
* **Malformed input**: structural problems (not a SQuAD object, missing or ill-typed
  fields, no articles, duplicate question ids) always raise
  ``ValueError`` naming the file and the location (``data[3].paragraphs[2].qas[5]``,
  indices of the original file also after :func:`split_by_article`). An empty (or
  all-whitespace) question is kept as ``""`` with a warning that counts such questions
  (``strict_text=False``, the default) or raises like a structural problem
  (``strict_text=True``). Answer problems
  (``answer_start`` out of range, answer text empty or not at ``answer_start``, no
  answers) raise too with
  ``strict=True`` (default); with ``strict=False`` the answer / question is skipped,
  counted in :class:`ReQAStats`, and a warning gives the counts. Nothing is dropped
  silently.
"""

import bisect
import copy
import dataclasses
import json
import os
import random
import re
import warnings
from typing import Dict, List, Tuple

from samtone_tf.data.text import strict_text as _strict_text, warn_empty as _warn_empty

__all__ = [
    "ABBREVIATIONS",
    "ARTICLE_INDEX_KEY",
    "SOURCE_KEY",
    "ReQAData",
    "ReQAStats",
    "build_reqa",
    "load_reqa",
    "load_squad_json",
    "split_by_article",
    "split_sentences",
]

#: Words after which a single "." is not a sentence end (compared case-sensitively;
#: single letters are always treated as initials). "etc" and "Inc" are *not* here:
#: they end sentences too often.
ABBREVIATIONS = frozenset(
    """Mr Mrs Ms Dr Prof St Mt Ft Jr Sr Gen Col Lt Capt Sgt Cmdr Adm Gov Sen Rep Rev Hon
    Pres Messrs Mme Mlle Fr Msgr vs v cf ca approx al e.g i.e No Nos Op Opp Vol Vols Fig Figs pp ed eds
    Jan Feb Mar Apr Jun Jul Aug Sep Sept Oct Nov Dec Ave Blvd Rd Corp Bros""".split()
)

#: Key that :func:`split_by_article` adds to each article: its index in the original file.
ARTICLE_INDEX_KEY = "reqa_article_index"

#: Top-level key that :func:`split_by_article` adds when it read a file: the file's path,
#: so that :func:`build_reqa`'s errors on a split still name the file.
SOURCE_KEY = "reqa_source"

_BOUNDARY = re.compile(r"[.!?]+[\"'\u201d\u2019)\]]*(\s+)(?=[\"'\u201c\u2018(\[]?[A-Z0-9])")
_WORD_BEFORE = re.compile(r"(\S+)$")


def _is_abbreviation(text, dot_pos):
    """True if the "." at ``dot_pos`` ends an abbreviation or an initial."""
    match = _WORD_BEFORE.search(text, 0, dot_pos)
    if match is None:
        return False
    word = match.group(1).lstrip("\"'(\u201c\u2018[")
    if len(word) == 1 and word.isalpha():
        return True  # initial: "J. K. Rowling", "U.S." (the "S" before the final ".")
    if len(word) >= 2 and word[-2] == "." and word[-1].isalpha() and len(word.replace(".", "")) <= 3:
        return True  # dotted acronym tail: "U.S", "e.g", "a.m", "p.m"
    return word in ABBREVIATIONS


def split_sentences(text):
    """Splits ``text`` into sentences with character offsets.

    Args:
      text: a paragraph (str).

    Returns:
      list of ``(start, end)`` offsets with ``text[start:end]`` the sentence (no leading
      or trailing whitespace); sentences are in order and non-overlapping. An all-space
      text gives ``[]``.

    Example:
      >>> t = 'Dr. Who met J. K. Rowling. "Hi!" she said. It was 3 p.m. Then 1990 came.'
      >>> [t[s:e] for s, e in split_sentences(t)]
      ['Dr. Who met J. K. Rowling.', '"Hi!" she said.', 'It was 3 p.m. Then 1990 came.']
    """
    spans = []
    start = 0
    for match in _BOUNDARY.finditer(text):
        punct_end = match.start(1)
        punct = match.group(0)[: punct_end - match.start()]
        if punct.rstrip("\"'\u201d\u2019)]") == "." and _is_abbreviation(text, match.start()):
            continue
        spans.append((start, punct_end))
        start = match.end(1)
    spans.append((start, len(text)))
    out = []
    for s, e in spans:
        piece = text[s:e]
        stripped = piece.strip()
        if not stripped:
            continue
        s2 = s + (len(piece) - len(piece.lstrip()))
        out.append((s2, s2 + len(stripped)))
    return out


@dataclasses.dataclass
class ReQAStats:
    """Counts from :func:`build_reqa` (all measured, none estimated)."""

    articles: int = 0
    paragraphs: int = 0
    sentences: int = 0  #: sentences found, before de-duplication
    candidates: int = 0  #: ``len(corpus)``
    duplicate_sentences: int = 0  #: sentences merged into an earlier identical one
    questions: int = 0  #: questions in the input
    kept_questions: int = 0  #: ``len(queries)``
    skipped_questions: int = 0  #: questions with no valid answer (strict=False)
    skipped_answers: int = 0  #: invalid answers skipped (strict=False)
    answers_out_of_range: int = 0
    answers_text_mismatch: int = 0
    questions_without_answers: int = 0
    answers_crossing_sentences: int = 0  #: valid answers running past their sentence
    questions_with_several_sentences: int = 0  #: kept questions with >1 relevant sentence
    empty_questions: int = 0  #: kept questions with an empty text (strict_text=False)

    def as_dict(self):
        return dataclasses.asdict(self)


class ReQAData(tuple):
    """``(corpus, queries, qrels)`` like :func:`samtone_tf.data.load_beir`, plus ``.stats``
    (a :class:`ReQAStats`) and ``.sentence_spans`` (candidate id -> (article, paragraph,
    start, end) offsets of its first occurrence)."""

    def __new__(cls, corpus, queries, qrels, stats, sentence_spans):
        self = super().__new__(cls, (corpus, queries, qrels))
        self.stats = stats
        self.sentence_spans = sentence_spans
        return self

    def __getnewargs__(self):  # pickle / copy
        return (*self, self.stats, self.sentence_spans)

    def __getstate__(self):
        return None

    corpus = property(lambda self: self[0])
    queries = property(lambda self: self[1])
    qrels = property(lambda self: self[2])


def load_squad_json(path):
    """Reads a SQuAD JSON file; errors name the file."""
    path = os.fspath(path)
    if os.path.isdir(path):
        raise ValueError(f"{path!r} is a folder; SQuAD data is one JSON file (a SQuAD v1.1 "
                         "file such as dev-v1.1.json).")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"SQuAD file {path!r} does not exist.")
    with open(path, "rb") as f:
        raw = f.read()
    try:
        text = raw.decode("utf-8-sig")  # a leading byte order mark is ignored
    except UnicodeDecodeError as e:
        line = raw.count(b"\n", 0, e.start) + 1
        raise ValueError(f"{path}: not valid UTF-8 (byte {raw[e.start]:#04x} at offset {e.start}, "
                         f"line {line}).") from e
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: malformed JSON at line {e.lineno} column {e.colno} ({e.msg}).") from e


def _source_and_json(squad_json):
    if isinstance(squad_json, (str, os.PathLike)):
        path = os.fspath(squad_json)
        return path, load_squad_json(path)
    source = squad_json.get(SOURCE_KEY) if isinstance(squad_json, dict) else None
    return (source if isinstance(source, str) else "<SQuAD JSON>"), squad_json


def _field(obj, key, kind, where, source):
    if not isinstance(obj, dict):
        raise ValueError(f"{source}: {where} must be a JSON object, got {type(obj).__name__}.")
    if key not in obj:
        raise ValueError(f"{source}: {where}: missing field {key!r}.")
    value = obj[key]
    if isinstance(value, bool) or not isinstance(value, kind):
        names = kind.__name__ if isinstance(kind, type) else "/".join(k.__name__ for k in kind)
        raise ValueError(f"{source}: {where}.{key} must be {names}, got {value!r:.80}.")
    return value


def _articles(data, source):
    data = _field(data, "data", list, "top level", source)
    if not data:
        raise ValueError(f"{source}: 'data' is empty (no articles).")
    return data


def _article_index(article, position, source):
    """The article's index in the original file (``ARTICLE_INDEX_KEY`` after a split)."""
    if not isinstance(article, dict) or ARTICLE_INDEX_KEY not in article:
        return position
    index = article[ARTICLE_INDEX_KEY]
    if isinstance(index, bool) or not isinstance(index, int) or index < 0:
        raise ValueError(f"{source}: data[{position}].{ARTICLE_INDEX_KEY} must be an int >= 0, "
                         f"got {index!r:.80}.")
    return index


def build_reqa(squad_json, *, deduplicate=True, strict=True, strict_text=None):
    """Builds ReQA sentence retrieval from SQuAD v1.1 JSON.

    Args:
      squad_json: a path to a SQuAD JSON file, or the loaded object
        (``{"data": [{"title", "paragraphs": [{"context", "qas": [{"id", "question",
        "answers": [{"text", "answer_start"}]}]}]}]}``), e.g. one half of
        :func:`split_by_article`.
      deduplicate: merge identical sentence texts into one candidate (see module doc).
      strict: raise on an invalid answer (``answer_start`` out of range, answer text not
        found at ``answer_start``, empty ``answers``); if False skip and count it.
      strict_text: raise on an empty (or all-whitespace) question; if False keep it as
        ``""`` (embedded as the tokenizer's empty input), count it in
        ``stats.empty_questions`` and name the first ids in one
        :class:`samtone_tf.data.EmptyTextWarning`. ``None`` (default): False, unless inside
        :func:`samtone_tf.data.refuse_empty_text`.

    Returns:
      :class:`ReQAData`, a ``(corpus, queries, qrels)`` tuple with ``.stats``. ``corpus``:
      candidate id -> sentence, in file order (every sentence of every paragraph, also
      those no question asks about); ``queries``: question id -> question (kept
      questions only); ``qrels``: question id -> ``{candidate id: 1}``.

    Raises:
      FileNotFoundError: no such file.
      ValueError: the path is a folder, malformed JSON or structure, duplicate question
        ids, (with ``strict``) an invalid answer, or (with ``strict_text``) an empty
        question; the message names the file and location.
    """
    strict_text = _strict_text(strict_text)
    source, data = _source_and_json(squad_json)
    stats = ReQAStats()
    corpus: Dict[str, str] = {}
    spans: Dict[str, Tuple[int, int, int, int]] = {}
    first_id_of_text: Dict[str, str] = {}
    queries: Dict[str, str] = {}
    qrels: Dict[str, Dict[str, int]] = {}
    question_where: Dict[str, str] = {}
    empty_questions: List[str] = []

    for position, article in enumerate(_articles(data, source)):
        article_index = _article_index(article, position, source)
        where_a = f"data[{article_index}]"  # the location in the original file
        paragraphs = _field(article, "paragraphs", list, where_a, source)
        stats.articles += 1
        for p_idx, para in enumerate(paragraphs):
            where_p = f"{where_a}.paragraphs[{p_idx}]"
            context = _field(para, "context", str, where_p, source)
            qas = _field(para, "qas", list, where_p, source)
            stats.paragraphs += 1
            sentence_spans = split_sentences(context)
            starts = [s for s, _ in sentence_spans]
            sentence_ids = []
            for s_idx, (s, e) in enumerate(sentence_spans):
                stats.sentences += 1
                text = context[s:e]
                cid = f"{article_index}-{p_idx}-{s_idx}"
                if deduplicate and text in first_id_of_text:
                    stats.duplicate_sentences += 1
                    sentence_ids.append(first_id_of_text[text])
                    continue
                if cid in corpus:
                    raise ValueError(
                        f"{source}: {where_a}: candidate id {cid!r} already used; article index "
                        f"{article_index!r} ({ARTICLE_INDEX_KEY}) repeats."
                    )
                first_id_of_text.setdefault(text, cid)
                corpus[cid] = text
                spans[cid] = (article_index, p_idx, s, e)
                sentence_ids.append(cid)
            for q_idx, qa in enumerate(qas):
                where_q = f"{where_p}.qas[{q_idx}]"
                qid = _field(qa, "id", (str, int), where_q, source)
                qid = str(qid)
                question = _field(qa, "question", str, where_q, source)
                if not question.strip():
                    if strict_text:
                        raise ValueError(f"{source}: {where_q}.question is empty.")
                    question = ""
                answers = _field(qa, "answers", list, where_q, source)
                stats.questions += 1
                if qid in question_where:
                    raise ValueError(
                        f"{source}: {where_q}: duplicate question id {qid!r} (first at {question_where[qid]})."
                    )
                question_where[qid] = where_q
                relevant = {}
                problems = []
                if not answers:
                    stats.questions_without_answers += 1
                    problems.append(f"{source}: {where_q} (id {qid!r}): no answers.")
                for k, answer in enumerate(answers):
                    where_k = f"{where_q}.answers[{k}]"
                    start = _field(answer, "answer_start", int, where_k, source)
                    text = _field(answer, "text", str, where_k, source)
                    if not 0 <= start < len(context) or start + len(text) > len(context):
                        stats.answers_out_of_range += 1
                        problems.append(
                            f"{source}: {where_k} (question {qid!r}): answer_start {start} with "
                            f"{len(text)} characters is outside the context of {len(context)} characters."
                        )
                        continue
                    if not text.strip():  # it would "match" anywhere and locate nothing
                        stats.answers_text_mismatch += 1
                        problems.append(f"{source}: {where_k} (question {qid!r}): answer text "
                                        f"{text!r} is empty or only whitespace.")
                        continue
                    if context[start : start + len(text)] != text:
                        stats.answers_text_mismatch += 1
                        problems.append(
                            f"{source}: {where_k} (question {qid!r}): answer text {text!r:.60} is not at "
                            f"answer_start {start} (context there: {context[start:start + len(text)]!r:.60})."
                        )
                        continue
                    s_idx = bisect.bisect_right(starts, start) - 1
                    s_idx = max(s_idx, 0)  # an answer in leading whitespace: first sentence
                    if start + len(text) > sentence_spans[s_idx][1]:
                        stats.answers_crossing_sentences += 1
                    relevant[sentence_ids[s_idx]] = 1
                if problems and strict:
                    raise ValueError(
                        problems[0] + " Pass strict=False to skip such answers (they are counted)."
                    )
                stats.skipped_answers += len(problems) - (1 if not answers else 0)
                if not relevant:
                    stats.skipped_questions += 1
                    continue
                queries[qid] = question
                qrels[qid] = relevant
                if not question:
                    empty_questions.append(qid)
                if len(relevant) > 1:
                    stats.questions_with_several_sentences += 1

    stats.candidates = len(corpus)
    stats.kept_questions = len(queries)
    stats.empty_questions = len(empty_questions)
    if empty_questions:
        _warn_empty(source, "questions", empty_questions, stacklevel=2)
    if stats.skipped_questions or stats.skipped_answers:
        warnings.warn(
            f"{source}: skipped {stats.skipped_questions} of {stats.questions} questions and "
            f"{stats.skipped_answers} answers ({stats.answers_out_of_range} answer_start out of range, "
            f"{stats.answers_text_mismatch} answer text mismatches, "
            f"{stats.questions_without_answers} questions without answers).",
            stacklevel=2,
        )
    return ReQAData(corpus, queries, qrels, stats, spans)


def load_reqa(squad_json, *, deduplicate=True, strict=True, strict_text=None):
    """``(corpus, queries, qrels)`` of :func:`build_reqa` (same arguments); the result
    also carries ``.stats``."""
    return build_reqa(squad_json, deduplicate=deduplicate, strict=strict, strict_text=strict_text)


def split_by_article(squad_json, dev_fraction, seed):
    """Splits SQuAD JSON into train / dev by article, so no paragraph is in both.

    Args:
      squad_json: path or loaded SQuAD object.
      dev_fraction: fraction of *articles* for dev, in (0, 1); the dev count is
        ``round(dev_fraction * n)`` clipped to [1, n - 1].
      seed: seed of the article shuffle (``random.Random(seed)``; deterministic).

    Returns:
      ``(train_json, dev_json)``: SQuAD objects (same ``version``) whose ``data`` lists
      are deep copies of the chosen articles, each given ``ARTICLE_INDEX_KEY`` = its index
      in the input, so candidate ids from :func:`build_reqa` match the unsplit file's.
      Articles keep their original relative order.

    Raises:
      ValueError: ``dev_fraction`` outside (0, 1), fewer than 2 articles, or malformed
        top level.
    """
    source, data = _source_and_json(squad_json)
    articles = _articles(data, source)
    for i, article in enumerate(articles):
        if not isinstance(article, dict):
            raise ValueError(f"{source}: data[{i}] must be a JSON object, got {type(article).__name__}.")
    if isinstance(dev_fraction, bool) or not isinstance(dev_fraction, (int, float)) or not 0 < dev_fraction < 1:
        raise ValueError(f"dev_fraction must be a number in (0, 1), got {dev_fraction!r}.")
    n = len(articles)
    if n < 2:
        raise ValueError(f"{source}: {n} article(s); splitting by article needs at least 2.")
    n_dev = min(max(int(round(dev_fraction * n)), 1), n - 1)
    order = list(range(n))
    random.Random(seed).shuffle(order)
    dev_set = set(order[:n_dev])

    def subset(indices: List[int]):
        out = {k: v for k, v in data.items() if k != "data"}
        if source != "<SQuAD JSON>":
            out[SOURCE_KEY] = source
        out["data"] = []
        for i in indices:
            article = copy.deepcopy(articles[i])
            article.setdefault(ARTICLE_INDEX_KEY, i)
            out["data"].append(article)
        return out

    train = subset([i for i in range(n) if i not in dev_set])
    dev = subset(sorted(dev_set))
    return train, dev
