import itertools
import math

import numpy as np
import pytest
import tensorflow as tf

import samtone_tf
from samtone_tf import SamToNeLoss, contrastive_loss
from samtone_tf._keras import keras
from tests.numpy_reference import reference_loss

pytestmark = pytest.mark.keras_independent  # run once: tests/conftest.py

B, DIM, H = 5, 4, 2


def _data(seed=0, dtype=np.float64):
    rng = np.random.default_rng(seed)
    return dict(
        queries=rng.normal(size=(B, DIM)).astype(dtype),
        documents=rng.normal(size=(B, DIM)).astype(dtype),
        hard_negative_documents=rng.normal(size=(B, H, DIM)).astype(dtype),
        hard_negative_queries=rng.normal(size=(B, H, DIM)).astype(dtype),
        # rows 1 and 3 share a document; rows 0 and 4 share a query
        document_ids=np.array([10, 11, 12, 11, 13]),
        query_ids=np.array([7, 1, 2, 3, 7]),
    )


def _valid(same_tower, bidirectional, partition, dual_weight, hard):
    if same_tower == "document" and not bidirectional:
        return False
    if hard == "both" and not bidirectional:
        return False
    if partition == "joint" and dual_weight != 1.0:
        return False
    return True


GRID = [
    c for c in itertools.product(
        ["cosine", "dot"], ["none", "query", "document", "both"], [False, True],
        ["separate", "joint"], [1.0, 0.1], ["none", "documents", "both"], [False, True])
    if _valid(*c[1:6])
]


@pytest.mark.parametrize("similarity,same_tower,bidirectional,partition,dual_weight,hard,ids", GRID)
def test_matches_numpy_reference(similarity, same_tower, bidirectional, partition, dual_weight,
                                 hard, ids):
    data = _data(seed=len(GRID))
    kwargs = dict(temperature=0.3, similarity=similarity, same_tower=same_tower,
                  bidirectional=bidirectional, dual_weight=dual_weight, partition=partition)
    if hard in ("documents", "both"):
        kwargs["hard_negative_documents"] = data["hard_negative_documents"]
    if hard == "both":
        kwargs["hard_negative_queries"] = data["hard_negative_queries"]
    if ids:
        kwargs["query_ids"] = data["query_ids"]
        kwargs["document_ids"] = data["document_ids"]
    expected = reference_loss(data["queries"], data["documents"], **kwargs)
    got = contrastive_loss(data["queries"], data["documents"], **kwargs).numpy()
    assert got.shape == (B,)
    np.testing.assert_allclose(got, expected, rtol=1e-10, atol=1e-10)
    got32 = contrastive_loss(data["queries"].astype(np.float32),
                             data["documents"].astype(np.float32),
                             **{k: (v.astype(np.float32) if k.startswith("hard") else v)
                                for k, v in kwargs.items()}).numpy()
    np.testing.assert_allclose(got32, expected, rtol=2e-5, atol=2e-5)


def test_grid_covers_every_option():
    assert {c[1] for c in GRID} == {"none", "query", "document", "both"}
    # (partition, dual_weight) pairs: separate x {1, 0.1} + joint x {1} = 3.
    # one-way: same_tower in {none, query, both} x hard in {none, documents} x 3 = 18;
    # bidirectional: 4 same_tower x 3 hard x 3 = 36; times 2 similarities x 2 id settings.
    assert len(GRID) == (18 + 36) * 2 * 2


Q = np.array([[1.0, 0.0], [0.0, 1.0]])
D = np.array([[1.0, 0.0], [1.0, 1.0]])


