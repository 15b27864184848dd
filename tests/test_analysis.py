"""samtone_tf.evaluation.analysis: every statistic against an explicit loop over pairs, known values,
the near-zero-denominator rule of the same-tower ratios, t-SNE, the PNG figures, the
matplotlib backend rule, ``analyze`` and ``samtone-tf analyze`` (the real all-MiniLM-L6-v2 on
SciFact pairs, cross-checked against direct calls) and bad input.

Runs under Keras 3 and under TF_USE_LEGACY_KERAS=1 (only the pretrained encoder touches TF).
"""

import json
import math
import os
import struct
import subprocess
import sys
import textwrap
import zlib

import numpy as np
import pytest

from samtone_tf import cli
from samtone_tf.evaluation import analysis
from samtone_tf.towers import pretrained
from samtone_tf.precision import resolve_precision
from tests._requirements import MINILM_HINT, needs, require_data

pytestmark = pytest.mark.keras_independent  # run once: tests/conftest.py

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCIFACT = os.path.join(REPO, "..", "shared", "data", "scifact")
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"

try:
    pretrained.pretrained_model_folder("minilm-l6")
    HAVE_MINILM = True
except ImportError:
    HAVE_MINILM = False


def _random_pairs(n=7, dim=5, seed=0, noise=0.7):
    rng = np.random.default_rng(seed)
    q = rng.normal(size=(n, dim))
    d = q + noise * rng.normal(size=(n, dim))
    return q, d


def _unit(v):
    v = np.asarray(v, dtype=np.float64)
    return v / math.sqrt(sum(float(c) * float(c) for c in v))


def _cos(a, b):
    a, b = _unit(a), _unit(b)
    return sum(float(x) * float(y) for x, y in zip(a, b))


def _png_size(path):
    """(width, height) from the PNG's IHDR chunk; asserts the file is a PNG."""
    with open(path, "rb") as f:
        head = f.read(24)
    assert head[:8] == PNG_SIGNATURE and head[12:16] == b"IHDR", path
    return struct.unpack(">II", head[16:24])


# ---------------------------------------------------------------------------------------
# alignment


@pytest.mark.parametrize("alpha", [1, 2, 3.5])
def test_alignment_matches_loop(alpha):
    q, d = _random_pairs()
    expected = 0.0
    for qi, di in zip(q, d):
        diff = _unit(qi) - _unit(di)
        expected += math.sqrt(sum(float(c) ** 2 for c in diff)) ** alpha
    expected /= len(q)
    assert analysis.alignment(q, d, alpha=alpha) == pytest.approx(expected, rel=1e-12)


def test_alignment_known_values():
    q, _ = _random_pairs()
    assert analysis.alignment(q, q) == 0.0
    assert analysis.alignment(q, 3.0 * q) == pytest.approx(0.0, abs=1e-14)  # normalised first
    assert analysis.alignment(q, -q) == pytest.approx(4.0)                  # antipodal: |2|^2
    assert analysis.alignment(np.eye(3), np.eye(3)[[1, 2, 0]], alpha=2) == pytest.approx(2.0)


# ---------------------------------------------------------------------------------------
# uniformity


def _uniformity_loop(x, t):
    total, count = 0.0, 0
    for i in range(len(x)):
        for j in range(i + 1, len(x)):
            diff = _unit(x[i]) - _unit(x[j])
            total += math.exp(-t * sum(float(c) ** 2 for c in diff))
            count += 1
    return math.log(total / count)


@pytest.mark.parametrize("t", [0.5, 2.0, 7.0])
def test_uniformity_matches_loop(t):
    q, _ = _random_pairs(n=9, dim=4, seed=1)
    assert analysis.uniformity(q, t=t) == pytest.approx(_uniformity_loop(q, t), rel=1e-10)


