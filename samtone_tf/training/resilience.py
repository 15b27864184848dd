"""Training that survives being killed, and stops cleanly when the loss stops being finite.

Keras' own ``BackupAndRestore`` does not resume in the middle of an epoch in the same way in
both Keras generations (Keras 3 restarts the interrupted epoch from its first batch with the
mid-epoch weights; Keras 2 keeps the step count but restarts the data), so the resumed run
sees different batches than an uninterrupted one. Here the position in the data is the
optimizer's step count: :class:`StepCheckpoint` saves the model and optimizer (a
``tf.train.Checkpoint``, written atomically by ``tf.train.CheckpointManager``) every
``every_steps`` steps and at each epoch end, and :func:`fit_resumable` restores the latest
checkpoint, skips the batches already trained on, and finishes the interrupted epoch before
the remaining ones. With a dataset whose batch order is a function of its seed (as
:func:`samtone_tf.data.make_pair_dataset` makes), a run killed at any point and restarted
ends with the weights of an uninterrupted run.

:class:`StopOnNonFiniteLoss` raises :class:`NonFiniteLossError` at the first batch whose loss
is NaN or infinite, before any later callback can save the weights that batch produced;
:class:`StepCheckpoint` also refuses to write non-finite weights.
"""

import math
import os
import warnings

import numpy as np
import tensorflow as tf

from samtone_tf._keras import keras
from samtone_tf._util import check_int

__all__ = ["NonFiniteLossError", "StopOnNonFiniteLoss", "StepCheckpoint", "fit_resumable",
           "latest_step"]

_CHECKPOINT_PREFIX = "ckpt"


class NonFiniteLossError(RuntimeError):
    """The training loss (or a weight about to be checkpointed) became NaN or infinite."""


def _numpy(variable):
    """A variable's value as a NumPy array: Keras 3 variables, tf.Variables and distributed
    (e.g. Mirrored) variables alike (``np.asarray`` fails on the latter under Keras 2)."""
    return np.asarray(tf.convert_to_tensor(variable))


def _optimizer_step(model):
    return int(_numpy(model.optimizer.iterations))


def _as_float(value):
    """The loss in the batch logs as a float: its first non-finite element if it has one,
    else its mean (a scalar: itself); None if it is not numeric or is empty."""
    if value is None:  # np.asarray(None, dtype=float) would be NaN
        return None
    try:
        array = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError):
        return None
    if array.size == 0:
        return None
    bad = array[~np.isfinite(array)]
    return float(bad.flat[0]) if bad.size else float(array.mean())


class StopOnNonFiniteLoss(keras.callbacks.Callback):
    """Raises :class:`NonFiniteLossError` at the first batch whose loss is NaN or infinite.

    Put it first in the callback list: callbacks run in order, so a checkpoint callback after
    it never sees the batch. The error names the epoch and step, the loss, and the last
    checkpoint (if a :class:`StepCheckpoint` is given), which holds the last finite weights.
    Unlike Keras' ``TerminateOnNaN`` (which sets ``stop_training``, so epoch-end callbacks
    such as ``BackupAndRestore`` still save), training ends at once with an exception.

    Batch logs without a ``"loss"`` (a custom ``train_step`` that reports none) or with one
    that is not a number cannot be checked: a ``RuntimeWarning`` says so, once per callback.
    """

    def __init__(self, checkpoint=None):
        super().__init__()
        self.checkpoint = checkpoint
        self._epoch = 0
        self._warned = False

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch = epoch

    def _cannot_check(self, why):
        if not self._warned:
            self._warned = True
            warnings.warn(f"StopOnNonFiniteLoss cannot check the training loss: {why}; a NaN "
                          "or infinite loss will not stop training.", RuntimeWarning,
                          stacklevel=3)

    def on_train_batch_end(self, batch, logs=None):
        logs = logs or {}
        if "loss" not in logs:
            self._cannot_check(f"the batch logs have no 'loss' (keys: {sorted(logs)})")
            return
        loss = _as_float(logs["loss"])
        if loss is None:
            self._cannot_check(f"logs['loss'] is not a number "
                               f"({type(logs['loss']).__name__} {logs['loss']!r:.80})")
            return
        if math.isfinite(loss):
            return
        step = _optimizer_step(self.model)
        where = ("no checkpoint was written" if self.checkpoint is None
                 else self.checkpoint.describe_latest())
        raise NonFiniteLossError(
            f"The training loss became {loss} at epoch {self._epoch + 1}, batch {batch + 1} "
            f"(optimizer step {step}); training stopped before any checkpoint of these "
            f"weights ({where}). Usual causes: a learning rate too high for the batch, a "
            "temperature near 0 with float16 activations, or NaN/Inf from the encoder; lower "
            "the learning rate, raise the temperature, or use mixed_bfloat16/float32.")


