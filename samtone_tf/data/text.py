"""Text-file reading shared by the loaders: UTF-8 lines with errors naming the file and
line, and what to do with empty texts (warn once per file, or refuse)."""

import contextlib
import contextvars
import warnings

__all__ = ["EmptyTextWarning", "refuse_empty_text", "strict_text", "warn_empty", "text_lines"]


def text_lines(path):
    """Yields (line_no, line) of a UTF-8 text file; bytes that are not UTF-8 are an error
    naming the file and line (not a bare UnicodeDecodeError from deep inside a loop)."""
    with open(path, "rb") as f:
        for line_no, raw in enumerate(f, start=1):
            if line_no == 1 and raw.startswith(b"\xef\xbb\xbf"):
                raw = raw[3:]  # a UTF-8 byte order mark (files saved by some editors)
            try:
                yield line_no, raw.decode("utf-8")
            except UnicodeDecodeError as e:
                raise ValueError(
                    f"{path}, line {line_no}: not valid UTF-8 (byte {raw[e.start]:#04x} at "
                    f"column {e.start + 1})."
                ) from e


class EmptyTextWarning(UserWarning):
    """A data file has records with an empty text; they are kept and embedded as ``""``."""


_REFUSE_EMPTY_TEXT = contextvars.ContextVar("samtone_tf_refuse_empty_text", default=False)


@contextlib.contextmanager
def refuse_empty_text(refuse=True):
    """Within the block, loaders called with ``strict_text=None`` (their default:
    :func:`load_beir`, :func:`samtone_tf.data.reqa.build_reqa`) refuse empty texts as with
    ``strict_text=True``. It reaches loaders called inside other functions, such as those
    of ``samtone_tf.evaluation`` and ``samtone_tf.training``; the CLI's ``--strict`` uses it."""
    token = _REFUSE_EMPTY_TEXT.set(bool(refuse))
    try:
        yield
    finally:
        _REFUSE_EMPTY_TEXT.reset(token)


def strict_text(strict_text):
    """``strict_text`` of a loader: ``None`` means the :func:`refuse_empty_text` setting."""
    return _REFUSE_EMPTY_TEXT.get() if strict_text is None else bool(strict_text)


def warn_empty(source, what, ids, stacklevel):
    """One :class:`EmptyTextWarning` per file: the count and the first few ids."""
    shown = ", ".join(repr(i) for i in ids[:5]) + (", ..." if len(ids) > 5 else "")
    if len(ids) == 1:
        what = {"documents": "document", "queries": "query", "questions": "question"}[what]
    detail = "an empty title and text" if what.startswith("document") else "an empty text"
    warnings.warn(
        f"{source}: {len(ids)} {what} {'has' if len(ids) == 1 else 'have'} {detail} "
        f"(id{'' if len(ids) == 1 else 's'} {shown}); they are embedded as empty text. "
        "Pass strict_text=True / --strict to refuse them.",
        EmptyTextWarning, stacklevel=stacklevel + 1)