def test_uniformity_known_values():
    # orthonormal rows: every squared distance is 2, so log mean exp(-2t) = -2t
    assert analysis.uniformity(np.eye(6), t=2.0) == pytest.approx(-4.0, abs=1e-12)
    assert analysis.uniformity(np.eye(6), t=1.0) == pytest.approx(-2.0, abs=1e-12)
    # collapsed (same direction, any length): every distance 0
    v = np.array([0.3, -1.0, 2.0])
    collapsed = np.stack([v, 2 * v, 0.5 * v, v])
    assert analysis.uniformity(collapsed) == pytest.approx(0.0, abs=1e-12)
    # large t stays finite (log-mean-exp, no underflow to log 0)
    assert analysis.uniformity(np.eye(6), t=1000.0) == pytest.approx(-2000.0)


def test_uniformity_subsamples_deterministically():
    x = np.random.default_rng(3).normal(size=(60, 8))
    full = analysis.uniformity(x, max_points=1000)
    assert full == pytest.approx(_uniformity_loop(x, 2.0), rel=1e-10)
    sub = analysis.uniformity(x, max_points=15, seed=4)
    assert sub == analysis.uniformity(x, max_points=15, seed=4)
    assert sub != full
    assert analysis.uniformity(x, max_points=15, seed=5) != sub
    # the subsample is of distinct rows: orthonormal rows stay orthonormal (a repeated row
    # would add a zero distance and raise the value above -2t)
    assert analysis.uniformity(np.eye(40), max_points=12, seed=9) == pytest.approx(-4.0)


# ---------------------------------------------------------------------------------------
# anisotropy


def test_anisotropy_exact_matches_loop():
    q, _ = _random_pairs(n=8, dim=3, seed=2)
    q = q + np.array([1.5, 0.0, 0.0])  # a common direction: clearly positive
    pairs = [(i, j) for i in range(8) for j in range(i + 1, 8)]
    expected = sum(_cos(q[i], q[j]) for i, j in pairs) / len(pairs)
    assert expected > 0.2
    assert analysis.anisotropy(q) == pytest.approx(expected, rel=1e-12)
    assert analysis.anisotropy(q, num_pairs=len(pairs)) == pytest.approx(expected, rel=1e-12)


def test_anisotropy_known_values():
    assert analysis.anisotropy(np.eye(7)) == pytest.approx(0.0, abs=1e-15)
    v = np.array([1.0, 2.0, -0.5])
    assert analysis.anisotropy(np.stack([v, 3 * v, 0.1 * v])) == pytest.approx(1.0)


def test_anisotropy_sampled_pairs_are_distinct_and_close_to_exact():
    # 200 orthonormal rows: any distinct pair has cosine 0, a row with itself 1
    assert analysis.anisotropy(np.eye(200), num_pairs=100, seed=0) == 0.0
    rng = np.random.default_rng(5)
    x = rng.normal(size=(300, 16)) + 1.0
    exact = analysis.anisotropy(x, num_pairs=10 ** 6)  # 44,850 pairs: exact
    sampled = analysis.anisotropy(x, num_pairs=5000, seed=1)
    assert sampled != exact and abs(sampled - exact) < 0.02
    assert sampled == analysis.anisotropy(x, num_pairs=5000, seed=1)
    assert sampled != analysis.anisotropy(x, num_pairs=5000, seed=2)


# ---------------------------------------------------------------------------------------
# top-1 similarities and same-tower ratios


def test_top1_similarities_match_loop():
    q, _ = _random_pairs(n=5, dim=4, seed=6)
    docs = np.random.default_rng(7).normal(size=(9, 4))  # any number of documents
    cosine = [max(_cos(qi, dj) for dj in docs) for qi in q]
    dot = [max(sum(float(a) * float(b) for a, b in zip(qi, dj)) for dj in docs) for qi in q]
    np.testing.assert_allclose(analysis.top1_similarities(q, docs), cosine, rtol=1e-12)
    np.testing.assert_allclose(analysis.top1_similarities(q, docs, "dot"), dot, rtol=1e-12)
    assert analysis.top1_similarities(q, docs).shape == (5,)
    np.testing.assert_allclose(analysis.top1_similarities(q, q), 1.0)


