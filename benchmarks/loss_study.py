"""Loss-variant study: in-batch vs SamToNe vs DANCE vs GTE on real data, with ANN-mined negatives.

    python benchmarks/loss_study.py --dataset reqa     # SQuAD ReQA, held-out articles (P@1, MRR)
    python benchmarks/loss_study.py --dataset scifact  # BEIR SciFact test qrels (nDCG@10)
    python benchmarks/loss_study.py --dataset reqa --quick   # CI-sized (about a minute)

What is trained. The encoder is the real pretrained all-MiniLM-L6-v2 (``pretrained:minilm-l6``,
TF-Hub layout, mean pooling, L2-normalised). On 2 CPU cores one fine-tuning step of the
whole encoder at batch 32 costs about 2.4 s and encoding the SciFact corpus about 10 minutes,
so a grid of 7 losses x 2 architectures x 5 seeds x 2 data sets (140 runs, each evaluated)
cannot fine-tune the transformer. The study therefore freezes the transformer, encodes every
text once (cached under ``--cache-dir``), and trains the towers' projection layers on top
(``dim x dim`` linear maps without bias, initialised to the identity so that step 0 *is* the
pretrained model, then L2 normalisation), with the library's :class:`samtone_tf.SamToNeLoss`
and ``model.fit``-style Keras training (``train_on_batch``):

* ``sde``: symmetric dual encoder, one projection shared by both towers;
* ``ade``: asymmetric dual encoder, separate query and document projections. (ADE-SPL, separate
  encoders with a *shared* projection, is the same model as SDE when the encoders are frozen
  copies of one checkpoint, so it is not run separately here.)

Loss variants (``SamToNeLoss`` arguments; temperature 0.05 everywhere, duplicate ids masked):

====================  =========================================================================
``in-batch``          ``same_tower="none"`` (the baseline; sentence-transformers' MNRL)
``samtone-q``         ``same_tower="query"`` (SamToNe, query side)
``samtone-both``      ``same_tower="both", bidirectional=True`` (SamToNe, symmetric form)
``dance``             ``same_tower="none", bidirectional=True, dual_weight=0.1`` (DANCE dual)
``dance+mined``       DANCE dual + 1 ANN-mined hard-negative document per query and 1 mined
                      hard-negative query per positive document (DANCE's full recipe)
``ance``              in-batch + 1 ANN-mined hard-negative document per query (isolates
                      the mined documents from the dual objective)
``gte-joint``         ``same_tower="both", bidirectional=True, partition="joint"`` (GTE)
====================  =========================================================================

Mining (ANCE/DANCE): :class:`samtone_tf.training.mining.HardNegativeMiner` mines the top non-positive
corpus document of every training query and the top non-paired training query of every
positive document from the *current* projections, before the first step and then every
``--refresh-every`` steps (the frozen features make a refresh cheap: the cost is the search).

Fixed for every variant: batch 32, temperature 0.05, Adam, ``--steps`` steps. The learning
rate is chosen once per data set by a sweep of the in-batch baseline (SDE, seed 0) on a
validation split carved out of the *training* data (10% of the training queries held out from
training, retrieved against the training corpus); the test split is never used for choosing.
Seeds change the batch order (the projections start at the identity). Results: mean +- std
over seeds, and the paired difference to in-batch on the same seeds (same batches).

Outputs: ``--output`` JSON (every run, every setting, the sweep) and a markdown table beside it
(``.md``), also printed. ``--figures DIR`` writes ``samtone_tf.evaluation.analysis.analyze`` figures
(t-SNE by tower, top-1 similarity and same-tower ratio histograms, ``analysis.json``) for the
ADE in-batch and ADE SamToNe models of seed 0.
"""

import argparse
import hashlib
import json
import os
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
SHARED = os.path.join(HERE, "..", "..", "shared", "data")

VARIANTS = {
    "in-batch": dict(loss=dict(same_tower="none")),
    "samtone-q": dict(loss=dict(same_tower="query")),
    "samtone-both": dict(loss=dict(same_tower="both", bidirectional=True)),
    "dance": dict(loss=dict(same_tower="none", bidirectional=True, dual_weight=0.1)),
    "dance+mined": dict(loss=dict(same_tower="none", bidirectional=True, dual_weight=0.1),
                        hard_documents=1, hard_queries=1),
    "ance": dict(loss=dict(same_tower="none"), hard_documents=1),
    "gte-joint": dict(loss=dict(same_tower="both", bidirectional=True, partition="joint")),
}
ARCHITECTURES = ("sde", "ade")
DATASETS = {
    # name: (metrics reported, main metric)
    "reqa": (("p@1", "mrr"), "mrr"),
    "scifact": (("ndcg@10", "recall@100"), "ndcg@10"),
}