def test_golden_hand_derived():
    # dot similarity, tau = 0.5, so every logit is 2 * dot product:
    #   s(q0,d0)=2 s(q0,d1)=2 s(q0,q1)=0 | s(q1,d1)=2 s(q1,d0)=0 s(q1,q0)=0
    #   s(d0,q1)=0 s(d0,d1)=2            | s(d1,q0)=2 s(d1,d0)=2
    kw = dict(temperature=0.5, similarity="dot")
    e = math.e
    # in-batch: L0 = log(e^2 + e^2) - 2 = log 2 ; L1 = log(e^2 + e^0) - 2 = log(1 + e^-2)
    np.testing.assert_allclose(contrastive_loss(Q, D, same_tower="none", **kw),
                               [math.log(2), math.log(1 + e**-2)], rtol=1e-12)
    # SamToNe adds s(q0,q1)=0 and s(q1,q0)=0: L0 = log(2 + e^-2), L1 = log(1 + 2 e^-2)
    np.testing.assert_allclose(contrastive_loss(Q, D, same_tower="query", **kw),
                               [math.log(2 + e**-2), math.log(1 + 2 * e**-2)], rtol=1e-12)
    # DANCE row d->q without same-tower terms: Ld0 = log(e^2 + e^0) - 2, Ld1 = log(2 e^2) - 2
    ld = np.array([math.log(1 + e**-2), math.log(2)])
    lq = np.array([math.log(2), math.log(1 + e**-2)])
    np.testing.assert_allclose(
        contrastive_loss(Q, D, same_tower="none", bidirectional=True, dual_weight=0.1, **kw),
        lq + 0.1 * ld, rtol=1e-12)
    # Both sides: d->q row adds s(d0,d1)=2, s(d1,d0)=2: Ld0 = log(1 + e^-2 + 1), Ld1 = log(3)
    lq_s = np.array([math.log(2 + e**-2), math.log(1 + 2 * e**-2)])
    ld_s = np.array([math.log(2 + e**-2), math.log(3)])
    np.testing.assert_allclose(
        contrastive_loss(Q, D, same_tower="both", bidirectional=True, **kw), lq_s + ld_s,
        rtol=1e-12)
    # Joint (GTE), in-batch terms of both rows: anchor 0 partition {2,2 | 2,0}, anchor 1 {2,0 | 2,2}
    np.testing.assert_allclose(
        contrastive_loss(Q, D, same_tower="none", bidirectional=True, partition="joint", **kw),
        [math.log(3 + e**-2), math.log(3 + e**-2)], rtol=1e-12)


def test_same_tower_none_is_in_batch_softmax():
    data = _data(3, np.float32)
    q = tf.math.l2_normalize(data["queries"], -1)
    d = tf.math.l2_normalize(data["documents"], -1)
    logits = tf.matmul(q, d, transpose_b=True) / 0.1
    expected = tf.nn.sparse_softmax_cross_entropy_with_logits(tf.range(B), logits)
    got = contrastive_loss(data["queries"], data["documents"], temperature=0.1, same_tower="none")
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("same_tower,bidirectional,partition",
                         [("query", False, "separate"), ("both", True, "separate"),
                          ("both", True, "joint")])
def test_permuting_the_batch_permutes_the_losses(same_tower, bidirectional, partition):
    data = _data(4)
    perm = np.array([3, 0, 4, 1, 2])
    kw = dict(temperature=0.2, same_tower=same_tower, bidirectional=bidirectional,
              partition=partition)
    args = ("queries", "documents", "hard_negative_documents", "query_ids", "document_ids")
    if bidirectional:
        args += ("hard_negative_queries",)
    full = contrastive_loss(*[data[a] for a in args[:2]],
                            **{a: data[a] for a in args[2:]}, **kw).numpy()
    permuted = contrastive_loss(*[data[a][perm] for a in args[:2]],
                                **{a: data[a][perm] for a in args[2:]}, **kw).numpy()
    np.testing.assert_allclose(permuted, full[perm], rtol=1e-12)
    assert not np.allclose(full, full[0])  # the rows differ, so a wrong order would show


