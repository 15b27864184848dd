"""Gradient caching under tf.distribute: the cached step of a real DualEncoder (tiny TF-Hub
towers) against the uncached one on the same global batch, on a 2-replica MirroredStrategy
(also one cached fit step) and on a 2-process MultiWorkerMirroredStrategy. Each configuration runs
in its own process (tests/gradcache_worker.py); the tolerance is test_gradcache's, where the
one-device case is."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from tests import _tiny
from tests._multiworker import run_workers
from tests.test_gradcache import TOLERANCE, _gradient_error

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def encoder_path(tmp_path_factory):
    return _tiny.tiny_tfhub_encoder_path(tmp_path_factory.mktemp("gc_dist"), seed=0)


def _arrays(values):
    return [np.asarray(v) for v in values]


def _assert_same_step(got, want):
    assert len(got["losses"]) == 8  # the global batch's per-example losses
    np.testing.assert_allclose(got["losses"], want["losses"], rtol=1e-5, atol=1e-6)
    assert _gradient_error(_arrays(got["grads"]), _arrays(want["grads"])) <= TOLERANCE


def test_two_mirrored_replicas_step_and_fit(tmp_path, encoder_path):
    out = tmp_path / "mirrored.json"
    subprocess.run([sys.executable, "-m", "tests.gradcache_worker", "mirrored", "2",
                    encoder_path, "--fit", str(out)], cwd=ROOT, check=True,
                   capture_output=True, timeout=300)
    result = json.loads(out.read_text())
    assert result["replicas"] == 2
    _assert_same_step(result["cached"], result["uncached"])
    # fit's cached SGD step moved the weights by -learning_rate * the uncached gradients
    fit = result["fit_cached"]
    update = [w - b for w, b in zip(_arrays(fit["weights"]), _arrays(fit["before"]))]
    expected = [-fit["learning_rate"] * g for g in _arrays(result["uncached"]["grads"])]
    assert max(float(np.abs(u).max()) for u in update) > 1e-3
    assert _gradient_error(update, expected) <= TOLERANCE
    assert fit["loss"] == pytest.approx(np.mean(result["uncached"]["losses"]), rel=1e-5)


def test_two_worker_processes_cached_equals_uncached(tmp_path, encoder_path):
    results = run_workers(["tests.gradcache_worker", "multiworker", "1", encoder_path],
                          tmp_path)
    for result in results:  # every worker sees the whole global batch's gradients
        assert result["replicas"] == 2
        _assert_same_step(result["cached"], result["uncached"])
    # and both workers computed the same step
    _assert_same_step(results[1]["cached"], results[0]["cached"])