# ---------------------------------------------------------------------------- data
def load_study_data(dataset, data_path, quick, seed=0):
    """``dict`` with ``pairs`` (training (qid, qtext, did, dtext)), ``train_corpus`` (the
    mining corpus), ``train_qrels``, ``eval`` ((corpus, queries, qrels)) and ``description``."""
    from samtone_tf import data as data_lib
    from samtone_tf import evaluation
    from samtone_tf.data import reqa

    rng = np.random.default_rng(seed)
    if dataset == "reqa":
        path = data_path or os.path.join(SHARED, "squad", "squad_v1.1_train_subset.json")
        train_json, dev_json = reqa.split_by_article(path, 0.2, 0)
        corpus, queries, qrels = reqa.build_reqa(train_json)
        eval_corpus, eval_queries, eval_qrels = reqa.build_reqa(dev_json)
        description = ("SQuAD ReQA: 80% of the articles train, 20% held out (split seed 0); "
                       "candidates are all sentences of the held-out articles")
    else:
        path = data_path or os.path.join(SHARED, "scifact")
        corpus, queries, qrels = data_lib.load_beir(path, "train")
        eval_corpus, eval_queries, eval_qrels = evaluation.load_eval_data(path, "beir", "test")
        description = "BEIR SciFact: train qrels train, test qrels evaluate, full corpus"
    pairs = data_lib.training_pairs_from_qrels(corpus, queries, qrels)
    if quick:
        # a seeded slice: 256 training pairs, the mining corpus cut to their documents plus
        # 256 others, 150 evaluation queries against their positives plus 350 others
        keep = sorted(rng.choice(len(pairs), size=min(256, len(pairs)), replace=False))
        pairs = [pairs[i] for i in keep]
        used = {p[2] for p in pairs}
        others = sorted(set(corpus) - used)
        extra = rng.choice(len(others), size=min(256, len(others)), replace=False)
        corpus = {d: corpus[d] for d in sorted(used | {others[i] for i in extra})}
        judged = sorted(q for q in eval_qrels if q in eval_queries)
        chosen = [judged[i] for i in sorted(rng.choice(len(judged), size=min(150, len(judged)),
                                                       replace=False))]
        eval_qrels = {q: eval_qrels[q] for q in chosen}
        eval_queries = {q: eval_queries[q] for q in chosen}
        positives = {d for q in chosen for d in eval_qrels[q] if d in eval_corpus}
        rest = sorted(set(eval_corpus) - positives)
        extra = rng.choice(len(rest), size=min(350, len(rest)), replace=False)
        eval_corpus = {d: eval_corpus[d] for d in sorted(positives | {rest[i] for i in extra})}
        description += " (--quick slice: 256 pairs, 150 evaluation queries, 500 candidates)"
    train_qrels = {q: dict(qrels.get(q, {})) for q in {p[0] for p in pairs}}
    for qid, _, did, _ in pairs:
        train_qrels[qid].setdefault(did, 1)
    return dict(pairs=pairs, train_corpus={d: t for d, t in corpus.items()},
                train_qrels=train_qrels, eval=(eval_corpus, eval_queries, eval_qrels),
                description=description)


