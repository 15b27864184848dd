"""Gradient caching (DualEncoder(mini_batch_size=...)): the cached step against the uncached
one on the same batch, for every loss variant and tower layout, with dropout, with
remainder mini-batches, under fit, checkpoints and mixed precision, and its argument checks.
Runs under Keras 3 (keras-hub and TF-Hub towers) and TF_USE_LEGACY_KERAS=1 (TF-Hub towers).
The 2-replica MirroredStrategy and MultiWorkerMirroredStrategy cases are in
tests/test_gradcache_distribute.py.

Equal gradients: for each variable, ``|g_cached - g_uncached| <= 1e-5 * max(|g_uncached|,
1e-4 * |all gradients|)`` (L2 norms). The floor keeps the check relative for variables
whose exact gradient is 0 (a key bias moves no attention weight), where float32 summation
order leaves noise of 1e-9 of the total.
"""

import numpy as np
import pytest
import tensorflow as tf

import samtone_tf
from samtone_tf.towers import gradcache
from samtone_tf.training import resilience
from samtone_tf._keras import IS_KERAS3, keras
from samtone_tf.towers.encoders import check_dropout
from samtone_tf.towers.specs import make_encoder
from samtone_tf.precision import precision_scope
from samtone_tf.training import TrainConfig
from tests import _tiny

B, MINI, LQ, LD = 8, 3, 6, 10  # mini-batches of 3, 3 and 2 examples
TOLERANCE = 1e-5
TOWER_KINDS = ["kerashub", "tfhub"] if IS_KERAS3 else ["tfhub"]


@pytest.fixture(scope="module")
def tfhub_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("gradcache_tfhub")


def _encoder(tfhub_dir, seed=0, dropout=0.0, kind=None):
    kind = kind or TOWER_KINDS[0]
    if kind == "kerashub":
        return _tiny.tiny_backbone(seed, dropout=dropout)
    return _tiny.tiny_tfhub_encoder_path(tfhub_dir, seed, dropout=dropout)


def _batch(hard_documents=0, hard_queries=0, seed=0):
    q, qm = _tiny.random_tokens(B, LQ, seed=seed)
    d, dm = _tiny.random_tokens(B, LD, seed=seed + 1)
    x = {"query_token_ids": q, "query_padding_mask": qm,
         "document_token_ids": d, "document_padding_mask": dm}
    if hard_documents:
        n, nm = _tiny.random_tokens(B * hard_documents, LD, seed=seed + 2)
        x["hard_negative_document_token_ids"] = n.reshape(B, hard_documents, LD)
        x["hard_negative_document_padding_mask"] = nm.reshape(B, hard_documents, LD)
    if hard_queries:
        m, mm = _tiny.random_tokens(B * hard_queries, LQ, seed=seed + 3)
        x["hard_negative_query_token_ids"] = m.reshape(B, hard_queries, LQ)
        x["hard_negative_query_padding_mask"] = mm.reshape(B, hard_queries, LQ)
    # linked examples: rows 0 and 5 share a query, rows 1 and 6 a document
    query_ids = np.array([0, 1, 2, 3, 4, 0, 6, 7])
    document_ids = np.array([10, 11, 12, 13, 14, 15, 11, 17])
    columns = [query_ids, document_ids]
    # the hard negatives' ids: row 2's first hard document is document 12, its own positive
    for h in range(hard_documents):
        columns.append(np.where(np.arange(B) == 2, 12, 100 + 10 * h + np.arange(B))
                       if h == 0 else 100 + 10 * h + np.arange(B))
    for h in range(hard_queries):
        columns.append(200 + 10 * h + np.arange(B))
    y = np.stack(columns, axis=1).astype("float32")
    return {k: tf.constant(v) for k, v in x.items()}, tf.constant(y)


