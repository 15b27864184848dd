"""Regime studies: SamToNe where the paper makes its claim.

    python benchmarks/regime_study.py --study 1      # towers that start apart (small BERT from scratch)
    python benchmarks/regime_study.py --study 2      # batch size (frozen features; fine-tuned)
    python benchmarks/regime_study.py --study 3      # the budget (300 steps, whole MiniLM, SDE)
    python benchmarks/regime_study.py --quick        # every study, CI-sized (a smoke run)

Every invocation adds its runs to ``--output`` (default ``benchmarks/results/regime_study.json``;
``--quick``: ``regime_study_quick.json``) and skips runs already there, so the studies can be
run one after the other, or resumed after an interruption. ``--report`` rewrites the tables
(``.md`` beside the JSON) and the figures (``--figures``, default ``docs/figures/regime/``)
from the JSON alone. Each run is one object of the top-level ``"runs"`` list with at least
``study``, ``architecture`` (sde | ade | ade-spl), ``init`` (independent | shared |
pretrained), ``variant``, ``batch_size``, ``seed``, ``p@1`` and ``mrr``.

Data (all studies): SQuAD v1.1 training articles of ``../shared/data`` as ReQA, the articles
split 80/20 with seed 0 (the held-out 20% are never trained on); candidates are all sentences
of the held-out articles.

Study 1 (Keras 3: keras-hub): a small BERT (``--layers``/``--hidden``/``--heads``, default
2/128/2, the shape of BERT-Tiny, intermediate 4 x hidden, dropout 0.1) with the all-MiniLM-L6-v2 WordPiece vocabulary,
trained from scratch. Architectures: ADE whose two towers are initialised independently
(``init=independent``: the second tower draws its own random weights), ADE whose towers
start from one random draw (``init=shared``), and SDE (one tower). Mean pooling, L2
normalisation, no projection, temperature 0.05, Adam with a linear warm-up (10%) and linear
decay. P@1/MRR on a fixed sample of held-out questions every ``--eval-every`` steps (the
curves), and at the end on every held-out question. The embedding-space analysis of each
final model uses 500 held-out positive pairs: alignment, the distance between the two
towers' centroids, tower separation (the share of each embedding's 10 nearest neighbours
from its own tower; 0.5 when the towers mix, 1 when they are apart), the same-tower ratio.

Study 2 (batch size): (a) frozen all-MiniLM-L6-v2 features with trained projections (the
setting of ``benchmarks/loss_study.py``: lr 3e-4, 300 steps, lengths 32/64), SDE and ADE,
batch 32, 128 and 512; (b) the whole encoder fine-tuned (SDE) at batch 32 and 256 on the same
number of training pairs, batch 256 through gradient caching (``mini_batch_size`` 32).

Study 3 (the budget): ``samtone_tf.training.train`` (what ``samtone-tf train`` runs), SDE over
``pretrained:minilm-l6``, batch 32, maximum length 128 for both towers, lr 2e-5 with 30 warm-up
steps then linear decay, 300 steps, evaluated on every held-out question.
"""

import argparse
import json
import os
import sys
import tempfile
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
SQUAD = os.path.join(ROOT, "..", "shared", "data", "squad", "squad_v1.1_train_subset.json")
DEFAULT_OUTPUT = os.path.join(HERE, "results", "regime_study.json")
DEFAULT_FIGURES = os.path.join(ROOT, "docs", "figures", "regime")

sys.path.insert(0, HERE)
from finetune_study import VARIANTS  # noqa: E402 (the loss variants: one definition)

TEMPERATURE = 0.05
# (architecture, init) cells of study 1, and the variants each runs
STUDY1_CELLS = {
    ("ade", "independent"): tuple(VARIANTS),
    ("ade", "shared"): ("in-batch", "samtone-q"),
    ("sde", "shared"): ("in-batch", "samtone-q"),
}
STUDY2_VARIANTS = ("in-batch", "samtone-q", "samtone-both")
STUDY3_VARIANTS = ("in-batch", "samtone-q", "samtone-both")
QUICK_VARIANTS = ("in-batch", "samtone-q")
KEY_FIELDS = ("study", "part", "architecture", "init", "variant", "batch_size", "seed")


def chosen_variants(args, variants):
    """The variants a study runs: all of them, or only ``QUICK_VARIANTS`` under --quick."""
    return tuple(v for v in variants if not args.quick or v in QUICK_VARIANTS)


def run_key(run):
    return tuple(run.get(k) for k in KEY_FIELDS)