@pytest.mark.parametrize("similarity", ["cosine", "dot"])
def test_same_tower_ratios_match_loop(similarity):
    q, d = _random_pairs(n=6, dim=4, seed=8)
    sim = _cos if similarity == "cosine" else (
        lambda a, b: sum(float(x) * float(y) for x, y in zip(a, b)))
    expected = [sim(q[i], q[j]) / sim(q[i], d[j])
                for i in range(6) for j in range(6) if i != j]
    got = analysis.same_tower_ratios(q, d, similarity, min_abs_denominator=0)
    np.testing.assert_allclose(got, expected, rtol=1e-10)


def test_same_tower_ratios_drop_near_zero_denominators():
    # q_0 is orthogonal to d_1 (denominator exactly 0) and nearly so to d_2 (5e-4 after
    # normalisation); every other cross similarity is far from 0.
    q = np.array([[1.0, 0.0, 0.0], [0.0, 0.6, 0.8], [0.6, 0.0, 0.8]])
    d = np.array([[1.0, 0.2, 0.0], [0.0, 1.0, 0.5], [5e-4, 0.0, 1.0]])
    d = d / np.linalg.norm(d, axis=1, keepdims=True)
    cross = q @ (d / np.linalg.norm(d, axis=1, keepdims=True)).T
    assert cross[0, 1] == 0.0 and 0 < abs(cross[0, 2]) < analysis.MIN_ABS_DENOMINATOR
    assert (np.abs(cross[~np.eye(3, dtype=bool)]) > analysis.MIN_ABS_DENOMINATOR).sum() == 4
    ratios = analysis.same_tower_ratios(q, d)
    assert ratios.shape == (4,) and np.all(np.isfinite(ratios))
    kept = [(1, 0), (1, 2), (2, 0), (2, 1)]  # row-major order of the kept pairs
    np.testing.assert_allclose(ratios, [_cos(q[i], q[j]) / _cos(q[i], d[j]) for i, j in kept])
    # a threshold of 0 keeps the tiny denominator (a huge ratio) and drops only the zero
    loose = analysis.same_tower_ratios(q, d, min_abs_denominator=0)
    assert loose.shape == (5,) and np.max(np.abs(loose)) > 1000
    report = analysis.embedding_report(q, d)
    assert report["num_ratios"] == 4 and report["num_ratios_dropped"] == 2
    assert report["same_tower_ratio_median"] == pytest.approx(float(np.median(ratios)))


# ---------------------------------------------------------------------------------------
# report


def test_embedding_report_collects_every_statistic():
    q, d = _random_pairs(n=10, dim=6, seed=9)
    report = analysis.embedding_report(q, d)
    top1 = analysis.top1_similarities(q, d)
    ratios = analysis.same_tower_ratios(q, d)
    expected = {
        "num_pairs": 10, "dim": 6, "similarity": "cosine",
        "alignment": analysis.alignment(q, d),
        "uniformity_query": _uniformity_loop(q, 2.0),
        "uniformity_document": _uniformity_loop(d, 2.0),
        "uniformity_all": _uniformity_loop(np.concatenate([q, d]), 2.0),
        "anisotropy_query": analysis.anisotropy(q),
        "anisotropy_document": analysis.anisotropy(d),
        "top1_similarity_mean": float(np.mean(top1)),
        "top1_similarity_median": float(np.median(top1)),
        "same_tower_ratio_mean": float(np.mean(ratios)),
        "same_tower_ratio_median": float(np.median(ratios)),
        "num_ratios": ratios.size,
        "num_ratios_dropped": 90 - ratios.size,
    }
    assert set(report) == set(expected)
    for key, value in expected.items():
        assert report[key] == (pytest.approx(value, rel=1e-10)
                               if isinstance(value, float) else value), key
    json.dumps(report, allow_nan=False)  # plain JSON scalars
    assert analysis.embedding_report(q, d, "dot")["top1_similarity_mean"] == pytest.approx(
        float(np.mean(np.max(q @ d.T, axis=1))))


# ---------------------------------------------------------------------------------------
# bad input