def test_duplicates_leave_the_denominator():
    # Rows 0 and 1 share their document: without ids d1 is a negative of q0, with ids it is not.
    q = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    d = np.array([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    kw = dict(temperature=1.0, similarity="dot", same_tower="none")
    plain = contrastive_loss(q, d, **kw).numpy()
    masked = contrastive_loss(q, d, document_ids=[5, 5, 6], **kw).numpy()
    # anchor 0 logits: d0=1, d1=1 (duplicate), d2=0
    assert plain[0] == pytest.approx(math.log(2 * math.e + 1) - 1)
    assert masked[0] == pytest.approx(math.log(math.e + 1) - 1)
    assert masked[2] == pytest.approx(plain[2])  # anchor 2's document has no duplicate


@pytest.mark.parametrize("dtype", [tf.float16, tf.bfloat16])
def test_half_precision_is_finite_and_close(dtype):
    data = _data(5, np.float32)
    kw = dict(temperature=0.01, same_tower="both", bidirectional=True,
              hard_negative_documents=data["hard_negative_documents"],
              hard_negative_queries=data["hard_negative_queries"],
              document_ids=data["document_ids"], query_ids=data["query_ids"])
    ref = contrastive_loss(data["queries"], data["documents"], **kw).numpy()
    q = tf.Variable(tf.cast(data["queries"], dtype))
    d = tf.Variable(tf.cast(data["documents"], dtype))
    half_kw = dict(kw)
    for k in ("hard_negative_documents", "hard_negative_queries"):
        half_kw[k] = tf.cast(kw[k], dtype)
    with tf.GradientTape() as tape:
        loss = contrastive_loss(q, d, **half_kw)
        mean = tf.reduce_mean(loss)
    grads = tape.gradient(mean, [q, d])
    assert all(g is not None for g in grads)
    assert np.all(np.isfinite(loss.numpy()))
    assert all(np.all(np.isfinite(tf.cast(g, tf.float32).numpy())) for g in grads)
    # inputs rounded to 8 (bfloat16) or 11 (float16) mantissa bits, logits scaled by 100
    tol = 0.5 if dtype == tf.bfloat16 else 0.05
    np.testing.assert_allclose(loss.numpy(), ref, atol=tol)


def test_gradient_of_masked_entries_is_zero():
    # The duplicate of q0's document must not receive gradient from anchor 0.
    q = tf.Variable([[1.0, 0.0], [0.0, 1.0]])
    d = tf.Variable([[1.0, 0.0], [0.5, 0.5]])
    with tf.GradientTape() as tape:
        loss = contrastive_loss(q, d, temperature=1.0, similarity="dot", same_tower="none",
                                document_ids=[3, 3])[0]
    grad_d = tape.gradient(loss, d).numpy()
    np.testing.assert_array_equal(grad_d[1], [0.0, 0.0])
    assert np.all(np.isfinite(grad_d))


BAD = [
    (dict(temperature=0.0), "temperature"),
    (dict(temperature=-1.0), "temperature"),
    (dict(temperature="hot"), "temperature"),
    (dict(temperature=0.1, similarity="l2"), "similarity"),
    (dict(temperature=0.1, same_tower="queries"), "same_tower"),
    (dict(temperature=0.1, partition="sum"), "partition"),
    (dict(temperature=0.1, same_tower="document"), "same_tower"),
    (dict(temperature=0.1, hard_negative_queries=np.zeros((2, 1, 2))), "hard_negative_queries"),
    (dict(temperature=0.1, partition="joint", bidirectional=True, dual_weight=0.1), "dual_weight"),
    (dict(temperature=0.1, dual_weight=-1.0), "dual_weight"),
    (dict(temperature=0.1, bidirectional="yes"), "bidirectional"),
]


@pytest.mark.parametrize("kwargs,name", BAD)
def test_bad_options_raise(kwargs, name):
    with pytest.raises(ValueError, match=name):
        contrastive_loss(np.ones((2, 2)), np.ones((2, 2)), **kwargs)


@pytest.mark.parametrize("q_shape,d_shape,extra,name", [
    ((2, 3), (2, 4), {}, "dimension"),
    ((2, 3), (3, 3), {}, "batch size"),
    ((2, 3, 1), (2, 3), {}, "queries"),
    ((2, 3), (2, 3), {"hard_negative_documents": np.ones((2, 3))}, "hard_negative_documents"),
    ((2, 3), (2, 3), {"hard_negative_documents": np.ones((3, 1, 3))}, "hard_negative_documents"),
    ((2, 3), (2, 3), {"hard_negative_documents": np.ones((2, 1, 4))}, "hard_negative_documents"),
    ((2, 3), (2, 3), {"document_ids": [1, 2, 3]}, "document_ids"),
    ((2, 3), (2, 3), {"query_ids": [[1, 2]]}, "query_ids"),
])
def test_bad_shapes_raise(q_shape, d_shape, extra, name):
    with pytest.raises(ValueError, match=name):
        contrastive_loss(np.ones(q_shape), np.ones(d_shape), temperature=0.1, **extra)


# ---- the Keras Loss ----------------------------------------------------------------------

def _y_pred(data):
    return np.concatenate([data["queries"][:, None], data["documents"][:, None],
                           data["hard_negative_documents"], data["hard_negative_queries"]],
                          axis=1).astype(np.float32)


@pytest.mark.keras_dependent
def test_keras_loss_is_mean_of_per_example_losses_with_layout():
    data = _data(6)
    y_true = np.stack([data["query_ids"], data["document_ids"]], axis=1).astype(np.float32)
    loss = SamToNeLoss(temperature=0.2, same_tower="both", bidirectional=True,
                       dual_weight=0.5, num_hard_negative_queries=H, mask_duplicates=True)
    expected = reference_loss(
        data["queries"], data["documents"], temperature=0.2, same_tower="both",
        bidirectional=True, dual_weight=0.5,
        hard_negative_documents=data["hard_negative_documents"],
        hard_negative_queries=data["hard_negative_queries"],
        query_ids=data["query_ids"], document_ids=data["document_ids"]).mean()
    assert float(loss(y_true, _y_pred(data))) == pytest.approx(expected, rel=1e-5)
    # without mask_duplicates the ids are ignored, which changes the value here
    unmasked = SamToNeLoss(temperature=0.2, same_tower="both", bidirectional=True,
                           dual_weight=0.5, num_hard_negative_queries=H)
    assert float(unmasked(y_true, _y_pred(data))) != pytest.approx(expected, rel=1e-3)


@pytest.mark.keras_dependent
def test_keras_loss_all_extra_slots_are_hard_documents_by_default():
    data = _data(7)
    y_pred = _y_pred(data)  # 2 + 2 * H slots, all extra ones hard-negative documents
    loss = SamToNeLoss(temperature=0.2)(np.zeros((B, 2), np.float32), y_pred)
    expected = reference_loss(
        data["queries"], data["documents"], temperature=0.2,
        hard_negative_documents=np.concatenate(
            [data["hard_negative_documents"], data["hard_negative_queries"]], axis=1)).mean()
    assert float(loss) == pytest.approx(expected, rel=1e-5)


@pytest.mark.keras_dependent
def test_keras_loss_config_round_trip():
    loss = SamToNeLoss(temperature=0.07, similarity="dot", same_tower="both", bidirectional=True,
                       dual_weight=1.0, partition="joint", num_hard_negative_queries=1,
                       mask_duplicates=True, name="my_loss")
    config = loss.get_config()
    clone = SamToNeLoss.from_config(config)
    assert clone.get_config() == config
    for key, value in dict(temperature=0.07, similarity="dot", same_tower="both",
                           bidirectional=True, partition="joint", num_hard_negative_queries=1,
                           mask_duplicates=True, name="my_loss").items():
        assert config[key] == value
    restored = keras.losses.deserialize(keras.losses.serialize(loss))
    assert isinstance(restored, SamToNeLoss) and restored.get_config() == config


@pytest.mark.parametrize("kwargs,name", [
    (dict(num_hard_negative_queries=-1), "num_hard_negative_queries"),
    (dict(num_hard_negative_queries=1), "hard_negative_queries"),
    (dict(same_tower="document"), "same_tower"),
    (dict(temperature=0), "temperature"),
])
@pytest.mark.keras_dependent
def test_keras_loss_bad_options(kwargs, name):
    with pytest.raises(ValueError, match=name):
        SamToNeLoss(**kwargs)


@pytest.mark.keras_dependent
def test_keras_loss_bad_y_pred():
    with pytest.raises(ValueError, match="y_pred"):
        SamToNeLoss()(np.zeros((2, 2)), np.zeros((2, 4), np.float32))
    with pytest.raises(ValueError, match="slots"):
        SamToNeLoss(bidirectional=True, num_hard_negative_queries=2)(
            np.zeros((2, 2)), np.zeros((2, 3, 4), np.float32))


@pytest.mark.keras_dependent
def test_import_does_not_touch_keras_switch():
    import os
    import subprocess
    import sys
    code = ("import os; before = os.environ.get('TF_USE_LEGACY_KERAS'); import samtone_tf; "
            "print(repr(before), repr(os.environ.get('TF_USE_LEGACY_KERAS')), "
            "samtone_tf.KERAS_VERSION)")
    for value in (None, "1"):
        env = {k: v for k, v in os.environ.items() if k != "TF_USE_LEGACY_KERAS"}
        if value:
            env["TF_USE_LEGACY_KERAS"] = value
        out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                             text=True, check=True).stdout.split()
        assert out[0] == out[1]
        assert out[2].startswith("2." if value else "3.")


# ---- linked examples and hard-negative ids (the false-negative rule) ----

VARIANTS = [  # (same_tower, bidirectional, partition, dual_weight)
    ("none", False, "separate", 1.0), ("query", False, "separate", 1.0),
    ("both", True, "separate", 1.0), ("none", True, "separate", 0.1),
    ("both", True, "joint", 1.0), ("document", True, "separate", 1.0)]


def _variant(same_tower, bidirectional, partition, dual_weight):
    return dict(same_tower=same_tower, bidirectional=bidirectional, partition=partition,
                dual_weight=dual_weight)


@pytest.mark.parametrize("variant", VARIANTS, ids=["-".join(map(str, v)) for v in VARIANTS])
@pytest.mark.parametrize("link", ["query", "document"])
def test_two_linked_examples_are_no_negatives_of_each_other(variant, link):
    # link="query": one query with two relevant documents (SciFact, NFCorpus qrels);
    # link="document": two questions answered by one sentence (ReQA). Either way the batch
    # holds nothing but positives, so each row is its positive alone: loss 0 (log 2 for the
    # joint partition, where the positive stands in both rows).
    q = np.array([[1.0, 0.0], [0.8, 0.6]])
    d = np.array([[0.8, 0.6], [1.0, 0.0]])  # each query is closer to the other's document
    ids = dict(query_ids=[4, 4], document_ids=[1, 2]) if link == "query" else \
        dict(query_ids=[1, 2], document_ids=[4, 4])
    kw = dict(temperature=0.1, **_variant(*variant))
    plain = contrastive_loss(q, d, **kw).numpy()
    masked = contrastive_loss(q, d, **ids, **kw).numpy()
    expected = math.log(2) if variant[2] == "joint" and variant[1] else 0.0
    np.testing.assert_allclose(masked, [expected, expected], atol=1e-12)
    assert np.all(plain > masked + 1.0)  # the false negatives did cost something
    np.testing.assert_allclose(masked, reference_loss(q, d, **ids, **kw), atol=1e-12)


def test_unique_ids_change_nothing():
    # The old duplicate rule and the linked rule agree when no two examples share an id:
    # only the anchor itself is excluded, exactly as without ids.
    data = _data(7)
    kw = dict(temperature=0.2, same_tower="both", bidirectional=True,
              hard_negative_documents=data["hard_negative_documents"],
              hard_negative_queries=data["hard_negative_queries"])
    plain = contrastive_loss(data["queries"], data["documents"], **kw).numpy()
    unique = contrastive_loss(
        data["queries"], data["documents"], query_ids=np.arange(B), document_ids=np.arange(B),
        hard_negative_document_ids=np.arange(B * H).reshape(B, H) + 100,
        hard_negative_query_ids=np.arange(B * H).reshape(B, H) + 100, **kw).numpy()
    np.testing.assert_allclose(unique, plain, rtol=1e-13)


def _logsumexp(values):
    values = np.asarray(values)
    return values.max() + np.log(np.exp(values - values.max()).sum())


def test_a_mined_positive_of_another_anchor_leaves_only_that_anchors_row():
    # Example 2's mined hard negative is document 10, the positive of example 0, so it is a
    # false negative for anchor 0 only. Example 1 shares example 0's query (so document 11
    # is a positive of q0 too), and example 1's mined negative is document 11.
    q = np.array([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0]])
    d = np.array([[0.8, 0.2], [0.7, 0.7], [0.1, 0.9]])
    hd = np.array([[[0.5, -0.5]], [[0.75, 0.65]], [[0.85, 0.15]]])
    kw = dict(temperature=1.0, similarity="dot", same_tower="none",
              hard_negative_documents=hd, query_ids=[0, 0, 1], document_ids=[10, 11, 12],
              hard_negative_document_ids=[[13], [11], [10]])
    got = contrastive_loss(q, d, **kw).numpy()
    s = q @ d.T
    n = q @ hd[:, 0].T  # [anchor, hard negative of example k]
    # anchor 0: d1 linked (same query); negatives d2, hd0; hd1 (=11) and hd2 (=10) positives
    assert got[0] == pytest.approx(_logsumexp([s[0, 0], s[0, 2], n[0, 0]]) - s[0, 0], abs=1e-12)
    # anchor 1: d0 linked; hd1 is its own positive (11), hd2 is q0's and so q1's positive (10)
    assert got[1] == pytest.approx(_logsumexp([s[1, 1], s[1, 2], n[1, 0]]) - s[1, 1], abs=1e-12)
    # anchor 2: nothing linked; every hard negative is a true negative of q2
    assert got[2] == pytest.approx(
        _logsumexp([s[2, 2], s[2, 0], s[2, 1], n[2, 0], n[2, 1], n[2, 2]]) - s[2, 2], abs=1e-12)
    # without the hard negatives' ids, anchor 0 keeps both false negatives
    no_ids = contrastive_loss(q, d, **{k: v for k, v in kw.items()
                                       if k != "hard_negative_document_ids"}).numpy()
    assert no_ids[0] > got[0] + 0.5 and no_ids[2] == pytest.approx(got[2], abs=1e-12)
    np.testing.assert_allclose(got, reference_loss(q, d, **kw), atol=1e-12)


