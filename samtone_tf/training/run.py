"""One training run from a configuration: data -> tokenised pairs -> DualEncoder + loss ->
``model.fit`` (with checkpoints and TensorBoard logs) -> evaluation -> SavedModel export.

This is what ``samtone-tf train`` runs; everything it does is available as library calls.
"""

import dataclasses
import json
import math
import os
import time
import warnings
from typing import Optional

import tensorflow as tf

from samtone_tf._keras import KERAS_VERSION, keras, register_serializable
from samtone_tf._util import atomic_write_json, check_int
from samtone_tf.data.formats import get_format, load_data
from samtone_tf.data.pairs import check_padding, make_pair_dataset, training_pairs_from_qrels
from samtone_tf.data.tokenization import BertTextTokenizer
from samtone_tf.evaluation import run as evaluation
from samtone_tf.export import export_dual_encoder
from samtone_tf.losses import SamToNeLoss, validate_loss_options
from samtone_tf.precision import check_precision, resolve_precision
from samtone_tf.towers import pretrained
from samtone_tf.towers.encoders import check_dropout
from samtone_tf.towers.gradcache import check_mini_batch_size
from samtone_tf.towers.embedders import dual_encoder_fns
from samtone_tf.towers.model import DualEncoder
from samtone_tf.training import resilience
from samtone_tf.training import strategy as strategy_lib

LOSS_KEYS = ("temperature", "similarity", "same_tower", "bidirectional", "dual_weight",
             "partition", "mask_duplicates")
SCHEDULES = ("constant", "linear", "cosine")


