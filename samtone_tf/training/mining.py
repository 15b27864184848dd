"""Hard-negative mining during training, as in ANCE / DANCE: re-encode, re-mine, keep fitting.

ANCE (Xiong et al., ICLR 2021, arXiv:2007.00808) refreshes the hard negatives of each
training query from an index built with the model being trained; DANCE (Li et al. 2021,
arXiv:2107.07773) adds hard-negative *queries* for each positive document, for its dual
(document -> query) objective. Here:

* :class:`HardNegativeMiner` holds the training pairs, the corpus, the positives (qrels plus
  the pairs themselves), the tokenizers and the current negatives table: ``[Q, Hd]`` corpus
  rows per training query and, with ``num_hard_queries > 0``, ``[P, Hq]`` training-query
  rows per positive document. The tables live in ``tf.Variable`` s that the input pipeline
  reads, so a refresh reaches the batches that follow it without rebuilding the dataset,
  the model or the ``fit`` call.
* :meth:`HardNegativeMiner.dataset` gives the features of
  :func:`samtone_tf.data.make_pair_dataset` (repeated: the batch order is a function of
  ``(seed, epoch)`` alone) plus ``hard_negative_document_*`` ``[B, Hd, Ld]`` and, with
  ``Hq > 0``, ``hard_negative_query_*`` ``[B, Hq, Lq]``, gathered from the current tables.
* :class:`HardNegativeMiningCallback` refreshes the tables every ``every_n_steps`` training
  steps with the current model and records the time each refresh took.

Mining rule (deterministic given ``seed``): for each training query, rank the whole corpus
by similarity (cosine by default, exact search), drop the query's positives, drop the first
``skip_top`` of the remaining documents (a guard against unjudged positives), and keep the
next ``depth`` as candidates. With ``depth=None`` (default) the candidates are exactly the
top ``Hd`` and are all used: the negatives are the top-``Hd`` non-positive documents. With
``depth=k > Hd``, ``Hd`` of the ``k`` candidates are drawn uniformly without replacement
(ANCE samples from its top-k this way), from a NumPy generator seeded by
``(seed, refresh number)``, so a rerun mines the same negatives. DANCE's query negatives use
the same rule with roles exchanged: for each positive document, the nearest training
queries that are not paired with it (no positive judgment in ``qrels`` and no training pair).

Initial negatives: :meth:`HardNegativeMiner.refresh` with the initial model, or
:meth:`HardNegativeMiner.randomize` (uniform random non-positives, seeded); the callback does
either at the start of training (``initial="mine"`` / ``"random"``) or keeps what is there.

Cost. A refresh encodes the whole corpus (``N`` documents at the document length) and the
``Q`` distinct training queries (at the query length), then runs an exact search
(``Q x N`` and, for DANCE, ``P x Q`` dot products, ``P`` = distinct positive documents). For
an encoder that runs at ``r_d`` documents/s and ``r_q`` queries/s, a refresh costs about
``N / r_d + Q / r_q`` seconds; the search is negligible beside it at these sizes
(``Q * N * dim`` multiply-adds, SciFact: 809 x 5,183 x 384 = 1.6 G). Every ``n`` training
steps of ``t`` seconds each this adds ``(N / r_d + Q / r_q) / (n * t)`` to the training
time. Measured on 2 shared CPU cores (``python -m tests.mining_cost``; tiny 2-layer, 32-wide
encoder, document length 64, query length 24; SciFact slice of 1,127 documents and 200
training queries): 2.7 s per refresh, ≈ 500 texts/s for the encoding, search 0.03 s.
An estimate, not a measurement, for all-MiniLM-L6-v2 at length 256: this project measured
its TF encoding at ≈ 8 documents/s on these 2 cores (5 under load; DESIGN.md's 32 did not
hold here), so one refresh of the full SciFact corpus (5,183 documents + 809 short queries)
costs ≈ 11 minutes, to be weighed against the steps between refreshes with the formula
above. ANCE refreshes
asynchronously on separate devices for this reason; here it is synchronous.

Read-ahead: batches the input pipeline produced before a refresh (its prefetch buffer, a
few batches; with ``dataset(prefetch=False)``, none) still carry the previous negatives.
"""

