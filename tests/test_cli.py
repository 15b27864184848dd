"""The command line: train (fit + evaluate + export) and evaluate, on a small real BEIR slice
with a tiny encoder; metrics cross-checked against a direct computation."""

import json
import os

import numpy as np
import pytest
import tensorflow as tf

from samtone_tf import cli, data as data_lib, evaluation
from samtone_tf.evaluation import retrieval
from samtone_tf.data.tokenization import build_wordpiece_vocab
from tests import _tiny
from tests._requirements import require_data

SCIFACT = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data", "scifact")


@pytest.fixture(scope="module")
def small_beir(tmp_path_factory):
    """A real SciFact slice: the documents judged in train/test qrels plus 100 others."""
    require_data(SCIFACT)
    corpus, queries, train_qrels = data_lib.load_beir(SCIFACT, "train")
    _, _, test_qrels = data_lib.load_beir(SCIFACT, "test")
    train_q = sorted(train_qrels)[:96]
    test_q = sorted(test_qrels)[:40]
    keep = {d for q in train_q for d in train_qrels[q]} | {d for q in test_q for d in test_qrels[q]}
    keep |= set(list(corpus)[:100])
    root = tmp_path_factory.mktemp("beir") / "scifact_small"
    (root / "qrels").mkdir(parents=True)
    with open(root / "corpus.jsonl", "w") as f:
        for d in corpus:
            if d in keep:
                f.write(json.dumps({"_id": d, "title": "", "text": corpus[d]}) + "\n")
    with open(root / "queries.jsonl", "w") as f:
        for q in train_q + test_q:
            f.write(json.dumps({"_id": q, "text": queries[q]}) + "\n")
    for name, qrels, qs in (("train", train_qrels, train_q), ("test", test_qrels, test_q)):
        with open(root / "qrels" / f"{name}.tsv", "w") as f:
            f.write("query-id\tcorpus-id\tscore\n")
            for q in qs:
                for d, s in qrels[q].items():
                    f.write(f"{q}\t{d}\t{s}\n")
    vocab = root.parent / "vocab.txt"
    build_wordpiece_vocab(list(corpus.values())[:2000] + [queries[q] for q in train_q],
                          _tiny.VOCAB_SIZE, str(vocab))
    return str(root), str(vocab)


@pytest.fixture(scope="module")
def trained(small_beir, tmp_path_factory):
    root, vocab = small_beir
    out = tmp_path_factory.mktemp("run")
    encoder = _tiny.tiny_tfhub_encoder_path(out, seed=3)
    config = out / "config.json"
    config.write_text(json.dumps({
        "data": root, "format": "beir", "encoder": encoder, "vocab": vocab,
        "architecture": "ade-spl", "projection_dim": 16, "query_max_length": 16,
        "document_max_length": 48, "batch_size": 16, "epochs": 2, "learning_rate": 1e-3,
        "schedule": "linear", "warmup_steps": 2, "same_tower": "both", "bidirectional": True,
        "dual_weight": 0.1, "strategy": "default", "eval_batch_size": 32,
    }))
    # a flag overrides the file; the run trains through the gradient-cached step
    code = cli.main(["train", "--config", str(config), "--output-dir", str(out / "run"),
                     "--steps-per-epoch", "3", "--mini-batch-size", "6", "--quiet"])
    assert code == 0
    return out / "run", json.loads((out / "run" / "summary.json").read_text())


def test_train_writes_summary_metrics_and_export(trained):
    run_dir, summary = trained
    assert summary["steps"] == 6 and len(summary["loss_history"]) == 2
    assert summary["config"]["steps_per_epoch"] == 3          # the flag won over the file
    assert summary["config"]["architecture"] == "ade-spl"     # the file's setting is kept
    assert summary["config"]["mini_batch_size"] == 6          # batches of 16 as 6, 6, 4
    assert summary["train_pairs"] > 96                         # more judgments than queries
    assert summary["metrics"]["num_queries"] == 40
    # evaluated before training too, on the same held-out queries; training moved the numbers
    assert summary["metrics_before"]["num_queries"] == 40
    assert summary["metrics_before"]["ndcg@10"] != summary["metrics"]["ndcg@10"]
    assert set(retrieval.METRIC_KEYS) <= set(summary["metrics"])
    assert os.path.isfile(os.path.join(summary["export_dir"], "saved_model.pb"))
    assert os.path.isfile(run_dir / "final.weights.h5")
    assert any(name.startswith("events") for _, _, files in os.walk(run_dir / "logs")
               for name in files)


