"""Embedding-space analysis of dual encoders: the statistics and figures of the SamToNe paper.

Statistics (NumPy; inputs are ``[n, dim]`` arrays whose rows ``i`` pair up, query ``i`` with
its positive document ``i``):

- :func:`alignment` and :func:`uniformity` (Wang & Isola, *Understanding Contrastive
  Representation Learning through Alignment and Uniformity on the Hypersphere*, ICML 2020),
  on L2-normalised embeddings;
- :func:`anisotropy`: the mean cosine similarity of random pairs of one tower (1: every
  embedding points the same way, 0: isotropic);
- :func:`top1_similarities`: the similarity of each query's best document;
- :func:`same_tower_ratios`: ``s(q_i, q_j) / s(q_i, d_j)`` for ``i != j``: how close a query
  is to *other queries* relative to their documents. SamToNe puts the other queries into the
  softmax as negatives, which pushes these ratios down;
- :func:`embedding_report`: all of the above as one dict of scalars.

Figures (matplotlib, scikit-learn: ``pip install "samtone-tf[analysis]"``): t-SNE of both
towers coloured by tower, side by side per model (:func:`plot_tsne`), and overlaid
histograms of the top-1 similarities and of the same-tower ratios per model.

:func:`analyze` runs everything for several models on (query, positive document) pairs of a
BEIR or ReQA data set and writes the figures and ``analysis.json``; ``samtone-tf analyze``
is its command line.
"""

import json
import os
import sys

import numpy as np

from samtone_tf.evaluation import run as evaluation
from samtone_tf.towers.embedders import iter_encoded_batches
from samtone_tf.towers.pretrained import pretrained_name

__all__ = [
    "alignment",
    "uniformity",
    "anisotropy",
    "top1_similarities",
    "same_tower_ratios",
    "tsne_2d",
    "effective_perplexity",
    "embedding_report",
    "plot_tsne",
    "plot_top1_histograms",
    "plot_ratio_histograms",
    "sample_pairs",
    "analyze",
    "MIN_ABS_DENOMINATOR",
]

SIMILARITIES = ("cosine", "dot")

#: :func:`same_tower_ratios` drops the pairs whose denominator ``|s(q_i, d_j)|`` is at most
#: this (see there).
MIN_ABS_DENOMINATOR = 1e-3

FIGURE_DPI = 100
TOWER_COLORS = {"query": "tab:blue", "document": "tab:orange"}


# ---------------------------------------------------------------------------------------
# Input checks.


def _matrix(x, what, min_rows=1):
    """``x`` as a finite float64 ``[n, dim]`` array with ``n >= min_rows``; ValueError if not."""
    if hasattr(x, "numpy"):
        x = x.numpy()
    try:
        x = np.asarray(x, dtype=np.float64)
    except (TypeError, ValueError) as error:
        raise ValueError(f"{what} must be a numeric [n, dim] array: {error}") from None
    if x.ndim != 2:
        raise ValueError(f"{what} must be a 2-D [n, dim] array, got shape {x.shape}.")
    if x.shape[0] < min_rows or x.shape[1] == 0:
        raise ValueError(f"{what} must have at least {min_rows} row(s) and one column, got "
                         f"shape {x.shape}.")
    bad = ~np.isfinite(x)
    if bad.any():
        row = int(np.argwhere(bad)[0][0])
        raise ValueError(f"{what} holds NaN or infinite values (first in row {row}).")
    return x


def _pair(query_emb, doc_emb, min_rows=1):
    q = _matrix(query_emb, "query_emb", min_rows)
    d = _matrix(doc_emb, "doc_emb", min_rows)
    if q.shape != d.shape:
        raise ValueError(f"query_emb {q.shape} and doc_emb {d.shape} must have the same shape "
                         "(row i of each is one positive pair).")
    return q, d


def _normalize(x, what):
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    zero = np.flatnonzero(norms[:, 0] == 0)
    if zero.size:
        raise ValueError(f"{what} row {int(zero[0])} is the zero vector: it has no direction "
                         "to normalise.")
    return x / norms


def _check_similarity(similarity):
    if similarity not in SIMILARITIES:
        raise ValueError(f"`similarity` must be one of {SIMILARITIES}, got {similarity!r}.")


def _positive_number(value, what, integer=False):
    kinds = (int, np.integer) if integer else (int, float, np.integer, np.floating)
    if isinstance(value, bool) or not isinstance(value, kinds) or not value > 0:
        raise ValueError(f"`{what}` must be a positive {'int' if integer else 'number'}, "
                         f"got {value!r}.")


