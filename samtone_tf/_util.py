"""Small helpers shared across the package: argument checks, NumPy L2 normalisation and
writing a file or folder atomically (to a temporary name beside it, then renamed)."""

import contextlib
import json
import numbers
import os
import shutil
import tempfile

import numpy as np


def check_int(value, name, *, minimum=1, allow_none=False):
    """``value`` (as an int) if it is an integer (Python or NumPy, not a bool) of at least ``minimum``
    (or ``None`` when ``allow_none``); otherwise a ``ValueError`` naming ``name``."""
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        if minimum == 1:
            what = "a positive integer"
        else:
            what = f"an integer >= {minimum}"
        raise ValueError(f"{name} must be {what}{' or None' if allow_none else ''}, "
                         f"got {value!r}.")
    return int(value)


def l2_normalize(x, axis=-1):
    """Rows of ``x`` scaled to unit L2 norm; all-zero rows stay zero (no NaN)."""
    x = np.asarray(x)
    norms = np.linalg.norm(x, axis=axis, keepdims=True)
    return x / np.maximum(norms, np.finfo(np.float32).tiny)


@contextlib.contextmanager
def atomic_directory(path, *, exists="replace"):
    """Writes a folder atomically: yields a path (not yet created) inside a scratch folder
    beside ``path``; when the block ends without an error, what was written there becomes
    ``path`` by one rename. On an error nothing of it is left and ``path`` is untouched.

    ``exists`` says what happens when ``path`` exists at that moment:
      ``"replace"``: it is moved aside, replaced, then removed (restored if the rename fails);
      ``"keep"``: it wins (say, written by a concurrent process) and the new folder is
      discarded; an empty folder counts as absent;
      ``"error"``: ``FileExistsError``.
    """
    if exists not in ("replace", "keep", "error"):
        raise ValueError(f"exists must be 'replace', 'keep' or 'error', got {exists!r}.")
    path = os.path.abspath(os.fspath(path))
    parent, name = os.path.split(path)
    os.makedirs(parent, exist_ok=True)
    scratch = tempfile.mkdtemp(prefix=f".{name}.tmp-", dir=parent)
    backup = None
    try:
        target = os.path.join(scratch, name)
        yield target
        if exists == "keep" and os.path.isdir(path) and not os.listdir(path):
            os.rmdir(path)
        if os.path.lexists(path):
            if exists == "error":
                raise FileExistsError(f"{path!r} already exists.")
            if exists == "keep":
                return
            backup = tempfile.mkdtemp(prefix=f".{name}.old-", dir=parent)
            os.rename(path, os.path.join(backup, name))
        try:
            os.rename(target, path)  # atomic on one file system
        except OSError:
            if exists == "keep" and os.path.lexists(path):
                return  # another process finished first
            raise
    except BaseException:
        if backup is not None and not os.path.lexists(path):
            os.rename(os.path.join(backup, name), path)
        raise
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
        if backup is not None:
            shutil.rmtree(backup, ignore_errors=True)


def atomic_write_json(path, obj, **dump_kwargs):
    """Writes ``obj`` as JSON to ``path`` through a temporary file in the same folder and
    ``os.replace``, so a reader never sees a half-written file."""
    path = os.path.abspath(path)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=".tmp",
                               dir=os.path.dirname(path))
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(obj, f, **dump_kwargs)
            f.write("\n")
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.remove(tmp)
        raise