def test_evaluate_command_matches_direct_computation(trained, small_beir, tmp_path, capsys):
    run_dir, summary = trained
    root, _ = small_beir
    out = tmp_path / "metrics.json"
    assert cli.main(["evaluate", "--model", summary["export_dir"], "--data", root,
                     "--format", "beir", "--output", str(out), "--quiet"]) == 0
    metrics = json.loads(out.read_text())
    for key in ("ndcg@10", "mrr@10", "mrr", "p@1", "recall@10", "recall@100",
                "num_queries", "num_documents"):
        assert key in metrics
    printed = capsys.readouterr().out
    assert "| ndcg@10 |" in printed
    # the exported model's metrics equal the in-training evaluation of the same weights
    for key in retrieval.METRIC_KEYS:
        assert metrics[key] == pytest.approx(summary["metrics"][key], abs=1e-6), key
    # and an independent brute-force computation over the same embeddings
    corpus, queries, qrels = evaluation.load_eval_data(root, "beir", "test")
    query_fn, doc_fn = evaluation.text_encoders(summary["export_dir"])
    qids = sorted(queries)
    q = np.asarray(query_fn([queries[i] for i in qids]))
    dids = list(corpus)
    d = np.asarray(doc_fn([corpus[i] for i in dids]))
    scores = q @ d.T
    p_at_1 = np.mean([dids[int(np.argmax(row))] in qrels[qid] for qid, row in zip(qids, scores)])
    assert metrics["p@1"] == pytest.approx(p_at_1, abs=1e-9)
    assert metrics["num_documents"] == len(corpus)


@pytest.mark.parametrize("argv,message", [
    (["evaluate", "--model", "pretrained:minilm-l6", "--data", "/no/such/dir", "--format", "beir"],
     "does not exist"),
    (["train", "--data", "/tmp", "--eval-format", "squad"], "eval_format"),
    (["train", "--data", "/tmp", "--encoder", "/some/savedmodel"], "vocab"),
    (["train", "--data", "/tmp", "--same-tower", "document"], "same_tower"),
    (["train", "--data", "/tmp", "--batch-size", "0"], "batch_size"),
])
def test_bad_input_is_a_clear_error(argv, message, capsys):
    assert cli.main(argv) == 2
    assert message in capsys.readouterr().err