def _similarity_matrix(a, b, similarity):
    """``[len(a), len(b)]`` cosine (rows normalised first) or dot similarities."""
    _check_similarity(similarity)
    if similarity == "cosine":
        a, b = _normalize(a, "query_emb"), _normalize(b, "doc_emb")
    return a @ b.T


# ---------------------------------------------------------------------------------------
# Statistics.


def alignment(query_emb, doc_emb, alpha=2):
    """Mean ``||q_i - d_i||_2 ** alpha`` over the positive pairs (rows ``i``), on
    L2-normalised embeddings (Wang & Isola 2020). 0 when every query equals its document;
    at most ``2 ** alpha``.
    """
    _positive_number(alpha, "alpha")
    q, d = _pair(query_emb, doc_emb)
    q, d = _normalize(q, "query_emb"), _normalize(d, "doc_emb")
    return float(np.mean(np.linalg.norm(q - d, axis=1) ** alpha))


def _subsample_rows(x, max_points, seed):
    """At most ``max_points`` rows of ``x``, the same ones for the same seed (order kept)."""
    if x.shape[0] <= max_points:
        return x
    rows = np.random.default_rng(seed).choice(x.shape[0], size=max_points, replace=False)
    return x[np.sort(rows)]


def uniformity(emb, t=2.0, max_points=2000, seed=0):
    """``log mean exp(-t ||x_i - x_j||^2)`` over the distinct pairs ``i < j`` of the
    L2-normalised rows (Wang & Isola 2020). Lower is more uniform; 0 for a collapsed
    embedding (all rows the same direction), ``-2 t`` for orthonormal rows.

    With more than ``max_points`` rows, ``max_points`` of them are drawn without replacement
    by ``np.random.default_rng(seed)`` (the same rows for the same seed) to bound the
    ``O(n^2)`` cost.
    """
    _positive_number(t, "t")
    _positive_number(max_points, "max_points", integer=True)
    x = _normalize(_matrix(emb, "emb", min_rows=2), "emb")
    if max_points < 2:
        raise ValueError(f"`max_points` must be at least 2, got {max_points}.")
    x = _subsample_rows(x, max_points, seed)
    i, j = np.triu_indices(x.shape[0], k=1)
    # ||a - b||^2 = 2 - 2 a.b for unit vectors (clipped: rounding may give -1e-16)
    sq_dist = np.maximum(2.0 - 2.0 * np.einsum("ij,ij->i", x[i], x[j]), 0.0)
    exponent = -t * sq_dist
    top = exponent.max()  # log-mean-exp without underflow
    return float(top + np.log(np.mean(np.exp(exponent - top))))


def anisotropy(emb, num_pairs=10000, seed=0):
    """Mean cosine similarity of distinct pairs of rows: 1 for a collapsed embedding, about
    0 for an isotropic one.

    Exact (every pair ``i < j``) when there are at most ``num_pairs`` pairs; otherwise the
    mean over ``num_pairs`` pairs drawn uniformly from the distinct pairs by
    ``np.random.default_rng(seed)``.
    """
    _positive_number(num_pairs, "num_pairs", integer=True)
    x = _normalize(_matrix(emb, "emb", min_rows=2), "emb")
    n = x.shape[0]
    if n * (n - 1) // 2 <= num_pairs:
        i, j = np.triu_indices(n, k=1)
    else:
        rng = np.random.default_rng(seed)
        i = rng.integers(0, n, size=num_pairs)
        j = (i + rng.integers(1, n, size=num_pairs)) % n  # uniform over the other n - 1 rows
    return float(np.mean(np.einsum("ij,ij->i", x[i], x[j])))


def top1_similarities(query_emb, doc_emb, similarity="cosine"):
    """``[num_queries]``: the similarity of each query's top-1 document among ``doc_emb``.

    ``similarity``: ``"cosine"`` (rows L2-normalised first) or ``"dot"``. The numbers of
    rows may differ here (any query set against any document set).
    """
    q = _matrix(query_emb, "query_emb")
    d = _matrix(doc_emb, "doc_emb")
    if q.shape[1] != d.shape[1]:
        raise ValueError(f"query_emb has dimension {q.shape[1]}, doc_emb {d.shape[1]}.")
    return _similarity_matrix(q, d, similarity).max(axis=1)