# ---------------------------------------------------------------------------- data
def load_split(path, quick):
    """Training pairs and the held-out ``(corpus, queries, qrels)`` of the 80/20 ReQA split.

    ``quick``: 384 training pairs and 60 held-out questions against their sentences plus 240
    others (seeded), for a smoke run."""
    from samtone_tf import data as data_lib
    from samtone_tf.data import reqa

    train_json, dev_json = reqa.split_by_article(path, 0.2, 0)
    corpus, queries, qrels = reqa.build_reqa(train_json)
    pairs = data_lib.training_pairs_from_qrels(corpus, queries, qrels)
    eval_corpus, eval_queries, eval_qrels = reqa.build_reqa(dev_json)
    eval_queries = {q: t for q, t in eval_queries.items() if q in eval_qrels}
    if quick:
        rng = np.random.default_rng(0)
        keep = sorted(rng.choice(len(pairs), size=min(384, len(pairs)), replace=False))
        pairs = [pairs[i] for i in keep]
        eval_queries, eval_qrels, eval_corpus = subsample_eval(
            eval_corpus, eval_queries, eval_qrels, 60, 240, seed=0)
    return pairs, (eval_corpus, eval_queries, eval_qrels)


def subsample_eval(corpus, queries, qrels, num_queries, num_others, seed):
    """A seeded sample of judged queries; the corpus keeps their positives plus
    ``num_others`` other candidates (all candidates when ``num_others`` is None)."""
    rng = np.random.default_rng(seed)
    judged = sorted(q for q in qrels if q in queries)
    chosen = [judged[i] for i in sorted(rng.choice(len(judged), size=min(num_queries, len(judged)),
                                                   replace=False))]
    queries = {q: queries[q] for q in chosen}
    qrels = {q: qrels[q] for q in chosen}
    if num_others is not None:
        positives = {d for q in chosen for d in qrels[q] if d in corpus}
        rest = sorted(set(corpus) - positives)
        extra = rng.choice(len(rest), size=min(num_others, len(rest)), replace=False)
        corpus = {d: corpus[d] for d in sorted(positives | {rest[i] for i in extra})}
    return queries, qrels, corpus


# ---------------------------------------------------------------------------- analysis
def _unit(x):
    x = np.asarray(x, np.float64)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def tower_separation(query_emb, doc_emb, k=10):
    """Share of each embedding's ``k`` nearest neighbours (cosine, itself excluded, both
    towers pooled) that come from its own tower: 0.5 when the towers are mixed evenly, 1.0
    when they are apart."""
    x = _unit(np.concatenate([query_emb, doc_emb]))
    tower = np.repeat([0, 1], [len(query_emb), len(doc_emb)])
    sim = x @ x.T
    np.fill_diagonal(sim, -np.inf)
    neighbours = np.argsort(-sim, axis=1, kind="stable")[:, :k]
    return float(np.mean(tower[neighbours] == tower[:, None]))


def centroid_distance(query_emb, doc_emb):
    """Euclidean distance between the mean unit query and the mean unit document."""
    return float(np.linalg.norm(_unit(query_emb).mean(0) - _unit(doc_emb).mean(0)))


def space_report(query_emb, doc_emb):
    from samtone_tf.evaluation import analysis

    report = analysis.embedding_report(query_emb, doc_emb)
    keep = ("alignment", "uniformity_all", "top1_similarity_mean", "same_tower_ratio_mean",
            "same_tower_ratio_median")
    out = {k: report[k] for k in keep}
    out["centroid_distance"] = centroid_distance(query_emb, doc_emb)
    out["tower_separation"] = tower_separation(query_emb, doc_emb)
    return out


def analysis_pairs(eval_data, max_pairs):
    from samtone_tf.evaluation import analysis

    corpus, queries, qrels = eval_data
    pairs = analysis.sample_pairs(corpus, queries, qrels, max_pairs=max_pairs, seed=0)
    return [queries[q] for q, _ in pairs], [corpus[d] for _, d in pairs]


def metrics_of(query_fn, doc_fn, eval_data, batch_size=128):
    from samtone_tf import evaluation

    started = time.perf_counter()
    metrics = evaluation.evaluate_retrieval(query_fn, doc_fn, *eval_data, batch_size=batch_size,
                                            progress=False)
    metrics["seconds"] = round(time.perf_counter() - started, 1)
    return metrics


# ---------------------------------------------------------------------------- study 1
def small_backbone(args, vocabulary_size):
    import keras_hub

    return keras_hub.models.BertBackbone(
        vocabulary_size=vocabulary_size, num_layers=args.layers, num_heads=args.heads,
        hidden_dim=args.hidden, intermediate_dim=4 * args.hidden, dropout=args.dropout,
        max_sequence_length=max(args.query_max_length, args.document_max_length))


