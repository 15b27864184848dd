"""The ``samtone-tf`` command line: ``train``, ``evaluate``, ``export``, ``analyze``,
``download``, ``info``."""

import argparse
import contextlib
import dataclasses
import json
import os
import sys
import time

import tensorflow as tf

import samtone_tf
from samtone_tf._util import atomic_write_json
from samtone_tf.data import download as download_lib
from samtone_tf.data.formats import format_names, get_format
from samtone_tf.data.pairs import PADDINGS
from samtone_tf.data.text import refuse_empty_text
from samtone_tf.evaluation import analysis
from samtone_tf.evaluation import run as evaluation
from samtone_tf.export import export_dual_encoder, export_index
from samtone_tf.precision import (CPU_BF16_FLAGS, PRECISIONS, cpu_flags, precision_scope,
                                  resolve_precision)
from samtone_tf.towers import pretrained
from samtone_tf.training import run as training
from samtone_tf.training import strategy as strategy_lib
from samtone_tf.training.resilience import NonFiniteLossError


def _info(args):
    info = {
        "samtone_tf": samtone_tf.__version__,
        "tensorflow": tf.__version__,
        "keras": samtone_tf.KERAS_VERSION,
        "keras_generation": 3 if samtone_tf.IS_KERAS3 else 2,
        "devices": [d.name for d in tf.config.list_logical_devices()],
        "tf_config_workers": strategy_lib.num_workers_in_tf_config(),
        "precision_auto": resolve_precision("auto"),
        "cpu_bf16_flags": sorted(cpu_flags() & set(CPU_BF16_FLAGS)),
    }
    if args.json:
        print(json.dumps(info, indent=2))
    else:
        for key, value in info.items():
            print(f"{key:18s} {value}")
    return 0


def _write_json(path, payload):
    if path:
        atomic_write_json(path, payload, indent=2)


def _split(args):
    """The split named on the command line, else the format's default (BEIR test, ReQA all)."""
    return args.split or get_format(args.format).default_split


def _evaluate(args):
    split = _split(args)
    corpus, queries, qrels = evaluation.load_eval_data(
        args.data, args.format, split, dev_fraction=args.dev_fraction, seed=args.seed)
    precision = evaluation.model_precision(args.model, args.precision)
    query_fn, doc_fn = evaluation.text_encoders(
        args.model, batch_size=args.batch_size, query_max_length=args.query_max_length,
        document_max_length=args.document_max_length, precision=precision)
    started = time.time()
    metrics = evaluation.evaluate_retrieval(query_fn, doc_fn, corpus, queries, qrels,
                                            batch_size=args.batch_size,
                                            progress=not args.quiet)
    seconds = time.time() - started
    print(f"{args.model} on {args.data} ({args.format}, split {split}), {precision}, "
          f"{seconds:.0f} s")
    print(evaluation.format_metrics(metrics))
    _write_json(args.output, dict(metrics, model=args.model, data=os.path.abspath(args.data),
                                  format=args.format, split=split, precision=precision,
                                  seconds=round(seconds, 1)))
    return 0


def _export(args):
    name = pretrained.pretrained_name(args.model)
    if name is None:
        raise SystemExit("samtone-tf export: --model must be 'pretrained:<name>' (a trained "
                         "model is exported by `samtone-tf train` into <output_dir>/export).")
    with precision_scope(args.precision) as precision:
        query_tok, doc_tok, spec = pretrained.dual_encoder_components(
            name, query_max_length=args.query_max_length,
            document_max_length=args.document_max_length)
        model = samtone_tf.DualEncoder(spec, architecture="sde", pooling="mean")
    path = export_dual_encoder(model, query_tok, doc_tok, args.output, overwrite=args.overwrite)
    print(f"wrote {path} (signatures: query_encoder, document_encoder; input `text`; "
          f"computes in {precision}, returns float32 embeddings)")
    if args.index_data:
        corpus, _, _ = evaluation.load_eval_data(args.index_data, args.format, _split(args))
        index_dir = args.index_output or os.path.join(args.output, "..",
                                                      os.path.basename(args.output) + "_index")
        index_path = export_index(path, list(corpus), list(corpus.values()), index_dir,
                                  k=args.k, batch_size=args.batch_size, overwrite=args.overwrite)
        print(f"wrote {index_path} ({len(corpus)} documents, top-{args.k} for raw-string queries)")
    return 0


def _parse_model_flags(values):
    """``["LABEL=SPEC", ...]`` -> ``{label: spec}`` (ValueError naming a malformed flag)."""
    models = {}
    for value in values:
        label, sep, spec = value.partition("=")
        label, spec = label.strip(), spec.strip()
        if not sep or not label or not spec:
            raise ValueError(f"--model must be LABEL=SPEC (e.g. minilm=pretrained:minilm-l6), "
                             f"got {value!r}.")
        if label in models:
            raise ValueError(f"--model label {label!r} is given twice.")
        models[label] = spec
    return models