@pytest.mark.parametrize("call,message", [
    (lambda: analysis.alignment(np.ones((3, 2)), np.ones((4, 2))), "same shape"),
    (lambda: analysis.alignment(np.ones((3, 2)), np.ones((3, 5))), "same shape"),
    (lambda: analysis.alignment(np.zeros((0, 4)), np.zeros((0, 4))), "at least 1 row"),
    (lambda: analysis.alignment(np.ones(3), np.ones(3)), "2-D"),
    (lambda: analysis.alignment(np.ones((2, 2)), np.ones((2, 2)), alpha=0), "alpha"),
    (lambda: analysis.alignment([[1.0, np.nan]], [[1.0, 0.0]]), "NaN"),
    (lambda: analysis.alignment([[0.0, 0.0]], [[1.0, 0.0]]), "zero vector"),
    (lambda: analysis.uniformity(np.ones((1, 3))), "at least 2 row"),
    (lambda: analysis.uniformity(np.eye(3), t=-1), "`t`"),
    (lambda: analysis.uniformity(np.eye(3), max_points=1), "max_points"),
    (lambda: analysis.uniformity([[1.0, np.inf], [0.0, 1.0]]), "NaN or infinite"),
    (lambda: analysis.anisotropy(np.eye(3), num_pairs=0), "num_pairs"),
    (lambda: analysis.anisotropy(np.array([["a", "b"], ["c", "d"]])), "numeric"),
    (lambda: analysis.top1_similarities(np.eye(3), np.eye(4)), "dimension"),
    (lambda: analysis.top1_similarities(np.eye(3), np.eye(3), "euclid"), "similarity"),
    (lambda: analysis.same_tower_ratios(np.eye(3), np.eye(3)[:2]), "same shape"),
    (lambda: analysis.same_tower_ratios(np.eye(3), np.eye(3), min_abs_denominator=-1),
     "min_abs_denominator"),
    (lambda: analysis.embedding_report(np.eye(3), np.full((3, 3), np.nan)), "doc_emb"),
    (lambda: analysis.tsne_2d(np.eye(3)[:1], np.eye(3)[:1]), "at least 2"),
    (lambda: analysis.plot_top1_histograms({}), "non-empty dict"),
    (lambda: analysis.plot_top1_histograms({"m": {"query": np.eye(2)}}), "'document'"),
])
def test_bad_input_is_a_clear_value_error(call, message):
    with pytest.raises(ValueError, match=message):
        call()


def test_missing_extra_names_it(monkeypatch):
    monkeypatch.setitem(sys.modules, "sklearn.manifold", None)  # import fails
    with pytest.raises(ImportError, match=r"samtone-tf\[analysis\]"):
        analysis.tsne_2d(np.eye(4), np.eye(4))


# ---------------------------------------------------------------------------------------
# t-SNE


def test_effective_perplexity_rule():
    assert analysis.effective_perplexity(1000, 30.0) == 30.0
    assert analysis.effective_perplexity(91, 30.0) == 30.0
    assert analysis.effective_perplexity(40, 30.0) == 13.0
    assert analysis.effective_perplexity(4, 30.0) == 1.0
    with pytest.raises(ValueError, match="at least 4"):
        analysis.effective_perplexity(3)


def test_tsne_shape_labels_and_determinism():
    q, d = _random_pairs(n=15, dim=8, seed=10, noise=0.1)
    coords, towers = analysis.tsne_2d(q, d, seed=3)  # 30 points: perplexity 30 -> 29/3
    assert coords.shape == (30, 2) and coords.dtype == np.float64
    assert np.all(np.isfinite(coords))
    assert towers.tolist() == ["query"] * 15 + ["document"] * 15
    again, _ = analysis.tsne_2d(q, d, seed=3)
    np.testing.assert_array_equal(coords, again)
    # each query lands nearer its own (close) document than the average document
    dist = np.linalg.norm(coords[:15, None] - coords[None, 15:], axis=-1)
    assert np.mean(np.diag(dist)) < np.mean(dist)
    small, _ = analysis.tsne_2d(q[:2], d[:2])  # 4 points, perplexity 1
    assert small.shape == (4, 2)