@dataclasses.dataclass
class TrainConfig:
    """Every setting of a training run (the JSON config file holds any subset of these)."""

    # data
    data: str = ""
    format: str = "beir"                 # a registered format: beir | squad
    train_split: Optional[str] = None    # null: beir train; squad train articles (all with eval_data)
    eval_split: Optional[str] = None     # null: beir test; squad dev articles (all with eval_data)
    dev_fraction: float = 0.2            # squad: articles held out for evaluation
    data_seed: int = 0
    eval_data: Optional[str] = None      # a separate evaluation set (replaces the split)
    eval_format: Optional[str] = None    # its format; null: `format`
    max_train_pairs: Optional[int] = None
    # model
    encoder: str = "pretrained:minilm-l6"
    vocab: Optional[str] = None          # WordPiece vocab for non-pretrained encoders
    architecture: str = "sde"            # sde | ade | ade-spl
    projection_dim: Optional[int] = None
    pooling: str = "mean"
    query_max_length: int = 32
    document_max_length: int = 128
    learnable_temperature: bool = False
    precision: str = "auto"              # auto | float32 | bfloat16 | float16 (see precision.py)
    padding: str = "longest"             # longest (per batch, length buckets) | max_length
    dropout: Optional[float] = None      # encoder dropout rate; null keeps the checkpoint's
    # loss
    temperature: float = 0.05
    similarity: str = "cosine"
    same_tower: str = "query"
    bidirectional: bool = False
    dual_weight: float = 1.0
    partition: str = "separate"
    mask_duplicates: bool = True
    # optimisation
    batch_size: int = 32
    mini_batch_size: Optional[int] = None  # gradient caching: examples per mini-batch
    epochs: int = 1
    steps_per_epoch: Optional[int] = None
    learning_rate: float = 2e-5
    schedule: str = "linear"             # constant | linear (warmup + decay) | cosine
    warmup_steps: int = 0
    seed: int = 0
    # infrastructure
    strategy: str = "auto"               # auto | default | cpu:N (N logical CPU replicas)
    output_dir: str = "runs/latest"
    checkpoints: bool = True             # resumable checkpoints in <output_dir>/checkpoints
    checkpoint_every: Optional[int] = None  # steps between checkpoints (None: each epoch)
    tensorboard: bool = True
    evaluate: bool = True
    evaluate_before: bool = True         # also evaluate the untrained model (zero-shot)
    eval_batch_size: int = 64
    export: bool = True

    @classmethod
    def from_file(cls, path):
        with open(path, encoding="utf-8") as f:
            try:
                raw = json.load(f)
            except json.JSONDecodeError as error:
                raise ValueError(f"{path}: not valid JSON ({error}).") from error
        if not isinstance(raw, dict):
            raise ValueError(f"{path}: the config must be a JSON object.")
        return cls.from_dict(raw, source=path)

    @classmethod
    def from_dict(cls, raw, source="config"):
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(raw) - names)
        if unknown:
            raise ValueError(f"{source}: unknown setting(s) {unknown}; known: {sorted(names)}.")
        return cls(**raw)

    def validate(self):
        if not self.data:
            raise ValueError("`data` is required (a BEIR folder or a SQuAD JSON file).")
        get_format(self.format)
        if self.eval_format is not None:
            get_format(self.eval_format)
            if self.eval_data is None:
                raise ValueError("`eval_format` is given without `eval_data`.")
        if self.eval_data is not None and self.dev_fraction != TrainConfig.dev_fraction:
            warnings.warn(f"`dev_fraction` ({self.dev_fraction}) is unused: `eval_data` is "
                          "the evaluation set, so no articles are held out of `data`.",
                          UserWarning, stacklevel=2)
        check_precision(self.precision)
        check_padding(self.padding)
        if self.schedule not in SCHEDULES:
            raise ValueError(f"`schedule` must be one of {SCHEDULES}, got {self.schedule!r}.")
        for name in ("batch_size", "epochs", "query_max_length", "document_max_length",
                     "eval_batch_size"):
            check_int(getattr(self, name), f"`{name}`")
        for name in ("steps_per_epoch", "checkpoint_every"):
            check_int(getattr(self, name), f"`{name}`", allow_none=True)
        if not self.learning_rate > 0:
            raise ValueError(f"`learning_rate` must be > 0, got {self.learning_rate!r}.")
        if self.warmup_steps < 0:
            raise ValueError(f"`warmup_steps` must be >= 0, got {self.warmup_steps!r}.")
        if not (self.strategy in ("auto", "default") or self.strategy.startswith("cpu:")):
            raise ValueError(f"`strategy` must be 'auto', 'default' or 'cpu:N', got {self.strategy!r}.")
        validate_loss_options(temperature=self.temperature, similarity=self.similarity,
                              same_tower=self.same_tower, bidirectional=self.bidirectional,
                              dual_weight=self.dual_weight, partition=self.partition)
        check_mini_batch_size(self.mini_batch_size)
        if self.dropout is not None:
            check_dropout(self.dropout)
        if pretrained.pretrained_name(self.encoder) is None and not self.vocab:
            raise ValueError("`vocab` (a WordPiece vocab.txt) is required for encoder "
                             f"{self.encoder!r}; only 'pretrained:<name>' brings its own.")


def make_strategy(spec):
    """``auto``: :func:`samtone_tf.training.strategy.get_strategy`; ``default``: no distribution;
    ``cpu:N``: MirroredStrategy over N logical CPU devices (must run before TF initialises)."""
    if spec == "default":
        return tf.distribute.get_strategy()
    if spec.startswith("cpu:"):
        return strategy_lib.get_strategy(num_cpu_replicas=int(spec[4:]))
    return strategy_lib.get_strategy()


def learning_rate_schedule(config, total_steps):
    """Constant, or linear warmup followed by linear / cosine decay to 0 over ``total_steps``."""
    if config.schedule == "constant" and not config.warmup_steps:
        return config.learning_rate
    return WarmupDecay(config.learning_rate, total_steps, config.warmup_steps, config.schedule)