def _analyze(args):
    models = _parse_model_flags(args.model)
    split = _split(args)
    corpus, queries, qrels = evaluation.load_eval_data(
        args.data, args.format, split, dev_fraction=args.dev_fraction, seed=args.split_seed)
    started = time.time()
    result = analysis.analyze(
        models, corpus, queries, qrels, args.output_dir, max_pairs=args.max_pairs,
        seed=args.seed, batch_size=args.batch_size, progress=not args.quiet,
        similarity=args.similarity, query_max_length=args.query_max_length,
        document_max_length=args.document_max_length, precision=args.precision,
        extra_config={"data": os.path.abspath(args.data), "format": args.format,
                      "split": split})
    seconds = time.time() - started
    print(f"analysed {len(models)} model(s) on {result['config']['num_pairs']} pairs of "
          f"{args.data} ({args.format}, split {split}), {seconds:.0f} s; wrote "
          f"{os.path.join(args.output_dir, 'analysis.json')} and the figures")
    keys = ("alignment", "uniformity_all", "anisotropy_query", "anisotropy_document",
            "top1_similarity_median", "same_tower_ratio_median")
    print("| model | " + " | ".join(keys) + " |")
    print("|---" * (len(keys) + 1) + "|")
    for label, entry in result["models"].items():
        cells = [entry["report"][k] for k in keys]
        print(f"| {label} | " + " | ".join("n/a" if c is None else f"{c:.4f}" for c in cells)
              + " |")
    return 0


def _train(args):
    config = (training.TrainConfig.from_file(args.config) if args.config
              else training.TrainConfig())
    overrides = {}
    for field in dataclasses.fields(training.TrainConfig):
        value = getattr(args, field.name, None)
        if value is not None:
            overrides[field.name] = value
    config = dataclasses.replace(config, **overrides)
    summary = training.train(config, verbose=0 if args.quiet else 1)
    print(json.dumps({k: v for k, v in summary.items() if k != "config"}, indent=2))
    return 0


def _download(args):
    path = download_lib.download_dataset(args.name, args.to, progress=not args.quiet)
    print(f"{args.name}: {path} (checksums verified)")
    return 0


def _bool(text):
    lowered = str(text).lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true/false, got {text!r}")


def _add_train_flags(parser):
    types = {bool: _bool, int: int, float: float, str: str}
    choices = {"precision": PRECISIONS, "padding": PADDINGS, "format": format_names(),
               "eval_format": format_names()}
    for field in dataclasses.fields(training.TrainConfig):
        kind = type(field.default) if field.default is not None else next(
            (t for t in (int, float) if t.__name__ in str(field.type)), str)
        parser.add_argument("--" + field.name.replace("_", "-"), dest=field.name,
                            type=types.get(kind, str), default=None,
                            choices=choices.get(field.name),
                            help=f"(default {field.default!r})")


_STRICT_HELP = ("refuse a document or query with an empty text (default: a warning counts "
                "them and they are embedded as empty text)")


def _empty_text_policy(args):
    """``--strict``: the data loaders refuse empty texts, as ``strict_text=True`` does."""
    if not getattr(args, "strict", False):
        return contextlib.nullcontext()
    return refuse_empty_text()


def _add_precision_flag(parser, what):
    parser.add_argument(
        "--precision", default="auto", choices=PRECISIONS,
        help=f"compute precision of {what} (default auto: bfloat16 on TPUs, GPUs of "
             "compute capability >= 8.0 and CPUs with AMX-BF16 or AVX512-BF16; float32 "
             "elsewhere); embeddings are float32 either way")