def _model(tfhub_dir, architecture="sde", projection_dim=None, dropout=0.0, kind=None,
           learnable_temperature=False, loss=None, optimizer=None, mini_batch_size=MINI,
           jit_compile=False):
    query = _encoder(tfhub_dir, 0, dropout, kind)
    document = None if architecture == "sde" else _encoder(tfhub_dir, 1, dropout, kind)
    model = samtone_tf.DualEncoder(query, document, architecture=architecture,
                                   projection_dim=projection_dim,
                                   learnable_temperature=learnable_temperature,
                                   mini_batch_size=mini_batch_size)
    model.compile(optimizer=optimizer or keras.optimizers.SGD(0.1),
                  loss=loss or samtone_tf.SamToNeLoss(), jit_compile=jit_compile)
    return model


def _dense(gradients):
    return [None if g is None else np.asarray(tf.convert_to_tensor(g)) for g in gradients]


def _gradient_error(got, want):
    """The largest per-variable relative error (see the module docstring)."""
    got, want = _dense(got), _dense(want)
    assert [g is None for g in got] == [g is None for g in want]
    total = np.sqrt(sum(float(np.sum(w * w)) for w in want if w is not None))
    assert total > 0
    return max(float(np.linalg.norm(g - w)) / max(float(np.linalg.norm(w)), 1e-4 * total)
               for g, w in zip(got, want) if w is not None)


def _gradients(model, x, y, mini_batch_size, traced=False):
    """The step's (loss, y_pred, gradients) with this mini-batch size: eagerly (the loops
    run their bodies in Python) or ``traced`` as fit runs it (tf.while_loop)."""
    model.mini_batch_size = mini_batch_size
    step = model.compute_step_gradients
    return (tf.function(step) if traced else step)(x, y)


VARIANTS = {
    # name: (architecture, projection_dim, loss options, hard documents, hard queries, extra)
    "in-batch": ("sde", None, dict(same_tower="none"), 0, 0, {}),
    "samtone-query": ("sde", None, dict(same_tower="query"), 0, 0, {}),
    "samtone-both-bidirectional": ("ade", None, dict(same_tower="both", bidirectional=True),
                                   0, 0, {}),
    "dance-dual": ("ade-spl", 8, dict(same_tower="none", bidirectional=True, dual_weight=0.1),
                   0, 0, {}),
    "gte-joint": ("sde", 8, dict(same_tower="both", bidirectional=True, partition="joint"),
                  0, 0, {}),
    "hard-negatives-duplicate-masking": (
        "ade", None, dict(same_tower="both", bidirectional=True, num_hard_negative_queries=1,
                          mask_duplicates=True), 2, 1, {}),
    "learnable-temperature": ("ade-spl", 8, dict(similarity="dot", temperature=1.0), 1, 0,
                              dict(learnable_temperature=True)),
}


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_cached_step_equals_uncached_step_for_every_loss_variant(tfhub_dir, variant):
    architecture, projection, options, hd, hq, extra = VARIANTS[variant]
    loss = samtone_tf.SamToNeLoss(**{"temperature": 0.1, **options})
    model = _model(tfhub_dir, architecture, projection, loss=loss, **extra)
    x, y = _batch(hd, hq)
    loss_u, y_pred_u, grads_u = _gradients(model, x, y, None)
    loss_c, y_pred_c, grads_c = _gradients(model, x, y, MINI)
    assert y_pred_c.shape == y_pred_u.shape == (B, 2 + hd + hq, y_pred_u.shape[-1])
    config = loss.get_config()
    config.update(reduction="none", name="per_example")
    per_example = samtone_tf.SamToNeLoss.from_config(config)
    np.testing.assert_allclose(per_example(y, y_pred_c), per_example(y, y_pred_u), rtol=1e-5)
    assert float(loss_c) == pytest.approx(float(loss_u), rel=1e-6)
    assert _gradient_error(grads_c, grads_u) <= TOLERANCE
    # The check has teeth: the gradient of a different batch is far off.
    _, _, other = _gradients(model, *_batch(hd, hq, seed=7), MINI)
    assert _gradient_error(other, grads_u) > 1e-2