def test_a_mined_query_paired_with_the_anchors_document_is_dropped():
    # DANCE: a hard-negative query that is paired with d_i (through an example sharing d_i's
    # document id) is a positive of d_i, not a negative.
    q = np.array([[1.0, 0.0], [0.9, 0.3], [0.0, 1.0]])
    d = np.array([[0.8, 0.2], [0.8, 0.2], [0.1, 0.9]])
    hq = np.array([[[0.3, 0.9]], [[0.95, 0.05]], [[0.2, 0.4]]])
    kw = dict(temperature=1.0, similarity="dot", same_tower="none", bidirectional=True,
              hard_negative_queries=hq, query_ids=[0, 1, 2], document_ids=[5, 5, 6],
              hard_negative_query_ids=[[2], [7], [1]])
    got = contrastive_loss(q, d, **kw).numpy()
    s = q @ d.T
    m = d @ hq[:, 0].T
    # anchor 0's document 5 is paired with queries 0 and 1, so hq2 (= query 1) is dropped;
    # q->d row: d1 linked (same document), only d2 stays
    expected0 = (_logsumexp([s[0, 0], s[0, 2]]) - s[0, 0]
                 + _logsumexp([s[0, 0], s[2, 0], m[0, 0], m[0, 1]]) - s[0, 0])
    assert got[0] == pytest.approx(expected0, abs=1e-12)
    # anchor 2's document 6 is paired with query 2 only: hq0 (= query 2) is dropped
    expected2 = (_logsumexp([s[2, 2], s[2, 0], s[2, 1]]) - s[2, 2]
                 + _logsumexp([s[2, 2], s[0, 2], s[1, 2], m[2, 1], m[2, 2]]) - s[2, 2])
    assert got[2] == pytest.approx(expected2, abs=1e-12)
    np.testing.assert_allclose(got, reference_loss(q, d, **kw), atol=1e-12)