class FeatureCache:
    """Frozen-encoder embeddings of text lists, cached on disk by content hash."""

    def __init__(self, cache_dir, query_max_length, document_max_length, batch_size=128):
        self.cache_dir = cache_dir
        self.lengths = (query_max_length, document_max_length)
        self.batch_size = batch_size
        self._fns = None
        self.encode_seconds = 0.0
        self.encoded = 0

    def _encoders(self):
        if self._fns is None:
            import samtone_tf
            from samtone_tf import evaluation
            from samtone_tf.towers import pretrained

            qt, dt, spec = pretrained.dual_encoder_components(
                "minilm-l6", query_max_length=self.lengths[0],
                document_max_length=self.lengths[1], backend="tfhub")
            model = samtone_tf.DualEncoder(spec, architecture="sde", pooling="mean")
            self._fns = evaluation.dual_encoder_fns(model, qt, dt)
        return self._fns

    def get(self, texts, kind):
        from samtone_tf.evaluation import retrieval

        length = self.lengths[0 if kind == "query" else 1]
        digest = hashlib.sha256(json.dumps([kind, length, "minilm-l6", texts]).encode()).hexdigest()
        path = os.path.join(self.cache_dir, f"{kind}-{length}-{digest[:20]}.npy") \
            if self.cache_dir else None
        if path and os.path.exists(path):
            return np.load(path)
        fn = self._encoders()[0 if kind == "query" else 1]
        # longest first: batches of similar length pad less (the tokenizer pads to the batch)
        order = np.argsort([-len(t) for t in texts], kind="stable")
        started = time.perf_counter()
        emb = retrieval.encode_corpus(fn, [texts[i] for i in order], self.batch_size,
                                      progress=True)
        self.encode_seconds += time.perf_counter() - started
        self.encoded += len(texts)
        out = np.empty_like(emb)
        out[order] = emb
        if path:
            os.makedirs(self.cache_dir, exist_ok=True)
            np.save(path, out)
        return out


# ---------------------------------------------------------------------------- model
def make_head_model(dim, architecture):
    """Projection towers on frozen features; outputs ``[B, 2 + Hd + Hq, dim]`` as
    ``SamToNeLoss`` expects."""
    import tensorflow as tf

    keras = tf.keras  # the generation TF_USE_LEGACY_KERAS picked

    if architecture not in ARCHITECTURES:
        raise ValueError(f"architecture must be one of {ARCHITECTURES}, got {architecture!r}.")

    class HeadDualEncoder(keras.Model):
        def __init__(self):
            super().__init__()
            self.query_head = keras.layers.Dense(dim, use_bias=False,
                                                 kernel_initializer="identity", name="query_head")
            self.document_head = self.query_head if architecture == "sde" else \
                keras.layers.Dense(dim, use_bias=False, kernel_initializer="identity",
                                   name="document_head")

        def call(self, inputs):
            def unit(x):
                return tf.math.l2_normalize(x, axis=-1)

            parts = [unit(self.query_head(inputs["q"]))[:, None],
                     unit(self.document_head(inputs["d"]))[:, None]]
            if "hd" in inputs:
                parts.append(unit(self.document_head(inputs["hd"])))
            if "hq" in inputs:
                parts.append(unit(self.query_head(inputs["hq"])))
            return tf.concat(parts, axis=1)

        def kernels(self):
            return (np.array(self.query_head.kernel), np.array(self.document_head.kernel))

    return HeadDualEncoder()


def project(features, kernel):
    x = features @ kernel
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


