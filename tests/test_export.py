"""SavedModel export: raw strings -> embeddings in a process that has only tensorflow and
tensorflow_text; atomic writes; the tensorflow-text requirement; the top-k index export
(TFRS BruteForce under Keras 2, pure TF under Keras 3) against retrieval.search.

Runs under Keras 3 (keras-hub and TF-Hub towers) and TF_USE_LEGACY_KERAS=1 (TF-Hub towers).
"""

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import tensorflow as tf

from samtone_tf import export as export_lib
from samtone_tf import serving
from samtone_tf._keras import IS_KERAS3, keras
from samtone_tf.export import export_dual_encoder, export_index, load_exported
from samtone_tf.towers.model import DualEncoder
from samtone_tf.evaluation.retrieval import search
from samtone_tf.data.tokenization import BertTextTokenizer, build_wordpiece_vocab
from tests import _tiny

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCIFACT = os.path.join(REPO, "..", "shared", "data", "scifact")
QUERY_LEN, DOC_LEN = 16, 48
TOWER_KINDS = ["kerashub", "tfhub"] if IS_KERAS3 else ["tfhub"]

LONG_TEXT = " ".join(["protein folding kinetics in mitochondria"] * 40)
TEXTS = [
    "",
    "Hello world",
    "Café naïve résumé — Ångström",  # accents (stripped by the uncased normalisation)
    "東京の研究 和 中文",  # CJK (split per character by BERT's basic tokenizer)
    "vitamin D 🙂🧬 deficiency",  # emoji (not in the vocabulary: [UNK])
    LONG_TEXT,  # longer than both max lengths: truncated
    "0-dimensional biomaterials lack inductive properties.",
]


def _run_python(code, tmp_path, env_extra=None, name="child.py"):
    """Runs ``code`` in a fresh interpreter with cwd=tmp_path (not the repository)."""
    script = tmp_path / name
    script.write_text(textwrap.dedent(code))
    env = dict(os.environ)
    env.pop("PYTHONPATH", None)  # the child must not find samtone_tf by accident
    env.update(env_extra or {})
    return subprocess.run(
        [sys.executable, str(script)], cwd=str(tmp_path), env=env,
        capture_output=True, text=True, timeout=240,
    )


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    return tmp_path_factory.mktemp("export")


@pytest.fixture(scope="module")
def tokenizers(workdir):
    vocab = str(workdir / "vocab.txt")
    build_wordpiece_vocab(TEXTS[1:] + ["Café au lait", "東京 大学"], 400, vocab)
    return BertTextTokenizer(vocab, max_length=QUERY_LEN), BertTextTokenizer(vocab, max_length=DOC_LEN)


def _make_model(kind, workdir, architecture="ade"):
    keras.utils.set_random_seed(0)
    if kind == "kerashub":
        specs = (_tiny.tiny_backbone(0), _tiny.tiny_backbone(1))
    else:
        specs = (_tiny.tiny_tfhub_encoder_path(workdir, 0), _tiny.tiny_tfhub_encoder_path(workdir, 1))
    if architecture == "sde":
        return DualEncoder(specs[0], architecture="sde", projection_dim=8)
    return DualEncoder(specs[0], specs[1], architecture=architecture, projection_dim=8)


@pytest.fixture(scope="module")
def exported(workdir, tokenizers):
    """{kind: (model, export path)}; ADE towers so queries and documents really differ."""
    out = {}
    for kind in TOWER_KINDS:
        model = _make_model(kind, workdir)
        out[kind] = (model, export_dual_encoder(model, *tokenizers, str(workdir / f"model_{kind}")))
    return out


def _library_embeddings(model, tokenizers, texts):
    q = model.encode_queries(tokenizers[0](tf.constant(texts)), training=False).numpy()
    d = model.encode_documents(tokenizers[1](tf.constant(texts)), training=False).numpy()
    return q, d