@pytest.mark.parametrize("variant", VARIANTS, ids=["-".join(map(str, v)) for v in VARIANTS])
def test_dropped_entries_get_zero_gradient_and_kept_ones_do_not(variant):
    rng = np.random.default_rng(11)
    b, h, dim = 6, 2, 5
    qid = np.array([0, 0, 1, 2, 3, 4])
    did = np.array([0, 1, 2, 2, 3, 4])
    hdid = np.array([[1, 7], [8, 0], [9, 2], [3, 10], [11, 12], [1, 13]])
    hqid = np.array([[2, 20], [21, 1], [0, 22], [23, 24], [2, 25], [4, 26]])
    same_tower, bidirectional = variant[0], variant[1]
    q, d = (tf.constant(rng.normal(size=(b, dim))) for _ in range(2))
    hd = tf.constant(rng.normal(size=(b, h, dim)))
    hq = tf.constant(rng.normal(size=(b, h, dim)))
    kw = dict(temperature=0.5, query_ids=qid, document_ids=did, hard_negative_documents=hd,
              hard_negative_document_ids=hdid, **_variant(*variant))
    if bidirectional:
        kw.update(hard_negative_queries=hq, hard_negative_query_ids=hqid)
    with tf.GradientTape(persistent=True) as tape:
        tape.watch([q, d, hd, hq])
        loss = contrastive_loss(q, d, **kw)
    jq, jd, jhd = (tape.jacobian(loss, x).numpy() for x in (q, d, hd))
    jhq = tape.jacobian(loss, hq, unconnected_gradients="zero").numpy()
    for i in range(b):
        group_q = qid == qid[i]
        group_d = did == did[i]
        for j in range(b):
            if j == i:
                continue
            linked = qid[j] == qid[i] or did[j] == did[i]
            q_used = same_tower in ("query", "both") or bidirectional
            d_used = True
            assert (np.abs(jq[i, j]).max() == 0) == (linked or not q_used), (i, j)
            assert (np.abs(jd[i, j]).max() == 0) == (linked or not d_used), (i, j)
        for k in range(b):
            for c in range(h):
                dropped = hdid[k, c] in set(did[group_q])
                assert (np.abs(jhd[i, k, c]).max() == 0) == dropped, (i, k, c)
                dropped_q = hqid[k, c] in set(qid[group_d])
                assert (np.abs(jhq[i, k, c]).max() == 0) == (dropped_q or not bidirectional), \
                    (i, k, c)


