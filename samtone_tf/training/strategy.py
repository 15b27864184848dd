"""Choosing a ``tf.distribute`` strategy for the hardware at hand.

Order of preference in :func:`get_strategy`:

1. TPU: ``TPUStrategy`` when a TPU cluster resolver finds one (``tpu`` names it; with
   ``tpu=None`` auto-detection is attempted: where no TPU is configured at all it is skipped
   with a debug log line; a TPU that is found but fails to connect or initialise is skipped
   with a logged warning that names the error).
2. Several workers: ``MultiWorkerMirroredStrategy`` when ``TF_CONFIG`` describes a cluster
   with more than one worker/chief task (one process per machine, or several processes on
   one machine with ``127.0.0.1`` ports for tests).
3. Local GPUs: ``MirroredStrategy`` over all of them when there are several,
   ``OneDeviceStrategy("/gpu:0")`` for one.
4. ``num_cpu_replicas=n``: ``MirroredStrategy`` over ``n`` logical CPU devices (useful to
   exercise the cross-replica code paths on a laptop). Logical devices can only be
   configured *before TensorFlow initialises its runtime* (before the first op, device
   listing or tensor creation): call :func:`configure_cpu_replicas` at program start, or
   let :func:`get_strategy` do it if nothing has run yet.
5. Otherwise the default strategy (``tf.distribute.get_strategy()``).

Pure TensorFlow; no Keras.
"""

import json
import logging
import os

import tensorflow as tf

from samtone_tf._util import check_int

logger = logging.getLogger(__name__)

__all__ = [
    "get_strategy",
    "configure_cpu_replicas",
    "per_replica_batch_check",
    "num_workers_in_tf_config",
]


def num_workers_in_tf_config(tf_config=None):
    """Number of worker + chief tasks in ``TF_CONFIG`` (0 when unset or clusterless).

    Args:
      tf_config: a JSON string or dict; defaults to the ``TF_CONFIG`` environment variable.

    Raises:
      ValueError: ``TF_CONFIG`` is not valid JSON.
    """
    if tf_config is None:
        tf_config = os.environ.get("TF_CONFIG", "")
    if isinstance(tf_config, str):
        if not tf_config.strip():
            return 0
        try:
            tf_config = json.loads(tf_config)
        except json.JSONDecodeError as e:
            raise ValueError(f"TF_CONFIG is not valid JSON: {e.msg}.") from e
    cluster = tf_config.get("cluster", {}) or {}
    return len(cluster.get("worker", [])) + len(cluster.get("chief", []))


def configure_cpu_replicas(n):
    """Splits the first physical CPU into ``n`` logical devices ``/cpu:0 ... /cpu:n-1``.

    Must run before TensorFlow initialises its runtime. Calling it again with the same
    (or a smaller) ``n`` after initialisation is a no-op.

    Returns:
      the list of logical CPU device names.

    Raises:
      ValueError: ``n < 1``.
      RuntimeError: TensorFlow was already initialised with fewer logical CPU devices.
    """
    check_int(n, "num_cpu_replicas")
    cpu = tf.config.list_physical_devices("CPU")[0]
    try:
        tf.config.set_logical_device_configuration(
            cpu, [tf.config.LogicalDeviceConfiguration() for _ in range(n)]
        )
    except RuntimeError as e:
        have = tf.config.list_logical_devices("CPU")
        if len(have) >= n:
            return [d.name for d in have[:n]]
        raise RuntimeError(
            f"Cannot configure {n} logical CPU devices: TensorFlow is already initialised "
            f"with {len(have)}. Call samtone_tf.training.strategy.configure_cpu_replicas({n}) at "
            "program start, before any TensorFlow op runs."
        ) from e
    return [d.name for d in tf.config.list_logical_devices("CPU")[:n]]


