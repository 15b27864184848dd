"""Uneven per-replica batches are an error, not a silently mis-weighted loss.

Each case runs in a fresh process: logical CPU devices must be configured before TensorFlow
initialises, and one process should hold one strategy (see tests/test_distribute.py).
"""

import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

_SETUP = """
import json, numpy as np, tensorflow as tf
cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
"""

_GATHER = _SETUP + """
from samtone_tf.distribute import gather_global_batch

def run(sizes):
    def value_fn(ctx):
        b = sizes[ctx.replica_id_in_sync_group]
        return tf.fill([b, 2], tf.cast(ctx.replica_id_in_sync_group, tf.float32))

    inputs = strategy.experimental_distribute_values_from_function(value_fn)

    def step(x):
        gathered, offset = gather_global_batch({"x": x, "none": None})
        return tf.shape(gathered["x"])[0], offset

    total, offset = strategy.run(tf.function(step), args=(inputs,))
    return ([int(t) for t in strategy.experimental_local_results(total)],
            [int(o) for o in strategy.experimental_local_results(offset)])

result = {"even": run([3, 3])}
try:
    run([4, 3])
    result["uneven"] = "no error"
except tf.errors.InvalidArgumentError as e:
    result["uneven"] = str(e)
print("RESULT", json.dumps(result))
"""

_FIT = _SETUP + """
from samtone_tf import SamToNeLoss
from samtone_tf._keras import keras

# batches of 8 and 7 (no drop_remainder): the replicas get 4 + 4, then 4 + 3 rows
rows = 15
rng = np.random.default_rng(0)
x = rng.normal(size=(rows, 3, 4)).astype(np.float32)  # [query, document, hard negative]
labels = np.stack([np.arange(rows), np.arange(rows)], 1).astype(np.float32)
with strategy.scope():
    model = keras.Sequential([keras.layers.Dense(4)])
    model.build((None, 3, 4))
    model.compile(optimizer=keras.optimizers.SGD(0.1), loss=SamToNeLoss())
data = tf.data.Dataset.from_tensor_slices((x, labels)).batch(8)
try:
    model.fit(data, epochs=1, verbose=0)
    result = "no error"
except tf.errors.InvalidArgumentError as e:
    result = str(e)
print("RESULT", json.dumps(result))
"""


def _run(code):
    env = os.environ.copy()
    env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    assert lines, proc.stdout[-2000:] + proc.stderr[-2000:]
    return json.loads(lines[-1][len("RESULT "):])


def _assert_uneven_message(message):
    assert "the 2 replicas got batches of different sizes" in message, message[-2000:]
    assert "drop_remainder=True" in message
    assert "divisible by the number of replicas" in message
    assert "[4 3]" in message  # the gathered sizes


def test_uneven_replica_batches_raise_in_gather_global_batch():
    result = _run(_GATHER)
    # equal batches: 6 gathered rows, replica 1's rows start at 3
    assert result["even"] == [[6, 6], [0, 3]]
    _assert_uneven_message(result["uneven"])


def test_uneven_replica_batches_raise_in_keras_fit():
    _assert_uneven_message(_run(_FIT))