def _masked_reference(model, x, y, mini_batch_size):
    """The uncached step with the cached step's dropout masks: the mini-batches' forward
    passes, in order from the same random states, under one tape."""
    with tf.GradientTape() as tape:
        parts = [model({k: v[i:i + mini_batch_size] for k, v in x.items()}, training=True)
                 for i in range(0, B, mini_batch_size)]
        y_pred = tf.concat(parts, axis=0)
        loss = model.compute_loss(x=x, y=y, y_pred=y_pred)
    return loss, y_pred, tape.gradient(loss, model.trainable_variables)


@pytest.mark.parametrize("kind", TOWER_KINDS)
def test_dropout_masks_replay_in_the_second_pass(tfhub_dir, kind, monkeypatch):
    model = _model(tfhub_dir, "ade", dropout=0.1, kind=kind,
                   loss=samtone_tf.SamToNeLoss(same_tower="both", bidirectional=True))
    x, y = _batch()
    states = gradcache.random_state_variables(model)
    assert len(states) >= 2  # the two towers' seed generators
    start = [np.asarray(s).copy() for s in states]

    def rewind():
        for state, value in zip(states, start):
            state.assign(value)

    loss_c, y_pred_c, grads_c = _gradients(model, x, y, MINI, traced=True)
    after_cached = [np.asarray(s).copy() for s in states]
    rewind()
    loss_r, y_pred_r, grads_r = _masked_reference(model, x, y, MINI)
    # the cached step leaves the states where one pass over the mini-batches leaves them
    assert all(np.array_equal(a, np.asarray(s)) for a, s in zip(after_cached, states))
    np.testing.assert_allclose(y_pred_c, y_pred_r, rtol=1e-6, atol=1e-7)
    assert float(loss_c) == pytest.approx(float(loss_r), rel=1e-6)
    assert _gradient_error(grads_c, grads_r) <= TOLERANCE
    # Dropout is on: the uncached step's one pass over the whole batch draws other masks.
    rewind()
    loss_u, _, _ = _gradients(model, x, y, None)
    assert abs(float(loss_u) - float(loss_r)) > 1e-3
    # Without the replay the second pass draws new masks and the gradients are wrong.
    rewind()
    monkeypatch.setattr(gradcache, "random_state_variables", lambda model: [])
    _, _, grads_bad = _gradients(model, x, y, MINI)
    assert _gradient_error(grads_bad, grads_r) > 1e-2


def test_remainder_mini_batch_and_batch_order(tfhub_dir, monkeypatch):
    """8 examples in mini-batches of 3: both passes run 3 mini-batches starting at rows 0, 3
    and 6; the last holds the 2 remainder examples (topped up with a copy of row 0, whose
    output is dropped). Run eagerly, so the loop runs in Python and each start is seen."""
    model = _model(tfhub_dir, "sde", loss=samtone_tf.SamToNeLoss(same_tower="both"))
    x, y = _batch()
    seen = []
    original = gradcache._mini_batch

    def recording(x, start, size):
        part = original(x, start, size)
        seen.append((int(start), int(size), part["query_token_ids"].numpy().tolist()))
        return part

    monkeypatch.setattr(gradcache, "_mini_batch", recording)
    model.mini_batch_size = MINI
    loss_c, y_pred_c, grads_c = model.compute_step_gradients(x, y)
    assert [(start, size) for start, size, _ in seen] == [(0, 3), (3, 3), (6, 3)] * 2
    rows = x["query_token_ids"].numpy().tolist()
    assert seen[2][2] == rows[6:8] + rows[:1]  # the remainder, topped up with row 0
    model.mini_batch_size = None
    loss_u, y_pred_u, grads_u = model.compute_step_gradients(x, y)
    assert y_pred_c.shape[0] == B
    np.testing.assert_allclose(y_pred_c, y_pred_u, rtol=1e-5, atol=1e-6)
    assert _gradient_error(grads_c, grads_u) <= TOLERANCE