def test_hard_negative_ids_are_checked():
    q = d = np.ones((2, 3))
    hd = np.ones((2, 2, 3))
    with pytest.raises(ValueError, match="`hard_negative_document_ids` needs `document_ids`"):
        contrastive_loss(q, d, temperature=0.1, hard_negative_documents=hd,
                         hard_negative_document_ids=[[1, 2], [3, 4]])
    with pytest.raises(ValueError, match="`hard_negative_document_ids` given without"):
        contrastive_loss(q, d, temperature=0.1, document_ids=[0, 1],
                         hard_negative_document_ids=[[1, 2], [3, 4]])
    with pytest.raises(ValueError, match=r"`hard_negative_document_ids` count 3 does not match"):
        contrastive_loss(q, d, temperature=0.1, document_ids=[0, 1], hard_negative_documents=hd,
                         hard_negative_document_ids=[[1, 2, 3], [3, 4, 5]])
    with pytest.raises(ValueError, match="`hard_negative_query_ids` needs `query_ids`"):
        contrastive_loss(q, d, temperature=0.1, bidirectional=True, hard_negative_queries=hd,
                         hard_negative_query_ids=[[1, 2], [3, 4]])
    with pytest.raises(ValueError, match="`document_ids` must be integers"):
        contrastive_loss(q, d, temperature=0.1, document_ids=[0.5, 1.0])