def same_tower_ratios(query_emb, doc_emb, similarity="cosine",
                      min_abs_denominator=MIN_ABS_DENOMINATOR):
    """``s(q_i, q_j) / s(q_i, d_j)`` for every ``i != j`` (rows pair up: ``d_j`` is the
    positive document of ``q_j``), in row-major ``(i, j)`` order.

    The ratio compares what SamToNe adds to the softmax denominator for query ``i`` (the
    other queries ``q_j``) with what the plain in-batch loss has there (their documents
    ``d_j``). Above 1, another query is closer to ``q_i`` than that query's own document.

    Near-zero denominators: with cosine similarity, ``s(q_i, d_j)`` of unrelated texts
    scatters around 0, and there the ratio is unbounded and its sign is noise (0.3 / 1e-4 =
    3000), so a handful of such pairs would decide the mean and the histogram range. The
    pairs with ``|s(q_i, d_j)| <= min_abs_denominator`` are therefore **dropped** (not
    clipped, which would invent values); the result has ``n (n - 1)`` minus that many
    entries (:func:`embedding_report` reports how many were dropped). Pass
    ``min_abs_denominator=0`` to drop only exact zeros.
    """
    q, d = _pair(query_emb, doc_emb, min_rows=2)
    if isinstance(min_abs_denominator, bool) or not isinstance(
            min_abs_denominator, (int, float, np.integer, np.floating)) or not (
            min_abs_denominator >= 0):
        raise ValueError(f"`min_abs_denominator` must be a number >= 0, got "
                         f"{min_abs_denominator!r}.")
    same = _similarity_matrix(q, q, similarity)
    cross = _similarity_matrix(q, d, similarity)
    keep = ~np.eye(q.shape[0], dtype=bool) & (np.abs(cross) > min_abs_denominator)
    return same[keep] / cross[keep]


def effective_perplexity(num_samples, perplexity=30.0):
    """The t-SNE perplexity used for ``num_samples`` points: ``min(perplexity,
    (num_samples - 1) / 3)``.

    scikit-learn needs ``perplexity < num_samples`` and looks at the ``3 * perplexity``
    nearest neighbours of each point; the cap keeps that many neighbours available, so a
    small sample gets a smaller perplexity instead of an error.
    """
    _positive_number(perplexity, "perplexity")
    if num_samples < 4:
        raise ValueError(f"t-SNE needs at least 4 points (2 pairs), got {num_samples}.")
    return float(min(perplexity, (num_samples - 1) / 3.0))


def _require(module, what):
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as error:
        raise ImportError(f"{what} needs {module.split('.')[0]}, an optional dependency: "
                          f'pip install "samtone-tf[analysis]" ({error})') from error


def tsne_2d(query_emb, doc_emb, perplexity=30.0, seed=0):
    """2-D t-SNE (scikit-learn) of both towers together, on L2-normalised embeddings.

    Returns:
      ``(coords, towers)``: ``[2n, 2]`` float64 coordinates, the queries' ``n`` rows first
      and then the documents', and ``[2n]`` strings ``"query"`` / ``"document"`` naming
      each row's tower. The perplexity is :func:`effective_perplexity` of ``2n`` points;
      PCA initialisation, ``random_state=seed`` and a single OpenMP thread make it
      deterministic.
    """
    q, d = _pair(query_emb, doc_emb, min_rows=2)
    manifold = _require("sklearn.manifold", "tsne_2d")
    x = np.concatenate([_normalize(q, "query_emb"), _normalize(d, "doc_emb")], axis=0)
    tsne = manifold.TSNE(n_components=2, perplexity=effective_perplexity(len(x), perplexity),
                         init="pca", learning_rate="auto", random_state=seed)
    from threadpoolctl import threadpool_limits  # a scikit-learn dependency

    # One OpenMP thread: the Barnes-Hut gradient's thread barriers spin, and on a shared or
    # busy machine two threads were 3x slower than one for 1,000 points; one thread also
    # makes the result independent of the machine's core count.
    with threadpool_limits(limits=1, user_api="openmp"):
        coords = np.asarray(tsne.fit_transform(x), dtype=np.float64)
    towers = np.array(["query"] * len(q) + ["document"] * len(d))
    return coords, towers