def build_parser():
    parser = argparse.ArgumentParser(
        prog="samtone-tf",
        description="Train, evaluate and export dual-encoder retrievers with SamToNe / DANCE "
                    "contrastive losses.")
    sub = parser.add_subparsers(dest="command", required=True)

    info = sub.add_parser("info", help="versions, Keras generation and devices in use")
    info.add_argument("--json", action="store_true", help="print JSON")
    info.set_defaults(func=_info)

    ev = sub.add_parser("evaluate", help="exact whole-corpus retrieval metrics")
    ev.add_argument("--model", required=True,
                    help="'pretrained:minilm-l6' or a SavedModel folder from `export`/`train`")
    ev.add_argument("--data", required=True, help="BEIR folder or SQuAD v1.1 JSON file")
    ev.add_argument("--format", required=True, choices=format_names())
    ev.add_argument("--split", default=None,
                    help="BEIR qrels split (default test); squad: all (default), train or dev")
    ev.add_argument("--dev-fraction", type=float, default=0.2,
                    help="squad train/dev split by article (default 0.2)")
    ev.add_argument("--seed", type=int, default=0, help="squad split seed (default 0)")
    ev.add_argument("--batch-size", type=int, default=64)
    ev.add_argument("--query-max-length", type=int, default=None,
                    help="pretrained models only (default: the model's, 256)")
    ev.add_argument("--document-max-length", type=int, default=None,
                    help="pretrained models only (default: the model's, 256)")
    ev.add_argument("--output", default=None, help="write the metrics as JSON here")
    ev.add_argument("--quiet", action="store_true", help="no progress bars")
    ev.add_argument("--strict", action="store_true", help=_STRICT_HELP)
    _add_precision_flag(ev, "a pretrained model (an exported model computes in the "
                            "precision it was exported in)")
    ev.set_defaults(func=_evaluate)

    ex = sub.add_parser("export", help="SavedModel with raw-string query/document signatures")
    ex.add_argument("--model", required=True, help="'pretrained:minilm-l6'")
    ex.add_argument("--output", required=True, help="SavedModel folder to create")
    ex.add_argument("--query-max-length", type=int, default=64)
    ex.add_argument("--document-max-length", type=int, default=256)
    ex.add_argument("--overwrite", action="store_true")
    ex.add_argument("--index-data", default=None,
                    help="also export a top-k index over this corpus (BEIR folder or SQuAD JSON)")
    ex.add_argument("--format", default="beir", choices=format_names())
    ex.add_argument("--split", default=None)
    ex.add_argument("--index-output", default=None)
    ex.add_argument("--k", type=int, default=100)
    ex.add_argument("--batch-size", type=int, default=64)
    ex.add_argument("--strict", action="store_true", help=_STRICT_HELP)
    _add_precision_flag(ex, "the exported SavedModel")
    ex.set_defaults(func=_export)

    an = sub.add_parser("analyze", help="embedding statistics and t-SNE / histogram figures "
                                        "of one or more models on positive pairs")
    an.add_argument("--model", required=True, action="append", metavar="LABEL=SPEC",
                    help="repeatable; SPEC is 'pretrained:minilm-l6' or a SavedModel folder "
                         "from `export`/`train`")
    an.add_argument("--data", required=True, help="BEIR folder or SQuAD v1.1 JSON file")
    an.add_argument("--format", default="beir", choices=format_names())
    an.add_argument("--split", default=None,
                    help="BEIR qrels split (default test); squad: all (default), train or dev")
    an.add_argument("--dev-fraction", type=float, default=0.2,
                    help="squad train/dev split by article (default 0.2)")
    an.add_argument("--split-seed", type=int, default=0, help="squad split seed (default 0)")
    an.add_argument("--max-pairs", type=int, default=500,
                    help="(query, positive document) pairs sampled from the qrels")
    an.add_argument("--seed", type=int, default=0, help="pair sampling and t-SNE seed")
    an.add_argument("--similarity", default="cosine", choices=["cosine", "dot"])
    an.add_argument("--batch-size", type=int, default=64)
    an.add_argument("--query-max-length", type=int, default=None,
                    help="pretrained models only (default: the model's, 256)")
    an.add_argument("--document-max-length", type=int, default=None,
                    help="pretrained models only (default: the model's, 256)")
    an.add_argument("--output-dir", required=True,
                    help="receives tsne.png, top1_similarity.png, same_tower_ratio.png, "
                         "analysis.json")
    an.add_argument("--quiet", action="store_true", help="no progress bars")
    an.add_argument("--strict", action="store_true", help=_STRICT_HELP)
    _add_precision_flag(an, "pretrained models (an exported model computes in the "
                            "precision it was exported in)")
    an.set_defaults(func=_analyze)

    dl = sub.add_parser("download", help="download a data set from its official home and "
                                         "verify its checksums")
    dl.add_argument("name", choices=sorted(download_lib.DATASETS))
    dl.add_argument("--to", required=True, help="folder to download (and extract) into; a "
                                                "verified earlier download there is reused")
    dl.add_argument("--quiet", action="store_true", help="no progress bar")
    dl.set_defaults(func=_download)

    tr = sub.add_parser("train", help="fine-tune, evaluate and export (config file + flags)")
    tr.add_argument("--config", default=None, help="JSON file of TrainConfig settings")
    tr.add_argument("--quiet", action="store_true")
    tr.add_argument("--strict", action="store_true", help=_STRICT_HELP)
    _add_train_flags(tr)
    tr.set_defaults(func=_train)
    return parser


def main(argv=None):
    args = build_parser().parse_args(argv)
    try:
        with _empty_text_policy(args):
            return args.func(args)
    except (ValueError, FileNotFoundError, FileExistsError, ImportError,
            download_lib.DownloadError) as error:
        print(f"samtone-tf {args.command}: error: {error}", file=sys.stderr)
        return 2
    except RuntimeError as error:
        if not isinstance(error, NonFiniteLossError):
            raise
        print(f"samtone-tf {args.command}: training stopped: {error}", file=sys.stderr)
        return 3


if __name__ == "__main__":
    sys.exit(main())