def _pairs_dataset(steps=3, seed=0):
    xs, ys = zip(*(_batch(seed=seed + 10 * i) for i in range(steps)))
    features = {k: tf.concat([x[k] for x in xs], axis=0) for k in xs[0]}
    return tf.data.Dataset.from_tensor_slices((features, tf.concat(ys, 0))).batch(
        B, drop_remainder=True)


def _fit(tfhub_dir, mini_batch_size, steps=3, optimizer=None, **kwargs):
    """(weights before, weights after, loss history) of ``steps`` fit steps."""
    keras.utils.set_random_seed(0)
    model = _model(tfhub_dir, "ade-spl", projection_dim=8, mini_batch_size=mini_batch_size,
                   optimizer=optimizer, loss=samtone_tf.SamToNeLoss(same_tower="both",
                                                                    bidirectional=True),
                   **kwargs)
    dataset = _pairs_dataset(steps)
    model(next(iter(dataset))[0])
    before = [np.asarray(v).copy() for v in model.trainable_variables]
    history = model.fit(dataset, epochs=1, verbose=0)
    after = [np.asarray(v).copy() for v in model.trainable_variables]
    return before, after, history.history["loss"]


def _update_error(before, got, want):
    """``_gradient_error`` of the weight updates (after - before)."""
    return _gradient_error([g - b for g, b in zip(got, before)],
                           [w - b for w, b in zip(want, before)])


def test_fit_three_steps_gives_the_uncached_weights(tfhub_dir, monkeypatch):
    before, uncached, loss_u = _fit(tfhub_dir, None)
    calls = []
    original = gradcache.cached_step_gradients

    def counting(*args):
        calls.append(args[-1])
        return original(*args)

    monkeypatch.setattr(gradcache, "cached_step_gradients", counting)
    _, cached, loss_c = _fit(tfhub_dir, MINI)
    assert calls and set(calls) == {MINI}  # fit traced the cached step
    moved = max(float(np.abs(u - b).max()) for u, b in zip(uncached, before))
    assert moved > 1e-3  # three SGD steps moved the weights: equal weights mean something
    assert _update_error(before, cached, uncached) <= TOLERANCE
    assert loss_c[-1] == pytest.approx(loss_u[-1], rel=1e-5)
    # A mini-batch at least the batch runs Keras' own step: the very same weights.
    traced = len(calls)
    _, same, _ = _fit(tfhub_dir, B)
    assert len(calls) == traced
    for a, b in zip(same, uncached):
        np.testing.assert_array_equal(a, b)
    # Compiled with XLA (Keras 3's default on GPUs; TPUs need it) the cached step gives the
    # same weights: every mini-batch has one static shape, the last one topped up. (Checked
    # in Keras 3, where accelerators run; Keras 2's XLA compile of the TF-Hub towers takes
    # a minute on CI's cores.)
    if IS_KERAS3:
        _, xla, _ = _fit(tfhub_dir, MINI, jit_compile=True)
        assert len(calls) > traced
        assert _update_error(before, xla, uncached) <= TOLERANCE