def study1_model(architecture, init, seed, args, vocabulary_size):
    """The untrained model of one study-1 cell: the random draws depend on ``seed`` only."""
    import samtone_tf
    import tensorflow as tf
    keras = tf.keras  # the generation TF_USE_LEGACY_KERAS picked
    from samtone_tf.towers.encoders import KerasHubEncoder

    keras.utils.set_random_seed(seed)
    first = small_backbone(args, vocabulary_size)
    if architecture == "sde":
        return samtone_tf.DualEncoder(KerasHubEncoder(first), architecture="sde", pooling="mean")
    second = small_backbone(args, vocabulary_size)  # its own random draw
    if init == "shared":
        second.set_weights(first.get_weights())
    return samtone_tf.DualEncoder(KerasHubEncoder(first), KerasHubEncoder(second),
                                  architecture="ade", pooling="mean")


class Study1:
    def __init__(self, args, pairs, eval_data):
        from samtone_tf.towers import pretrained

        self.args, self.pairs, self.eval_data = args, pairs, eval_data
        minilm = pretrained.load_pretrained("pretrained:minilm-l6")
        self.tokenizers = (minilm.tokenizer(args.query_max_length),
                           minilm.tokenizer(args.document_max_length))
        self.vocabulary_size = int(self.tokenizers[0].vocab_size)
        corpus, queries, qrels = eval_data
        # the curve: a fixed sample of held-out questions against every candidate
        cq, cr, _ = subsample_eval(corpus, queries, qrels, args.curve_queries, None, seed=1)
        self.curve_data = (corpus, cq, cr)
        self.analysis_texts = analysis_pairs(eval_data, args.analysis_pairs)

    def run(self, architecture, init, variant, seed, keep_embeddings):
        import samtone_tf
        from samtone_tf import data as data_lib
        from samtone_tf import evaluation
        import tensorflow as tf
        keras = tf.keras  # the generation TF_USE_LEGACY_KERAS picked
        from samtone_tf.training import TrainConfig, learning_rate_schedule

        args = self.args
        model = study1_model(architecture, init, seed, args, self.vocabulary_size)
        steps = args.study1_steps
        schedule = learning_rate_schedule(
            TrainConfig(learning_rate=args.study1_learning_rate, schedule="linear",
                        warmup_steps=max(1, steps // 10)), steps)
        model.compile(optimizer=keras.optimizers.Adam(schedule),
                      loss=samtone_tf.SamToNeLoss(temperature=TEMPERATURE, mask_duplicates=True,
                                                  **VARIANTS[variant]))
        dataset = data_lib.make_pair_dataset(self.pairs, self.tokenizers, args.batch_size,
                                             shuffle=True, seed=seed, repeat=True)
        query_fn, doc_fn = evaluation.dual_encoder_fns(model, *self.tokenizers)
        curve = []

        def evaluate_curve(step):
            m = metrics_of(query_fn, doc_fn, self.curve_data)
            curve.append(dict(step=step, **{k: m[k] for k in ("p@1", "mrr")}))

        class Curve(keras.callbacks.Callback):
            def on_train_batch_end(self, batch, logs=None):
                if (batch + 1) % args.eval_every == 0 and batch + 1 < steps:
                    evaluate_curve(batch + 1)

        model(next(iter(dataset))[0])  # build
        evaluate_curve(0)  # the random initialisation
        started = time.perf_counter()
        history = model.fit(dataset, epochs=1, steps_per_epoch=steps, verbose=0,
                            callbacks=[Curve()])
        seconds = time.perf_counter() - started
        losses = history.history["loss"]
        metrics = metrics_of(query_fn, doc_fn, self.eval_data)
        curve_final = metrics_of(query_fn, doc_fn, self.curve_data)
        curve.append(dict(step=steps, **{k: curve_final[k] for k in ("p@1", "mrr")}))
        q_texts, d_texts = self.analysis_texts
        q_emb, d_emb = np.asarray(query_fn(q_texts)), np.asarray(doc_fn(d_texts))
        record = dict(study=1, part="from-scratch", architecture=architecture, init=init,
                      variant=variant, batch_size=args.batch_size, seed=seed, steps=steps,
                      **{"p@1": metrics["p@1"], "mrr": metrics["mrr"]}, metrics=metrics,
                      curve=curve, analysis=space_report(q_emb, d_emb),
                      loss=float(losses[-1]), train_seconds=round(seconds, 1))
        embeddings = (q_emb, d_emb) if keep_embeddings else None
        return record, embeddings


# ---------------------------------------------------------------------------- study 2
def study2_frozen(args, runs, save):
    import loss_study

    data = loss_study.load_study_data("reqa", args.data, args.quick)
    cache = loss_study.FeatureCache(args.cache_dir, 32, 64)
    studies = {}
    steps = 10 if args.quick else 300
    done = {run_key(r) for r in runs}
    for seed in range(args.seeds):
        for batch_size in args.study2_batches:
            if batch_size not in studies:
                studies[batch_size] = loss_study.Study("reqa", data, cache, batch_size=batch_size,
                                                       temperature=TEMPERATURE, refresh_every=10 ** 9)
            study = studies[batch_size]
            for architecture in ("sde", "ade"):
                for variant in chosen_variants(args, STUDY2_VARIANTS):
                    record = dict(study=2, part="frozen", architecture=architecture,
                                  init="pretrained", variant=variant, batch_size=batch_size,
                                  seed=seed)
                    if run_key(record) in done:
                        continue
                    kernels, train_record = study.train(variant, architecture, seed, steps, 3e-4)
                    metrics = study.evaluate(kernels)
                    record.update({"p@1": metrics["p@1"], "mrr": metrics["mrr"]}, steps=steps,
                                  learning_rate=3e-4, metrics=metrics,
                                  train_seconds=train_record["train_seconds"])
                    save(record)


def study2_finetune(args, runs, save, pairs, eval_data):
    """Whole-encoder fine-tuning at batch 32 and 256 over the same number of pairs."""
    import samtone_tf
    from samtone_tf import data as data_lib
    from samtone_tf import evaluation
    from samtone_tf.towers import pretrained
    import tensorflow as tf
    keras = tf.keras  # the generation TF_USE_LEGACY_KERAS picked
    from samtone_tf.training import TrainConfig, learning_rate_schedule

    done = {run_key(r) for r in runs}
    qt, dt, spec = pretrained.dual_encoder_components(
        "minilm-l6", query_max_length=32, document_max_length=64, backend="tfhub")
    _, q_eval, r_eval = eval_data
    queries, qrels, _ = subsample_eval(eval_data[0], q_eval, r_eval, args.finetune_queries,
                                       None, seed=0)
    eval_subset = (eval_data[0], queries, qrels)
    for seed in range(args.seeds):
        for batch_size in args.finetune_batches:
            steps = max(1, args.finetune_pairs // batch_size)
            for variant in chosen_variants(args, args.finetune_variants):
                record = dict(study=2, part="fine-tuned", architecture="sde", init="pretrained",
                              variant=variant, batch_size=batch_size, seed=seed)
                if run_key(record) in done:
                    continue
                keras.utils.set_random_seed(seed)
                # the larger batches through gradient caching, in mini-batches of the smallest
                smallest = min(args.finetune_batches)
                mini = smallest if batch_size > smallest else None
                model = samtone_tf.DualEncoder(spec, architecture="sde", pooling="mean",
                                               precision="auto", mini_batch_size=mini)
                schedule = learning_rate_schedule(
                    TrainConfig(learning_rate=args.finetune_learning_rate, schedule="linear",
                                warmup_steps=max(1, steps // 10)), steps)
                model.compile(optimizer=keras.optimizers.Adam(schedule),
                              loss=samtone_tf.SamToNeLoss(temperature=TEMPERATURE,
                                                          mask_duplicates=True,
                                                          **VARIANTS[variant]))
                dataset = data_lib.make_pair_dataset(pairs, (qt, dt), batch_size, shuffle=True,
                                                     seed=seed, repeat=True)
                started = time.perf_counter()
                history = model.fit(dataset, epochs=1, steps_per_epoch=steps, verbose=0)
                seconds = time.perf_counter() - started
                metrics = metrics_of(*evaluation.dual_encoder_fns(model, qt, dt), eval_subset)
                record.update({"p@1": metrics["p@1"], "mrr": metrics["mrr"]}, steps=steps,
                              mini_batch_size=mini, learning_rate=args.finetune_learning_rate,
                              metrics=metrics, loss=float(history.history["loss"][-1]),
                              train_seconds=round(seconds, 1))
                save(record)


# ---------------------------------------------------------------------------- study 3
def study3(args, runs, save, zero_shot):
    from samtone_tf.training import TrainConfig, train

    done = {run_key(r) for r in runs}
    steps = args.study3_steps
    data = args.data
    if args.quick:  # five articles: four train, one is held out
        from samtone_tf.data import reqa

        squad = reqa.load_squad_json(args.data)
        squad = dict(squad, data=squad["data"][:5])
        data = os.path.join(args.work_dir, "squad-5-articles.json")
        with open(data, "w", encoding="utf-8") as f:
            json.dump(squad, f)
    for seed in range(args.seeds):
        for variant in chosen_variants(args, args.study3_variants):
            record = dict(study=3, part="budget", architecture="sde", init="pretrained",
                          variant=variant, batch_size=args.batch_size, seed=seed)
            if run_key(record) in done:
                continue
            with tempfile.TemporaryDirectory() as output_dir:
                config = TrainConfig(
                    data=data, format="squad", dev_fraction=0.2, data_seed=0,
                    encoder="pretrained:minilm-l6", architecture="sde", pooling="mean",
                    query_max_length=128, document_max_length=128,
                    temperature=TEMPERATURE, mask_duplicates=True, **VARIANTS[variant],
                    batch_size=args.batch_size, epochs=1, steps_per_epoch=steps,
                    learning_rate=2e-5, schedule="linear", warmup_steps=1 if args.quick else 30,
                    seed=seed, output_dir=output_dir, checkpoints=False, tensorboard=False,
                    evaluate=True, evaluate_before="study3" not in zero_shot, eval_batch_size=128,
                    export=False)
                summary = train(config, verbose=0)
            if "metrics_before" in summary:
                zero_shot["study3"] = dict(summary["metrics_before"], architecture="sde")
            metrics = summary["metrics"]
            record.update({"p@1": metrics["p@1"], "mrr": metrics["mrr"]}, steps=steps,
                          metrics=metrics, precision=summary["precision"],
                          train_pairs=summary["train_pairs"],
                          loss=summary["loss_history"][-1],
                          train_seconds=summary["train_seconds"])
            save(record)


# ---------------------------------------------------------------------------- summary
def _stat(values):
    v = np.asarray(values, dtype=np.float64)
    return {"mean": float(v.mean()), "std": float(v.std(ddof=1)) if v.size > 1 else 0.0,
            "n": int(v.size)}


CELL_FIELDS = ("study", "part", "architecture", "init", "batch_size")


def summarize(runs):
    """One row per (cell, variant): mean/std over seeds, and paired deltas against the
    in-batch run of the same cell and seed."""
    rows = []
    cells = {}
    for r in runs:
        cells.setdefault(tuple(r.get(k) for k in CELL_FIELDS), []).append(r)
    for cell in sorted(cells, key=lambda c: tuple((0, x) if isinstance(x, int) else (1, str(x))
                                                  for x in c)):
        group = cells[cell]
        base = {r["seed"]: r for r in group if r["variant"] == "in-batch"}
        for variant in [v for v in VARIANTS if any(r["variant"] == v for r in group)]:
            chosen = sorted([r for r in group if r["variant"] == variant], key=lambda r: r["seed"])
            row = dict(zip(CELL_FIELDS, cell), variant=variant,
                       seeds=[r["seed"] for r in chosen],
                       **{"p@1": _stat([r["p@1"] for r in chosen]),
                          "mrr": _stat([r["mrr"] for r in chosen])})
            if chosen[0].get("analysis"):
                row["analysis"] = {k: _stat([r["analysis"][k] for r in chosen])
                                   for k in chosen[0]["analysis"]}
            paired = [(r, base[r["seed"]]) for r in chosen if r["seed"] in base]
            if variant != "in-batch" and paired:
                for metric in ("p@1", "mrr"):
                    diffs = np.array([r[metric] - b[metric] for r, b in paired])
                    row["delta_" + metric] = dict(_stat(diffs), better=int((diffs > 0).sum()),
                                                  worse=int((diffs < 0).sum()))
            rows.append(row)
    return rows


def _pm(stat, scale=100.0, digits=1):
    return f"{stat['mean'] * scale:.{digits}f} ± {stat['std'] * scale:.{digits}f}"


def _delta(row, metric):
    d = row.get("delta_" + metric)
    if not d:
        return "–"
    return f"{d['mean'] * 100:+.2f} ± {d['std'] * 100:.2f} ({d['better']}/{d['n']})"


def markdown(rows):
    out = []
    titles = {
        (1, "from-scratch"): "Study 1: small BERT from scratch (ADE towers apart vs together, SDE)",
        (2, "frozen"): "Study 2a: batch size, frozen all-MiniLM-L6-v2 features + projections",
        (2, "fine-tuned"): "Study 2b: batch size, whole all-MiniLM-L6-v2 fine-tuned (SDE)",
        (3, "budget"): "Study 3: the budget (300 steps, SDE, whole all-MiniLM-L6-v2)",
    }
    for (study, part), title in titles.items():
        chosen = [r for r in rows if (r["study"], r["part"]) == (study, part)]
        if not chosen:
            continue
        out += [f"### {title}", ""]
        header = "| arch | init | batch | loss | seeds | P@1 | MRR | ΔP@1 (better/seeds) | ΔMRR (better/seeds) |"
        sep = "|---|---|---|---|---|---|---|---|---|"
        if study == 1:
            header += " centroid dist. | tower sep. | alignment | same-tower ratio |"
            sep += "---|---|---|---|"
        out += [header, sep]
        for r in chosen:
            line = (f"| {r['architecture'].upper()} | {r['init']} | {r['batch_size']} | "
                    f"{r['variant']} | {len(r['seeds'])} | {_pm(r['p@1'])} | {_pm(r['mrr'])} | "
                    f"{_delta(r, 'p@1')} | {_delta(r, 'mrr')} |")
            if study == 1:
                a = r["analysis"]
                line += (f" {_pm(a['centroid_distance'], 1, 3)} | "
                         f"{_pm(a['tower_separation'], 1, 3)} | {_pm(a['alignment'], 1, 3)} | "
                         f"{_pm(a['same_tower_ratio_mean'], 1, 3)} |")
            out.append(line)
        out.append("")
    out.append("P@1 and MRR in points (x100), mean ± sample std over seeds; Δ: paired "
               "difference to in-batch on the same seed (same initialisation and batches); "
               "(better/seeds): seeds where the variant beat in-batch.")
    return "\n".join(out)


# ---------------------------------------------------------------------------- figures
def embeddings_path(cache_dir, quick):
    return os.path.join(cache_dir, "regime_embeddings" + ("_quick" if quick else "") + ".npz")


def figures(result, figure_dir, embeddings_file):
    """Curves (study 1), t-SNE and same-tower ratio histograms (study 1, seed 0), and the
    paired MRR gain against the batch size (study 2)."""
    from samtone_tf.evaluation import analysis

    plt = analysis._pyplot()
    os.makedirs(figure_dir, exist_ok=True)
    written = []
    runs = result["runs"]
    s1 = [r for r in runs if r["study"] == 1]
    if s1:
        cells = sorted({(r["architecture"], r["init"]) for r in s1})
        fig, axes = plt.subplots(1, len(cells), figsize=(4.6 * len(cells), 3.6), squeeze=False)
        for ax, (arch, init) in zip(axes[0], cells):
            for variant in VARIANTS:
                chosen = [r for r in s1 if (r["architecture"], r["init"], r["variant"])
                          == (arch, init, variant)]
                if not chosen:
                    continue
                steps = [p["step"] for p in chosen[0]["curve"]]
                values = np.array([[p["p@1"] for p in r["curve"]] for r in chosen]) * 100
                ax.plot(steps, values.mean(0), marker="o", ms=3, label=variant)
            ax.set_title(f"{arch.upper()} ({init} init)")
            ax.set_xlabel("step")
            ax.set_ylabel("P@1 (curve sample)")
        axes[0][0].legend(loc="lower right", fontsize=8)
        fig.tight_layout()
        path = os.path.join(figure_dir, "study1_curves.png")
        analysis._save(fig, path)
        plt.close(fig)
        written.append(path)
    if s1 and os.path.exists(embeddings_file):
        stored = np.load(embeddings_file)
        models = {}
        for label in sorted({k.rsplit("|", 1)[0] for k in stored.files}):
            models[label] = {"query": stored[label + "|query"], "document": stored[label + "|document"]}
        if models:
            path = os.path.join(figure_dir, "study1_tsne.png")
            plt.close(analysis.plot_tsne(models, path))
            written.append(path)
            path = os.path.join(figure_dir, "study1_same_tower_ratio.png")
            plt.close(analysis.plot_ratio_histograms(models, path))
            written.append(path)
    s2 = [r for r in result["summary"] if r["study"] == 2 and r.get("delta_mrr")]
    if s2:
        fig, ax = plt.subplots(figsize=(5.6, 3.8))
        for part, arch, variant in sorted({(r["part"], r["architecture"], r["variant"]) for r in s2}):
            chosen = sorted([r for r in s2 if (r["part"], r["architecture"], r["variant"])
                             == (part, arch, variant)], key=lambda r: r["batch_size"])
            x = [r["batch_size"] for r in chosen]
            y = [r["delta_mrr"]["mean"] * 100 for r in chosen]
            e = [r["delta_mrr"]["std"] * 100 for r in chosen]
            ax.errorbar(x, y, yerr=e, marker="o", capsize=3,
                        label=f"{variant}, {arch.upper()} ({part})")
        ax.axhline(0, color="grey", lw=0.8)
        ax.set_xscale("log", base=2)
        ax.set_xlabel("batch size")
        ax.set_ylabel("ΔMRR vs in-batch (points)")
        ax.legend(fontsize=7)
        fig.tight_layout()
        path = os.path.join(figure_dir, "study2_batch_size.png")
        analysis._save(fig, path)
        plt.close(fig)
        written.append(path)
    return [os.path.relpath(p, ROOT) for p in written]


# ---------------------------------------------------------------------------- main
def _atomic_json(path, obj):
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(obj, f, indent=1)
    os.replace(tmp, path)


def _int_list(text):
    values = [int(v) for v in text.split(",") if v.strip()]
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected positive integers separated by commas, got {text!r}")
    return values


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--study", type=_int_list, default=[1, 2, 3], help="1, 2, 3 or a list (default all)")
    p.add_argument("--quick", action="store_true", help="CI-sized smoke run of the studies")
    p.add_argument("--report", action="store_true", help="only rewrite the tables and figures")
    p.add_argument("--data", default=SQUAD)
    p.add_argument("--merge", nargs="+", default=[], metavar="JSON",
                   help="add the runs of other outputs of this script first")
    p.add_argument("--seeds", type=int, default=None, help="default 3 (quick: 1)")
    p.add_argument("--output", default=None)
    p.add_argument("--figures", default=None, help=f"default {os.path.relpath(DEFAULT_FIGURES, ROOT)} "
                   "(quick: beside the output)")
    p.add_argument("--cache-dir", default=os.path.join(HERE, "results", "cache"))
    p.add_argument("--batch-size", type=int, default=32)
    # study 1
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--hidden", type=int, default=128)
    p.add_argument("--heads", type=int, default=2)
    p.add_argument("--dropout", type=float, default=0.1)
    p.add_argument("--query-max-length", type=int, default=32)
    p.add_argument("--document-max-length", type=int, default=64)
    p.add_argument("--study1-steps", type=int, default=600)
    p.add_argument("--study1-learning-rate", type=float, default=1e-3)
    p.add_argument("--eval-every", type=int, default=150)
    p.add_argument("--curve-queries", type=int, default=500)
    p.add_argument("--analysis-pairs", type=int, default=500)
    # study 2
    p.add_argument("--study2-parts", default="frozen,fine-tuned",
                   help="frozen, fine-tuned or both (comma-separated)")
    p.add_argument("--study2-batches", type=_int_list, default=[32, 128, 512])
    p.add_argument("--finetune-batches", type=_int_list, default=[32, 256])
    p.add_argument("--finetune-pairs", type=int, default=2560,
                   help="training pairs per fine-tuning run (steps = pairs / batch)")
    p.add_argument("--finetune-learning-rate", type=float, default=3e-5)
    p.add_argument("--finetune-queries", type=int, default=500)
    p.add_argument("--finetune-variants", default="in-batch,samtone-q",
                   help="a comma-separated subset of " + ",".join(STUDY2_VARIANTS))
    # study 3
    p.add_argument("--study3-steps", type=int, default=300)
    p.add_argument("--study3-variants", default=",".join(STUDY3_VARIANTS),
                   help="a comma-separated subset (runs already in --output are kept)")
    args = p.parse_args(argv)
    args.study2_parts = [x.strip() for x in args.study2_parts.split(",") if x.strip()]
    if not args.study2_parts or set(args.study2_parts) - {"frozen", "fine-tuned"}:
        p.error(f"--study2-parts takes frozen and fine-tuned, got {args.study2_parts}")
    args.study3_variants = [x.strip() for x in args.study3_variants.split(",") if x.strip()]
    if not args.study3_variants or set(args.study3_variants) - set(STUDY3_VARIANTS):
        p.error(f"--study3-variants takes {', '.join(STUDY3_VARIANTS)}")
    args.finetune_variants = [x.strip() for x in args.finetune_variants.split(",") if x.strip()]
    if not args.finetune_variants or set(args.finetune_variants) - set(STUDY2_VARIANTS):
        p.error(f"--finetune-variants takes {', '.join(STUDY2_VARIANTS)}")
    if not 0.0 <= args.dropout < 1.0:
        p.error("--dropout must be in [0, 1)")
    if set(args.study) - {1, 2, 3}:
        p.error(f"--study takes 1, 2 and 3, got {args.study}")
    if args.quick:
        args.seeds = 1 if args.seeds is None else args.seeds
        args.layers, args.hidden, args.heads = 1, 32, 2
        args.study1_steps, args.eval_every, args.curve_queries, args.analysis_pairs = 6, 3, 20, 40
        args.study2_batches, args.finetune_batches, args.finetune_pairs = [8, 16], [8, 16], 32
        args.finetune_queries, args.study3_steps = 20, 2
        args.batch_size = 8
    args.seeds = 3 if args.seeds is None else args.seeds
    for name in ("seeds", "batch_size", "layers", "hidden", "heads", "study1_steps", "eval_every",
                 "curve_queries", "analysis_pairs", "finetune_pairs", "finetune_queries",
                 "study3_steps", "query_max_length", "document_max_length"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1")
    if args.hidden % args.heads:
        p.error("--hidden must be a multiple of --heads")
    args.output = args.output or (os.path.join(HERE, "results", "regime_study_quick.json")
                                  if args.quick else DEFAULT_OUTPUT)
    args.figures = args.figures or (os.path.join(os.path.dirname(args.output), "regime_quick_figures")
                                    if args.quick else DEFAULT_FIGURES)
    return args


STUDY_SETTINGS = {
    1: ("batch_size", "layers", "hidden", "heads", "dropout", "query_max_length", "document_max_length",
        "study1_steps", "study1_learning_rate", "eval_every", "curve_queries", "analysis_pairs"),
    2: ("study2_batches", "finetune_batches", "finetune_pairs", "finetune_learning_rate",
        "finetune_queries"),
    3: ("batch_size", "study3_steps"),
}


def main(argv=None):
    args = parse_args(sys.argv[1:] if argv is None else argv)
    result = {"runs": [], "zero_shot": {}, "settings": {}, "commands": []}
    if os.path.exists(args.output):
        with open(args.output, encoding="utf-8") as f:
            result.update(json.load(f))
    command = "python " + " ".join([os.path.relpath(__file__, ROOT)] + (
        sys.argv[1:] if argv is None else list(argv)))
    embeddings_file = embeddings_path(args.cache_dir, args.quick)
    for path in args.merge:
        merge_into(result, path)
    if not args.report:
        for study in args.study:
            settings = {k: getattr(args, k) for k in STUDY_SETTINGS[study]}
            settings["quick"] = args.quick
            earlier = result["settings"].get(str(study))
            if earlier is not None and earlier != settings and any(
                    r["study"] == study for r in result["runs"]):
                raise SystemExit(f"{args.output} holds study {study} runs made with other "
                                 f"settings ({earlier}); use another --output.")
            result["settings"][str(study)] = settings
        result["commands"].append(command)
        os.makedirs(args.cache_dir, exist_ok=True)

        import tensorflow as tf  # noqa: F401 (after argument errors)

        started = time.time()

        def save(record):
            result["runs"].append(record)
            result["summary"] = summarize(result["runs"])
            _atomic_json(args.output, result)
            print(f"  study {record['study']} {record['part']} {record['architecture']} "
                  f"{record['init']} {record['variant']} batch {record['batch_size']} seed "
                  f"{record['seed']}: P@1 {record['p@1']:.4f} MRR {record['mrr']:.4f} "
                  f"({time.time() - started:.0f} s)", flush=True)

        with tempfile.TemporaryDirectory() as work_dir:
            args.work_dir = work_dir
            pairs, eval_data = load_split(args.data, args.quick)
            if 1 in args.study:
                run_study1(args, result, save, pairs, eval_data, embeddings_file)
            if 2 in args.study and "frozen" in args.study2_parts:
                study2_frozen(args, result["runs"], save)
            if 2 in args.study and "fine-tuned" in args.study2_parts:
                study2_finetune(args, result["runs"], save, pairs, eval_data)
            if 3 in args.study:
                study3(args, result["runs"], save, result["zero_shot"])
    if not result["runs"]:
        raise SystemExit(f"{args.output} holds no runs yet.")
    result["summary"] = summarize(result["runs"])
    result["figures"] = figures(result, args.figures, embeddings_file)
    import samtone_tf

    result["keras"] = samtone_tf.KERAS_VERSION
    _atomic_json(args.output, result)
    table = markdown(result["summary"])
    with open(os.path.splitext(args.output)[0] + ".md", "w", encoding="utf-8") as f:
        f.write(table + "\n\nCommands:\n" + "\n".join(f"    {c}" for c in result["commands"]) + "\n")
    print(table)
    print(f"wrote {args.output}; figures: {', '.join(result['figures']) or 'none'}")
    return 0


def merge_into(result, path):
    """Adds the runs of another output of this script (for studies run side by side, each
    into its own file); a study's settings must agree."""
    with open(path, encoding="utf-8") as f:
        other = json.load(f)
    for study, settings in other.get("settings", {}).items():
        mine = result["settings"].get(study)
        if mine is not None and mine != settings:
            raise SystemExit(f"{path}: study {study} settings {settings} differ from {mine}.")
        result["settings"][study] = settings
    known = {run_key(r) for r in result["runs"]}
    result["runs"] += [r for r in other["runs"] if run_key(r) not in known]
    result["zero_shot"].update(other.get("zero_shot", {}))
    result["commands"] += [c for c in other.get("commands", []) if c not in result["commands"]]


def run_study1(args, result, save, pairs, eval_data, embeddings_file):
    from samtone_tf import IS_KERAS3

    if not IS_KERAS3:
        raise SystemExit("study 1 builds keras-hub BertBackbones: run it under Keras 3 "
                         "(without TF_USE_LEGACY_KERAS=1).")
    study = Study1(args, pairs, eval_data)
    done = {run_key(r) for r in result["runs"]}
    stored = dict(np.load(embeddings_file)) if os.path.exists(embeddings_file) else {}
    for seed in range(args.seeds):
        for (architecture, init), variants in STUDY1_CELLS.items():
            for variant in chosen_variants(args, variants):
                key = (1, "from-scratch", architecture, init, variant, args.batch_size, seed)
                if key in done:
                    continue
                keep = seed == 0 and variant in ("in-batch", "samtone-q", "samtone-both") and (
                    architecture, init) != ("ade", "shared")
                record, embeddings = study.run(architecture, init, variant, seed, keep)
                if embeddings is not None:
                    label = f"{architecture.upper()} {init} {variant}"
                    stored[label + "|query"], stored[label + "|document"] = embeddings
                    np.savez_compressed(embeddings_file, **stored)
                save(record)


if __name__ == "__main__":
    sys.exit(main())