# ---------------------------------------------------------------------------- study
class Study:
    def __init__(self, dataset, data, cache, *, batch_size, temperature, refresh_every,
                 eval_pairs=500):
        from samtone_tf.evaluation import analysis
        from samtone_tf.training.mining import HardNegativeMiner

        self.dataset, self.data = dataset, data
        self.batch_size, self.temperature = batch_size, temperature
        self.refresh_every = refresh_every
        pairs = data["pairs"]
        # tokenizers are not used (the miner only mines from given embeddings)
        self.miner = HardNegativeMiner(pairs, data["train_corpus"], (None, None),
                                       qrels=data["train_qrels"], num_hard_documents=1,
                                       num_hard_queries=1, seed=0)
        m = self.miner
        self.train_q = cache.get(m.query_texts, "query")
        self.train_d = cache.get(m.doc_texts, "document")
        self.query_rows = np.array([m._query_row[p[0]] for p in pairs])
        self.doc_rows = np.array([m._doc_row[p[2]] for p in pairs])
        self.positive_rows = np.array([m._positive_row[p[2]] for p in pairs])
        self.labels = np.stack([self.query_rows, self.doc_rows], 1).astype(np.float32)
        corpus, queries, qrels = data["eval"]
        self.eval_query_ids = [q for q in queries if q in qrels]
        self.eval_doc_ids = list(corpus)
        self.eval_qrels = qrels
        self.eval_q = cache.get([queries[q] for q in self.eval_query_ids], "query")
        self.eval_d = cache.get([corpus[d] for d in self.eval_doc_ids], "document")
        self.dim = self.train_q.shape[1]
        sampled = analysis.sample_pairs(corpus, queries, qrels, max_pairs=eval_pairs, seed=0)
        q_row = {q: i for i, q in enumerate(self.eval_query_ids)}
        d_row = {d: i for i, d in enumerate(self.eval_doc_ids)}
        self.report_rows = (np.array([q_row[q] for q, _ in sampled]),
                            np.array([d_row[d] for _, d in sampled]))

    # evaluation of projections given as kernels (None: identity = the pretrained model)
    def evaluate(self, kernels=None, query_features=None, doc_features=None, query_ids=None,
                 doc_ids=None, qrels=None):
        from samtone_tf.evaluation import analysis
        from samtone_tf.evaluation import retrieval

        eye = np.eye(self.dim, dtype=np.float32)
        kq, kd = kernels or (eye, eye)
        fq = self.eval_q if query_features is None else query_features
        fd = self.eval_d if doc_features is None else doc_features
        q, d = project(fq, kq), project(fd, kd)
        scores, indices = retrieval.search(q, [d], min(100, d.shape[0]))
        run = retrieval.run_from_search(scores, indices, query_ids or self.eval_query_ids,
                                        doc_ids or self.eval_doc_ids)
        metrics = retrieval.evaluate_run(run, qrels or self.eval_qrels)
        if query_features is None:
            qi, di = self.report_rows
            report = analysis.embedding_report(q[qi], d[di])
            metrics.update({k: report[k] for k in (
                "alignment", "uniformity_query", "uniformity_document", "uniformity_all",
                "anisotropy_query", "anisotropy_document", "top1_similarity_mean",
                "same_tower_ratio_mean")})
        return metrics

    def _mine(self, model):
        kq, kd = model.kernels()
        return self.miner.mine_from_embeddings(project(self.train_q, kq),
                                               project(self.train_d, kd))

    def train(self, variant, architecture, seed, steps, learning_rate, train_mask=None):
        """Trains one model; returns ``(kernels, record)``."""
        import samtone_tf
        import tensorflow as tf
        keras = tf.keras  # the generation TF_USE_LEGACY_KERAS picked

        spec = VARIANTS[variant]
        hd, hq = spec.get("hard_documents", 0), spec.get("hard_queries", 0)
        keras.utils.set_random_seed(seed)
        model = make_head_model(self.dim, architecture)
        model.compile(optimizer=keras.optimizers.Adam(learning_rate),
                      loss=samtone_tf.SamToNeLoss(temperature=self.temperature,
                                                  num_hard_negative_queries=hq,
                                                  mask_duplicates=True, **spec["loss"]))
        rows = np.arange(len(self.labels)) if train_mask is None else np.flatnonzero(train_mask)
        rng = np.random.default_rng(seed)
        order, cursor = rng.permutation(rows), 0
        losses, mine_seconds, refreshes = [], 0.0, 0
        started = time.perf_counter()
        for step in range(steps):
            if cursor + self.batch_size > len(order):
                order, cursor = rng.permutation(rows), 0
            batch = order[cursor:cursor + self.batch_size]
            cursor += self.batch_size
            if (hd or hq) and step % self.refresh_every == 0:
                if step == 0:
                    model({"q": self.train_q[:1], "d": self.train_d[:1]})  # build the heads
                mine_seconds += self._mine(model)
                refreshes += 1
            x = {"q": self.train_q[self.query_rows[batch]], "d": self.train_d[self.doc_rows[batch]]}
            # labels: one id per output slot (query row, corpus row, then the mined
            # documents' corpus rows and the mined queries' rows), so the loss drops mined
            # negatives that are positives of any anchor of the batch
            y = [self.labels[batch]]
            if hd:
                mined = self.miner.document_table[self.query_rows[batch]]
                x["hd"] = self.train_d[mined]
                y.append(mined.astype(np.float32))
            if hq:
                mined = self.miner.query_table[self.positive_rows[batch]]
                x["hq"] = self.train_q[mined]
                y.append(mined.astype(np.float32))
            out = model.train_on_batch(x, np.concatenate(y, axis=1))
            losses.append(float(out[0] if isinstance(out, (list, tuple)) else out))
        seconds = time.perf_counter() - started
        if not np.all(np.isfinite(losses)):
            raise RuntimeError(f"{variant}/{architecture}/seed {seed}: non-finite loss.")
        record = dict(variant=variant, architecture=architecture, seed=seed, steps=steps,
                      learning_rate=learning_rate, train_seconds=round(seconds, 2),
                      mining_refreshes=refreshes, mining_search_seconds=round(mine_seconds, 2),
                      loss_first10=float(np.mean(losses[:10])),
                      loss_last10=float(np.mean(losses[-10:])))
        return model.kernels(), record

    def tune(self, learning_rates, steps, holdout=0.1, seed=0):
        """In-batch SDE seed 0 on a held-out slice of the *training* queries."""
        m = self.miner
        rng = np.random.default_rng(seed)
        held = set(rng.choice(len(m.query_ids), size=max(1, int(holdout * len(m.query_ids))),
                              replace=False).tolist())
        mask = np.array([r not in held for r in self.query_rows])
        held_rows = sorted(held)
        qrels = {m.query_ids[r]: {d: 1 for d in m.positives[m.query_ids[r]]} for r in held_rows}
        main = DATASETS[self.dataset][1]
        sweep = []
        for lr in learning_rates:
            kernels, _ = self.train("in-batch", "sde", seed, steps, lr, train_mask=mask)
            metrics = self.evaluate(kernels, query_features=self.train_q[held_rows],
                                    doc_features=self.train_d,
                                    query_ids=[m.query_ids[r] for r in held_rows],
                                    doc_ids=m.doc_ids, qrels=qrels)
            sweep.append({"learning_rate": lr, main: metrics[main]})
            print(f"  sweep lr={lr:g}: validation {main} {metrics[main]:.4f}", flush=True)
        zero = self.evaluate(None, query_features=self.train_q[held_rows],
                             doc_features=self.train_d,
                             query_ids=[m.query_ids[r] for r in held_rows], doc_ids=m.doc_ids,
                             qrels=qrels)[main]
        best = max(sweep, key=lambda r: r[main])["learning_rate"]
        return best, {"validation_queries": len(held_rows), "steps": steps,
                      "zero_shot": zero, "sweep": sweep, "chosen": best, "metric": main}