# ------------------------------------------------------------------ fresh-process reload
CHILD_LOAD = """
    import json, sys
    import numpy as np
    import tensorflow as tf
    import tensorflow_text  # noqa: F401  registers the tokenizer's ops
    path, texts_file, out_file = {path!r}, {texts!r}, {out!r}
    texts = json.load(open(texts_file, encoding="utf-8"))
    runs = []
    for _ in range(2):  # two independent loads: must agree exactly
        loaded = tf.saved_model.load(path)
        q = loaded.signatures["query_encoder"](text=tf.constant(texts))["embeddings"]
        d = loaded.signatures["document_encoder"](text=tf.constant(texts))["embeddings"]
        runs.append((q.numpy(), d.numpy(), str(q.dtype)))
    forbidden = sorted(m for m in sys.modules
                       if m.split(".")[0] in ("samtone_tf", "keras_hub", "keras_nlp", "tests"))
    np.savez(out_file, q1=runs[0][0], d1=runs[0][1], q2=runs[1][0], d2=runs[1][1])
    print(json.dumps({{"forbidden": forbidden, "dtype": runs[0][2]}}))
"""


@pytest.mark.parametrize("kind", TOWER_KINDS)
def test_reload_in_fresh_process_matches_library(kind, exported, tokenizers, tmp_path):
    model, path = exported[kind]
    texts_file = tmp_path / "texts.json"
    texts_file.write_text(json.dumps(TEXTS, ensure_ascii=False), encoding="utf-8")
    out_file = str(tmp_path / "out.npz")
    result = _run_python(CHILD_LOAD.format(path=path, texts=str(texts_file), out=out_file), tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    info = json.loads(result.stdout.strip().splitlines()[-1])
    assert info["forbidden"] == [], info  # only tensorflow + tensorflow_text were needed
    assert info["dtype"] == "<dtype: 'float32'>"
    got = np.load(out_file)

    # The long text really is longer than both max lengths (so truncation was exercised).
    for tok in tokenizers:
        assert int(tok(tf.constant([LONG_TEXT]))["padding_mask"].numpy().sum()) == tok.max_length
    q_ref, d_ref = _library_embeddings(model, tokenizers, TEXTS)
    assert got["q1"].shape == q_ref.shape == (len(TEXTS), 8)
    np.testing.assert_allclose(got["q1"], q_ref, rtol=0, atol=1e-5)
    np.testing.assert_allclose(got["d1"], d_ref, rtol=0, atol=1e-5)
    # Determinism: a second load gives bit-identical results.
    np.testing.assert_array_equal(got["q1"], got["q2"])
    np.testing.assert_array_equal(got["d1"], got["d2"])
    # Separate towers and separate lengths: the two signatures are not the same function,
    # and the texts are not all mapped to one vector.
    assert np.abs(got["q1"] - got["d1"]).max() > 1e-3
    assert np.abs(got["q1"] - got["q1"][:1]).max() > 1e-3


def test_signatures_take_text_and_return_embeddings(exported):
    _, path = exported[TOWER_KINDS[0]]
    loaded = load_exported(path)
    assert {"query_encoder", "document_encoder"} <= set(loaded.signatures)
    for name in ("query_encoder", "document_encoder"):
        fn = loaded.signatures[name]
        args, kwargs = fn.structured_input_signature
        assert args == ()
        assert set(kwargs) == {"text"}
        assert kwargs["text"].dtype == tf.string and kwargs["text"].shape.as_list() == [None]
        outputs = fn.structured_outputs
        assert set(outputs) == {"embeddings"}
        assert outputs["embeddings"].dtype == tf.float32
        assert outputs["embeddings"].shape.as_list() == [None, 8]
    # Zero texts in, zero rows out.
    assert loaded.signatures["query_encoder"](text=tf.constant([], tf.string))["embeddings"].shape == (0, 8)
    meta = json.load(open(os.path.join(path, export_lib.EXPORT_METADATA_FILE)))
    assert meta["embedding_dim"] == 8
    assert (meta["query_max_length"], meta["document_max_length"]) == (QUERY_LEN, DOC_LEN)


def test_sde_export_shares_the_tower(workdir, tokenizers, tmp_path):
    model = _make_model(TOWER_KINDS[-1], workdir, architecture="sde")
    # Same tokenizer for both sides: the two signatures must then agree.
    path = export_dual_encoder(model, tokenizers[0], None, str(tmp_path / "sde"))
    loaded = load_exported(path)
    q = loaded.query_encoder(tf.constant(TEXTS)).numpy()
    d = loaded.document_encoder(tf.constant(TEXTS)).numpy()
    np.testing.assert_allclose(q, d, atol=1e-6)
    np.testing.assert_allclose(q, _library_embeddings(model, (tokenizers[0],) * 2, TEXTS)[0], atol=1e-5)


# ------------------------------------------------------------------------------ atomicity
def _siblings(path):
    parent, name = os.path.split(os.fspath(path))
    return sorted(n for n in os.listdir(parent) if n.startswith(f".{name}."))


def test_existing_output_dir_is_an_error_unless_overwrite(exported, tokenizers, tmp_path):
    model, _ = exported[TOWER_KINDS[0]]
    target = tmp_path / "out"
    target.mkdir()
    (target / "marker").write_text("old")
    with pytest.raises(FileExistsError, match="overwrite=True"):
        export_dual_encoder(model, *tokenizers, str(target))
    assert (target / "marker").read_text() == "old"  # untouched
    path = export_dual_encoder(model, *tokenizers, str(target), overwrite=True)
    assert path == str(target)
    assert not (target / "marker").exists()
    assert (target / "saved_model.pb").exists()
    assert _siblings(target) == []  # no temporary or backup folders left behind
    loaded = load_exported(path)  # keep a reference: its functions need its variables
    np.testing.assert_allclose(
        loaded.query_encoder(tf.constant(TEXTS)).numpy(),
        _library_embeddings(model, tokenizers, TEXTS)[0], atol=1e-5,
    )


def test_failed_export_leaves_previous_state(exported, tokenizers, tmp_path, monkeypatch):
    model, _ = exported[TOWER_KINDS[0]]

    def broken_save(*args, **kwargs):
        raise OSError("disk full (simulated)")

    monkeypatch.setattr(tf.saved_model, "save", broken_save)
    fresh = tmp_path / "fresh"
    with pytest.raises(OSError, match="simulated"):
        export_dual_encoder(model, *tokenizers, str(fresh))
    assert not fresh.exists() and _siblings(fresh) == []

    old = tmp_path / "old"
    old.mkdir()
    (old / "marker").write_text("old")
    with pytest.raises(OSError, match="simulated"):
        export_dual_encoder(model, *tokenizers, str(old), overwrite=True)
    assert (old / "marker").read_text() == "old" and _siblings(old) == []


def test_bad_arguments(exported, tokenizers, tmp_path):
    model, _ = exported[TOWER_KINDS[0]]
    with pytest.raises(TypeError, match="tf.Module tokenizer"):
        export_dual_encoder(model, lambda t: t, None, str(tmp_path / "a"))
    with pytest.raises(TypeError, match="encode_queries"):
        export_dual_encoder(object(), *tokenizers, str(tmp_path / "b"))
    assert os.listdir(tmp_path) == []


# ------------------------------------------------------------------ tensorflow-text missing
def test_loading_without_tensorflow_text_fails_clearly(exported, tmp_path):
    _, path = exported[TOWER_KINDS[0]]
    # 1. A bare tf.saved_model.load without tensorflow_text cannot run the tokenizer's ops.
    bare = _run_python(f"""
        import sys
        sys.modules["tensorflow_text"] = None  # as if not installed
        import tensorflow as tf
        tf.saved_model.load({path!r})
    """, tmp_path, name="bare.py")
    assert bare.returncode != 0
    assert "not registered" in bare.stderr, bare.stderr[-2000:]
    # 2. load_exported says what is missing and how to fix it. serving.py imports nothing
    #    from samtone_tf, so a serving process can load it by path.
    helper = _run_python(f"""
        import importlib.util, sys
        sys.modules["tensorflow_text"] = None  # as if not installed
        spec = importlib.util.spec_from_file_location("vendored_serving", {serving.__file__!r})
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        assert not any(m.split(".")[0] == "samtone_tf" for m in sys.modules)
        try:
            module.load_exported({path!r})
        except ImportError as error:
            print("IMPORT_ERROR:", error)
            sys.exit(0)
        sys.exit("load_exported did not raise")
    """, tmp_path, name="helper.py")
    assert helper.returncode == 0, helper.stderr[-2000:]
    assert "IMPORT_ERROR:" in helper.stdout
    assert "tensorflow-text" in helper.stdout and "pip install" in helper.stdout
    # 3. The package itself imports without tensorflow_text (it is needed only to tokenise),
    #    so `samtone_tf.load_exported` gives the same message on the usual path, and building
    #    a tokenizer names the missing package instead of failing inside TensorFlow.
    package = _run_python(f"""
        import sys
        sys.modules["tensorflow_text"] = None  # as if not installed
        import samtone_tf
        for call in (lambda: samtone_tf.load_exported({path!r}),
                     lambda: samtone_tf.BertTextTokenizer({path!r} + "/assets/vocab.txt", 8)):
            try:
                call()
            except ImportError as error:
                print("IMPORT_ERROR:", str(error).replace("\\n", " "))
            else:
                sys.exit("no ImportError")
    """, tmp_path, name="package.py")
    assert package.returncode == 0, package.stderr[-2000:]
    messages = [l for l in package.stdout.splitlines() if l.startswith("IMPORT_ERROR:")]
    assert len(messages) == 2, package.stdout
    for message in messages:
        assert "tensorflow-text" in message and "pip install" in message, message


# ------------------------------------------------------------------------------ the index
@pytest.fixture(scope="module")
def corpus():
    """~150 (id, text) pairs: SciFact documents when present, else synthetic texts."""
    path = os.path.join(SCIFACT, "corpus.jsonl")
    if os.path.exists(path):
        rows = []
        with open(path, encoding="utf-8") as f:
            for line in f:
                doc = json.loads(line)
                rows.append((doc["_id"], (doc.get("title", "") + " " + doc["text"]).strip()))
                if len(rows) == 150:
                    break
    else:
        words = ["cell", "protein", "gene", "virus", "brain", "tumor", "drug", "dose", "risk"]
        rng = np.random.default_rng(0)
        rows = [(f"doc{i}", " ".join(rng.choice(words, 12))) for i in range(150)]
    return [r[0] for r in rows], [r[1] for r in rows]


def _assert_same_ranking(ids, scores, ref_ids, ref_scores, gap=1e-5):
    """Same scores (to ``gap``) and the same ids wherever a score is not within ``gap`` of
    a neighbour's (float summation order may swap near-ties)."""
    np.testing.assert_allclose(scores, ref_scores, rtol=0, atol=gap)
    padded = np.pad(ref_scores, ((0, 0), (1, 1)), constant_values=np.inf)
    clear = (np.abs(padded[:, 1:-1] - padded[:, :-2]) > gap) & (np.abs(padded[:, 1:-1] - padded[:, 2:]) > gap)
    assert clear.mean() > 0.9  # the check below is not vacuous
    np.testing.assert_array_equal(ids[clear], ref_ids[clear])


@pytest.mark.parametrize("backend", ["auto", "tf"])
def test_export_index_matches_exact_search(backend, exported, tokenizers, corpus, tmp_path):
    model, path = exported[TOWER_KINDS[0]]
    doc_ids, doc_texts = corpus
    k = 20
    out = export_index(path, doc_ids, doc_texts, str(tmp_path / "index"), k=k, batch_size=32,
                       backend=backend)
    meta = json.load(open(os.path.join(out, export_lib.EXPORT_METADATA_FILE)))
    expected_backend = (
        "tfrs.layers.factorized_top_k.BruteForce" if backend == "auto" and not IS_KERAS3
        else "tf.math.top_k"
    )
    assert meta["backend"] == expected_backend
    assert (meta["k"], meta["num_documents"]) == (k, len(doc_ids))

    queries = [t[:80] for t in doc_texts[:10]] + TEXTS  # doc prefixes, and odd texts
    loaded = load_exported(out)
    result = loaded.signatures["serving_default"](text=tf.constant(queries))
    assert result["ids"].dtype == tf.string and result["scores"].shape == (len(queries), k)

    q_ref = model.encode_queries(tokenizers[0](tf.constant(queries)), training=False).numpy()
    d_ref = model.encode_documents(tokenizers[1](tf.constant(doc_texts)), training=False).numpy()
    ref_scores, ref_idx = search(q_ref, [d_ref[:64], d_ref[64:]], k)
    ref_ids = np.array(doc_ids, dtype=object)[ref_idx]
    got_ids = np.vectorize(lambda b: b.decode())(result["ids"].numpy())
    _assert_same_ranking(got_ids, result["scores"].numpy(), ref_ids, ref_scores)
    # The "search" attribute is the same function.
    np.testing.assert_array_equal(loaded.search(tf.constant(queries))["ids"].numpy(), result["ids"].numpy())


def test_export_index_from_model_and_small_corpus(exported, tokenizers, tmp_path):
    """A DualEncoder (not an export folder) as the source; k larger than the corpus."""
    model, _ = exported[TOWER_KINDS[0]]
    doc_ids, doc_texts = ["a", "b", "c", "d", "e"], TEXTS[1:6]
    out = export_index(model, doc_ids, doc_texts, str(tmp_path / "index"), k=100,
                       query_tokenizer=tokenizers[0], document_tokenizer=tokenizers[1])
    loaded = load_exported(out)
    result = loaded.search(tf.constant(TEXTS))
    assert result["scores"].shape == (len(TEXTS), 5)
    q_ref, _ = _library_embeddings(model, tokenizers, TEXTS)
    d_ref = model.encode_documents(tokenizers[1](tf.constant(doc_texts)), training=False).numpy()
    ref_scores, ref_idx = search(q_ref, [d_ref], 100)
    np.testing.assert_allclose(result["scores"].numpy(), ref_scores, atol=1e-5)
    # Every query retrieves the whole corpus, each document once.
    for row in result["ids"].numpy():
        assert sorted(x.decode() for x in row) == doc_ids


def test_export_index_arguments(exported, tmp_path):
    _, path = exported[TOWER_KINDS[0]]
    with pytest.raises(ValueError, match="one id per text"):
        export_index(path, ["a"], ["x", "y"], str(tmp_path / "i"))
    with pytest.raises(ValueError, match="unique"):
        export_index(path, ["a", "a"], ["x", "y"], str(tmp_path / "i"))
    with pytest.raises(ValueError, match="k must be"):
        export_index(path, ["a"], ["x"], str(tmp_path / "i"), k=0)
    with pytest.raises(ValueError, match="backend"):
        export_index(path, ["a"], ["x"], str(tmp_path / "i"), backend="scann")
    if IS_KERAS3:  # tensorflow-recommenders refuses to import under Keras 3
        with pytest.raises(ImportError):
            export_index(path, ["a"], ["x"], str(tmp_path / "i"), backend="tfrs")
    assert not (tmp_path / "i").exists()


class _TFRSImportFails:
    """A meta path finder that makes ``import tensorflow_recommenders`` raise ``error``."""

    def __init__(self, error):
        self.error = error

    def find_spec(self, name, path=None, target=None):
        import importlib.util

        if name == "tensorflow_recommenders":
            return importlib.util.spec_from_loader(name, self)
        return None

    def create_module(self, spec):
        return None

    def exec_module(self, module):
        raise self.error


def _break_tfrs_import(monkeypatch, error):
    for name in [m for m in sys.modules if m.split(".")[0] == "tensorflow_recommenders"]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setattr(sys, "meta_path", [_TFRSImportFails(error)] + sys.meta_path)


def test_tfrs_import_error_means_unusable(monkeypatch):
    _break_tfrs_import(monkeypatch, ImportError("No module named 'tensorflow_recommenders'"))
    assert export_lib.tfrs_usable() is False


def test_tfrs_failing_otherwise_is_an_error_not_unusable(monkeypatch, tmp_path):
    _break_tfrs_import(monkeypatch, AttributeError("module 'keras' has no attribute 'xyz'"))
    with pytest.raises(RuntimeError, match=r"tensorflow_recommenders is installed but importing "
                       r"it failed with AttributeError: module 'keras' has no attribute 'xyz'"):
        export_lib.tfrs_usable()
    # export_index(backend="auto") does not silently pick the pure-TF index instead
    with pytest.raises(RuntimeError, match="importing it failed with AttributeError"):
        export_index("unused", ["a"], ["x"], str(tmp_path / "i"))
    assert not (tmp_path / "i").exists()
