"""The data formats, in one registry: a format is one loader plus one entry here.

Every loader returns ``(corpus, queries, qrels)``: doc id -> text, query id -> text and
query id -> {doc id: relevance}. Evaluation (``samtone-tf evaluate``, ``analyze``,
``export --index-data``) and training (``samtone-tf train``) look formats up here, and the
CLI's ``--format`` choices are this registry's names.

* ``beir``: a BEIR folder (``corpus.jsonl``, ``queries.jsonl``, ``qrels/<split>.tsv``); a
  split is a qrels file. Only queries judged in that split are kept.
* ``squad``: a SQuAD v1.1 JSON file turned into ReQA sentence retrieval; the splits are
  ``all`` (every article), or ``train`` / ``dev``: the articles split by
  :func:`samtone_tf.data.reqa.split_by_article` (``dev_fraction``, ``seed``).

A new format: write ``load(path, split, *, dev_fraction, seed) -> (corpus, queries,
qrels)`` and :func:`register_format` a :class:`DataFormat` for it.
"""

import dataclasses
import os
from typing import Callable, Optional, Tuple

from samtone_tf.data import reqa
from samtone_tf.data.beir import load_beir


@dataclasses.dataclass(frozen=True)
class DataFormat:
    """One data format.

    Attributes:
      name: the ``--format`` value.
      path_kind: ``"folder"`` or ``"file"``: what ``--data`` must be.
      load: ``load(path, split, *, dev_fraction, seed) -> (corpus, queries, qrels)``.
      splits: the split names it accepts; ``None``: any (checked by the loader).
      default_split: what ``evaluate`` / ``analyze`` read when no split is named.
      train_split, heldout_split: training from one source trains on ``train_split`` and
        evaluates on ``heldout_split``.
      whole_split: the split that is all of the source (``None``: the format has none);
        training with a separate evaluation set trains on it.
      expects: what ``--data`` must be, in words (for error messages).
    """

    name: str
    path_kind: str
    load: Callable
    splits: Optional[Tuple[str, ...]]
    default_split: str
    train_split: str
    heldout_split: str
    whole_split: Optional[str]
    expects: str


_REGISTRY = {}


def register_format(fmt):
    """Adds ``fmt`` (a :class:`DataFormat`) to the registry (replacing one of its name)."""
    if not isinstance(fmt, DataFormat):
        raise TypeError(f"register_format takes a DataFormat, got {type(fmt).__name__}.")
    if fmt.path_kind not in ("folder", "file"):
        raise ValueError(f"path_kind must be 'folder' or 'file', got {fmt.path_kind!r}.")
    _REGISTRY[fmt.name] = fmt
    return fmt


def format_names():
    """The registered format names (the CLI's ``--format`` choices)."""
    return tuple(_REGISTRY)


def get_format(name):
    """The :class:`DataFormat` called ``name`` (``ValueError`` listing the known ones)."""
    if name not in _REGISTRY:
        raise ValueError(f"`format` must be one of {format_names()}, got {name!r}.")
    return _REGISTRY[name]


def load_data(path, fmt, split=None, *, dev_fraction=0.2, seed=0):
    """``(corpus, queries, qrels)`` of ``path`` in format ``fmt`` (a name), split ``split``
    (``None``: the format's default), with errors that name the flag to fix."""
    fmt = get_format(fmt)
    split = fmt.default_split if split is None else split
    if fmt.splits is not None and split not in fmt.splits:
        raise ValueError(f"--split for --format {fmt.name} must be one of {fmt.splits}, "
                         f"got {split!r}.")
    if not os.path.exists(path):
        raise FileNotFoundError(f"--data {path!r} does not exist.")
    if (fmt.path_kind == "folder") != os.path.isdir(path):
        got = "folder" if os.path.isdir(path) else "file"
        raise ValueError(f"--format {fmt.name} expects {fmt.expects}, got the {got} {path!r}.")
    return fmt.load(path, split, dev_fraction=dev_fraction, seed=seed)


def _load_beir(path, split, *, dev_fraction, seed):
    corpus, queries, qrels = load_beir(path, split)
    return corpus, {q: queries[q] for q in qrels if q in queries}, qrels


def _load_squad(path, split, *, dev_fraction, seed):
    source = path
    if split != "all":
        train, dev = reqa.split_by_article(path, dev_fraction, seed)
        source = dev if split == "dev" else train
    return reqa.build_reqa(source)


register_format(DataFormat(
    name="beir", path_kind="folder", load=_load_beir, splits=None, default_split="test",
    train_split="train", heldout_split="test", whole_split=None,
    expects="a folder (corpus.jsonl, queries.jsonl, qrels/)"))
register_format(DataFormat(
    name="squad", path_kind="file", load=_load_squad, splits=("all", "train", "dev"),
    default_split="all", train_split="train", heldout_split="dev", whole_split="all",
    expects="a SQuAD v1.1 JSON file (such as dev-v1.1.json)"))