@pytest.mark.keras_dependent
@pytest.mark.parametrize("known_width", [True, False])
def test_keras_labels_carry_one_id_per_slot(known_width):
    # y_pred slots: query, document, 2 hard-negative documents, 1 hard-negative query;
    # y_true: the id of each slot. A [b, 2] label gives the hard negatives no ids.
    data = _data(12, np.float32)
    qid, did = data["query_ids"], data["document_ids"]
    hdid = np.array([[11, 20], [21, 10], [22, 23], [13, 24], [25, 12]])
    hqid = np.array([[1], [26], [7], [27], [2]])
    y_pred = np.concatenate([data["queries"][:, None], data["documents"][:, None],
                             data["hard_negative_documents"],
                             data["hard_negative_queries"][:, :1]], axis=1)
    full = np.concatenate([qid[:, None], did[:, None], hdid, hqid], axis=1).astype(np.float32)
    loss = SamToNeLoss(temperature=0.2, same_tower="both", bidirectional=True,
                       num_hard_negative_queries=1, mask_duplicates=True)
    if not known_width:
        loss = tf.function(loss, input_signature=[tf.TensorSpec([None, None]),
                                                  tf.TensorSpec([None, None, DIM])])
    kw = dict(temperature=0.2, same_tower="both", bidirectional=True,
              hard_negative_documents=data["hard_negative_documents"],
              hard_negative_queries=data["hard_negative_queries"][:, :1],
              query_ids=qid, document_ids=did)
    with_ids = reference_loss(data["queries"], data["documents"], hard_negative_document_ids=hdid,
                              hard_negative_query_ids=hqid, **kw).mean()
    without = reference_loss(data["queries"], data["documents"], **kw).mean()
    assert abs(with_ids - without) > 1e-3  # the ids matter in this batch
    assert float(loss(full, y_pred)) == pytest.approx(with_ids, rel=1e-5)
    assert float(loss(full[:, :2], y_pred)) == pytest.approx(without, rel=1e-5)