def test_unknown_format_is_refused_with_the_registered_choices(capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["train", "--data", "/tmp", "--format", "csv"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "--format" in err and "'beir'" in err and "'squad'" in err


def test_unknown_config_key_is_named(tmp_path, capsys):
    config = tmp_path / "c.json"
    config.write_text(json.dumps({"data": "/tmp", "learning_rte": 0.1}))
    assert cli.main(["train", "--config", str(config)]) == 2
    assert "learning_rte" in capsys.readouterr().err


def test_warmup_decay_schedule():
    from samtone_tf.training import WarmupDecay

    lr = WarmupDecay(1.0, total_steps=10, warmup_steps=2, kind="linear")
    values = [float(lr(tf.constant(s))) for s in range(11)]
    # warmup: (s + 1) / 2 for s < 2; then linear decay over the 8 remaining steps
    np.testing.assert_allclose(values[:2], [0.5, 1.0])
    np.testing.assert_allclose(values[2:], [1 - (s - 2) / 8 for s in range(2, 11)], atol=1e-6)
    cos = WarmupDecay(1.0, total_steps=4, kind="cosine")
    np.testing.assert_allclose([float(cos(tf.constant(s))) for s in (0, 2, 4)], [1, 0.5, 0],
                               atol=1e-6)


# ----------------------------------------------------------- empty texts in real corpora


def _tiny_beir_with_empty_texts(root):
    """4 documents (d2 empty, as in some public collections), 3 queries (q2 blank)."""
    (root / "qrels").mkdir(parents=True)
    docs = {"d1": "Protein folding kinetics in mitochondria.", "d2": "",
            "d3": "Vitamin D deficiency and bone density.", "d4": "Cats purr when content."}
    queries = {"q1": "protein folding", "q2": "  ", "q3": "vitamin D and bones"}
    judged = {"q1": "d1", "q2": "d2", "q3": "d3"}
    with open(root / "corpus.jsonl", "w") as f:
        for d, text in docs.items():
            f.write(json.dumps({"_id": d, "title": "", "text": text}) + "\n")
    with open(root / "queries.jsonl", "w") as f:
        for q, text in queries.items():
            f.write(json.dumps({"_id": q, "text": text}) + "\n")
    for split in ("train", "test"):
        (root / "qrels" / f"{split}.tsv").write_text(
            "query-id\tcorpus-id\tscore\n" + "".join(f"{q}\t{d}\t1\n" for q, d in judged.items()))
    return str(root), docs, queries, judged


def _messages(record):
    return [str(w.message) for w in record if issubclass(w.category, data_lib.EmptyTextWarning)]


def test_evaluate_keeps_empty_texts_and_counts_every_query(trained, tmp_path, capsys):
    _, summary = trained
    root, docs, queries, judged = _tiny_beir_with_empty_texts(tmp_path / "beir")
    out = tmp_path / "metrics.json"
    argv = ["evaluate", "--model", summary["export_dir"], "--data", root, "--format", "beir",
            "--output", str(out), "--quiet"]
    with pytest.warns(data_lib.EmptyTextWarning) as record:
        assert cli.main(argv) == 0
    messages = _messages(record)
    assert any("corpus.jsonl: 1 document has an empty title and text (id 'd2'); they are "
               "embedded as empty text. Pass strict_text=True / --strict" in m for m in messages)
    assert any("queries.jsonl: 1 query has an empty text (id 'q2')" in m for m in messages)
    metrics = json.loads(out.read_text())
    assert (metrics["num_queries"], metrics["num_documents"]) == (3, 4)
    # the reference definition: every text embedded as is, the empty ones as ""
    query_fn, doc_fn = evaluation.text_encoders(summary["export_dir"])
    q = np.asarray(query_fn([queries[i].strip() for i in judged]))
    d = np.asarray(doc_fn(list(docs.values())))
    scores = q @ d.T
    ranks = [1 + int(np.sum(row > row[list(docs).index(judged[qid])]))
             for qid, row in zip(judged, scores)]
    assert metrics["mrr"] == pytest.approx(np.mean([1 / r for r in ranks]), abs=1e-6)
    assert metrics["p@1"] == pytest.approx(np.mean([r == 1 for r in ranks]), abs=1e-9)
    # --strict keeps the error naming the file and line
    capsys.readouterr()
    assert cli.main(argv + ["--strict"]) == 2
    assert "corpus.jsonl, line 2: document 'd2' has an empty title and text" in capsys.readouterr().err


def test_evaluate_squad_keeps_an_empty_question(trained, tmp_path, capsys):
    _, summary = trained
    context = "Protein folds fast in the cell. Vitamin D helps the bones grow."
    squad = {"version": "1.1", "data": [{"title": "A", "paragraphs": [{"context": context, "qas": [
        {"id": "a", "question": "What folds fast?", "answers": [{"text": "Protein", "answer_start": 0}]},
        {"id": "b", "question": " ", "answers": [{"text": "Vitamin D",
                                                  "answer_start": context.index("Vitamin")}]},
    ]}]}]}
    path = tmp_path / "squad.json"
    path.write_text(json.dumps(squad))
    out = tmp_path / "metrics.json"
    argv = ["evaluate", "--model", summary["export_dir"], "--data", str(path), "--format", "squad",
            "--output", str(out), "--quiet"]
    with pytest.warns(data_lib.EmptyTextWarning, match=r"squad\.json: 1 question has an empty text \(id 'b'\)"):
        assert cli.main(argv) == 0
    metrics = json.loads(out.read_text())
    assert (metrics["num_queries"], metrics["num_documents"]) == (2, 2)
    capsys.readouterr()
    assert cli.main(argv + ["--strict"]) == 2
    assert "data[0].paragraphs[0].qas[1].question is empty" in capsys.readouterr().err


def test_train_strict_refuses_empty_texts_before_training(tmp_path, capsys):
    root, _, _, _ = _tiny_beir_with_empty_texts(tmp_path / "beir")
    argv = ["train", "--data", root, "--encoder", str(tmp_path / "no_encoder"), "--vocab",
            str(tmp_path / "no_vocab.txt"), "--output-dir", str(tmp_path / "run"),
            "--strategy", "default", "--strict"]
    assert cli.main(argv) == 2
    assert "corpus.jsonl, line 2: document 'd2' has an empty title and text" in capsys.readouterr().err