def _find_tpu(tpu):
    """Returns a connected, initialised TPUClusterResolver, or None.

    With ``tpu=None``: the resolver's constructor raises ValueError when the environment
    names no TPU (no ``TPU_NAME``, not on a Cloud TPU node), the usual "no TPU here" case,
    logged at debug level only. A failure after that (a TPU was found but connecting or
    initialising it failed), or any other constructor error, is logged as a warning naming
    the exception before falling back to the other devices.
    """
    try:
        resolver = tf.distribute.cluster_resolver.TPUClusterResolver(tpu=tpu)
    except Exception as e:  # noqa: BLE001 - resolver failures come in many types
        if tpu is not None:
            raise RuntimeError(f"Could not connect to TPU {tpu!r}: {e}") from e
        if isinstance(e, ValueError):  # "Please provide a TPU Name to connect to."
            logger.debug("No TPU found (%s); not using TPUStrategy.", e)
        else:
            logger.warning("TPU auto-detection failed with %s: %s; falling back to "
                           "GPU/CPU devices.", type(e).__name__, e)
        return None
    try:
        tf.config.experimental_connect_to_cluster(resolver)
        tf.tpu.experimental.initialize_tpu_system(resolver)
        return resolver
    except Exception as e:  # noqa: BLE001 - connection failures come in many types
        if tpu is not None:
            raise RuntimeError(f"Could not connect to TPU {tpu!r}: {e}") from e
        logger.warning("A TPU was found but could not be connected or initialised (%s: %s); "
                       "falling back to GPU/CPU devices. Pass tpu=... to make this an error.",
                       type(e).__name__, e)
        return None


def get_strategy(tpu=None, num_cpu_replicas=None):
    """Returns the ``tf.distribute.Strategy`` for this process (see module docstring).

    Args:
      tpu: TPU name/address for ``TPUClusterResolver`` (``"local"`` on a TPU VM). If given
        and unreachable, a RuntimeError is raised; if None, a TPU is auto-detected (a TPU
        that is found but fails to initialise is logged as a warning, then skipped).
      num_cpu_replicas: if set and no TPU / multi-worker cluster / GPU is found, mirror
        over this many logical CPU devices (configured here if TF is not yet initialised).

    Returns:
      a strategy; ``strategy.num_replicas_in_sync`` gives the replica count.
    """
    resolver = _find_tpu(tpu)
    if resolver is not None:
        return tf.distribute.TPUStrategy(resolver)
    if num_workers_in_tf_config() > 1:
        return tf.distribute.MultiWorkerMirroredStrategy()
    if num_cpu_replicas is not None:
        # Configure before anything lists devices (which initialises the runtime).
        gpus = tf.config.list_physical_devices("GPU")
        if not gpus:
            devices = configure_cpu_replicas(num_cpu_replicas)
            return tf.distribute.MirroredStrategy(devices=devices)
    gpus = tf.config.list_logical_devices("GPU")
    if len(gpus) > 1:
        return tf.distribute.MirroredStrategy(devices=[g.name for g in gpus])
    if len(gpus) == 1:
        return tf.distribute.OneDeviceStrategy(gpus[0].name)
    return tf.distribute.get_strategy()


def per_replica_batch_check(global_batch, strategy=None):
    """Per-replica batch size, checking the global batch splits evenly.

    Args:
      global_batch: the global batch size (what the dataset batches to).
      strategy: a strategy; defaults to the current one.

    Returns:
      ``global_batch // strategy.num_replicas_in_sync``.

    Raises:
      ValueError: ``global_batch`` is not a positive int or not divisible by the number
        of replicas (cross-replica gathering needs equal, static per-replica batches).
    """
    if strategy is None:
        strategy = tf.distribute.get_strategy()
    replicas = strategy.num_replicas_in_sync
    check_int(global_batch, "global batch size")
    if global_batch % replicas:
        raise ValueError(
            f"global batch size {global_batch} is not divisible by the {replicas} replicas of "
            f"{type(strategy).__name__}; use a multiple of {replicas}."
        )
    return global_batch // replicas
