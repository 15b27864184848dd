"""Faults during training: a SIGKILL mid-epoch (real subprocess of `samtone-tf train`), an
exception mid-epoch, NaN weights, and restarts of finished runs.

Each fault is injected for real and the outcome compared with an uninterrupted run of the
same seed: the resumed run must end with the same weights (to 1e-6; on this CPU they are
bit-identical), and a non-finite loss must stop training before a checkpoint of the bad
weights is written.
"""

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import tensorflow as tf

import samtone_tf
from samtone_tf.training import resilience
from samtone_tf._keras import keras
from tests import _tiny
from tests.test_cli import small_beir  # noqa: F401  (fixture: a real SciFact slice)

BATCH, LENGTH, ROWS = 8, 16, 64
EPOCHS, STEPS = 3, 8


# ------------------------------------------------------------------- in-process helpers
def _dataset():
    ids, mask = _tiny.random_tokens(ROWS, LENGTH, seed=3)
    features = {"query_token_ids": ids, "query_padding_mask": mask,
                "document_token_ids": ids[::-1].copy(), "document_padding_mask": mask[::-1].copy()}
    labels = np.stack([np.arange(ROWS), np.arange(ROWS)], 1).astype("float32")
    return (tf.data.Dataset.from_tensor_slices((features, labels))
            .shuffle(ROWS, seed=5).batch(BATCH, drop_remainder=True))


@pytest.fixture(scope="module")
def encoder_path(tmp_path_factory):
    return _tiny.tiny_tfhub_encoder_path(tmp_path_factory.mktemp("enc"), seed=1)


def _model(encoder_path):
    keras.utils.set_random_seed(0)
    model = samtone_tf.DualEncoder(encoder_path, architecture="ade-spl", projection_dim=8)
    model.compile(optimizer=keras.optimizers.Adam(1e-3), loss=samtone_tf.SamToNeLoss())
    model(next(iter(_dataset()))[0])
    return model


def _weights(model):
    return [np.asarray(v).copy() for v in model.weights]


def _max_diff(a, b):
    assert len(a) == len(b)
    return max(float(np.abs(x - y).max()) for x, y in zip(a, b))


class _Interrupt(Exception):
    pass


class _RaiseAtStep(keras.callbacks.Callback):
    def __init__(self, step):
        super().__init__()
        self.step = step

    def on_train_batch_end(self, batch, logs=None):
        if int(np.asarray(self.model.optimizer.iterations)) == self.step:
            raise _Interrupt()


class _PoisonAtStep(keras.callbacks.Callback):
    """Writes NaN into one encoder weight after optimizer step ``step``."""

    def __init__(self, step, value=np.nan):
        super().__init__()
        self.step, self.value = step, value

    def on_train_batch_end(self, batch, logs=None):
        if int(np.asarray(self.model.optimizer.iterations)) == self.step:
            variable = next(v for v in self.model.trainable_weights if len(v.shape) == 2)
            variable.assign(np.full(variable.shape, self.value, np.float32))


@pytest.fixture(scope="module")
def uninterrupted(encoder_path, tmp_path_factory):
    model = _model(encoder_path)
    outcome = resilience.fit_resumable(
        model, _dataset, epochs=EPOCHS, steps_per_epoch=STEPS,
        checkpoint_dir=str(tmp_path_factory.mktemp("full")), every_steps=5, verbose=0)
    return model, outcome


def test_exception_mid_epoch_then_resume_gives_identical_weights(encoder_path, uninterrupted,
                                                                  tmp_path):
    reference, full = uninterrupted
    assert full["resumed_from_step"] == 0 and len(full["history"]["loss"]) == EPOCHS
    checkpoints = str(tmp_path / "ckpt")
    with pytest.raises(_Interrupt):
        resilience.fit_resumable(_model(encoder_path), _dataset, epochs=EPOCHS,
                                 steps_per_epoch=STEPS, checkpoint_dir=checkpoints,
                                 every_steps=5, verbose=0, callbacks=[_RaiseAtStep(12)])
    assert resilience.latest_step(checkpoints) == 10  # mid-epoch 2 (steps 9..16)
    resumed = _model(encoder_path)
    assert _max_diff(_weights(resumed), _weights(reference)) > 1e-3  # restore is not a no-op
    outcome = resilience.fit_resumable(resumed, _dataset, epochs=EPOCHS, steps_per_epoch=STEPS,
                                       checkpoint_dir=checkpoints, every_steps=5, verbose=0)
    assert outcome["resumed_from_step"] == 10
    assert int(np.asarray(resumed.optimizer.iterations)) == EPOCHS * STEPS
    assert _max_diff(_weights(resumed), _weights(reference)) <= 1e-6
    # The last epoch ran whole in both: the same mean loss.
    assert outcome["history"]["loss"][-1] == pytest.approx(full["history"]["loss"][-1], abs=1e-6)