def embedding_report(query_emb, doc_emb, similarity="cosine"):
    """All scalar statistics of a set of positive pairs, as a JSON-ready dict.

    Keys: ``num_pairs``, ``dim``, ``similarity``, ``alignment`` (alpha 2),
    ``uniformity_query``, ``uniformity_document``, ``uniformity_all`` (both towers as one
    set), ``anisotropy_query``, ``anisotropy_document``, ``top1_similarity_mean`` /
    ``_median`` (each query against the ``n`` documents), ``same_tower_ratio_mean`` /
    ``_median``, ``num_ratios`` and ``num_ratios_dropped`` (pairs dropped for a near-zero
    denominator, see :func:`same_tower_ratios`). Defaults of the functions are used
    throughout.
    """
    _check_similarity(similarity)
    q, d = _pair(query_emb, doc_emb, min_rows=2)
    n = q.shape[0]
    top1 = top1_similarities(q, d, similarity)
    ratios = same_tower_ratios(q, d, similarity)
    return {
        "num_pairs": int(n),
        "dim": int(q.shape[1]),
        "similarity": similarity,
        "alignment": alignment(q, d),
        "uniformity_query": uniformity(q),
        "uniformity_document": uniformity(d),
        "uniformity_all": uniformity(np.concatenate([q, d], axis=0)),
        "anisotropy_query": anisotropy(q),
        "anisotropy_document": anisotropy(d),
        "top1_similarity_mean": float(np.mean(top1)),
        "top1_similarity_median": float(np.median(top1)),
        "same_tower_ratio_mean": float(np.mean(ratios)) if ratios.size else None,
        "same_tower_ratio_median": float(np.median(ratios)) if ratios.size else None,
        "num_ratios": int(ratios.size),
        "num_ratios_dropped": int(n * (n - 1) - ratios.size),
    }


# ---------------------------------------------------------------------------------------
# Figures.


def _pyplot():
    """matplotlib.pyplot; Agg when nothing chose a backend and this is not a notebook.

    An explicitly selected backend (``matplotlib.use``, ``MPLBACKEND``, matplotlibrc, a
    notebook's inline backend) is left alone, so figures display inline in Jupyter.
    """
    matplotlib = _require("matplotlib", "plotting")
    if "matplotlib.pyplot" not in sys.modules and "ipykernel" not in sys.modules:
        get = getattr(matplotlib.rcParams, "_get_backend_or_none", None)
        chosen = get() if get is not None else os.environ.get("MPLBACKEND")
        if chosen is None:
            matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _check_results(results):
    if not isinstance(results, dict) or not results:
        raise ValueError("`results` must be a non-empty dict {model label: {'query': [n, dim], "
                         "'document': [n, dim]}}.")
    out = {}
    for label, towers in results.items():
        if not isinstance(towers, dict) or "query" not in towers or "document" not in towers:
            raise ValueError(f"results[{label!r}] must be a dict with 'query' and 'document' "
                             "embeddings.")
        out[str(label)] = _pair(towers["query"], towers["document"], min_rows=2)
    return out


def _save(fig, path):
    if path is not None:
        directory = os.path.dirname(os.path.abspath(os.fspath(path)))
        os.makedirs(directory, exist_ok=True)
        fig.savefig(path, dpi=FIGURE_DPI, format="png")
    return fig


def plot_tsne(results, path=None, perplexity=30.0, seed=0):
    """One t-SNE panel per model, points coloured by tower (queries vs documents).

    Args:
      results: ``{model label: {"query": [n, dim], "document": [n, dim]}}``.
      path: also save a PNG here (dpi 100).
      perplexity, seed: see :func:`tsne_2d`.

    Returns:
      the matplotlib Figure.
    """
    pairs = _check_results(results)
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(pairs), figsize=(4.2 * len(pairs), 4.2), squeeze=False)
    for ax, (label, (q, d)) in zip(axes[0], pairs.items()):
        coords, towers = tsne_2d(q, d, perplexity=perplexity, seed=seed)
        for tower in ("query", "document"):
            sel = towers == tower
            ax.scatter(coords[sel, 0], coords[sel, 1], s=6, alpha=0.6, linewidths=0,
                       color=TOWER_COLORS[tower], label=tower)
        ax.set_title(label)
        ax.set_xticks([])
        ax.set_yticks([])
    axes[0][0].legend(loc="best", markerscale=2)
    fig.suptitle("t-SNE of query and document embeddings")
    fig.tight_layout()
    return _save(fig, path)