@pytest.mark.parametrize("precision, tolerance", [("bfloat16", 2e-2), ("float16", 2e-3)])
def test_mixed_precision_cached_fit_follows_the_uncached_fit(tfhub_dir, precision, tolerance):
    """Half-precision matmuls round differently for a mini-batch than for the whole batch,
    so equality holds to the precision's resolution; float16 also runs the optimizer's
    loss scaling (the embedding gradients of the loss times 256 are unscaled by the
    optimizer: a missed unscaling would be 256 times off)."""
    with precision_scope(precision):
        kind = "kerashub" if IS_KERAS3 else "tfhub"
        encoder = (_tiny.tiny_backbone(0) if kind == "kerashub"
                   else _tiny.tiny_tfhub_encoder_path(tfhub_dir, 0, precision=precision))

        def fit(mini_batch_size):
            keras.utils.set_random_seed(0)
            model = samtone_tf.DualEncoder(
                encoder if kind == "tfhub" else _tiny.tiny_backbone(0), projection_dim=8,
                mini_batch_size=mini_batch_size)
            optimizer = keras.optimizers.SGD(0.1)
            if precision == "float16":  # a scale that does not overflow at the first step
                optimizer = keras.mixed_precision.LossScaleOptimizer(optimizer,
                                                                     initial_scale=256.0)
            model.compile(optimizer=optimizer, loss=samtone_tf.SamToNeLoss())
            dataset = _pairs_dataset(1)
            model(next(iter(dataset))[0])
            before = [np.asarray(v).copy() for v in model.trainable_variables]
            model.fit(dataset, epochs=1, verbose=0)
            return model, before

        (cached, before), (uncached, _) = fit(MINI), fit(None)
    assert cached.compute_precision == precision
    if precision == "float16":
        assert "LossScale" in type(cached.optimizer).__name__
    weights = [[np.asarray(v) for v in m.trainable_variables] for m in (cached, uncached)]
    assert max(float(np.abs(u - b).max()) for u, b in zip(weights[1], before)) > 1e-4
    assert _update_error(before, *weights) <= tolerance