@pytest.mark.skipif(not samtone_tf.IS_KERAS3, reason="keras-hub towers train in Keras 3 models")
def test_resume_with_dropout_replays_the_same_masks(tmp_path):
    """Keras 3 dropout draws from seed-generator state variables; they are checkpointed too,
    so a resumed run with dropout still ends with the uninterrupted weights."""

    def model():
        keras.utils.set_random_seed(0)
        m = samtone_tf.DualEncoder(_tiny.tiny_backbone(seed=1, dropout=0.1), architecture="sde",
                                   projection_dim=8)
        m.compile(optimizer=keras.optimizers.Adam(1e-3), loss=samtone_tf.SamToNeLoss())
        m(next(iter(_dataset()))[0])
        return m

    args = dict(epochs=2, steps_per_epoch=STEPS, every_steps=5, verbose=0)
    reference = model()
    resilience.fit_resumable(reference, _dataset, checkpoint_dir=str(tmp_path / "a"), **args)
    with pytest.raises(_Interrupt):
        resilience.fit_resumable(model(), _dataset, checkpoint_dir=str(tmp_path / "b"),
                                 callbacks=[_RaiseAtStep(7)], **args)
    resumed = model()
    assert resilience.fit_resumable(resumed, _dataset, checkpoint_dir=str(tmp_path / "b"),
                                    **args)["resumed_from_step"] == 5
    assert _max_diff(_weights(resumed), _weights(reference)) <= 1e-6
    # Dropout is really on: the same weights give different training-mode outputs.
    features = next(iter(_dataset()))[0]
    assert not np.allclose(resumed(features, training=True), resumed(features, training=True))


def test_one_shuffled_dataset_object_would_replay_other_batches():
    """Why fit_resumable takes a dataset *function*: two iterators of one shuffled dataset
    object see different orders, fresh objects replay the same one."""
    first = lambda d: [int(l[0, 0]) for _, l in d.take(STEPS)]  # noqa: E731
    shared = _dataset()
    assert first(shared) != first(shared)
    assert first(_dataset()) == first(_dataset())


def test_restarting_a_finished_run_trains_nothing(encoder_path, tmp_path):
    checkpoints = str(tmp_path / "ckpt")
    model = _model(encoder_path)
    resilience.fit_resumable(model, _dataset, epochs=1, steps_per_epoch=STEPS,
                             checkpoint_dir=checkpoints, verbose=0)
    again = _model(encoder_path)
    outcome = resilience.fit_resumable(again, _dataset, epochs=1, steps_per_epoch=STEPS,
                                       checkpoint_dir=checkpoints, verbose=0)
    assert outcome == {"history": {}, "resumed_from_step": STEPS, "steps": STEPS}
    assert _max_diff(_weights(again), _weights(model)) == 0.0
    # A longer run continues from it; a shorter one is refused.
    with pytest.raises(ValueError, match="past the"):
        resilience.fit_resumable(_model(encoder_path), _dataset, epochs=1, steps_per_epoch=4,
                                 checkpoint_dir=checkpoints, verbose=0)


@pytest.mark.parametrize("value", [np.nan, np.inf])
def test_non_finite_loss_stops_before_any_checkpoint_of_bad_weights(encoder_path, tmp_path,
                                                                     value):
    checkpoints = str(tmp_path / "ckpt")
    model = _model(encoder_path)
    with pytest.raises(resilience.NonFiniteLossError) as caught:
        resilience.fit_resumable(model, _dataset, epochs=EPOCHS, steps_per_epoch=STEPS,
                                 checkpoint_dir=checkpoints, every_steps=3, verbose=0,
                                 callbacks=[_PoisonAtStep(6, value)])
    message = str(caught.value)
    # Step 7 is the first whose loss is computed from the poisoned weights.
    assert "optimizer step 7" in message and "epoch 1, batch 7" in message, message
    assert "ckpt-6" in message and "learning rate" in message
    # Every checkpoint that exists holds finite weights; none is newer than step 6.
    assert resilience.latest_step(checkpoints) == 6
    reader = tf.train.load_checkpoint(tf.train.latest_checkpoint(checkpoints))
    floats = [name for name, dtype in reader.get_variable_to_dtype_map().items()
              if dtype.is_floating]
    assert len(floats) > 50
    for name in floats:
        assert np.all(np.isfinite(reader.get_tensor(name))), name
    # Restarting resumes from the clean checkpoint (the fault was transient): it finishes.
    again = _model(encoder_path)
    outcome = resilience.fit_resumable(again, _dataset, epochs=1, steps_per_epoch=STEPS,
                                       checkpoint_dir=checkpoints, verbose=0)
    assert outcome["resumed_from_step"] == 6
    assert all(np.all(np.isfinite(w)) for w in _weights(again))