import time

import numpy as np
import tensorflow as tf

from samtone_tf import keys
from samtone_tf._keras import keras
from samtone_tf._util import check_int
from samtone_tf.data import pairs as data_lib
from samtone_tf.evaluation import retrieval
from samtone_tf.towers import embedders

__all__ = ["HardNegativeMiner", "HardNegativeMiningCallback", "INITIAL_CHOICES"]

INITIAL_CHOICES = ("mine", "random", "keep")


def _select(ranked, excluded, skip_top, depth, count, rng):
    """Row-wise: the first ``skip_top + depth`` non-excluded entries of ``ranked`` [R, k]
    minus the first ``skip_top``, then ``count`` of them (all in rank order when
    ``depth == count``, else a uniform sample without replacement kept in rank order)."""
    out = np.empty((len(ranked), count), dtype=np.int32)
    need = skip_top + depth
    for r, row in enumerate(ranked):
        kept = [int(j) for j in row if int(j) not in excluded[r]][:need]
        if len(kept) < need:
            raise ValueError(
                f"row {r}: only {len(kept)} non-positive candidates in the search results, "
                f"need skip_top + depth = {need}.")
        candidates = kept[skip_top:]
        if depth > count:
            pick = np.sort(rng.choice(depth, size=count, replace=False))
            candidates = [candidates[p] for p in pick]
        out[r] = candidates[:count]
    return out


def _replica_encoders(model, query_tokenizer, document_tokenizer, strategy):
    """``(query_fn, document_fn)`` that encode in replica context, each replica a slice of
    the texts, and gather every replica's slice (those of other workers too, under
    ``MultiWorkerMirroredStrategy``), so every worker mines the same tables from the whole
    corpus. Inside ``fit`` under a multi-replica strategy (Keras 2 keeps the strategy's
    scope open in callbacks) a TF-Hub SavedModel's restored functions fail when called in
    cross-replica context."""
    encode_queries, encode_documents = embedders.encoder_tf_functions(
        model, query_tokenizer, document_tokenizer)
    return (embedders.on_replicas(encode_queries, strategy),
            embedders.on_replicas(encode_documents, strategy))


def _checked_table(name, table, expected, limit, what, excluded, describe):
    """``table`` as an array, or a ValueError: wrong shape, rows outside ``[0, limit)``, or a
    row ``r`` holding one of ``excluded[r]`` (``describe(r)`` ends the message)."""
    table = np.asarray(table)
    if table.shape != expected:
        raise ValueError(f"{name} has shape {table.shape}; expected {expected}.")
    if table.min() < 0 or table.max() >= limit:
        raise ValueError(f"{name} holds rows outside {what}.")
    for r, row in enumerate(table):
        if excluded[r].intersection(row.tolist()):
            raise ValueError(f"{name} row {r} {describe(r)}")
    return table


