"""BEIR folders (``corpus.jsonl``, ``queries.jsonl``, ``qrels/<split>.tsv``) as
``corpus``, ``queries`` and ``qrels`` dicts, with errors naming the file and line."""

import json
import os
import re

from samtone_tf.data.text import strict_text as _strict_text, text_lines, warn_empty

__all__ = ["load_beir"]

_QRELS_HEADER = ("query-id", "corpus-id", "score")

_INTEGER = re.compile(r"[+-]?[0-9]+")


def _json_id(value, path, line_no, field="_id"):
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise ValueError(f"{path}, line {line_no}: field {field!r} must be a string, got {value!r}.")
    value = str(value)
    if not value:
        raise ValueError(f"{path}, line {line_no}: field {field!r} is empty.")
    # qrels name ids in tab-separated, stripped columns: such an id could never be judged
    if value != value.strip() or any(c in value for c in "\t\r\n"):
        raise ValueError(f"{path}, line {line_no}: field {field!r} {value!r} has surrounding "
                         "whitespace or a tab / line break, which qrels cannot name.")
    return value

def _read_jsonl(path, required, optional=()):
    """Yields (line_no, record) with validated string fields."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"BEIR file {path!r} does not exist.")
    for line_no, line in text_lines(path):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}, line {line_no}: malformed JSON ({e.msg}).") from e
        if not isinstance(record, dict):
            raise ValueError(f"{path}, line {line_no}: expected a JSON object.")
        for field in required:
            if field not in record:
                raise ValueError(f"{path}, line {line_no}: missing field {field!r}.")
        for field in tuple(required[1:]) + tuple(optional):
            value = record.get(field, "")
            if value is None:
                record[field] = ""
            elif not isinstance(value, str):
                raise ValueError(
                    f"{path}, line {line_no}: field {field!r} must be a string, got {value!r}."
                )
        yield line_no, record

def _load_corpus(path, strict_text=True):
    corpus = {}
    lines = {}
    empty = []
    for line_no, rec in _read_jsonl(path, required=("_id", "text"), optional=("title",)):
        doc_id = _json_id(rec["_id"], path, line_no)
        if doc_id in corpus:
            raise ValueError(
                f"{path}, line {line_no}: duplicate document id {doc_id!r} (first on line {lines[doc_id]})."
            )
        title = rec.get("title") or ""
        text = (title + " " + rec["text"]).strip()
        if not text:
            if strict_text:
                raise ValueError(f"{path}, line {line_no}: document {doc_id!r} has an empty title and text.")
            empty.append(doc_id)
        corpus[doc_id] = text
        lines[doc_id] = line_no
    if not corpus:
        raise ValueError(f"{path}: no documents (the file is empty or blank).")
    if empty:
        warn_empty(path, "documents", empty, stacklevel=3)
    return corpus


def _load_queries(path, strict_text=True):
    queries = {}
    lines = {}
    empty = []
    for line_no, rec in _read_jsonl(path, required=("_id", "text")):
        qid = _json_id(rec["_id"], path, line_no)
        if qid in queries:
            raise ValueError(
                f"{path}, line {line_no}: duplicate query id {qid!r} (first on line {lines[qid]})."
            )
        if not rec["text"].strip():
            if strict_text:
                raise ValueError(f"{path}, line {line_no}: query {qid!r} has an empty text.")
            empty.append(qid)
            rec["text"] = ""
        queries[qid] = rec["text"]
        lines[qid] = line_no
    if not queries:
        raise ValueError(f"{path}: no queries (the file is empty or blank).")
    if empty:
        warn_empty(path, "queries", empty, stacklevel=3)
    return queries


def _load_qrels(path, corpus, queries, strict):
    if not os.path.isfile(path):
        raise FileNotFoundError(f"BEIR qrels file {path!r} does not exist.")
    qrels = {}
    judgments = skipped = 0
    for line_no, line in text_lines(path):
        line = line.rstrip("\n").rstrip("\r")
        if not line.strip():
            continue
        cols = line.split("\t")
        if tuple(c.strip().lower() for c in cols) == _QRELS_HEADER:
            if line_no == 1:
                continue
            raise ValueError(f"{path}, line {line_no}: the header {line!r} is only allowed on line 1.")
        if len(cols) != 3:
            raise ValueError(
                f"{path}, line {line_no}: expected 3 tab-separated columns "
                f"(query-id, corpus-id, score), got {len(cols)}: {line!r}."
            )
        qid, doc_id, score = (c.strip() for c in cols)
        for what, value in (("query id", qid), ("corpus id", doc_id)):
            if not value:
                raise ValueError(f"{path}, line {line_no}: empty {what}: {line!r}.")
        if not _INTEGER.fullmatch(score):  # int() would also take "1_0" and non-ASCII digits
            raise ValueError(f"{path}, line {line_no}: score {score!r} is not an integer.")
        score = int(score)
        judgments += 1
        unknown = []
        if qid not in queries:
            unknown.append(f"query id {qid!r} not in queries.jsonl")
        if doc_id not in corpus:
            unknown.append(f"document id {doc_id!r} not in corpus.jsonl")
        if unknown:
            if strict:
                raise ValueError(f"{path}, line {line_no}: " + "; ".join(unknown) + ".")
            skipped += 1
            continue
        judged = qrels.setdefault(qid, {})
        if doc_id in judged:
            raise ValueError(f"{path}, line {line_no}: duplicate judgment ({qid!r}, {doc_id!r}).")
        judged[doc_id] = score
    if not judgments:
        raise ValueError(f"{path}: no judgments (the file is empty or has only a header).")
    if not qrels:
        raise ValueError(f"{path}: all {skipped} judgments name ids that are not in "
                         "queries.jsonl / corpus.jsonl (skipped with strict=False).")
    return qrels


def load_beir(directory, split, *, strict=True, strict_text=None):
    """Loads a BEIR-format data set.

    Files: ``corpus.jsonl`` (``_id``, ``text``, optional ``title``), ``queries.jsonl``
    (``_id``, ``text``), ``qrels/<split>.tsv`` (header ``query-id\\tcorpus-id\\tscore``).

    Args:
      directory: the data set folder.
      split: qrels split name, e.g. ``"train"`` or ``"test"``.
      strict: if True (default) a qrels line naming an unknown query or document id is
        an error; if False such lines are skipped.
      strict_text: what to do with a document whose title and text are empty (or only
        whitespace) and a query whose text is: if False they are kept as ``""`` (embedded
        as the tokenizer's empty input, ``[CLS] [SEP]`` for BERT, as sentence-transformers
        and BEIR's evaluation do) and one :class:`EmptyTextWarning` per file counts them
        and names the first ids; if True they are an error naming the file and line.
        ``None`` (default): False, unless inside :func:`refuse_empty_text`.

    Returns:
      ``(corpus, queries, qrels)``: ``corpus`` maps doc id -> ``"title text"`` (just the
      text when the title is empty), ``queries`` maps query id -> text for *all* queries
      in ``queries.jsonl`` (not only the split's), ``qrels`` maps query id ->
      ``{doc id: int score}``. All dicts keep file order. An empty document or query
      (``strict_text=False``) maps to ``""``.

    Raises:
      FileNotFoundError: a file is missing.
      ValueError: malformed JSON, missing/ill-typed fields, duplicate ids, ids with
        surrounding whitespace, malformed or unknown-id qrels lines, a file without any
        record (or, with ``strict=False``, without any judgment left), bytes that are not
        UTF-8, and with ``strict_text=True`` an empty text; the message names the file and
        the line number. A UTF-8 byte order mark at the start of a file is ignored.

    Example (BEIR SciFact): 5,183 documents, 1,109 queries, ``train`` qrels with 809
    queries and 919 judgments.
    """
    directory = os.fspath(directory)
    strict_text = _strict_text(strict_text)
    corpus = _load_corpus(os.path.join(directory, "corpus.jsonl"), strict_text)
    queries = _load_queries(os.path.join(directory, "queries.jsonl"), strict_text)
    qrels = _load_qrels(os.path.join(directory, "qrels", f"{split}.tsv"), corpus, queries, strict)
    return corpus, queries, qrels