def test_checkpointed_run_with_dropout_resumes_to_the_uninterrupted_weights(tfhub_dir,
                                                                            tmp_path):
    def model():
        keras.utils.set_random_seed(0)
        m = _model(tfhub_dir, "sde", projection_dim=8, dropout=0.1,
                   optimizer=keras.optimizers.Adam(1e-3))
        m(next(iter(dataset()))[0])
        return m

    class Interrupt(Exception):
        pass

    class RaiseAtStep(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            if int(np.asarray(self.model.optimizer.iterations)) == 3:
                raise Interrupt()

    def dataset():
        return _pairs_dataset(4)

    args = dict(epochs=1, steps_per_epoch=4, every_steps=2, verbose=0)
    reference = model()
    resilience.fit_resumable(reference, dataset, checkpoint_dir=str(tmp_path / "a"), **args)
    with pytest.raises(Interrupt):
        resilience.fit_resumable(model(), dataset, checkpoint_dir=str(tmp_path / "b"),
                                 callbacks=[RaiseAtStep()], **args)
    resumed = model()
    outcome = resilience.fit_resumable(resumed, dataset, checkpoint_dir=str(tmp_path / "b"),
                                       **args)
    assert outcome["resumed_from_step"] == 2
    for r, u in zip(resumed.trainable_variables, reference.trainable_variables):
        np.testing.assert_allclose(np.asarray(r), np.asarray(u), rtol=1e-6, atol=1e-7)


# ------------------------------------------------------------------ what is refused
@pytest.mark.parametrize("value", [0, -3, 2.5, True, "4"])
def test_bad_mini_batch_size_is_a_clear_error(tfhub_dir, value):
    with pytest.raises(ValueError, match="mini_batch_size"):
        samtone_tf.DualEncoder(_encoder(tfhub_dir), mini_batch_size=value)
    model = samtone_tf.DualEncoder(_encoder(tfhub_dir))
    with pytest.raises(ValueError, match="mini_batch_size"):
        model.mini_batch_size = value
    with pytest.raises(ValueError, match="mini_batch_size"):
        TrainConfig(data="x", mini_batch_size=value).validate()


@pytest.mark.parametrize("value", [-0.1, 1.0, True, "0.1"])
def test_bad_dropout_is_a_clear_error(value):
    with pytest.raises(ValueError, match="dropout"):
        check_dropout(value)
    with pytest.raises(ValueError, match="dropout"):
        TrainConfig(data="x", dropout=value).validate()


def test_mini_batch_size_round_trips_through_the_config(tfhub_dir):
    model = samtone_tf.DualEncoder(_encoder(tfhub_dir), mini_batch_size=16)
    assert model.get_config()["mini_batch_size"] == 16
    assert samtone_tf.DualEncoder.from_config(model.get_config()).mini_batch_size == 16


def _custom_encoder(dropout=0.0, add_loss=False):
    """A user's encoder layer of this process's Keras generation (the encoder contract)."""

    class Encoder(keras.layers.Layer):
        def __init__(self):
            super().__init__()
            self.embedding = keras.layers.Embedding(_tiny.VOCAB_SIZE, 8)
            self.dropout = keras.layers.Dropout(dropout)

        def call(self, inputs, training=None):
            hidden = self.dropout(self.embedding(inputs["token_ids"]), training=training)
            if add_loss:
                self.add_loss(1e-3 * tf.reduce_sum(hidden ** 2))
            return hidden

    return Encoder()


def test_a_user_encoder_with_dropout_replays_in_keras3_and_is_refused_in_keras2():
    model = samtone_tf.DualEncoder(_custom_encoder(dropout=0.2))
    model.compile(optimizer=keras.optimizers.SGD(0.1), loss=samtone_tf.SamToNeLoss())
    x, y = _batch()
    if not IS_KERAS3:
        with pytest.raises(ValueError, match="stateful random ops"):
            _gradients(model, x, y, MINI)
        return
    states = gradcache.random_state_variables(model)
    start = [np.asarray(s).copy() for s in states]
    _, _, grads_c = _gradients(model, x, y, MINI)
    for state, value in zip(states, start):
        state.assign(value)
    _, _, grads_r = _masked_reference(model, x, y, MINI)
    assert _gradient_error(grads_c, grads_r) <= TOLERANCE


def test_layer_losses_are_refused():
    model = samtone_tf.DualEncoder(_custom_encoder(add_loss=True))
    model.compile(optimizer=keras.optimizers.SGD(0.1), loss=samtone_tf.SamToNeLoss())
    with pytest.raises(ValueError, match="losses added by layers"):
        _gradients(model, *_batch(), MINI)


# ------------------------------------------------------------------ the dropout setting
def test_dropout_override_of_an_encoder(tfhub_dir):
    ids, mask = _tiny.random_tokens(4, 8)
    features = {"token_ids": tf.constant(ids), "padding_mask": tf.constant(mask)}
    path = _tiny.tiny_tfhub_encoder_path(tfhub_dir, 0)
    with pytest.raises(ValueError, match="fixed when it is exported"):
        make_encoder(path, dropout=0.1)
    if not IS_KERAS3:
        return
    backbone = _tiny.tiny_backbone(0)  # dropout 0
    encoder = make_encoder(backbone, dropout=0.3)
    assert encoder.backbone.get_config()["dropout"] == 0.3
    assert backbone.get_config()["dropout"] == 0.0  # the given backbone is left alone
    for a, b in zip(encoder.backbone.get_weights(), backbone.get_weights()):
        np.testing.assert_array_equal(a, b)
    base = make_encoder(backbone)
    np.testing.assert_allclose(encoder(features, training=False), base(features), atol=1e-6)
    assert not np.allclose(encoder(features, training=True), encoder(features, training=True))


def test_cli_train_flags_reach_the_config():
    from samtone_tf import cli

    args = cli.build_parser().parse_args(
        ["train", "--mini-batch-size", "16", "--dropout", "0", "--batch-size", "256"])
    assert (args.mini_batch_size, args.dropout, args.batch_size) == (16, 0.0, 256)
    assert isinstance(args.mini_batch_size, int) and isinstance(args.dropout, float)
    with pytest.raises(SystemExit):
        cli.build_parser().parse_args(["train", "--mini-batch-size", "half"])


def test_pretrained_dropout_variant_is_written_once_with_that_rate(tmp_path):
    """``PretrainedEncoder.encoder_path_for(precision, dropout)`` writes a SavedModel with the
    rate asked for (here from a tiny preset with dropout 0.1 laid out as the cache is)."""
    from samtone_tf.towers import pretrained
    from samtone_tf.towers.encoders import TFHubEncoder

    cache = tmp_path / "cache"
    cache.mkdir()
    _tiny.tiny_backbone(0, dropout=0.1).save_to_preset(str(cache / "kerashub"))
    (cache / "vocab.txt").write_text("[PAD]\n[UNK]\n")
    model = pretrained.PretrainedEncoder(name="tiny", cache_dir=str(cache), max_length=64,
                                         hidden_dim=_tiny.HIDDEN_DIM, pooling="mean",
                                         normalize=True, lower_case=True)
    ids, mask = _tiny.random_tokens(4, 8)
    features = {"token_ids": tf.constant(ids), "padding_mask": tf.constant(mask)}
    outputs = {}
    for rate in (0.0, 0.5):
        path = model.encoder_path_for("float32", dropout=rate)
        assert path.endswith(f"encoder-float32-dropout{rate:g}")
        stamp = (tmp_path / "cache" / path).stat().st_mtime_ns
        assert model.encoder_path_for("float32", dropout=rate) == path  # written once
        assert (tmp_path / "cache" / path).stat().st_mtime_ns == stamp
        encoder = TFHubEncoder(path)
        outputs[rate] = [np.asarray(encoder(features, training=True)) for _ in range(2)]
        inference = np.asarray(encoder(features, training=False))
    # rate 0: training mode computes the inference output; rate 0.5 draws masks
    np.testing.assert_allclose(outputs[0.0][0], outputs[0.0][1], atol=1e-6)
    assert not np.allclose(outputs[0.5][0], outputs[0.5][1])
    np.testing.assert_allclose(outputs[0.0][0], inference, atol=1e-5)


def test_benchmark_report_judges_its_targets():
    """benchmarks/gradcache.py's targets and table from a synthetic set of runs."""
    import importlib.util
    import os

    path = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                        "benchmarks", "gradcache.py")
    spec = importlib.util.spec_from_file_location("_bench_gradcache", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    args = bench.parse_args(["--batch-sizes", "128,2048"])
    gib = 2 ** 30

    def run(batch, mini, seconds=None, peak=None, failure=None):
        entry = {"batch_size": batch, "mini_batch_size": mini, "cached": bool(mini),
                 "ok": failure is None, "polled_peak_rss_bytes": 19 * gib}
        if failure:
            entry["failure"] = failure
        else:
            entry.update(median_step_seconds=seconds, pairs_per_second=batch / seconds,
                         peak_rss_bytes=peak)
        return entry

    report = {"device": {"type": "CPU", "name": "cpu"}, "precision": "bfloat16",
              "quiet_check": {"quiet_machine": True},
              "runs": [run(64, None, 3.0, 4 * gib), run(128, None, 7.0, 7 * gib),
                       run(2048, None, failure="over the memory limit"),
                       run(128, 32, 10.5, 3 * gib), run(2048, 32, 150.0, 3.5 * gib)]}
    targets = {t["name"].split(" (")[0]: t for t in bench.targets(report, args)}
    cost = targets["cached step cost at batch 128"]
    assert cost["value"] == 1.5 and not cost["met"]
    memory = next(t for name, t in targets.items() if name.startswith("peak memory"))
    assert memory["met"]  # 3.5 GiB <= 4 GiB + 12 MiB of embeddings
    report["targets"] = list(targets.values())
    table = bench.markdown(report)
    assert "| 2048 | uncached | - | - | > 19.00 | failed: over the memory limit |" in table
    assert "**not met**" in table and "**met**" in table
    report["runs"][-1]["peak_rss_bytes"] = 4.5 * gib  # above batch 64 + embeddings
    assert not next(t for t in bench.targets(report, args) if "memory" in t["name"])["met"]