def _rng_states(model):
    """Keras 3 dropout seed-generator states: in ``model.variables`` but not reached by
    ``tf.train.Checkpoint(model=...)``; without them a resumed run draws other masks."""
    return [v for v in model.variables
            if "seed_generator_state" in (getattr(v, "path", None) or v.name)]


def _model_checkpoint(model):
    parts = {"model": model, "optimizer": model.optimizer}
    states = _rng_states(model)
    if states:
        parts["rng_states"] = states
    return tf.train.Checkpoint(**parts)


def _build_optimizer(model):
    """Creates the optimizer's slot variables now, so a checkpoint restores them at once
    (rather than when the first step creates them). An optimizer without ``build`` (Keras 2
    legacy optimizers) creates them lazily, and a checkpoint restores them on creation."""
    optimizer = model.optimizer
    if optimizer is None:
        raise ValueError("Compile the model (with an optimizer) before checkpointing it.")
    if not callable(getattr(optimizer, "build", None)):
        return
    if getattr(optimizer, "built", True) is False or not getattr(optimizer, "variables", None):
        try:
            optimizer.build(model.trainable_variables)
        except Exception as e:
            raise RuntimeError(
                f"Could not create the variables of the {type(optimizer).__name__} optimizer "
                f"before checkpointing ({type(e).__name__}: {e}); without them a restored "
                "checkpoint cannot give the optimizer its saved state.") from e


def _strategy_scope(model):
    strategy = getattr(model, "distribute_strategy", None) or tf.distribute.get_strategy()
    return strategy.scope()


def _non_finite_variables(variables):
    bad = []
    for variable in variables:
        value = _numpy(variable)
        if value.dtype.kind == "f" and not np.all(np.isfinite(value)):
            bad.append(getattr(variable, "path", None) or variable.name)
    return bad


class StepCheckpoint(keras.callbacks.Callback):
    """Saves model + optimizer every ``every_steps`` optimizer steps and at each epoch end.

    Args:
      directory: where ``tf.train.CheckpointManager`` keeps its files.
      every_steps: save after every this many steps (None: only at epoch ends).
      max_to_keep: how many checkpoints to keep.
      check_finite: refuse (raise :class:`NonFiniteLossError`) to save NaN/Inf weights.
    """

    def __init__(self, directory, every_steps=None, max_to_keep=2, check_finite=True):
        super().__init__()
        check_int(every_steps, "every_steps", allow_none=True)
        self.directory = os.fspath(directory)
        self.every_steps = every_steps
        self.max_to_keep = max_to_keep
        self.check_finite = check_finite
        self._manager = None
        self._last_saved = None

    def _ensure_manager(self):
        if self._manager is None:
            with _strategy_scope(self.model):
                _build_optimizer(self.model)
            self._manager = tf.train.CheckpointManager(
                _model_checkpoint(self.model), self.directory, max_to_keep=self.max_to_keep,
                checkpoint_name=_CHECKPOINT_PREFIX)
        return self._manager

    def describe_latest(self):
        latest = tf.train.latest_checkpoint(self.directory)
        return f"the last checkpoint is {latest}" if latest else "no checkpoint was written yet"

    def _step(self):
        return _optimizer_step(self.model)

    def save(self):
        step = self._step()
        if step == self._last_saved:
            return None
        if self.check_finite:
            bad = _non_finite_variables(self.model.variables)
            if bad:
                raise NonFiniteLossError(
                    f"Refusing to checkpoint non-finite weights at step {step} ({len(bad)} "
                    f"variables, e.g. {bad[:3]}); {self.describe_latest()}.")
        path = self._ensure_manager().save(checkpoint_number=step)
        self._last_saved = step
        return path

    def on_train_begin(self, logs=None):
        self._ensure_manager()
        self._last_saved = self._step()

    def on_train_batch_end(self, batch, logs=None):
        if self.every_steps and self._step() % self.every_steps == 0:
            self.save()

    def on_epoch_end(self, epoch, logs=None):
        self.save()