# ---------------------------------------------------------------------------------------
# figures


@pytest.fixture(scope="module")
def two_models():
    q, d = _random_pairs(n=20, dim=8, seed=11, noise=0.3)
    return {"base": {"query": q, "document": d},
            "tuned": {"query": q, "document": q + 0.05 * d}}


def test_plot_tsne_writes_side_by_side_png(two_models, tmp_path):
    path = tmp_path / "sub" / "tsne.png"
    fig = analysis.plot_tsne(two_models, path)
    assert [ax.get_title() for ax in fig.axes] == ["base", "tuned"]
    labels = [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
    assert labels == ["query", "document"]
    assert len(fig.axes[0].collections) == 2  # one scatter per tower
    width, height = _png_size(path)
    assert (width, height) == (840, 420)  # 2 panels of 4.2 in at dpi 100
    assert 5_000 < os.path.getsize(path) < 300_000
    import matplotlib.pyplot as plt

    plt.close(fig)


@pytest.mark.parametrize("plot", [analysis.plot_top1_histograms, analysis.plot_ratio_histograms])
def test_histograms_overlay_one_per_model(plot, two_models, tmp_path):
    path = tmp_path / "hist.png"
    fig = plot(two_models, str(path))
    (ax,) = fig.axes
    assert len(ax.containers) == 2  # one histogram per model, same axes
    assert [len(c) for c in ax.containers] == [50, 50]  # shared bins
    legend = [t.get_text() for t in ax.get_legend().get_texts()]
    assert legend[0].startswith("base (median") and legend[1].startswith("tuned (median")
    assert _png_size(path) == (640, 420)
    assert 5_000 < os.path.getsize(path) < 200_000
    no_file = plot(two_models)  # no path: only the figure
    assert no_file is not fig and len(os.listdir(tmp_path)) == 1
    import matplotlib.pyplot as plt

    plt.close(fig)
    plt.close(no_file)


BACKEND_CHILD = """
    import importlib.util, sys
    import samtone_tf  # its dependencies (Keras 3 imports matplotlib.pyplot itself)
    before = set(sys.modules)
    spec = importlib.util.spec_from_file_location("analysis", {path!r})
    analysis = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(analysis)
    added = sorted(m for m in set(sys.modules) - before if m.startswith("matplotlib"))
    assert not added, ("imported matplotlib at import time", added)
    import numpy as np
    analysis.plot_top1_histograms({{"m": {{"query": np.eye(3), "document": np.eye(3)}}}})
    import matplotlib
    print(matplotlib.get_backend())
"""


@pytest.mark.parametrize("mplbackend,expected", [(None, "agg"), ("svg", "svg")])
def test_backend_agg_only_when_none_was_chosen(mplbackend, expected, tmp_path):
    script = tmp_path / "child.py"
    script.write_text(textwrap.dedent(BACKEND_CHILD.format(
        path=os.path.join(REPO, "samtone_tf", "evaluation", "analysis.py"))))
    env = {k: v for k, v in os.environ.items() if k not in ("MPLBACKEND", "DISPLAY")}
    if mplbackend:
        env["MPLBACKEND"] = mplbackend
    done = subprocess.run([sys.executable, str(script)], cwd=str(tmp_path), env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().lower() == expected


# ---------------------------------------------------------------------------------------
# sample_pairs and analyze with plain functions as encoders


def _toy_data(num=12):
    corpus = {f"d{i}": f"document {i} about topic {i % 4}" for i in range(num)}
    queries = {f"q{i}": f"question {i} on topic {i % 4}" for i in range(num)}
    qrels = {f"q{i}": {f"d{i}": 1, f"d{(i + 1) % num}": 1} for i in range(num)}
    qrels["q0"] = {"d0": 0}               # judged, but not relevant: no pair
    qrels["q1"] = {"missing": 1, "d1": 2}  # a positive absent from the corpus is skipped
    qrels["qx"] = {"d3": 1}               # no query text: skipped
    return corpus, queries, qrels


def test_sample_pairs_unique_deterministic_valid():
    corpus, queries, qrels = _toy_data()
    pairs = analysis.sample_pairs(corpus, queries, qrels, max_pairs=100, seed=0)
    assert len(pairs) == 11  # every judged query with text and a positive but q0
    assert len({q for q, _ in pairs}) == len(pairs) == len({d for _, d in pairs})
    for q, d in pairs:
        assert q in queries and d in corpus and qrels[q][d] >= 1
    assert ("q0", "d0") not in pairs and all(q != "qx" for q, _ in pairs)
    assert pairs == analysis.sample_pairs(corpus, queries, qrels, max_pairs=100, seed=0)
    five = analysis.sample_pairs(corpus, queries, qrels, max_pairs=5, seed=1)
    assert len(five) == 5
    assert five == analysis.sample_pairs(corpus, queries, qrels, max_pairs=5, seed=1)
    assert five != analysis.sample_pairs(corpus, queries, qrels, max_pairs=5, seed=2)


def _hash_encoder(salt, dim=12):
    """A deterministic text -> vector function (crc32 of character trigrams)."""
    def encode(texts):
        out = np.zeros((len(texts), dim), np.float32)
        for row, text in enumerate(texts):
            padded = f"  {text}  "
            for k in range(len(padded) - 2):
                h = zlib.crc32((salt + padded[k:k + 3]).encode())
                out[row, h % dim] += 1.0 if (h >> 16) & 1 else -0.5
        return out
    return encode


def test_analyze_with_functions_writes_json_and_figures(tmp_path):
    corpus, queries, qrels = _toy_data()
    models = {"a": (_hash_encoder("q"), _hash_encoder("d")),
              "b": (_hash_encoder("x"), _hash_encoder("x"))}
    out = tmp_path / "out"
    result = analysis.analyze(models, corpus, queries, qrels, str(out), max_pairs=8, seed=3,
                              batch_size=3, progress=False)
    assert sorted(os.listdir(out)) == ["analysis.json", "same_tower_ratio.png",
                                       "top1_similarity.png", "tsne.png"]
    assert json.loads((out / "analysis.json").read_text()) == result
    assert result["config"]["num_pairs"] == 8 and result["config"]["seed"] == 3
    pairs = analysis.sample_pairs(corpus, queries, qrels, max_pairs=8, seed=3)
    assert result["pairs"] == [list(p) for p in pairs]
    for label, (query_fn, doc_fn) in models.items():
        q = query_fn([queries[i] for i, _ in pairs])
        d = doc_fn([corpus[j] for _, j in pairs])
        expected = analysis.embedding_report(q, d)
        entry = result["models"][label]
        assert entry["config"]["model"] == "<functions>"
        assert entry["config"]["tsne_perplexity"] == 5.0  # 16 points: 15 / 3
        for key, value in expected.items():
            assert entry["report"][key] == (pytest.approx(value, rel=1e-9)
                                            if isinstance(value, float) else value), key
    assert _png_size(out / "tsne.png") == (840, 420)


def test_analyze_rejects_bad_models_and_data(tmp_path):
    corpus, queries, qrels = _toy_data()
    good = (_hash_encoder("q"), _hash_encoder("d"))
    with pytest.raises(ValueError, match="non-empty dict"):
        analysis.analyze({}, corpus, queries, qrels, str(tmp_path))
    with pytest.raises(ValueError, match="neither 'pretrained:<name>' nor a SavedModel"):
        analysis.analyze({"m": str(tmp_path / "nothing")}, corpus, queries, qrels, str(tmp_path))
    with pytest.raises(ValueError, match="at least 2"):
        analysis.analyze({"m": good}, corpus, queries, {"q2": {"d2": 1}}, str(tmp_path))
    nan_fn = lambda texts: np.full((len(texts), 4), np.nan, np.float32)  # noqa: E731
    with pytest.raises(ValueError, match="NaN"):
        analysis.analyze({"m": (nan_fn, nan_fn)}, corpus, queries, qrels, str(tmp_path),
                         progress=False)
    assert not os.path.exists(tmp_path / "analysis.json")


# ---------------------------------------------------------------------------------------
# the command line, with the real all-MiniLM-L6-v2 on SciFact


@pytest.mark.parametrize("argv,message", [
    (["--model", "pretrained:minilm-l6"], "LABEL=SPEC"),
    (["--model", "=pretrained:minilm-l6"], "LABEL=SPEC"),
    (["--model", "m="], "LABEL=SPEC"),
    (["--model", "m=pretrained:minilm-l6", "--model", "m=pretrained:minilm-l6"], "twice"),
    (["--model", "m=pretrained:minilm-l6", "--data", "/no/such/dir"], "does not exist"),
    (["--model", "m=/no/such/savedmodel"], "neither 'pretrained:<name>' nor a SavedModel"),
    (["--model", "m=pretrained:minilm-l6", "--max-pairs", "0"], "max_pairs"),
])
def test_cli_bad_input_exits_2_with_message(argv, message, tmp_path, capsys):
    require_data(SCIFACT)
    base = ["analyze", "--data", SCIFACT, "--output-dir", str(tmp_path / "o"), "--quiet"]
    assert cli.main(base + argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("samtone-tf analyze: error:") and message in err
    assert not os.path.exists(tmp_path / "o" / "analysis.json")


@pytest.mark.keras_dependent
@needs(HAVE_MINILM, MINILM_HINT)
def test_cli_analyze_minilm_on_scifact_matches_direct_calls(tmp_path, capsys):
    require_data(SCIFACT)
    from samtone_tf import evaluation

    out = tmp_path / "analysis"
    argv = ["analyze", "--model", "minilm=pretrained:minilm-l6",
            "--model", "again=pretrained:minilm-l6", "--data", SCIFACT, "--split", "train",
            "--max-pairs", "8", "--seed", "5", "--document-max-length", "64",
            "--batch-size", "8", "--output-dir", str(out), "--quiet"]
    assert cli.main(argv) == 0
    printed = capsys.readouterr().out
    assert "| minilm |" in printed and "| again |" in printed
    written = json.loads((out / "analysis.json").read_text())
    config = written["config"]
    assert config["num_pairs"] == 8 and config["split"] == "train"
    assert config["format"] == "beir" and config["data"] == os.path.abspath(SCIFACT)

    corpus, queries, qrels = evaluation.load_eval_data(SCIFACT, "beir", "train")
    pairs = analysis.sample_pairs(corpus, queries, qrels, max_pairs=8, seed=5)
    assert written["pairs"] == [list(p) for p in pairs]
    # the CLI computes in --precision auto (its default): the direct calls do the same
    query_fn, doc_fn = evaluation.text_encoders("pretrained:minilm-l6", document_max_length=64,
                                                precision="auto")
    q = np.asarray(query_fn([queries[i] for i, _ in pairs]))
    d = np.asarray(doc_fn([corpus[j] for _, j in pairs]))
    assert q.shape == d.shape == (8, 384)
    expected = analysis.embedding_report(q, d)
    for label in ("minilm", "again"):
        entry = written["models"][label]
        assert entry["config"]["model"] == "pretrained:minilm-l6"
        assert entry["config"]["document_max_length"] == 64
        assert entry["config"]["precision"] == resolve_precision("auto")
        for key, value in expected.items():
            assert entry["report"][key] == (pytest.approx(value, abs=1e-5)
                                            if isinstance(value, float) else value), key
    report = written["models"]["minilm"]["report"]
    # a trained retriever: positives align better than random pairs would (max 4), and each
    # query's best document is clearly similar
    assert report["alignment"] < 1.5 and report["top1_similarity_median"] > 0.3
    assert _png_size(out / "tsne.png") == (840, 420)
    for name in ("top1_similarity.png", "same_tower_ratio.png"):
        assert _png_size(out / name) == (640, 420)