def test_checkpoint_refuses_non_finite_weights(encoder_path, tmp_path):
    model = _model(encoder_path)
    saver = resilience.StepCheckpoint(str(tmp_path / "ckpt"))
    saver.set_model(model)
    assert saver.save() is not None
    model.trainable_weights[0].assign(tf.fill(model.trainable_weights[0].shape, np.inf))
    model.optimizer.iterations.assign(3)
    with pytest.raises(resilience.NonFiniteLossError, match="non-finite weights at step 3"):
        saver.save()
    assert resilience.latest_step(str(tmp_path / "ckpt")) == 0


def test_stop_on_non_finite_loss_with_plain_fit_keeps_backup_clean(encoder_path, tmp_path):
    """With Keras' own BackupAndRestore after it, the bad batch never reaches the backup."""
    model = _model(encoder_path)
    backup = keras.callbacks.BackupAndRestore(str(tmp_path / "backup"), save_freq=1,
                                              delete_checkpoint=False)
    with pytest.raises(resilience.NonFiniteLossError):
        model.fit(_dataset().repeat(), epochs=1, steps_per_epoch=STEPS, verbose=0,
                  callbacks=[resilience.StopOnNonFiniteLoss(), backup, _PoisonAtStep(3)])
    restored = _model(encoder_path)
    restored.fit(_dataset().repeat(), epochs=1, steps_per_epoch=1, verbose=0,
                 callbacks=[keras.callbacks.BackupAndRestore(str(tmp_path / "backup"))])
    assert all(np.all(np.isfinite(w)) for w in _weights(restored))


def test_bad_arguments(encoder_path, tmp_path):
    model = _model(encoder_path)
    for kwargs, match in (({"epochs": 0}, "epochs"), ({"steps_per_epoch": 1.5}, "steps_per_epoch")):
        args = dict(epochs=1, steps_per_epoch=2, checkpoint_dir=str(tmp_path), verbose=0)
        args.update(kwargs)
        with pytest.raises(ValueError, match=match):
            resilience.fit_resumable(model, _dataset, **args)
    with pytest.raises(TypeError, match="tf.data.Dataset"):
        resilience.fit_resumable(model, lambda: [1, 2], epochs=1, steps_per_epoch=2,
                                 checkpoint_dir=str(tmp_path / "x"), verbose=0)
    with pytest.raises(ValueError, match="every_steps"):
        resilience.StepCheckpoint(str(tmp_path), every_steps=0)


class _FakeOptimizer:
    def __init__(self, build_error=None, has_build=True):
        self.built = False
        self.variables = []
        self.iterations = tf.Variable(4, dtype=tf.int64)
        self._build_error = build_error
        if not has_build:
            self.build = None

    def build(self, variables):
        if self._build_error is not None:
            raise self._build_error
        self.built = True


class _FakeModel:
    def __init__(self, optimizer):
        self.optimizer = optimizer
        self.trainable_variables = []


def test_failing_optimizer_build_is_an_error():
    model = _FakeModel(_FakeOptimizer(ValueError("Unknown variable: dense/kernel")))
    with pytest.raises(RuntimeError, match=r"Could not create the variables of the "
                       r"_FakeOptimizer optimizer before checkpointing \(ValueError: Unknown "
                       r"variable: dense/kernel\)"):
        resilience._build_optimizer(model)
    built = _FakeModel(_FakeOptimizer())
    resilience._build_optimizer(built)
    assert built.optimizer.built
    resilience._build_optimizer(_FakeModel(_FakeOptimizer(has_build=False)))  # lazy: fine


def _stop_callback():
    callback = resilience.StopOnNonFiniteLoss()
    callback.set_model(_FakeModel(_FakeOptimizer()))
    return callback


def test_stop_on_non_finite_loss_warns_once_when_logs_have_no_loss():
    callback = _stop_callback()
    with pytest.warns(RuntimeWarning) as record:
        callback.on_train_batch_end(0, {"accuracy": 0.5})
        callback.on_train_batch_end(1, {"accuracy": 0.25})
        callback.on_train_batch_end(2, None)
    assert len(record) == 1
    assert ("StopOnNonFiniteLoss cannot check the training loss: the batch logs have no "
            "'loss' (keys: ['accuracy'])") in str(record[0].message)
    assert "will not stop training" in str(record[0].message)


def test_stop_on_non_finite_loss_warns_once_on_an_unreadable_loss():
    callback = _stop_callback()
    with pytest.warns(RuntimeWarning) as record:
        callback.on_train_batch_end(0, {"loss": "n/a"})
        callback.on_train_batch_end(1, {"loss": None})
    assert len(record) == 1
    assert "logs['loss'] is not a number (str 'n/a')" in str(record[0].message)