@register_serializable("WarmupDecay")
class WarmupDecay(keras.optimizers.schedules.LearningRateSchedule):
    """Linear warmup to ``peak`` over ``warmup_steps``, then ``kind`` decay to 0."""

    def __init__(self, peak, total_steps, warmup_steps=0, kind="linear"):
        self.peak = float(peak)
        self.total_steps = int(total_steps)
        self.warmup_steps = int(warmup_steps)
        self.kind = kind

    def __call__(self, step):
        step = tf.cast(step, tf.float32)
        warm = tf.cast(max(self.warmup_steps, 1), tf.float32)
        decay_len = tf.cast(max(self.total_steps - self.warmup_steps, 1), tf.float32)
        progress = tf.clip_by_value((step - self.warmup_steps) / decay_len, 0.0, 1.0)
        if self.kind == "cosine":
            decayed = 0.5 * (1.0 + tf.cos(math.pi * progress))
        elif self.kind == "linear":
            decayed = 1.0 - progress
        else:
            decayed = tf.ones_like(progress)
        warmup = tf.minimum(1.0, (step + 1.0) / warm) if self.warmup_steps else 1.0
        return self.peak * warmup * decayed

    def get_config(self):
        return dict(peak=self.peak, total_steps=self.total_steps,
                    warmup_steps=self.warmup_steps, kind=self.kind)


def _load_training_data(config):
    """``(train_pairs, (corpus, queries, qrels) for evaluation or None)``.

    Without ``eval_data`` one source is split (its format's train / held-out splits: BEIR
    qrels files, ReQA articles by ``dev_fraction``); with it, training reads ``data``
    (all of it for a format with a whole split, such as squad) and evaluation reads
    ``eval_data``."""
    fmt = get_format(config.format)
    split_options = dict(dev_fraction=config.dev_fraction, seed=config.data_seed)
    if config.eval_data is None:
        train_split = config.train_split or fmt.train_split
        eval_split = config.eval_split or fmt.heldout_split
        eval_source = (config.data, fmt.name)
    else:
        train_split = config.train_split or fmt.whole_split or fmt.train_split
        eval_fmt = get_format(config.eval_format or fmt.name)
        eval_split = config.eval_split or eval_fmt.default_split
        eval_source = (config.eval_data, eval_fmt.name)
    corpus, queries, qrels = load_data(config.data, fmt.name, train_split, **split_options)
    pairs = training_pairs_from_qrels(corpus, queries, qrels)
    eval_data = (load_data(*eval_source, eval_split, **split_options)
                 if config.evaluate else None)
    if config.max_train_pairs:
        pairs = pairs[:config.max_train_pairs]
    return pairs, eval_data


def _tokenizers(config):
    """The query and document tokenizers (the encoder itself is ``config.encoder``, which
    ``DualEncoder`` resolves)."""
    if pretrained.pretrained_name(config.encoder) is not None:
        model = pretrained.load_pretrained(config.encoder)
        return (model.tokenizer(config.query_max_length),
                model.tokenizer(config.document_max_length))
    return (BertTextTokenizer(config.vocab, config.query_max_length),
            BertTextTokenizer(config.vocab, config.document_max_length))


