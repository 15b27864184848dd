"""The CI rule of tests/_requirements.py: a missing data file or test dependency skips a
test, except under CI=true, where it fails it (so a CI run cannot pass by skipping)."""

import pytest

from tests import _requirements, conftest

pytestmark = pytest.mark.keras_independent  # run once: tests/conftest.py


@pytest.fixture(params=[None, "false", "true", "TRUE"])
def ci(request, monkeypatch):
    if request.param is None:
        monkeypatch.delenv("CI", raising=False)
    else:
        monkeypatch.setenv("CI", request.param)
    return request.param is not None and request.param.lower() == "true"


def _outcome(ci):
    return pytest.fail.Exception if ci else pytest.skip.Exception


def test_missing_data_skips_or_fails_in_ci(ci, tmp_path):
    with pytest.raises(_outcome(ci), match="no_such_file.json is not beside the repository"):
        _requirements.require_data(tmp_path / "no_such_file.json")
    with pytest.raises(_outcome(ci), match=r"\.\./shared/data/scifact/none\.tsv is not beside"):
        _requirements.require_data(_requirements.SCIFACT + "/none.tsv")
    assert _requirements.require_data(tmp_path) == tmp_path  # present: nothing happens


def test_missing_package_skips_or_fails_in_ci(ci):
    with pytest.raises(_outcome(ci), match="samtone_no_such_package is not importable"):
        _requirements.require_package("samtone_no_such_package")
    assert _requirements.require_package("json").dumps([]) == "[]"


class _Item:
    def __init__(self, *marks):
        self.marks = marks

    def iter_markers(self, name):
        return (m.mark for m in self.marks if m.mark.name == name)


def test_requirement_marks_skip_or_fail_in_ci(ci, tmp_path):
    missing = _Item(_requirements.needs_data(tmp_path / "gone"), _requirements.needs(True, "ok"))
    with pytest.raises(_outcome(ci), match="gone is not beside the repository"):
        conftest.pytest_runtest_setup(missing)
    with pytest.raises(_outcome(ci), match="samtone_no_such_package is not installed"):
        conftest.pytest_runtest_setup(_Item(_requirements.needs_package("samtone_no_such_package")))
    conftest.pytest_runtest_setup(_Item(_requirements.needs_data(tmp_path),
                                        _requirements.needs_package("json")))  # all met


@pytest.mark.skipif(not _requirements.in_ci(), reason="checks the CI environment itself")
def test_ci_has_the_shared_data():
    for path in (_requirements.SCIFACT, _requirements.SQUAD):
        _requirements.require_data(path)