def test_stop_on_non_finite_loss_reads_a_per_example_loss():
    callback = _stop_callback()
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a finite vector is read, no warning
        callback.on_train_batch_end(0, {"loss": np.array([0.5, 1.5], np.float32)})
    with pytest.raises(resilience.NonFiniteLossError, match="became nan at epoch 1, batch 2 "
                       r"\(optimizer step 4\)"):
        callback.on_train_batch_end(1, {"loss": np.array([0.5, np.nan], np.float32)})


# ------------------------------------------------------- SIGKILL of `samtone-tf train`
TOTAL_STEPS = 3 * 10


def _train_command(config, output_dir):
    return [sys.executable, "-m", "samtone_tf.cli", "train", "--config", str(config),
            "--output-dir", str(output_dir), "--quiet"]


def _h5_arrays(path):
    import h5py

    arrays = {}
    with h5py.File(path, "r") as f:
        f.visititems(lambda name, obj: arrays.__setitem__(name, obj[()])
                     if isinstance(obj, h5py.Dataset) else None)
    return arrays


@pytest.mark.parametrize("strategy", ["default", "cpu:2"])
def test_sigkill_mid_epoch_then_rerun_ends_with_uninterrupted_weights(small_beir, tmp_path,
                                                                       strategy):
    root, vocab = small_beir
    encoder = _tiny.tiny_tfhub_encoder_path(tmp_path, seed=2)
    config = tmp_path / "config.json"
    config.write_text(json.dumps({
        "data": root, "format": "beir", "encoder": encoder, "vocab": vocab,
        "architecture": "ade-spl", "projection_dim": 16, "query_max_length": 16,
        "document_max_length": 48, "batch_size": 16, "epochs": 3, "steps_per_epoch": 10,
        "learning_rate": 1e-3, "schedule": "linear", "warmup_steps": 3, "same_tower": "both",
        "strategy": strategy, "checkpoint_every": 3, "evaluate": False, "export": False,
        "tensorboard": False,
    }))
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")

    # The run to be killed: SIGKILL as soon as its first checkpoint exists (step 3 of 10).
    killed_dir = tmp_path / "killed"
    child = subprocess.Popen(_train_command(config, killed_dir), env=env,
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 300
    try:
        while resilience.latest_step(str(killed_dir / "checkpoints")) == 0:
            assert child.poll() is None, child.stderr.read()[-3000:]
            assert time.time() < deadline, "no checkpoint within 300 s"
            time.sleep(0.01)
        child.send_signal(signal.SIGKILL)
    finally:
        child.wait(timeout=60)
        child.stderr.close()
    assert child.returncode == -signal.SIGKILL
    killed_at = resilience.latest_step(str(killed_dir / "checkpoints"))
    assert 0 < killed_at < TOTAL_STEPS
    assert not (killed_dir / "final.weights.h5").exists()  # it really died mid-training

    # The same command again resumes; an uninterrupted run of the same seed for comparison.
    for out in (killed_dir, tmp_path / "uninterrupted"):
        done = subprocess.run(_train_command(config, out), env=env, capture_output=True,
                              text=True, timeout=600)
        assert done.returncode == 0, done.stderr[-3000:]
    resumed = json.loads((killed_dir / "summary.json").read_text())
    full = json.loads((tmp_path / "uninterrupted" / "summary.json").read_text())
    assert resumed["resumed_from_step"] == killed_at and full["resumed_from_step"] == 0
    print(f"killed with a checkpoint at step {killed_at} of {TOTAL_STEPS} "
          f"(epoch {killed_at // 10 + 1}, batch {killed_at % 10 + 1})")

    got = _h5_arrays(killed_dir / "final.weights.h5")
    want = _h5_arrays(tmp_path / "uninterrupted" / "final.weights.h5")
    assert sorted(got) == sorted(want) and len(want) > 40
    initial_differs = False
    for name in want:
        np.testing.assert_allclose(got[name], want[name], rtol=0, atol=1e-6, err_msg=name)
        initial_differs |= want[name].dtype.kind == "f" and np.abs(want[name]).max() > 0
    assert initial_differs
    # Same final-epoch loss too (the last epoch ran whole after the resume).
    assert resumed["loss_history"][-1] == pytest.approx(full["loss_history"][-1], abs=1e-6)


def test_cli_reports_a_non_finite_loss_with_its_own_exit_code(monkeypatch, capsys):
    from samtone_tf import cli
    from samtone_tf.training import run as training

    def fail(config, **kwargs):
        raise resilience.NonFiniteLossError("The training loss became nan at epoch 1")

    monkeypatch.setattr(training, "train", fail)
    assert cli.main(["train", "--data", "/tmp", "--encoder", "pretrained:minilm-l6"]) == 3
    assert "training stopped: The training loss became nan" in capsys.readouterr().err
