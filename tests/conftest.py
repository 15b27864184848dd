"""Applies the ``requirement`` marks of :mod:`tests._requirements`: a test whose data or
optional dependency is missing skips, or fails under ``CI=true``."""

from tests._requirements import missing


def pytest_configure(config):
    config.addinivalue_line(
        "markers", "requirement(met, reason): skip the test unless met (fail in CI); "
                   "made by tests._requirements.needs / needs_data / needs_package")


def pytest_runtest_setup(item):
    for mark in item.iter_markers(name="requirement"):
        met, reason = mark.args
        if not met:
            missing(reason)