def summarize(runs, zero_shot, dataset):
    """Rows of mean +- std per (variant, architecture) and paired differences to in-batch."""
    metrics, main = DATASETS[dataset]
    rows = []
    by_key = {}
    for r in runs:
        by_key.setdefault((r["variant"], r["architecture"]), []).append(r)
    for (variant, arch), group in by_key.items():
        group = sorted(group, key=lambda r: r["seed"])
        row = dict(variant=variant, architecture=arch, seeds=len(group))
        for name in metrics + ("uniformity_all", "alignment", "anisotropy_query",
                               "anisotropy_document"):
            values = np.array([r["metrics"][name] for r in group])
            row[name] = {"mean": float(values.mean()),
                         "std": float(values.std(ddof=1)) if len(values) > 1 else 0.0}
        base = {r["seed"]: r["metrics"][main] for r in by_key.get(("in-batch", arch), [])}
        diffs = np.array([r["metrics"][main] - base[r["seed"]] for r in group
                          if r["seed"] in base])
        if variant != "in-batch" and diffs.size:
            row["paired_diff_" + main] = {
                "mean": float(diffs.mean()),
                "std": float(diffs.std(ddof=1)) if diffs.size > 1 else 0.0,
                "better": int((diffs > 0).sum()), "of": int(diffs.size)}
        rows.append(row)
    return rows


def markdown(rows, zero_shot, dataset, settings):
    metrics, main = DATASETS[dataset]
    head = (["loss", "arch"] + list(metrics) + [f"Δ{main} vs in-batch (better/seeds)",
                                               "uniformity", "alignment", "anisotropy q/d"])
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]

    def pm(stat):
        return f"{stat['mean']:.4f} ± {stat['std']:.4f}"

    lines.append("| zero-shot (pretrained) | – | " + " | ".join(f"{zero_shot[m]:.4f}" for m in metrics)
                 + f" | – | {zero_shot['uniformity_all']:.3f} | {zero_shot['alignment']:.3f} | "
                 f"{zero_shot['anisotropy_query']:.3f} / {zero_shot['anisotropy_document']:.3f} |")
    for row in rows:
        diff = row.get("paired_diff_" + main)
        diff_text = (f"{diff['mean']:+.4f} ± {diff['std']:.4f} ({diff['better']}/{diff['of']})"
                     if diff else "–")
        lines.append(f"| {row['variant']} | {row['architecture'].upper()} | "
                     + " | ".join(pm(row[m]) for m in metrics)
                     + f" | {diff_text} | {row['uniformity_all']['mean']:.3f} | "
                     f"{row['alignment']['mean']:.3f} | {row['anisotropy_query']['mean']:.3f} / "
                     f"{row['anisotropy_document']['mean']:.3f} |")
    lines.append("")
    lines.append(f"{settings}")
    return "\n".join(lines)