def _overlaid_histograms(values, title, xlabel, path, clip_percentiles=None):
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    everything = np.concatenate([v for v in values.values() if v.size] or [np.zeros(1)])
    if clip_percentiles is not None:
        low, high = np.percentile(everything, clip_percentiles)
    else:
        low, high = everything.min(), everything.max()
    if not high > low:
        low, high = low - 0.5, high + 0.5
    bins = np.linspace(low, high, 51)
    for label, v in values.items():
        ax.hist(np.clip(v, low, high), bins=bins, alpha=0.5, density=True,
                label=f"{label} (median {np.median(v):.3f})" if v.size else label)
    ax.set_title(title)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("density")
    ax.legend(loc="best")
    fig.tight_layout()
    return _save(fig, path)


def plot_top1_histograms(results, path=None, similarity="cosine"):
    """Overlaid histograms (one per model, shared bins) of each query's top-1 similarity
    (:func:`top1_similarities`). Returns the Figure; saves a PNG when ``path`` is given."""
    pairs = _check_results(results)
    values = {label: top1_similarities(q, d, similarity) for label, (q, d) in pairs.items()}
    return _overlaid_histograms(values, "Top-1 retrieved document similarity",
                                f"{similarity} similarity", path)


def plot_ratio_histograms(results, path=None, similarity="cosine"):
    """Overlaid histograms (one per model, shared bins) of :func:`same_tower_ratios`.

    The bins span the 1st to 99th percentile of all models' ratios together; the tails are
    piled into the edge bins, so a few huge ratios do not squash the rest of the figure.
    Returns the Figure; saves a PNG when ``path`` is given.
    """
    pairs = _check_results(results)
    values = {label: same_tower_ratios(q, d, similarity) for label, (q, d) in pairs.items()}
    return _overlaid_histograms(values, "Same-tower ratio s(q_i, q_j) / s(q_i, d_j), i != j",
                                "ratio (1st-99th percentile range)", path,
                                clip_percentiles=(1, 99))


# ---------------------------------------------------------------------------------------
# End to end.


def sample_pairs(corpus, queries, qrels, max_pairs=500, seed=0):
    """Up to ``max_pairs`` ``(query id, document id)`` positive pairs, deterministic by seed.

    The judged queries (relevance >= 1, text in ``queries``, a positive in ``corpus``) are
    shuffled by ``np.random.default_rng(seed)``; each contributes its first positive (by
    document id) that no earlier pair used. So no query and no document appears twice:
    a repeated row would make a same-tower similarity trivially 1.
    """
    _positive_number(max_pairs, "max_pairs", integer=True)
    candidates = []
    for qid in sorted(qrels):
        if qid not in queries:
            continue
        positives = sorted(d for d, rel in qrels[qid].items() if rel >= 1 and d in corpus)
        if positives:
            candidates.append((qid, positives))
    order = np.random.default_rng(seed).permutation(len(candidates))
    pairs, used = [], set()
    for k in order:
        qid, positives = candidates[k]
        doc = next((d for d in positives if d not in used), None)
        if doc is not None:
            used.add(doc)
            pairs.append((qid, doc))
            if len(pairs) == max_pairs:
                break
    return pairs


def _check_model_spec(label, spec):
    if not isinstance(label, str) or not label:
        raise ValueError(f"model labels must be non-empty strings, got {label!r}.")
    if isinstance(spec, (tuple, list)) and len(spec) == 2 and all(map(callable, spec)):
        return
    if not isinstance(spec, (str, os.PathLike)) or not str(spec):
        raise ValueError(f"model {label!r}: expected 'pretrained:<name>', an exported "
                         f"SavedModel folder or a (query_fn, document_fn) pair, got {spec!r}.")
    spec = os.fspath(spec)
    if pretrained_name(spec) is None and not os.path.isfile(
            os.path.join(spec, "saved_model.pb")):
        raise ValueError(f"model {label!r}: {spec!r} is neither 'pretrained:<name>' nor a "
                         "SavedModel folder written by `samtone-tf export`.")


def _encode(fn, texts, batch_size, progress, desc):
    batches = iter_encoded_batches(fn, texts, batch_size, progress=progress, desc=desc)
    return np.concatenate(list(batches), axis=0)


