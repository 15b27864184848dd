"""benchmarks/loss_study.py: its --quick mode on real SQuAD ReQA data with the real encoder.

The study trains projections on frozen all-MiniLM-L6-v2 features; these tests check that its
zero-shot row is the pretrained model as the library evaluates it, that its hard negatives
are the miner's, that training moves the loss, and that the table is the runs' statistics.
"""

import importlib.util
import json
import os

import numpy as np
import pytest

from tests._requirements import require_data

HERE = os.path.dirname(os.path.abspath(__file__))
SQUAD = os.path.join(HERE, "..", "..", "shared", "data", "squad", "squad_v1.1_train_subset.json")
SCRIPT = os.path.join(HERE, "..", "benchmarks", "loss_study.py")


def _load_script():
    spec = importlib.util.spec_from_file_location("loss_study", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def study_module():
    require_data(SQUAD)
    return _load_script()


@pytest.fixture(scope="module")
def quick_run(study_module, tmp_path_factory):
    out = tmp_path_factory.mktemp("study") / "quick.json"
    code = study_module.main([
        "--dataset", "reqa", "--quick", "--seeds", "2", "--steps", "12",
        "--variants", "in-batch,samtone-q,dance+mined", "--architectures", "sde,ade",
        "--cache-dir", str(tmp_path_factory.mktemp("cache")), "--output", str(out)])
    assert code == 0
    with open(out, encoding="utf-8") as f:
        result = json.load(f)
    with open(str(out)[:-len(".json")] + ".md", encoding="utf-8") as f:
        table = f.read()
    return result, table


def test_zero_shot_row_is_the_pretrained_model_as_evaluated_by_the_library(study_module,
                                                                             quick_run):
    from samtone_tf import evaluation

    result, _ = quick_run
    corpus, queries, qrels = study_module.load_study_data("reqa", None, quick=True)["eval"]
    assert result["sizes"]["eval_queries"] == len(qrels) == 150
    assert result["sizes"]["eval_documents"] == len(corpus)
    query_fn, doc_fn = evaluation.text_encoders("pretrained:minilm-l6", query_max_length=32,
                                                document_max_length=64)
    direct = evaluation.evaluate_retrieval(query_fn, doc_fn, corpus, queries, qrels,
                                           progress=False)
    for name in ("p@1", "mrr", "recall@10"):
        assert result["zero_shot"][name] == pytest.approx(direct[name], abs=0.01), name


def test_table_and_summary_are_the_runs_statistics(quick_run):
    result, table = quick_run
    runs = result["runs"]
    assert len(runs) == 3 * 2 * 2
    for row in result["summary"]:
        group = [r for r in runs
                 if (r["variant"], r["architecture"]) == (row["variant"], row["architecture"])]
        values = np.array([r["metrics"]["mrr"] for r in group])
        assert row["mrr"]["mean"] == pytest.approx(values.mean())
        assert row["mrr"]["std"] == pytest.approx(values.std(ddof=1))
        line = f"| {row['variant']} | {row['architecture'].upper()} | "
        assert any(l.startswith(line) and f"{row['mrr']['mean']:.4f}" in l
                   for l in table.splitlines()), line
        if row["variant"] != "in-batch":
            base = {r["seed"]: r["metrics"]["mrr"] for r in runs
                    if (r["variant"], r["architecture"]) == ("in-batch", row["architecture"])}
            diffs = [r["metrics"]["mrr"] - base[r["seed"]] for r in group]
            assert row["paired_diff_mrr"]["mean"] == pytest.approx(np.mean(diffs))
            assert row["paired_diff_mrr"]["better"] == sum(d > 0 for d in diffs)
    assert f"{result['zero_shot']['mrr']:.4f}" in table.splitlines()[2]


def test_training_lowers_the_loss_and_mines_for_the_mined_variant_only(quick_run):
    result, _ = quick_run
    for r in result["runs"]:
        assert r["loss_last10"] < r["loss_first10"], r
        if r["variant"] == "dance+mined":
            assert r["mining_refreshes"] == 4  # steps 0, 3, 6, 9 of 12
        else:
            assert r["mining_refreshes"] == 0


def test_hard_negatives_fed_are_the_miners_current_top_non_positives(study_module):
    """One study on a small slice: the batch's hd/hq rows are read from the tables the
    miner filled from the current projections, and those hold no positive."""
    data = study_module.load_study_data("reqa", None, quick=True)

    class FakeCache:  # deterministic features, no encoder: the check is about indexing
        def get(self, texts, kind):
            rng = np.random.default_rng(len(texts) + (0 if kind == "query" else 1))
            x = rng.normal(size=(len(texts), 8)).astype(np.float32)
            return x / np.linalg.norm(x, axis=1, keepdims=True)

    study = study_module.Study("reqa", data, FakeCache(), batch_size=8, temperature=0.05,
                               refresh_every=100)
    m = study.miner
    eye = np.eye(8, dtype=np.float32)
    study.miner.mine_from_embeddings(study.train_q, study.train_d)
    sims = study.train_q @ study.train_d.T
    for row, qid in enumerate(m.query_ids[:40]):
        order = np.argsort(-sims[row], kind="stable")
        top = next(j for j in order if m.doc_ids[j] not in m.positives[qid])
        assert m.document_table[row, 0] == top
    # identity kernels: the evaluation is the raw features' retrieval
    metrics = study.evaluate((eye, eye))
    assert metrics == study.evaluate(None)


def test_bad_arguments_are_rejected(study_module, capsys):
    with pytest.raises(SystemExit):
        study_module.main(["--dataset", "reqa", "--variants", "nope"])
    assert "unknown variant 'nope'" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        study_module.main(["--dataset", "reqa", "--steps", "0"])
    for bad, message in ((["--learning-rate", "0"], "--learning-rate must be > 0"),
                         (["--refresh-every", "0"], "--refresh-every must be >= 1"),
                         (["--sweep", "1e-3,fast"], "--sweep must be comma-separated"),
                         (["--sweep", "1e-3,-1"], "--sweep learning rates must be > 0")):
        capsys.readouterr()
        with pytest.raises(SystemExit):  # rejected before any data is read or encoded
            study_module.main(["--dataset", "reqa", "--quick"] + bad)
        assert message in capsys.readouterr().err
    with pytest.raises(ValueError, match="architecture"):
        study_module.make_head_model(4, "ade-spl")


def test_linked_pair_counts():
    spec = importlib.util.spec_from_file_location(
        "linked_pairs", os.path.join(os.path.dirname(SCRIPT), "linked_pairs.py"))
    linked_pairs = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(linked_pairs)
    # pairs 0-1 share a query, 1-2 share a document (so 0-2 are not linked), 3 is alone
    pairs = [("q0", "", "d0", ""), ("q0", "", "d1", ""), ("q1", "", "d1", ""), ("q2", "", "d2", "")]
    with_partner, per_batch, share = linked_pairs.linked_counts(pairs, 2, 500)
    assert with_partner == 3
    assert per_batch == pytest.approx(2 * 2 / (4 * 3))  # 2 linked of the 6 unordered pairs
    assert abs(share - 2 / 6) < 0.07  # a batch of 2 is one of the 6 pairs, drawn at random
    _, _, everything = linked_pairs.linked_counts(pairs, 4, 3)  # the whole set: always linked
    assert everything == 1.0