def train(config, *, strategy=None, verbose=1):
    """Runs ``config`` end to end; returns a dict of what happened (also written to
    ``<output_dir>/summary.json``)."""
    config.validate()
    strategy = strategy or make_strategy(config.strategy)

    os.makedirs(config.output_dir, exist_ok=True)
    keras.utils.set_random_seed(config.seed)
    pairs, eval_data = _load_training_data(config)
    precision = resolve_precision(config.precision)  # after the strategy: a TPU counts
    query_tok, doc_tok = _tokenizers(config)
    # "pretrained:<name>" stays a spec: DualEncoder resolves it, once, in its precision and
    # with `dropout` (a SavedModel variant under Keras 2)
    encoder_spec = config.encoder
    replicas = strategy.num_replicas_in_sync
    if config.batch_size % replicas:
        raise ValueError(f"`batch_size` {config.batch_size} is not divisible by the "
                         f"{replicas} replicas of the strategy.")

    def make_dataset():
        # A fresh dataset replays the same batches (see resilience.fit_resumable).
        return make_pair_dataset(pairs, (query_tok, doc_tok), config.batch_size,
                                          shuffle=True, seed=config.seed, repeat=True,
                                          padding=config.padding)

    dataset = make_dataset()
    steps_per_epoch = config.steps_per_epoch or len(pairs) // config.batch_size
    total_steps = steps_per_epoch * config.epochs

    with strategy.scope():
        model = DualEncoder(
            encoder_spec, architecture=config.architecture, projection_dim=config.projection_dim,
            pooling=config.pooling, learnable_temperature=config.learnable_temperature,
            initial_temperature=config.temperature, precision=precision,
            dropout=config.dropout, mini_batch_size=config.mini_batch_size)
        loss_kwargs = {k: getattr(config, k) for k in LOSS_KEYS}
        if config.learnable_temperature:
            loss_kwargs.update(similarity="dot", temperature=1.0)
        model.compile(
            optimizer=keras.optimizers.Adam(learning_rate_schedule(config, total_steps)),
            loss=SamToNeLoss(**loss_kwargs))
    # Build the variables now (checkpoints are restored into a built model), in replica
    # context: under MirroredStrategy a TF-Hub SavedModel's restored functions fail when
    # called in cross-replica context (inside `strategy.scope()` but outside `run`).
    sample_features, _ = next(iter(dataset.take(1)))
    strategy.run(tf.function(lambda features: model(features)), args=(sample_features,))

    callbacks = []
    if config.tensorboard:
        callbacks.append(keras.callbacks.TensorBoard(os.path.join(config.output_dir, "logs")))

    summary = {"config": dataclasses.asdict(config), "train_pairs": len(pairs),
               "replicas": replicas, "steps": total_steps,
               "keras": KERAS_VERSION, "precision": model.compute_precision}
    def run_evaluation(key):
        corpus, queries, qrels = eval_data
        query_fn, doc_fn = dual_encoder_fns(model, query_tok, doc_tok)
        started = time.time()
        summary[key] = evaluation.evaluate_retrieval(
            query_fn, doc_fn, corpus, queries, qrels, batch_size=config.eval_batch_size,
            progress=bool(verbose))
        summary[key + "_seconds"] = round(time.time() - started, 1)

    if config.evaluate and config.evaluate_before and eval_data is not None:
        run_evaluation("metrics_before")
    started = time.time()
    if config.checkpoints:
        # Restarting the same command after a crash or kill resumes from the last
        # checkpoint and ends with the weights of an uninterrupted run.
        outcome = resilience.fit_resumable(
            model, make_dataset, epochs=config.epochs, steps_per_epoch=steps_per_epoch,
            checkpoint_dir=os.path.join(config.output_dir, "checkpoints"),
            every_steps=config.checkpoint_every, callbacks=callbacks, verbose=verbose)
        loss_history = outcome["history"].get("loss", [])
        summary["resumed_from_step"] = outcome["resumed_from_step"]
    else:
        history = model.fit(dataset, epochs=config.epochs, steps_per_epoch=steps_per_epoch,
                            callbacks=[resilience.StopOnNonFiniteLoss()] + callbacks,
                            verbose=verbose,
                            shuffle=False)  # the dataset shuffles (deterministically, by seed)
        loss_history = history.history["loss"]
    summary["train_seconds"] = round(time.time() - started, 1)
    summary["loss_history"] = [float(x) for x in loss_history]
    if config.checkpoints:
        model.save_weights(os.path.join(config.output_dir, "final.weights.h5"))

    if config.evaluate and eval_data is not None:
        run_evaluation("metrics")
    if config.export:
        summary["export_dir"] = export_dual_encoder(
            model, query_tok, doc_tok, os.path.join(config.output_dir, "export"),
            overwrite=True)
    atomic_write_json(os.path.join(config.output_dir, "summary.json"), summary, indent=2)
    return summary
