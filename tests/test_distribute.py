"""N replicas must equal one device on the same global batch.

Each configuration runs in its own process (tests/dist_worker.py): logical CPU devices must
be configured before TensorFlow initialises, and one process should hold one strategy.
"""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from tests import dist_worker
from tests._multiworker import run_workers
from tests.numpy_reference import reference_loss

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _run(tmp_path, mode, replicas, *extra, env=None):
    out = tmp_path / f"{mode}_{replicas}_{'_'.join(extra) or 'step'}.json"
    subprocess.run([sys.executable, "-m", "tests.dist_worker", mode, str(replicas), str(out),
                    *extra], cwd=ROOT, env=env or os.environ.copy(), check=True,
                   capture_output=True, timeout=300)
    return json.loads(out.read_text())


@pytest.fixture(scope="module")
def single(tmp_path_factory):
    return _run(tmp_path_factory.mktemp("single"), "single", 1)


def _reference(with_hard_negative_ids=True):
    data = dist_worker.global_batch()
    wq, wd = dist_worker.initial_weights()
    ids = dict(hard_negative_document_ids=data["hdid"], hard_negative_query_ids=data["hqid"])
    return reference_loss(
        data["q"] @ wq, data["d"] @ wd, hard_negative_queries=data["hq"] @ wq,
        hard_negative_documents=data["hd"] @ wd, query_ids=data["qid"],
        document_ids=data["did"], **(ids if with_hard_negative_ids else {}),
        **dist_worker.LOSS_OPTIONS)


def test_single_device_matches_numpy(single):
    np.testing.assert_allclose(single["losses"], _reference(), rtol=1e-5)
    # the mined positives of other anchors change every anchor that has one
    changed = np.abs(_reference() - _reference(with_hard_negative_ids=False)) > 1e-6
    assert changed.tolist() == [True] * dist_worker.GLOBAL_BATCH


def _assert_same(result, single, replicas):
    assert result["replicas"] == replicas
    # the rows differ, so a replica-ordering bug would permute them and fail here
    assert np.std(single["losses"]) > 0.5
    np.testing.assert_allclose(result["losses"], single["losses"], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(result["grad_wq"], single["grad_wq"], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(result["grad_wd"], single["grad_wd"], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("replicas", [2, 4])
def test_mirrored_equals_one_device(tmp_path, single, replicas):
    _assert_same(_run(tmp_path, "mirrored", replicas), single, replicas)


def test_multiworker_two_processes_equal_one_device(tmp_path, single):
    # every worker sees the whole global batch's losses and gradients
    for result in run_workers(["tests.dist_worker", "multiworker", "1"], tmp_path):
        _assert_same(result, single, 2)


@pytest.fixture(scope="module")
def single_fit(tmp_path_factory):
    return _run(tmp_path_factory.mktemp("fit"), "single", 1, "--keras-fit")


def test_keras_fit_mirrored_equals_one_device(tmp_path, single_fit):
    mirrored = _run(tmp_path, "mirrored", 2, "--keras-fit")
    assert mirrored["replicas"] == 2
    wq0, wd0 = dist_worker.initial_weights()
    # the two SGD steps moved the weights, so equal weights are a real check
    assert np.abs(np.array(single_fit["wq"]) - wq0).max() > 1e-2
    assert np.abs(np.array(single_fit["wd"]) - wd0).max() > 1e-2
    np.testing.assert_allclose(mirrored["wq"], single_fit["wq"], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(mirrored["wd"], single_fit["wd"], rtol=1e-5, atol=1e-6)
    assert mirrored["loss"] == pytest.approx(single_fit["loss"], rel=1e-5)