def latest_step(directory):
    """The optimizer step of the newest checkpoint in ``directory`` (0 if there is none)."""
    latest = tf.train.latest_checkpoint(os.fspath(directory))
    if not latest:
        return 0
    return int(latest.rsplit("-", 1)[-1])


def restore_latest(model, directory):
    """Restores model + optimizer from the newest checkpoint in ``directory``; returns the
    optimizer step it holds (0, restoring nothing, if there is none)."""
    latest = tf.train.latest_checkpoint(os.fspath(directory))
    if not latest:
        return 0
    with _strategy_scope(model):
        _build_optimizer(model)
        status = _model_checkpoint(model).restore(latest)
        status.assert_existing_objects_matched()
    return _optimizer_step(model)


def fit_resumable(model, dataset, *, epochs, steps_per_epoch, checkpoint_dir, every_steps=None,
                  callbacks=(), stop_on_non_finite=True, verbose=1, max_to_keep=2):
    """``model.fit`` that resumes from the newest checkpoint in ``checkpoint_dir``.

    The run is ``epochs * steps_per_epoch`` optimizer steps over the batches of ``dataset``
    in order (repeated as needed). ``dataset`` is a ``tf.data.Dataset`` or a function of no
    arguments returning one; pass a function when the dataset shuffles: each new iterator of
    one ``shuffle(seed=...)`` dataset object draws a new order (the seed fixes the sequence
    of orders, not each order), so only fresh datasets replay the same batches. The function
    is called once per ``model.fit`` (twice when resuming mid-epoch). A restarted call restores the model and optimizer, skips
    the ``s`` batches already trained on, trains the rest of the interrupted epoch, then the
    remaining epochs, so that with a deterministic batch order it ends with the weights of an
    uninterrupted run. The model must be built and compiled.

    Returns:
      dict ``{"history": {metric: [per-epoch values of the epochs run now]},
      "resumed_from_step": s, "steps": total}``.
    """
    for name, value in (("epochs", epochs), ("steps_per_epoch", steps_per_epoch)):
        check_int(value, name)
    if not model.built:
        raise ValueError("Build the model (call it on a batch) before fit_resumable.")
    total = epochs * steps_per_epoch
    done = restore_latest(model, checkpoint_dir)
    if done > total:
        raise ValueError(f"The checkpoint in {checkpoint_dir} is at step {done}, past the "
                         f"{total} steps of this run: use a fresh checkpoint directory.")
    checkpoint = StepCheckpoint(checkpoint_dir, every_steps=every_steps, max_to_keep=max_to_keep)
    own = ([StopOnNonFiniteLoss(checkpoint)] if stop_on_non_finite else []) + [checkpoint]
    callbacks = own + list(callbacks)
    def batches(skip):
        data = dataset() if callable(dataset) else dataset
        if not isinstance(data, tf.data.Dataset):
            raise TypeError("`dataset` must be a tf.data.Dataset or a function returning one, "
                            f"got {type(data).__name__}.")
        if data.cardinality() != tf.data.INFINITE_CARDINALITY:
            data = data.repeat()
        return data.skip(skip)

    history = {}

    def run(first_epoch, last_epoch, steps, skip):
        result = model.fit(batches(skip), initial_epoch=first_epoch, epochs=last_epoch,
                           steps_per_epoch=steps, callbacks=callbacks, verbose=verbose,
                           shuffle=False)
        for key, values in result.history.items():
            history.setdefault(key, []).extend(float(v) for v in values)

    epoch, offset = divmod(done, steps_per_epoch)
    if done < total:
        if offset:
            if verbose:
                print(f"Resuming at step {done}: epoch {epoch + 1}, batch {offset + 1}.")
            run(epoch, epoch + 1, steps_per_epoch - offset, done)
            epoch += 1
        elif done and verbose:
            print(f"Resuming at step {done}: epoch {epoch + 1}.")
        if epoch < epochs:
            run(epoch, epochs, steps_per_epoch, epoch * steps_per_epoch)
    return {"history": history, "resumed_from_step": done, "steps": total}
