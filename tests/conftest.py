"""Applies the ``requirement`` marks of :mod:`tests._requirements`: a test whose data or
optional dependency is missing skips, or fails under ``CI=true``.

Declares the marks that say which tests depend on the Keras generation:
``keras_independent`` (on a module or a test) for tests whose outcome cannot depend on it
(NumPy references, loaders, metrics, downloads: they touch neither Keras, TF-Hub, keras-hub
nor TFRS), and ``keras_dependent`` to take one test of such a module back.
``tests/run_both.sh`` runs the independent tests once, with Keras 2 (its lighter run), and
everything else under both generations (``-m "not keras_independent or keras_dependent"``
for Keras 3).
"""

from tests._requirements import missing

def pytest_configure(config):
    config.addinivalue_line(
        "markers", "requirement(met, reason): skip the test unless met (fail in CI); "
                   "made by tests._requirements.needs / needs_data / needs_package")
    config.addinivalue_line(
        "markers", "keras_independent: the outcome cannot depend on the Keras generation; "
                   "tests/run_both.sh runs it once (in its Keras 2 run)")
    config.addinivalue_line(
        "markers", "keras_dependent: overrides a module's keras_independent mark")


def pytest_runtest_setup(item):
    for mark in item.iter_markers(name="requirement"):
        met, reason = mark.args
        if not met:
            missing(reason)
