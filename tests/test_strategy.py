"""Tests for samtone_tf.training.strategy on a CPU-only machine.

Logical CPU devices can only be configured before TF initialises, and one process should
hold one strategy (tensorflow#62790), so the multi-replica cases run in fresh subprocesses.
"""

import json
import os
import socket
import subprocess
import sys

import pytest
import tensorflow as tf

from samtone_tf.training.strategy import (
    configure_cpu_replicas,
    get_strategy,
    num_workers_in_tf_config,
    per_replica_batch_check,
)

pytestmark = pytest.mark.keras_independent  # run once: tests/conftest.py

REPO = os.path.normpath(os.path.join(os.path.dirname(__file__), ".."))
no_gpu = pytest.mark.skipif(bool(tf.config.list_physical_devices("GPU")), reason="expects a CPU-only machine")


class _FakeStrategy:
    def __init__(self, n):
        self.num_replicas_in_sync = n


def _run_python(code, env_extra=None):
    env = dict(os.environ)
    env["PYTHONPATH"] = REPO + os.pathsep + env.get("PYTHONPATH", "")
    env.pop("TF_CONFIG", None)
    env.update(env_extra or {})
    return subprocess.Popen(
        [sys.executable, "-c", code], env=env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


def _result(proc, timeout=180):
    out, err = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, err[-2000:]
    lines = [line for line in out.splitlines() if line.startswith("RESULT ")]
    assert lines, out[-2000:]
    return json.loads(lines[-1][len("RESULT "):])


def test_per_replica_batch_check():
    assert per_replica_batch_check(32, _FakeStrategy(4)) == 8
    assert per_replica_batch_check(7, _FakeStrategy(1)) == 7
    with pytest.raises(ValueError, match="30 is not divisible by the 4 replicas"):
        per_replica_batch_check(30, _FakeStrategy(4))
    with pytest.raises(ValueError, match="positive int"):
        per_replica_batch_check(0, _FakeStrategy(1))
    assert per_replica_batch_check(5) == 5  # default strategy: one replica


@pytest.mark.parametrize(
    "tf_config, expected",
    [
        (None, 0),
        ("", 0),
        ({"cluster": {"worker": ["a:1", "b:2"]}, "task": {"type": "worker", "index": 0}}, 2),
        (json.dumps({"cluster": {"chief": ["c:1"], "worker": ["a:1"], "ps": ["p:1"]}}), 2),
        ({"task": {"type": "worker", "index": 0}}, 0),
    ],
)
def test_num_workers_in_tf_config(monkeypatch, tf_config, expected):
    monkeypatch.delenv("TF_CONFIG", raising=False)
    assert num_workers_in_tf_config(tf_config) == expected


def test_num_workers_reads_env_and_rejects_bad_json(monkeypatch):
    monkeypatch.setenv("TF_CONFIG", json.dumps({"cluster": {"worker": ["a:1", "b:1", "c:1"]}}))
    assert num_workers_in_tf_config() == 3
    monkeypatch.setenv("TF_CONFIG", "{not json")
    with pytest.raises(ValueError, match="TF_CONFIG is not valid JSON"):
        num_workers_in_tf_config()


@no_gpu
def test_cpu_default_strategy_and_tpu_errors(monkeypatch):
    monkeypatch.delenv("TF_CONFIG", raising=False)
    strategy = get_strategy()
    assert strategy is tf.distribute.get_strategy()  # the default strategy
    assert strategy.num_replicas_in_sync == 1
    with pytest.raises(RuntimeError, match="Could not connect to TPU 'no-such-tpu'"):
        get_strategy(tpu="no-such-tpu")


def test_configure_after_initialisation_raises():
    tf.constant(1.0) + 1.0  # make sure the runtime is initialised
    have = len(tf.config.list_logical_devices("CPU"))
    assert configure_cpu_replicas(have) == [d.name for d in tf.config.list_logical_devices("CPU")]  # no-op
    with pytest.raises(RuntimeError, match=f"Cannot configure {have + 1} logical CPU devices.*already initialised"):
        configure_cpu_replicas(have + 1)
    with pytest.raises(ValueError, match="positive int"):
        configure_cpu_replicas(0)


@no_gpu
def test_mirrored_over_logical_cpus_in_fresh_process():
    code = """
import json, tensorflow as tf
from samtone_tf.training.strategy import get_strategy, per_replica_batch_check
s = get_strategy(num_cpu_replicas=2)
ctx = lambda: tf.cast(tf.distribute.get_replica_context().replica_id_in_sync_group, tf.float32) + 1.0
total = float(s.reduce("SUM", s.run(ctx), axis=None))  # replica ids 0, 1 -> 1 + 2 = 3
print("RESULT", json.dumps({"mirrored": isinstance(s, tf.distribute.MirroredStrategy),
      "n": s.num_replicas_in_sync, "devices": list(s.extended.worker_devices), "sum": total,
      "per": per_replica_batch_check(6, s)}))
"""
    res = _result(_run_python(code))
    assert res["mirrored"] and res["n"] == 2
    assert [d.rsplit("/", 1)[-1] for d in res["devices"]] == ["device:CPU:0", "device:CPU:1"]
    assert res["sum"] == 3.0
    assert res["per"] == 3


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@no_gpu
def test_multi_worker_from_tf_config_two_processes():
    ports = [_free_port(), _free_port()]
    code = """
import json, os, tensorflow as tf
from samtone_tf.training.strategy import get_strategy
s = get_strategy()
index = json.loads(os.environ["TF_CONFIG"])["task"]["index"]
total = float(s.reduce("SUM", s.run(lambda: tf.constant(10.0 ** index)), axis=None))  # 1 + 10
print("RESULT", json.dumps({"mwms": isinstance(s, tf.distribute.MultiWorkerMirroredStrategy),
      "n": s.num_replicas_in_sync, "sum": total}))
"""
    procs = []
    for index in range(2):
        tf_config = {"cluster": {"worker": [f"127.0.0.1:{p}" for p in ports]}, "task": {"type": "worker", "index": index}}
        procs.append(_run_python(code, {"TF_CONFIG": json.dumps(tf_config)}))
    try:
        results = [_result(p) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    for res in results:
        assert res == {"mwms": True, "n": 2, "sum": 11.0}


class _FoundResolver:
    """A TPUClusterResolver stand-in that 'finds' a TPU (its constructor succeeds)."""

    def __init__(self, tpu=None):
        self.tpu = tpu


def _fail_connect(resolver):
    raise tf.errors.UnavailableError(None, None, "failed to connect to all addresses")


@no_gpu
def test_auto_detected_tpu_that_fails_to_initialise_is_a_warning(monkeypatch, caplog):
    monkeypatch.delenv("TF_CONFIG", raising=False)
    monkeypatch.setattr(tf.distribute.cluster_resolver, "TPUClusterResolver", _FoundResolver)
    monkeypatch.setattr(tf.config, "experimental_connect_to_cluster", _fail_connect)
    with caplog.at_level("DEBUG", logger="samtone_tf.training.strategy"):
        strategy = get_strategy()
    assert strategy is tf.distribute.get_strategy()  # fell back to the default strategy
    warnings = [r for r in caplog.records if r.levelname == "WARNING"]
    assert len(warnings) == 1, caplog.text
    assert "could not be connected or initialised" in warnings[0].getMessage()
    assert "UnavailableError: failed to connect to all addresses" in warnings[0].getMessage()
    # a named TPU that fails is an error, not a warning
    with pytest.raises(RuntimeError, match="Could not connect to TPU 'my-tpu': failed to connect"):
        get_strategy(tpu="my-tpu")


@no_gpu
def test_no_tpu_at_all_stays_quiet_but_other_resolver_errors_warn(monkeypatch, caplog):
    monkeypatch.delenv("TF_CONFIG", raising=False)

    def not_found(tpu=None):
        raise ValueError("Please provide a TPU Name to connect to.")

    monkeypatch.setattr(tf.distribute.cluster_resolver, "TPUClusterResolver", not_found)
    with caplog.at_level("DEBUG", logger="samtone_tf.training.strategy"):
        assert get_strategy() is tf.distribute.get_strategy()
    assert [r.levelname for r in caplog.records] == ["DEBUG"], caplog.text
    assert "No TPU found (Please provide a TPU Name" in caplog.records[0].getMessage()

    caplog.clear()

    def broken(tpu=None):
        raise ImportError("No module named 'googleapiclient'")

    monkeypatch.setattr(tf.distribute.cluster_resolver, "TPUClusterResolver", broken)
    with caplog.at_level("DEBUG", logger="samtone_tf.training.strategy"):
        assert get_strategy() is tf.distribute.get_strategy()
    assert [r.levelname for r in caplog.records] == ["WARNING"], caplog.text
    assert ("TPU auto-detection failed with ImportError: No module named 'googleapiclient'"
            in caplog.records[0].getMessage())