def analyze(models, corpus, queries, qrels, output_dir, *, max_pairs=500, seed=0,
            batch_size=64, progress=True, similarity="cosine", query_max_length=None,
            document_max_length=None, perplexity=30.0, extra_config=None, precision=None):
    """Encodes sampled positive pairs with each model, writes figures and ``analysis.json``.

    Args:
      models: ``{label: spec}``; a spec is what
        :func:`samtone_tf.evaluation.text_encoders` accepts (``"pretrained:<name>"`` or an
        exported SavedModel folder) or a ``(query_fn, document_fn)`` pair of functions from
        a list of strings to ``[n, dim]`` embeddings (e.g.
        :func:`samtone_tf.towers.embedders.dual_encoder_fns` of a live model).
      corpus, queries, qrels: as from :func:`samtone_tf.evaluation.load_eval_data`.
      output_dir: created if needed; receives ``tsne.png``, ``top1_similarity.png``,
        ``same_tower_ratio.png`` and ``analysis.json``.
      max_pairs, seed: see :func:`sample_pairs` (the same pairs for every model).
      batch_size: texts per encoder call.
      progress: tqdm progress bars while encoding.
      similarity: ``"cosine"`` or ``"dot"`` for the top-1 similarities and ratios.
      query_max_length, document_max_length: ``pretrained:`` models only (see
        ``text_encoders``).
      perplexity: t-SNE perplexity (see :func:`effective_perplexity`).
      precision: what ``pretrained:`` models compute in (``"auto"``, ``"float32"``,
        ``"bfloat16"``, ``"float16"``; ``None``: the Keras policy's); an exported model
        computes in its own (:func:`samtone_tf.evaluation.model_precision`). Recorded per
        model under ``config.precision``.
      extra_config: JSON-ready entries added to the top-level ``config`` (the command line
        records the data set there).

    Returns:
      the dict written to ``analysis.json``: ``config`` (settings, ``num_pairs``, the
      figure file names), ``pairs`` (the ``[query id, document id]`` pairs) and ``models``
      (``{label: {"config": {...}, "report": embedding_report(...)}}``).
    """
    _check_similarity(similarity)
    if not isinstance(models, dict) or not models:
        raise ValueError("`models` must be a non-empty dict {label: model spec}.")
    for label, spec in models.items():
        _check_model_spec(label, spec)
    pairs = sample_pairs(corpus, queries, qrels, max_pairs=max_pairs, seed=seed)
    if len(pairs) < 2:
        raise ValueError(f"found {len(pairs)} usable (query, positive document) pair(s) in "
                         "qrels; the analysis needs at least 2.")
    _require("matplotlib", "analyze")
    _require("sklearn", "analyze")
    query_texts = [queries[q] for q, _ in pairs]
    doc_texts = [corpus[d] for _, d in pairs]

    embeddings, model_entries = {}, {}
    for label, spec in models.items():
        if isinstance(spec, (tuple, list)):
            query_fn, doc_fn = spec
            spec_name = "<functions>"
            model_precision = None  # the functions' own
        else:
            spec_name = os.fspath(spec)
            model_precision = evaluation.model_precision(spec_name, precision)
            query_fn, doc_fn = evaluation.text_encoders(
                spec_name, batch_size=batch_size, query_max_length=query_max_length,
                document_max_length=document_max_length, precision=model_precision)
        q = _encode(query_fn, query_texts, batch_size, progress, f"{label}: queries")
        d = _encode(doc_fn, doc_texts, batch_size, progress, f"{label}: documents")
        embeddings[label] = {"query": q, "document": d}
        model_entries[label] = {
            "config": {
                "model": spec_name,
                "query_max_length": query_max_length,
                "document_max_length": document_max_length,
                "precision": model_precision,
                "tsne_perplexity": effective_perplexity(2 * len(pairs), perplexity),
            },
            "report": embedding_report(q, d, similarity),
        }

    os.makedirs(output_dir, exist_ok=True)
    files = {"tsne": "tsne.png", "top1_similarity": "top1_similarity.png",
             "same_tower_ratio": "same_tower_ratio.png"}
    plt = _pyplot()
    for fig in (
        plot_tsne(embeddings, os.path.join(output_dir, files["tsne"]), perplexity=perplexity,
                  seed=seed),
        plot_top1_histograms(embeddings, os.path.join(output_dir, files["top1_similarity"]),
                             similarity=similarity),
        plot_ratio_histograms(embeddings, os.path.join(output_dir, files["same_tower_ratio"]),
                              similarity=similarity),
    ):
        plt.close(fig)

    config = {"max_pairs": max_pairs, "seed": seed, "num_pairs": len(pairs),
              "similarity": similarity, "batch_size": batch_size, "perplexity": perplexity,
              "min_abs_denominator": MIN_ABS_DENOMINATOR, "files": files}
    config.update(extra_config or {})
    result = {"config": config, "pairs": [list(p) for p in pairs], "models": model_entries}
    with open(os.path.join(output_dir, "analysis.json"), "w", encoding="utf-8") as f:
        json.dump(result, f, indent=2)
    return result
