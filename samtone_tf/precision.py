"""One precision setting for everything the library computes.

``precision`` is one of ``"auto"``, ``"float32"``, ``"bfloat16"`` or ``"float16"``:

* ``"float32"``: everything in float32 (the Keras policy ``"float32"``).
* ``"bfloat16"`` / ``"float16"``: the encoders compute in the half type with float32
  variables (the Keras policies ``"mixed_bfloat16"`` / ``"mixed_float16"``). The towers
  cast their pooled output to float32, so embeddings, the losses and their softmaxes stay
  float32. ``float16`` training needs loss scaling, which ``model.compile`` adds itself
  under a ``mixed_float16`` policy.
* ``"auto"``: ``"bfloat16"`` where the hardware computes it natively: a TPU; GPUs of
  compute capability 8.0 or more (Ampere and newer); or, with no GPU, a CPU whose flags
  include ``amx_bf16`` or ``avx512_bf16``. Everywhere else ``"float32"``.

Keras layers take the global policy in force when they are *built*. Build models (and load
pretrained encoders) inside :func:`precision_scope`::

    with samtone_tf.precision_scope("auto") as precision:   # -> "bfloat16" or "float32"
        model = samtone_tf.DualEncoder("pretrained:minilm-l6")
    model.compile(...); model.fit(...)                       # computes in `precision`

A TF-Hub-layout SavedModel (``TFHubEncoder``) computes in the precision it was exported in
(``export_tfhub_layout(..., precision=...)``); the pretrained cache writes one SavedModel per
precision on first use.
"""

import contextlib
import functools

import tensorflow as tf

from samtone_tf._keras import keras

PRECISIONS = ("auto", "float32", "bfloat16", "float16")
RESOLVED_PRECISIONS = PRECISIONS[1:]
CPU_BF16_FLAGS = ("amx_bf16", "avx512_bf16")
_POLICIES = {"float32": "float32", "bfloat16": "mixed_bfloat16", "float16": "mixed_float16"}


def check_precision(precision, allow_auto=True):
    """Returns ``precision`` or raises a ValueError naming the allowed values."""
    allowed = PRECISIONS if allow_auto else RESOLVED_PRECISIONS
    if not isinstance(precision, str) or precision not in allowed:
        raise ValueError(
            f"`precision` must be one of {', '.join(allowed)}; got {precision!r}"
        )
    return precision


def cpu_flags(path="/proc/cpuinfo"):
    """The CPU feature flags (a frozenset of strings; empty where they cannot be read)."""
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip() in ("flags", "Features"):
                    return frozenset(value.split())
    except OSError:
        pass
    return frozenset()


def gpu_compute_capabilities():
    """``[(major, minor), ...]``, one per visible GPU (``(0, 0)`` where TF does not say)."""
    capabilities = []
    for device in tf.config.list_physical_devices("GPU"):
        details = tf.config.experimental.get_device_details(device) or {}
        capability = details.get("compute_capability") or (0, 0)
        capabilities.append(tuple(int(x) for x in capability))
    return capabilities


def tpu_present():
    """Whether TPU devices are initialised in this process (after connecting to the TPU)."""
    return bool(tf.config.list_logical_devices("TPU"))


def resolve_precision(precision="auto", *, cpu_flags=None, gpu_capabilities=None, tpu=None):
    """``"auto"`` -> ``"bfloat16"`` or ``"float32"`` for this hardware; other values as given.

    Args:
        precision: ``"auto"``, ``"float32"``, ``"bfloat16"`` or ``"float16"``.
        cpu_flags: the CPU's flags (default: read from ``/proc/cpuinfo``).
        gpu_capabilities: the GPUs' compute capabilities (default: asked of TensorFlow).
        tpu: whether a TPU is in use (default: TPU devices are initialised).

    Returns:
        ``"float32"``, ``"bfloat16"`` or ``"float16"``.
    """
    check_precision(precision)
    if precision != "auto":
        return precision
    if tpu is None:
        tpu = tpu_present()
    if tpu:
        return "bfloat16"
    if gpu_capabilities is None:
        gpu_capabilities = gpu_compute_capabilities()
    if gpu_capabilities:  # the GPUs compute, not the CPU
        return "bfloat16" if all(c >= (8, 0) for c in gpu_capabilities) else "float32"
    flags = _cpu_flags_cached() if cpu_flags is None else frozenset(cpu_flags)
    return "bfloat16" if flags & set(CPU_BF16_FLAGS) else "float32"


@functools.lru_cache(maxsize=1)
def _cpu_flags_cached():
    return cpu_flags()


def policy_name(precision):
    """The Keras dtype policy of a resolved precision (``"bfloat16"`` -> ``"mixed_bfloat16"``)."""
    return _POLICIES[check_precision(precision, allow_auto=False)]


def compute_dtype(precision):
    """The compute dtype name of a resolved precision."""
    return check_precision(precision, allow_auto=False)


def current_precision():
    """The precision of the Keras global policy now in force."""
    dtype = keras.mixed_precision.global_policy().compute_dtype
    if dtype not in RESOLVED_PRECISIONS:
        raise ValueError(f"The global Keras policy computes in {dtype}, not a float precision")
    return dtype


def precision_of_layer(layer):
    """The compute precision of a Keras layer (its dtype policy's compute dtype)."""
    return str(getattr(layer, "compute_dtype", None) or "float32")


@contextlib.contextmanager
def precision_scope(precision="auto"):
    """Sets the Keras global dtype policy for ``precision`` and restores it on exit.

    ``None`` leaves the policy as it is. Yields the resolved precision.
    """
    if precision is None:
        yield current_precision()
        return
    resolved = resolve_precision(precision)
    previous = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy(policy_name(resolved))
    try:
        yield resolved
    finally:
        keras.mixed_precision.set_global_policy(previous)