class HardNegativeMiner:
    """Training pairs, corpus, positives, tokenizers and the current hard-negative tables.

    Args:
      pairs: ``(query_id, query_text, doc_id, doc_text)`` tuples (as from
        :func:`samtone_tf.data.training_pairs_from_qrels`); every ``doc_id`` must be in
        ``corpus``.
      corpus: ``{doc_id: text}``, the documents negatives are mined from.
      tokenizer_or_tokenizers: one tokenizer or a ``(query, document)`` pair, as for
        :func:`samtone_tf.data.make_pair_dataset`.
      qrels: optional ``{query_id: {doc_id: score}}``; documents with score > 0 are positives
        of that query and never its negatives (the training pairs are positives as well).
      num_hard_documents: ``Hd`` >= 1, hard-negative documents per training pair.
      num_hard_queries: ``Hq`` >= 0, hard-negative queries per pair (DANCE; 0 disables).
      depth: ``None`` (top-``H`` exactly) or an int >= max(Hd, Hq): sample ``H`` of the top
        ``depth`` non-positives (see the module docstring).
      skip_top: non-positives ranked first that are skipped (>= 0).
      seed: seeds the sampling (``depth``) and :meth:`randomize`.
      normalize: rank by cosine similarity (True) or by raw dot product (False).
      encode_batch_size: texts per encoder call in :meth:`refresh`.

    Attributes (after a refresh): ``document_table`` ``[Q, Hd]`` int32 corpus rows per
    training query (``query_ids`` order), ``query_table`` ``[P, Hq]`` training-query rows per
    positive document (``positive_doc_ids`` order), ``last_query_embeddings``,
    ``last_document_embeddings``, ``num_refreshes``.
    """

    def __init__(self, pairs, corpus, tokenizer_or_tokenizers, *, qrels=None,
                 num_hard_documents=1, num_hard_queries=0, depth=None, skip_top=0, seed=0,
                 normalize=True, encode_batch_size=64):
        self.num_hard_documents = check_int(num_hard_documents, "`num_hard_documents`")
        self.num_hard_queries = check_int(num_hard_queries, "`num_hard_queries`", minimum=0)
        self.skip_top = check_int(skip_top, "`skip_top`", minimum=0)
        self.seed = check_int(seed, "`seed`", minimum=0)
        self.encode_batch_size = check_int(encode_batch_size, "`encode_batch_size`")
        largest = max(self.num_hard_documents, self.num_hard_queries)
        if depth is not None:
            depth = check_int(depth, "`depth`")
            if depth < largest:
                raise ValueError(f"`depth` ({depth}) must be >= max(num_hard_documents, "
                                 f"num_hard_queries) = {largest}, or None.")
        self.depth = depth
        if not isinstance(normalize, bool):
            raise ValueError(f"`normalize` must be a bool, got {normalize!r}.")
        self.normalize = normalize
        if not isinstance(corpus, dict) or not corpus:
            raise ValueError("`corpus` must be a non-empty {doc_id: text} dict.")
        self.pairs = data_lib.normalise_pairs(pairs)
        if not self.pairs:
            raise ValueError("`pairs` is empty.")
        self.query_tokenizer, self.document_tokenizer = data_lib.split_tokenizers(
            tokenizer_or_tokenizers)
        self.corpus = corpus
        self.doc_ids = list(corpus)
        self.doc_texts = [corpus[d] for d in self.doc_ids]
        doc_row = {d: i for i, d in enumerate(self.doc_ids)}

        self.query_ids, self.query_texts, query_row = [], [], {}
        self.positive_doc_ids, positive_row = [], {}
        for i, (qid, qtext, did, _) in enumerate(self.pairs):
            if did not in doc_row:
                raise ValueError(f"pair {i}: document id {did!r} is not in `corpus`.")
            if qid not in query_row:
                query_row[qid] = len(self.query_ids)
                self.query_ids.append(qid)
                self.query_texts.append(qtext)
            elif self.query_texts[query_row[qid]] != qtext:
                raise ValueError(f"pair {i}: query id {qid!r} has two different texts.")
            if did not in positive_row:
                positive_row[did] = len(self.positive_doc_ids)
                self.positive_doc_ids.append(did)
        self._query_row, self._doc_row, self._positive_row = query_row, doc_row, positive_row

        positives = {qid: set() for qid in self.query_ids}
        for qid, _, did, _ in self.pairs:
            positives[qid].add(did)
        if qrels is not None:
            if not isinstance(qrels, dict):
                raise ValueError("`qrels` must be a {query_id: {doc_id: score}} dict or None.")
            for qid, judged in qrels.items():
                if qid in positives:
                    positives[qid].update(d for d, s in judged.items() if s > 0)
        self.positives = positives
        # corpus rows that may not be negatives of query row r; query rows that may not be
        # negatives of positive-document row p
        self._excluded_docs = [{doc_row[d] for d in positives[q] if d in doc_row}
                               for q in self.query_ids]
        paired = {d: set() for d in self.positive_doc_ids}
        for qid in self.query_ids:
            for d in positives[qid]:
                if d in paired:
                    paired[d].add(query_row[qid])
        self._excluded_queries = [paired[d] for d in self.positive_doc_ids]

        need_docs = self.skip_top + (depth or self.num_hard_documents)
        short = max(len(e) for e in self._excluded_docs) + need_docs - len(self.doc_ids)
        if short > 0:
            raise ValueError(f"the corpus has {len(self.doc_ids)} documents; a query with "
                             f"{max(len(e) for e in self._excluded_docs)} positives needs "
                             f"{need_docs} more (skip_top + depth or num_hard_documents).")
        if self.num_hard_queries:
            need_q = self.skip_top + (depth or self.num_hard_queries)
            most = max(len(e) for e in self._excluded_queries)
            if most + need_q > len(self.query_ids):
                raise ValueError(f"{len(self.query_ids)} training queries are too few for "
                                 f"num_hard_queries: a document paired with {most} of them "
                                 f"needs {need_q} others (skip_top + depth or num_hard_queries).")

        self.num_refreshes = 0
        self._encoders = None
        self.last_query_embeddings = self.last_document_embeddings = None
        # the tables the input pipeline reads; plain host variables, outside any strategy
        with tf.device("/cpu:0"):
            self._document_table = tf.Variable(
                np.zeros((len(self.query_ids), self.num_hard_documents), np.int32),
                trainable=False, name="hard_negative_document_table")
            self._query_table = tf.Variable(
                np.zeros((len(self.positive_doc_ids), max(self.num_hard_queries, 1)), np.int32),
                trainable=False, name="hard_negative_query_table")
        self.randomize()

    # ------------------------------------------------------------------ tables
    @property
    def document_table(self):
        """``[Q, Hd]`` int32: corpus rows of each training query's hard negatives."""
        return self._document_table.numpy()

    @property
    def query_table(self):
        """``[P, Hq]`` int32: training-query rows of each positive document's hard negatives
        (``[P, 0]`` when ``num_hard_queries == 0``)."""
        return self._query_table.numpy()[:, :self.num_hard_queries]

    def set_tables(self, document_table, query_table=None):
        """Replaces the tables (checked: shapes, ranges, no positive among the negatives)."""
        document_table = _checked_table(
            "document_table", document_table, (len(self.query_ids), self.num_hard_documents),
            len(self.doc_ids), "the corpus", self._excluded_docs,
            lambda r: f"(query {self.query_ids[r]!r}) holds one of its positives.")
        if self.num_hard_queries:
            query_table = _checked_table(
                "query_table", query_table, (len(self.positive_doc_ids), self.num_hard_queries),
                len(self.query_ids), "the training queries", self._excluded_queries,
                lambda p: f"(document {self.positive_doc_ids[p]!r}) holds a query paired with it.")
            self._query_table.assign(query_table.astype(np.int32))
        elif query_table is not None:
            raise ValueError("query_table given but num_hard_queries is 0.")
        self._document_table.assign(document_table.astype(np.int32))

    def randomize(self, seed=None):
        """Uniform random non-positive negatives (deterministic given ``seed``, default the
        miner's)."""
        rng = np.random.default_rng([self.seed if seed is None else seed, 2**31 - 1])

        def draw(excluded, total, count):
            out = np.empty((len(excluded), count), np.int32)
            for r, ex in enumerate(excluded):
                pool = rng.choice(total, size=min(total, count + len(ex)), replace=False)
                out[r] = [j for j in pool if j not in ex][:count]
            return out

        docs = draw(self._excluded_docs, len(self.doc_ids), self.num_hard_documents)
        queries = (draw(self._excluded_queries, len(self.query_ids), self.num_hard_queries)
                   if self.num_hard_queries else None)
        self.set_tables(docs, queries)

    def mine_from_embeddings(self, query_embeddings, document_embeddings):
        """Mines and installs new tables from ``[Q, dim]`` training-query and ``[N, dim]``
        corpus embeddings (rows in ``query_ids`` / ``doc_ids`` order); returns the search
        seconds."""
        start = time.perf_counter()
        q = np.asarray(query_embeddings, np.float32)
        d = np.asarray(document_embeddings, np.float32)
        if q.shape[0] != len(self.query_ids) or d.shape[0] != len(self.doc_ids):
            raise ValueError(f"embeddings have {q.shape[0]} queries and {d.shape[0]} documents; "
                             f"expected {len(self.query_ids)} and {len(self.doc_ids)}.")
        rng = np.random.default_rng([self.seed, self.num_refreshes])
        depth_d = self.depth or self.num_hard_documents
        k = min(len(self.doc_ids),
                self.skip_top + depth_d + max(len(e) for e in self._excluded_docs))
        _, ranked = retrieval.search(q, [d], k, normalize=self.normalize)
        docs = _select(ranked, self._excluded_docs, self.skip_top, depth_d,
                       self.num_hard_documents, rng)
        queries = None
        if self.num_hard_queries:
            depth_q = self.depth or self.num_hard_queries
            positive = d[[self._doc_row[x] for x in self.positive_doc_ids]]
            k = min(len(self.query_ids),
                    self.skip_top + depth_q + max(len(e) for e in self._excluded_queries))
            _, ranked = retrieval.search(positive, [q], k, normalize=self.normalize)
            queries = _select(ranked, self._excluded_queries, self.skip_top, depth_q,
                              self.num_hard_queries, rng)
        self.set_tables(docs, queries)
        self.last_query_embeddings, self.last_document_embeddings = q, d
        self.num_refreshes += 1
        return time.perf_counter() - start

    def refresh(self, model, *, progress=False):
        """Re-encodes the corpus and the training queries with ``model`` (a
        :class:`samtone_tf.DualEncoder`: its ``encode_queries`` / ``encode_documents``) and
        mines new tables. Returns ``{"seconds", "encode_seconds", "search_seconds",
        "documents", "queries", "docs_per_second"}``."""
        start = time.perf_counter()
        strategy = None
        if tf.distribute.has_strategy() and tf.distribute.in_cross_replica_context():
            strategy = tf.distribute.get_strategy()
            if strategy.num_replicas_in_sync < 2:
                strategy = None
        if self._encoders is None or self._encoders[:2] != (model, strategy):
            # traced once per model, not per refresh
            if strategy is None:
                fns = embedders.dual_encoder_fns(model, self.query_tokenizer, self.document_tokenizer)
            else:
                fns = _replica_encoders(model, self.query_tokenizer, self.document_tokenizer,
                                        strategy)
            self._encoders = (model, strategy, fns)
        query_fn, document_fn = self._encoders[2]
        d = embedders.encode_corpus(document_fn, self.doc_texts, self.encode_batch_size,
                                    progress=progress)
        q = embedders.encode_corpus(query_fn, self.query_texts, self.encode_batch_size,
                                    progress=progress)
        encode_seconds = time.perf_counter() - start
        search_seconds = self.mine_from_embeddings(q, d)
        seconds = time.perf_counter() - start
        return {"seconds": seconds, "encode_seconds": encode_seconds,
                "search_seconds": search_seconds, "documents": len(self.doc_ids),
                "queries": len(self.query_ids),
                "docs_per_second": len(self.doc_ids) / max(encode_seconds, 1e-9)}

    # ------------------------------------------------------------------ data
    def dataset(self, batch_size, seed=0, *, shuffle=True, prefetch=True, padding="longest",
                length_buckets=None):
        """Endless ``(features, labels)`` batches reading the *current* tables.

        Features and labels are those of ``make_pair_dataset(pairs, tokenizers, batch_size,
        shuffle=shuffle, seed=seed, repeat=True)`` (same batch order, a function of
        ``(seed, epoch)``) plus ``hard_negative_document_token_ids`` /
        ``hard_negative_document_padding_mask`` int32 ``[B, Hd, Ld]`` and, when
        ``num_hard_queries > 0``, ``hard_negative_query_token_ids`` /
        ``hard_negative_query_padding_mask`` int32 ``[B, Hq, Lq]``. A pair's negatives are its
        query's row of ``document_table`` and its document's row of ``query_table``, read
        when the batch is produced. The labels are ``[B, 2 + Hd + Hq]`` float32: the
        (query, document) ids of ``make_pair_dataset``, then the ids of the hard-negative
        documents and queries, one per output slot, so that ``SamToNeLoss(mask_duplicates=True)``
        drops a mined negative from the rows of every anchor it is a positive of (the miner
        itself only excludes the positives of the query it mines for). ``prefetch=False``
        produces each batch only when it is
        asked for (no read-ahead), so every batch after a refresh has the new negatives.
        Pass ``steps_per_epoch`` to ``fit`` (the dataset is infinite). ``padding`` and
        ``length_buckets`` are those of ``make_pair_dataset`` (each group of texts padded
        to its bucket by default).
        """
        data_lib.check_padding(padding)
        length_buckets = data_lib.check_length_buckets(length_buckets)
        check_int(batch_size, "batch_size")
        if batch_size > len(self.pairs):
            raise ValueError(f"batch_size={batch_size} exceeds the {len(self.pairs)} pairs.")
        # labels: one id per output slot (query, document, hard-negative documents, then
        # hard-negative queries), in the spaces of make_pair_dataset's dense indices; corpus
        # documents that are in no pair are numbered after the pairs' documents
        query_index, doc_index = data_lib.dense_id_maps(self.pairs, self.doc_ids)
        corpus_labels = tf.constant([doc_index[d] for d in self.doc_ids], tf.float32)
        query_labels = tf.constant([query_index[q] for q in self.query_ids], tf.float32)
        columns = {
            "query_text": [p[1] for p in self.pairs],
            "document_text": [p[3] for p in self.pairs],
            "labels": np.array([[query_index[p[0]], doc_index[p[2]]] for p in self.pairs],
                               dtype=np.float32),
            "query_row": np.array([self._query_row[p[0]] for p in self.pairs], np.int32),
            "positive_row": np.array([self._positive_row[p[2]] for p in self.pairs], np.int32),
        }
        batches = data_lib.epoch_ordered_batches(columns, len(self.pairs), batch_size,
                                                  shuffle, seed)
        corpus_texts = tf.constant(self.doc_texts)
        query_texts = tf.constant(self.query_texts)
        doc_table, query_table = self._document_table, self._query_table
        hd, hq = self.num_hard_documents, self.num_hard_queries
        query_tokenizer, doc_tokenizer = self.query_tokenizer, self.document_tokenizer

        @tf.autograph.experimental.do_not_convert
        def tokenize(batch):
            features = data_lib.pair_features(query_tokenizer, doc_tokenizer,
                                              batch["query_text"], batch["document_text"])
            rows = tf.gather(doc_table.read_value(), batch["query_row"])  # [B, Hd]
            data_lib.add_grouped_features(features, doc_tokenizer,
                                          tf.gather(corpus_texts, rows), batch_size, hd,
                                          keys.HARD_NEGATIVE_DOCUMENT)
            labels = [batch["labels"], tf.gather(corpus_labels, rows)]
            if hq:
                rows = tf.gather(query_table.read_value()[:, :hq], batch["positive_row"])
                data_lib.add_grouped_features(features, query_tokenizer,
                                              tf.gather(query_texts, rows), batch_size, hq,
                                              keys.HARD_NEGATIVE_QUERY)
                labels.append(tf.gather(query_labels, rows))
            if padding == "longest":
                features = data_lib.trim_all_to_buckets(features, length_buckets)
            return features, tf.ensure_shape(tf.concat(labels, axis=1),
                                              [batch_size, 2 + hd + hq])

        if prefetch:
            ds = batches.map(tokenize, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
            return ds.prefetch(tf.data.AUTOTUNE)
        ds = batches.map(tokenize)
        options = tf.data.Options()
        options.experimental_optimization.inject_prefetch = False
        return ds.with_options(options)


class HardNegativeMiningCallback(keras.callbacks.Callback):
    """Refreshes a :class:`HardNegativeMiner`'s tables every ``every_n_steps`` training steps.

    The refresh encodes the corpus and the training queries with the model being fitted
    (``model.encode_documents`` / ``encode_queries`` through
    :func:`samtone_tf.towers.embedders.dual_encoder_fns` and
    :func:`samtone_tf.towers.embedders.encode_corpus`) and mines new negatives (see
    :mod:`samtone_tf.training.mining`); the dataset from ``miner.dataset(...)`` reads them from the
    next batch it produces on.

    Args:
      miner: the :class:`HardNegativeMiner` whose dataset is being fitted.
      every_n_steps: refresh after every this many training steps (counted over epochs).
      initial: at the start of training, ``"mine"`` (refresh with the initial model),
        ``"random"`` (:meth:`HardNegativeMiner.randomize`) or ``"keep"`` the current tables.
      progress: tqdm progress bars while encoding.
      verbose: print one line per refresh.

    Timing: ``self.refreshes`` is a list of dicts (``step``, ``seconds``, ``encode_seconds``,
    ``search_seconds``, ``documents``, ``queries``, ``docs_per_second``), one per refresh
    (the initial one has step 0). Each epoch's logs (hence ``History``) get
    ``mining_refreshes`` (refreshes during the epoch), ``mining_seconds`` (their total
    seconds) and ``mining_docs_per_second`` (of the last refresh, 0 if none yet).
    """

    def __init__(self, miner, every_n_steps, *, initial="mine", progress=False, verbose=0):
        super().__init__()
        if not isinstance(miner, HardNegativeMiner):
            raise ValueError(f"`miner` must be a HardNegativeMiner, got {type(miner).__name__}.")
        self.miner = miner
        self.every_n_steps = check_int(every_n_steps, "`every_n_steps`")
        if initial not in INITIAL_CHOICES:
            raise ValueError(f"`initial` must be one of {INITIAL_CHOICES}, got {initial!r}.")
        self.initial = initial
        self.progress = bool(progress)
        self.verbose = verbose
        self.refreshes = []
        self._step = 0
        self._epoch_start = 0

    def _refresh(self):
        timing = self.miner.refresh(self.model, progress=self.progress)
        timing["step"] = self._step
        self.refreshes.append(timing)
        if self.verbose:
            print(f"hard-negative refresh at step {self._step}: {timing['seconds']:.2f} s "
                  f"({timing['docs_per_second']:.0f} docs/s)")

    def on_train_begin(self, logs=None):
        if self.initial == "mine":
            self._refresh()
        elif self.initial == "random":
            self.miner.randomize()

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch_start = len(self.refreshes)

    def on_train_batch_end(self, batch, logs=None):
        self._step += 1
        if self._step % self.every_n_steps == 0:
            self._refresh()

    def on_epoch_end(self, epoch, logs=None):
        if logs is None:
            return
        these = self.refreshes[self._epoch_start:]
        logs["mining_refreshes"] = float(len(these))
        logs["mining_seconds"] = float(sum(t["seconds"] for t in these))
        logs["mining_docs_per_second"] = (float(self.refreshes[-1]["docs_per_second"])
                                          if self.refreshes else 0.0)
