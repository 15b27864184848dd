"""benchmarks/regime_study.py: its statistics against definitions, and its --quick mode end to
end on real SQuAD ReQA data (a small BERT from scratch, the real all-MiniLM-L6-v2 frozen and
fine-tuned with gradient caching, and ``training.train``)."""

import importlib.util
import json
import os

import numpy as np
import pytest

from samtone_tf._keras import IS_KERAS3
from tests._requirements import require_data

HERE = os.path.dirname(os.path.abspath(__file__))
SQUAD = os.path.join(HERE, "..", "..", "shared", "data", "squad", "squad_v1.1_train_subset.json")
SCRIPT = os.path.join(HERE, "..", "benchmarks", "regime_study.py")
REQUIRED = {"study": int, "architecture": str, "init": str, "variant": str, "batch_size": int,
            "seed": int, "p@1": float, "mrr": float}


@pytest.fixture(scope="module")
def rs():
    spec = importlib.util.spec_from_file_location("regime_study", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# ---------------------------------------------------------------- statistics, from definitions
def test_tower_separation_is_the_share_of_same_tower_neighbours(rs):
    rng = np.random.default_rng(0)
    # two far-apart clusters: every neighbour is from the own tower
    q = rng.normal(size=(30, 8)) * 0.01 + np.eye(8)[0]
    d = rng.normal(size=(30, 8)) * 0.01 + np.eye(8)[1]
    assert rs.tower_separation(q, d, k=5) == 1.0
    # documents that are the queries themselves (tiny noise): the nearest neighbour of each
    # point is its twin in the other tower
    d = q + rng.normal(size=q.shape) * 1e-6
    assert rs.tower_separation(q, d, k=1) == 0.0
    # a hand-made case: q = [e0, e1], d = [e0 + small e2, e2]
    q = np.array([[1.0, 0, 0], [0, 1.0, 0]])
    d = np.array([[1.0, 0, 0.1], [0, 0, 1.0]])
    # nearest (k=1): q0 -> d0 (other), q1 -> d1? cos(q1, q0) = 0, cos(q1, d0) = 0,
    # cos(q1, d1) = 0: ties broken by index order (q0 first: same tower); d0 -> q0 (other);
    # d1 -> d0 (cos 0.0995, same)
    assert rs.tower_separation(q, d, k=1) == pytest.approx(2 / 4)


def test_centroid_distance_of_unit_vectors(rs):
    q = np.array([[2.0, 0.0], [0.0, 3.0]])      # units e0, e1: centroid (0.5, 0.5)
    d = np.array([[-1.0, 0.0], [0.0, -5.0]])    # centroid (-0.5, -0.5)
    assert rs.centroid_distance(q, d) == pytest.approx(np.sqrt(2.0))
    assert rs.centroid_distance(q, q * 7) == pytest.approx(0.0)


def test_summary_pairs_each_variant_with_in_batch_of_the_same_seed_and_cell(rs):
    def run(variant, seed, p1, mrr, batch=32, arch="ade"):
        return {"study": 1, "part": "x", "architecture": arch, "init": "independent",
                "variant": variant, "batch_size": batch, "seed": seed, "p@1": p1, "mrr": mrr}

    runs = [run("in-batch", 0, 0.50, 0.60), run("in-batch", 1, 0.40, 0.55),
            run("samtone-q", 1, 0.45, 0.50), run("samtone-q", 0, 0.52, 0.61),
            # another cell: must not be paired with the ones above
            run("in-batch", 0, 0.10, 0.20, batch=64), run("samtone-q", 0, 0.05, 0.30, batch=64)]
    rows = {(r["batch_size"], r["variant"]): r for r in rs.summarize(runs)}
    row = rows[(32, "samtone-q")]
    assert row["seeds"] == [0, 1]
    assert row["p@1"]["mean"] == pytest.approx((0.45 + 0.52) / 2)
    assert row["p@1"]["std"] == pytest.approx(np.std([0.45, 0.52], ddof=1))
    diffs = np.array([0.52 - 0.50, 0.45 - 0.40])
    assert row["delta_p@1"]["mean"] == pytest.approx(diffs.mean())
    assert row["delta_p@1"]["std"] == pytest.approx(diffs.std(ddof=1))
    assert (row["delta_p@1"]["better"], row["delta_p@1"]["worse"]) == (2, 0)
    assert row["delta_mrr"]["mean"] == pytest.approx(((0.61 - 0.60) + (0.50 - 0.55)) / 2)
    assert (row["delta_mrr"]["better"], row["delta_mrr"]["worse"]) == (1, 1)
    other = rows[(64, "samtone-q")]
    assert other["delta_p@1"]["mean"] == pytest.approx(-0.05)
    assert "delta_p@1" not in rows[(32, "in-batch")]


def test_bad_arguments_are_refused(rs):
    for argv in (["--study", "4"], ["--seeds", "0"], ["--hidden", "30", "--heads", "4"],
                 ["--study2-parts", "thawed"], ["--study2-batches", "32,-1"]):
        with pytest.raises(SystemExit):
            rs.parse_args(argv)


# ---------------------------------------------------------------- --quick, end to end
@pytest.fixture(scope="module")
def quick(rs, tmp_path_factory):
    require_data(SQUAD)
    out = tmp_path_factory.mktemp("regime") / "quick.json"
    figures = tmp_path_factory.mktemp("figures")
    cache = tmp_path_factory.mktemp("cache")
    argv = ["--quick", "--output", str(out), "--figures", str(figures), "--cache-dir", str(cache)]
    assert rs.main(argv) == 0
    with open(out, encoding="utf-8") as f:
        return argv, out, figures, json.load(f)


@pytest.mark.skipif(not IS_KERAS3, reason="study 1 builds keras-hub backbones (Keras 3)")
def test_quick_runs_every_study_with_the_documented_fields(rs, quick):
    _, _, figures, result = quick
    runs = result["runs"]
    for r in runs:
        for field, kind in REQUIRED.items():
            assert isinstance(r[field], kind), (field, r)
        assert r["architecture"] in ("sde", "ade", "ade-spl")
        assert r["init"] in ("independent", "shared", "pretrained")
        assert r["variant"] in rs.VARIANTS
        assert 0.0 <= r["p@1"] <= r["mrr"] <= 1.0
    cells = {(r["study"], r["part"], r["architecture"], r["init"], r["batch_size"]) for r in runs}
    assert {c for c in cells if c[0] == 1} == {
        (1, "from-scratch", "ade", "independent", 8), (1, "from-scratch", "ade", "shared", 8),
        (1, "from-scratch", "sde", "shared", 8)}
    assert {c[4] for c in cells if c[:2] == (2, "frozen")} == {8, 16}
    assert {c[4] for c in cells if c[:2] == (2, "fine-tuned")} == {8, 16}
    # every cell ran exactly the quick variants, one seed each
    for cell in cells:
        variants = sorted(r["variant"] for r in runs
                          if (r["study"], r["part"], r["architecture"], r["init"],
                              r["batch_size"]) == cell)
        assert variants == sorted(rs.QUICK_VARIANTS), cell
    assert len({rs.run_key(r) for r in runs}) == len(runs)
    # batch 16 fine-tunes through gradient caching in mini-batches of 8; batch 8 does not
    tuned = {r["batch_size"]: r for r in runs
             if r["part"] == "fine-tuned" and r["variant"] == "in-batch"}
    assert (tuned[8]["mini_batch_size"], tuned[16]["mini_batch_size"]) == (None, 8)
    assert (tuned[8]["steps"], tuned[16]["steps"]) == (4, 2)  # the same 32 pairs
    # study 1: curves end at the last step and the analysis is in range
    for r in (r for r in runs if r["study"] == 1):
        assert [p["step"] for p in r["curve"]] == [0, 3, 6]
        a = r["analysis"]
        assert 0.0 <= a["tower_separation"] <= 1.0
        assert 0.0 <= a["centroid_distance"] <= 2.0
        assert 0.0 <= a["alignment"] <= 4.0
    # study 3 went through training.train, evaluated on the whole held-out article
    s3 = [r for r in runs if r["study"] == 3]
    assert {r["precision"] for r in s3} <= {"float32", "bfloat16"}
    assert s3[0]["metrics"]["num_queries"] == s3[1]["metrics"]["num_queries"] > 60
    assert "study3" in result["zero_shot"]
    # summary rows are the runs' statistics
    for row in result["summary"]:
        if "delta_mrr" not in row:
            continue
        same = [r for r in runs if all(r[k] == row[k] for k in rs.CELL_FIELDS)]
        mine = {r["seed"]: r for r in same if r["variant"] == row["variant"]}
        base = {r["seed"]: r for r in same if r["variant"] == "in-batch"}
        diffs = [mine[s]["mrr"] - base[s]["mrr"] for s in mine]
        assert row["delta_mrr"]["mean"] == pytest.approx(np.mean(diffs))
    for name in result["figures"]:
        with open(os.path.join(rs.ROOT, name), "rb") as f:
            assert f.read(8) == b"\x89PNG\r\n\x1a\n", name
    assert {os.path.basename(p) for p in result["figures"]} == {
        "study1_curves.png", "study1_tsne.png", "study1_same_tower_ratio.png",
        "study2_batch_size.png"}


@pytest.mark.skipif(not IS_KERAS3, reason="study 1 builds keras-hub backbones (Keras 3)")
def test_quick_resumes_reports_and_refuses_other_settings(rs, quick):
    argv, out, _, result = quick
    # everything is done: a second run trains nothing and keeps the runs
    assert rs.main(argv + ["--study", "3"]) == 0
    with open(out, encoding="utf-8") as f:
        again = json.load(f)
    assert again["runs"] == result["runs"]
    table = open(str(out)[:-len(".json")] + ".md", encoding="utf-8").read()
    assert "Study 1" in table and "Study 3" in table
    row = next(r for r in again["summary"] if r["study"] == 3 and r["variant"] == "samtone-q")
    assert f"{row['mrr']['mean'] * 100:.1f}" in table
    with pytest.raises(SystemExit, match="other settings"):
        rs.main(argv + ["--study", "1", "--dropout", "0.2"])
    # studies run side by side into their own files are merged into one
    merged = out.parent / "merged.json"
    assert rs.main(["--quick", "--report", "--output", str(merged), "--merge", str(out),
                    "--figures", str(out.parent / "merged_figures")]) == 0
    with open(merged, encoding="utf-8") as f:
        combined = json.load(f)
    assert combined["runs"] == result["runs"]
    assert combined["settings"] == result["settings"]


@pytest.mark.skipif(IS_KERAS3, reason="the Keras 2 refusal of study 1")
def test_study1_needs_keras3(rs, tmp_path):
    require_data(SQUAD)
    with pytest.raises(SystemExit, match="Keras 3"):
        rs.main(["--quick", "--study", "1", "--output", str(tmp_path / "r.json")])