def figures(study, kernels_by_label, output_dir):
    """``samtone_tf.evaluation.analysis.analyze`` on the evaluation pairs for the given projections."""
    from samtone_tf.evaluation import analysis

    corpus, queries, _ = study.data["eval"]
    q_row = {queries[q]: i for i, q in enumerate(study.eval_query_ids)}
    d_row = {corpus[d]: i for i, d in enumerate(study.eval_doc_ids)}
    models = {}
    for label, (kq, kd) in kernels_by_label.items():
        def qf(texts, kq=kq):
            return project(study.eval_q[[q_row[t] for t in texts]], kq)

        def df(texts, kd=kd):
            return project(study.eval_d[[d_row[t] for t in texts]], kd)
        models[label] = (qf, df)
    return analysis.analyze(models, *study.data["eval"], output_dir, max_pairs=400, seed=0,
                            progress=False,
                            extra_config={"source": "benchmarks/loss_study.py",
                                          "dataset": study.dataset})


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", choices=sorted(DATASETS), required=True)
    parser.add_argument("--data", default=None, help="SQuAD JSON (reqa) or BEIR folder (scifact)")
    parser.add_argument("--quick", action="store_true", help="CI-sized run")
    parser.add_argument("--seeds", type=int, default=None, help="default 5 (quick: 2)")
    parser.add_argument("--steps", type=int, default=None, help="default 300 (quick: 20)")
    parser.add_argument("--learning-rate", type=float, default=None,
                        help="skip the sweep and use this rate")
    parser.add_argument("--sweep", default="1e-4,3e-4,1e-3,3e-3",
                        help="learning rates tried on the validation split")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--temperature", type=float, default=0.05)
    parser.add_argument("--refresh-every", type=int, default=None,
                        help="steps between hard-negative refreshes (default steps // 4)")
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--architectures", default=",".join(ARCHITECTURES))
    parser.add_argument("--query-max-length", type=int, default=32)
    parser.add_argument("--document-max-length", type=int, default=None,
                        help="default 64 (reqa) / 256 (scifact)")
    parser.add_argument("--cache-dir", default=os.path.join(HERE, "results", "cache"),
                        help="frozen-encoder features ('' to disable)")
    parser.add_argument("--output", default=None,
                        help="default benchmarks/results/loss_study_<dataset>[_quick].json")
    parser.add_argument("--figures", default=None, help="write analysis figures here")
    args = parser.parse_args(argv)

    variants = args.variants.split(",")
    archs = args.architectures.split(",")
    for v in variants:
        if v not in VARIANTS:
            parser.error(f"unknown variant {v!r}; known: {', '.join(VARIANTS)}")
    for a in archs:
        if a not in ARCHITECTURES:
            parser.error(f"unknown architecture {a!r}; known: {', '.join(ARCHITECTURES)}")
    seeds = args.seeds if args.seeds is not None else (2 if args.quick else 5)
    steps = args.steps if args.steps is not None else (20 if args.quick else 300)
    if seeds < 1 or steps < 1 or args.batch_size < 2:
        parser.error("--seeds and --steps must be >= 1 and --batch-size >= 2.")
    if args.refresh_every is not None and args.refresh_every < 1:
        parser.error("--refresh-every must be >= 1.")
    if args.learning_rate is not None and not args.learning_rate > 0:
        parser.error("--learning-rate must be > 0.")
    try:
        rates = [float(x) for x in args.sweep.split(",")]
    except ValueError:
        parser.error(f"--sweep must be comma-separated learning rates, got {args.sweep!r}.")
    if not all(rate > 0 for rate in rates):
        parser.error(f"--sweep learning rates must be > 0, got {args.sweep!r}.")
    refresh_every = args.refresh_every or max(1, steps // 4)
    doc_len = args.document_max_length or (64 if args.dataset == "reqa" else 256)
    suffix = "_quick" if args.quick else ""
    output = args.output or os.path.join(HERE, "results", f"loss_study_{args.dataset}{suffix}.json")

    import tensorflow as tf

    import samtone_tf

    started = time.time()
    data = load_study_data(args.dataset, args.data, args.quick)
    cache = FeatureCache(args.cache_dir or None, args.query_max_length, doc_len)
    print(f"{data['description']}: {len(data['pairs'])} training pairs, "
          f"{len(data['train_corpus'])} training documents, "
          f"{len(data['eval'][2])} evaluation queries, {len(data['eval'][0])} candidates", flush=True)
    study = Study(args.dataset, data, cache, batch_size=args.batch_size,
                  temperature=args.temperature, refresh_every=refresh_every)
    features_seconds = time.time() - started

    tuning = None
    if args.learning_rate is not None:
        learning_rate = args.learning_rate
    elif args.quick:
        learning_rate = 1e-3
    else:
        learning_rate, tuning = study.tune(rates, steps)
    print(f"learning rate {learning_rate:g}, {steps} steps, batch {args.batch_size}, "
          f"{seeds} seeds", flush=True)

    zero_shot = study.evaluate(None)
    runs, keep = [], {}
    for arch in archs:
        for variant in variants:
            for seed in range(seeds):
                kernels, record = study.train(variant, arch, seed, steps, learning_rate)
                record["metrics"] = study.evaluate(kernels)
                runs.append(record)
                if seed == 0:
                    keep[(variant, arch)] = kernels
                main_metric = DATASETS[args.dataset][1]
                print(f"  {arch} {variant} seed {seed}: {main_metric} "
                      f"{record['metrics'][main_metric]:.4f} (loss {record['loss_first10']:.3f}"
                      f" -> {record['loss_last10']:.3f}, {record['train_seconds']:.1f} s)",
                      flush=True)
    rows = summarize(runs, zero_shot, args.dataset)
    settings = (f"{data['description']}; frozen all-MiniLM-L6-v2 features (query length "
                f"{args.query_max_length}, document length {doc_len}), identity-initialised "
                f"projections, batch {args.batch_size}, temperature {args.temperature}, Adam lr "
                f"{learning_rate:g} ({'swept on a training-data validation split' if tuning else 'given'}), "
                f"{steps} steps, hard negatives refreshed every {refresh_every} steps, seeds "
                f"0..{seeds - 1}; mean ± sample std over seeds.")
    table = markdown(rows, zero_shot, args.dataset, settings)
    result = {
        "dataset": args.dataset, "quick": args.quick, "description": data["description"],
        "settings": dict(steps=steps, seeds=seeds, batch_size=args.batch_size,
                         temperature=args.temperature, learning_rate=learning_rate,
                         refresh_every=refresh_every, query_max_length=args.query_max_length,
                         document_max_length=doc_len, variants=variants, architectures=archs,
                         variant_definitions={v: VARIANTS[v] for v in variants}),
        "sizes": dict(train_pairs=len(data["pairs"]), train_documents=len(data["train_corpus"]),
                      eval_queries=len(study.eval_query_ids), eval_documents=len(study.eval_doc_ids)),
        "tuning": tuning, "zero_shot": zero_shot, "summary": rows, "runs": runs,
        "features_seconds": round(features_seconds, 1),
        "encoded_texts": cache.encoded, "encode_seconds": round(cache.encode_seconds, 1),
        "seconds": round(time.time() - started, 1), "tensorflow": tf.__version__,
        "keras": samtone_tf.KERAS_VERSION, "command": "python " + " ".join(
            [os.path.relpath(__file__)] + (sys.argv[1:] if argv is None else list(argv))),
    }
    if args.figures:
        labels = {}
        arch = "ade" if "ade" in archs else archs[0]
        for variant in ("in-batch", "samtone-q"):
            if (variant, arch) in keep:
                labels[f"{variant} ({arch.upper()})"] = keep[(variant, arch)]
        if labels:
            analysis = figures(study, labels, args.figures)
            result["figures"] = {"dir": args.figures, "models": {
                k: v["report"] for k, v in analysis["models"].items()}}
    os.makedirs(os.path.dirname(os.path.abspath(output)), exist_ok=True)
    with open(output, "w", encoding="utf-8") as f:
        json.dump(result, f, indent=2)
    with open(os.path.splitext(output)[0] + ".md", "w", encoding="utf-8") as f:
        f.write(table + "\n")
    print(table)
    print(f"wrote {output} ({result['seconds']:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
