"""The precision setting: ``auto`` resolution, bfloat16 towers against float32, exports that
compute in bfloat16 and return float32, fit and replica gathering under bfloat16, errors.

Under Keras 3 the tiny tower is a keras-hub backbone built under the policy; under Keras 2
a TF-Hub-layout SavedModel exported in the precision (``export_tfhub_layout(precision=)``).
"""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

import samtone_tf
from samtone_tf import data as data_lib
from samtone_tf import precision as precision_lib
from samtone_tf._keras import IS_KERAS3, keras
from samtone_tf.precision import precision_scope, resolve_precision
from tests import _tiny

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BATCH, LENGTH = 8, 16


@pytest.fixture(autouse=True)
def _float32_policy_around_each_test():
    keras.mixed_precision.set_global_policy("float32")
    yield
    keras.mixed_precision.set_global_policy("float32")


# ----------------------------------------------------------------------------- auto
@pytest.mark.parametrize("flags, gpus, tpu, expected", [
    ({"avx512f", "amx_bf16", "amx_tile"}, [], False, "bfloat16"),      # Sapphire Rapids
    ({"avx512f", "avx512_bf16"}, [], False, "bfloat16"),               # Zen 4, Cooper Lake
    ({"avx2", "fma", "avx512f"}, [], False, "float32"),                # no bf16 instructions
    (set(), [], False, "float32"),                                     # flags unreadable
    ({"avx2"}, [(8, 0)], False, "bfloat16"),                           # A100
    ({"avx512_bf16"}, [(9, 0), (8, 6)], False, "bfloat16"),           # H100 + A40
    ({"avx512_bf16"}, [(7, 0)], False, "float32"),                    # V100: the GPU decides
    ({"avx512_bf16"}, [(8, 0), (7, 5)], False, "float32"),            # one pre-Ampere GPU
    ({"avx2"}, [], True, "bfloat16"),                                  # TPU
    ({"avx2"}, [(7, 0)], True, "bfloat16"),                            # TPU wins
])
def test_auto_resolution_from_faked_hardware(flags, gpus, tpu, expected):
    assert resolve_precision("auto", cpu_flags=flags, gpu_capabilities=gpus,
                             tpu=tpu) == expected
    # an explicit precision is never second-guessed
    for explicit in ("float32", "bfloat16", "float16"):
        assert resolve_precision(explicit, cpu_flags=flags, gpu_capabilities=gpus,
                                 tpu=tpu) == explicit


def test_cpu_flags_are_read_from_cpuinfo(tmp_path):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nmodel name\t: X\nflags\t\t: fpu avx512f avx512_bf16\n\n"
                       "processor\t: 1\nflags\t\t: fpu\n")
    assert precision_lib.cpu_flags(str(cpuinfo)) == {"fpu", "avx512f", "avx512_bf16"}
    assert precision_lib.cpu_flags(str(tmp_path / "missing")) == frozenset()


@pytest.mark.parametrize("bad", ["fp8", "bf16", "", None, 16, "FLOAT32"])
def test_bad_precision_names_the_allowed_values(bad):
    with pytest.raises(ValueError, match="auto, float32, bfloat16, float16"):
        resolve_precision(bad)


def test_precision_scope_sets_and_restores_the_policy():
    with precision_scope("bfloat16") as resolved:
        assert resolved == "bfloat16"
        assert keras.mixed_precision.global_policy().name == "mixed_bfloat16"
        assert precision_lib.current_precision() == "bfloat16"
        with precision_scope(None) as inner:  # None leaves the policy alone
            assert inner == "bfloat16"
        with precision_scope("float16"):
            assert keras.mixed_precision.global_policy().name == "mixed_float16"
        assert keras.mixed_precision.global_policy().name == "mixed_bfloat16"
    assert keras.mixed_precision.global_policy().name == "float32"
    with pytest.raises(RuntimeError):
        with precision_scope("bfloat16"):
            raise RuntimeError("boom")
    assert keras.mixed_precision.global_policy().name == "float32"


# ---------------------------------------------------------------------- the towers
def _encoder(tmp_path, precision):
    if IS_KERAS3:
        with precision_scope(precision):
            return _tiny.tiny_backbone(seed=1)
    return _tiny.tiny_tfhub_encoder_path(tmp_path, seed=1, precision=precision)


def _features(seed=3):
    ids, mask = _tiny.random_tokens(BATCH, LENGTH, seed=seed)
    return {"token_ids": ids, "padding_mask": mask}


def test_bfloat16_encoding_matches_float32(tmp_path):
    reference = samtone_tf.DualEncoder(_encoder(tmp_path, "float32"), architecture="sde")
    model = samtone_tf.DualEncoder(_encoder(tmp_path, "bfloat16"), architecture="sde",
                                   precision="bfloat16")
    assert reference.compute_precision == "float32"
    assert model.compute_precision == "bfloat16"
    features = _features()
    want = reference.encode_documents(features).numpy()
    got = model.encode_documents(features)
    assert got.dtype == tf.float32
    got = got.numpy()
    assert not np.array_equal(got, want)  # it really computed in another precision
    cosine = np.sum(got * want, axis=1)  # unit vectors
    assert cosine.min() >= 0.999, cosine


def test_dual_encoder_precision_builds_string_specs_and_projection(tmp_path):
    path = _tiny.tiny_tfhub_encoder_path(tmp_path, seed=1, precision="bfloat16")
    model = samtone_tf.DualEncoder(path, architecture="ade", projection_dim=8,
                                   precision="bfloat16")
    assert model.query_projection.compute_dtype == "bfloat16"
    assert all(w.dtype == tf.float32 for w in model.trainable_weights)
    assert model.query_encoder.compute_precision == "bfloat16"
    assert keras.mixed_precision.global_policy().name == "float32"  # restored
    out = model({"query_token_ids": _features()["token_ids"],
                 "query_padding_mask": _features()["padding_mask"],
                 "document_token_ids": _features(4)["token_ids"],
                 "document_padding_mask": _features(4)["padding_mask"]})
    assert out.dtype == tf.float32
    np.testing.assert_allclose(np.linalg.norm(out.numpy(), axis=-1), 1.0, atol=1e-5)
    # a float32 SavedModel reports float32
    assert samtone_tf.TFHubEncoder(
        _tiny.tiny_tfhub_encoder_path(tmp_path, seed=1)).compute_precision == "float32"


def test_export_computed_in_bfloat16_returns_float32(tmp_path):
    from samtone_tf.evaluation import model_precision
    from samtone_tf.export import export_dual_encoder, load_exported, read_export_metadata
    from samtone_tf.data.tokenization import BertTextTokenizer, build_wordpiece_vocab

    texts = ["a cat purrs", "dogs bark at night", "fish swim in the sea", "", "the cat"]
    vocab = str(tmp_path / "vocab.txt")
    build_wordpiece_vocab(texts, 200, vocab)
    tokenizer = BertTextTokenizer(vocab, max_length=16)
    model = samtone_tf.DualEncoder(_encoder(tmp_path, "bfloat16"), architecture="sde",
                                   precision="bfloat16")
    path = export_dual_encoder(model, tokenizer, tokenizer, str(tmp_path / "export"))
    assert read_export_metadata(path)["precision"] == "bfloat16"
    loaded = load_exported(path)
    got = loaded.signatures["document_encoder"](text=tf.constant(texts))["embeddings"]
    assert got.dtype == tf.float32
    want = model.encode_documents(data_lib.trim_to_longest(tokenizer(tf.constant(texts))))
    np.testing.assert_allclose(got.numpy(), want.numpy(), atol=1e-5)
    # the export's precision is what evaluation reports; another one is refused
    assert model_precision(path, "auto") == "bfloat16"
    assert model_precision(path, "bfloat16") == "bfloat16"
    with pytest.raises(ValueError, match="exported in bfloat16.*--precision float32"):
        model_precision(path, "float32")


def test_fit_under_bfloat16_trains(tmp_path):
    model = samtone_tf.DualEncoder(_encoder(tmp_path, "bfloat16"), architecture="sde",
                                   projection_dim=16, precision="bfloat16")
    loss = samtone_tf.SamToNeLoss(temperature=0.05, same_tower="query")
    q, d = _features(3), _features(4)
    features = {"query_token_ids": q["token_ids"], "query_padding_mask": q["padding_mask"],
                "document_token_ids": d["token_ids"], "document_padding_mask": d["padding_mask"]}
    labels = np.stack([np.arange(BATCH)] * 2, 1).astype(np.float32)
    start = float(loss(labels, model(features)))
    model.compile(optimizer=keras.optimizers.Adam(1e-3), loss=loss)
    before = [np.array(w) for w in model.trainable_weights]
    history = model.fit(tf.data.Dataset.from_tensors((features, labels)).repeat(8), verbose=0)
    after = [np.array(w) for w in model.trainable_weights]
    assert all(w.dtype == np.float32 for w in after)  # float32 master weights
    assert all(np.isfinite(history.history["loss"]))
    moved = sum(not np.array_equal(b, a) for b, a in zip(before, after))
    assert moved > len(after) // 2, f"only {moved} of {len(after)} weights moved"
    assert float(loss(labels, model(features))) < start - 0.1


def _run_worker(tmp_path, mode, replicas, encoder_dir):
    out = tmp_path / f"{mode}_{replicas}.json"
    subprocess.run([sys.executable, "-m", "tests.precision_worker", mode, str(replicas),
                    str(encoder_dir), str(out)], cwd=ROOT, check=True, capture_output=True,
                   timeout=300)
    return json.loads(out.read_text())


def test_mirrored_bfloat16_equals_one_device(tmp_path):
    encoder_dir = tmp_path / "encoders"
    encoder_dir.mkdir()
    single = _run_worker(tmp_path, "single", 1, encoder_dir)
    mirrored = _run_worker(tmp_path, "mirrored", 2, encoder_dir)
    assert mirrored["replicas"] == 2 and single["replicas"] == 1
    for result in (single, mirrored):
        assert result["precision"] == "bfloat16"
        assert result["output_dtype"] == "float32"
        assert result["weight_dtypes"] == ["float32"]
    np.testing.assert_allclose(mirrored["before"], single["before"], atol=1e-6)
    # bfloat16 keeps 8 mantissa bits: the per-replica halves may round differently from
    # the whole batch, so the steps agree to a bfloat16 tolerance, not bit for bit
    np.testing.assert_allclose(mirrored["loss"], single["loss"], rtol=2e-2)
    assert len(single["weights"]) == len(mirrored["weights"]) > 0
    # the two steps moved the projection well past the tolerance, so equality is a check
    projection = [i for i, w in enumerate(single["weights"]) if len(w) == 32 * 8][-1]
    moved = np.abs(np.subtract(single["weights"][projection],
                               single["initial_weights"][projection])).max()
    assert moved > 0.1
    for w_single, w_mirrored in zip(single["weights"], mirrored["weights"]):
        np.testing.assert_allclose(w_mirrored, w_single, atol=2e-2)


# ------------------------------------------------------------------ padding buckets
def test_bucket_width_rounds_up_to_a_bucket_and_caps_at_the_length():
    cases = [(0, 128, 8), (1, 128, 8), (8, 128, 8), (9, 128, 16), (17, 128, 24),
             (33, 128, 48), (97, 128, 128), (128, 128, 128), (130, 128, 128), (40, 40, 40),
             (33, 40, 40), (5, 6, 6)]
    for width, max_length, expected in cases:
        assert int(data_lib.bucket_width(width, max_length)) == expected, (width, max_length)
    assert int(data_lib.bucket_width(5, 64, length_buckets=(4, 10))) == 10
    assert int(data_lib.bucket_width(11, 64, length_buckets=(4, 10))) == 64
    for bad in [(), (0, 8), (16, 8), (8, 8), ("8",), (True,)]:
        with pytest.raises(ValueError, match="length_buckets"):
            data_lib.bucket_width(5, 64, length_buckets=bad)


def test_training_batches_are_padded_to_their_bucket(tmp_path):
    from samtone_tf.data.tokenization import BertTextTokenizer, build_wordpiece_vocab

    rng = np.random.default_rng(0)
    words = ["cat", "dog", "fish", "bird", "tree", "river", "stone", "cloud"]
    queries = [" ".join(rng.choice(words, rng.integers(1, 6))) for _ in range(24)]
    # short documents first, then long ones: the batches' widths differ (no shuffle)
    docs = [" ".join(rng.choice(words, rng.integers(2, 6) if i < 12 else rng.integers(10, 36)))
            for i in range(24)]
    vocab = str(tmp_path / "vocab.txt")
    build_wordpiece_vocab(queries + docs, 100, vocab)
    tokenizers = (BertTextTokenizer(vocab, max_length=12), BertTextTokenizer(vocab, max_length=40))
    pairs = [(f"q{i}", q, f"d{i}", d) for i, (q, d) in enumerate(zip(queries, docs))]
    hard = [[docs[(i + 1) % 24], docs[(i + 5) % 24]] for i in range(24)]
    kwargs = dict(shuffle=False, hard_negatives=hard)
    full = list(data_lib.make_pair_dataset(pairs, tokenizers, 4, padding="max_length", **kwargs))
    trimmed = list(data_lib.make_pair_dataset(pairs, tokenizers, 4, **kwargs))
    assert len(full) == len(trimmed) == 6
    widths = set()
    for (f_full, l_full), (f_trim, l_trim) in zip(full, trimmed):
        np.testing.assert_array_equal(l_full, l_trim)
        for prefix, max_length in (("query_", 12), ("document_", 40),
                                   ("hard_negative_document_", 40)):
            ids, mask = f_trim[prefix + "token_ids"], f_trim[prefix + "padding_mask"]
            longest = int(tf.reduce_max(tf.reduce_sum(f_full[prefix + "padding_mask"], -1)))
            width = ids.shape[-1]
            assert width == int(data_lib.bucket_width(longest, max_length))
            assert longest <= width <= max_length
            np.testing.assert_array_equal(ids, f_full[prefix + "token_ids"][..., :width])
            np.testing.assert_array_equal(mask, f_full[prefix + "padding_mask"][..., :width])
            assert int(tf.reduce_sum(f_full[prefix + "padding_mask"][..., width:])) == 0
            widths.add((prefix, width))
    assert len({w for p, w in widths if p == "document_"}) > 1  # widths vary by batch
    with pytest.raises(ValueError, match="padding"):
        data_lib.make_pair_dataset(pairs, tokenizers, 4, padding="none")


def test_trimmed_batches_give_the_losses_of_full_padding(tmp_path):
    """The towers mask padding: a batch cut to its bucket gives the loss of the same batch
    at full length (float32, up to float rounding)."""
    model = samtone_tf.DualEncoder(_encoder(tmp_path, "float32"), architecture="sde")
    ids, mask = _tiny.random_tokens(BATCH, 40, seed=5, min_len=2)
    mask[:, 20:] = 0
    ids = ids * mask
    features = {"query_token_ids": ids, "query_padding_mask": mask,
                "document_token_ids": ids[::-1].copy(), "document_padding_mask": mask[::-1].copy()}
    cut = data_lib.trim_to_bucket(data_lib.trim_to_bucket(
        {k: tf.constant(v) for k, v in features.items()}, "query_"), "document_")
    assert cut["query_token_ids"].shape[-1] == 24
    np.testing.assert_allclose(model(cut).numpy(), model(features).numpy(), atol=1e-5)


# ------------------------------------------------------------------------ the CLI
@pytest.mark.parametrize("verb", ["train", "evaluate", "export", "analyze"])
def test_cli_refuses_a_bad_precision_naming_the_allowed_values(verb, capsys):
    from samtone_tf.cli import main

    with pytest.raises(SystemExit) as exit_info:
        main([verb, "--precision", "fp8"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "--precision" in err and "fp8" in err
    for name in precision_lib.PRECISIONS:
        assert repr(name) in err


def test_train_config_refuses_a_bad_precision():
    from samtone_tf.training import TrainConfig

    with pytest.raises(ValueError, match="auto, float32, bfloat16, float16"):
        TrainConfig(data="x", precision="half").validate()
    with pytest.raises(ValueError, match="padding"):
        TrainConfig(data="x", padding="none").validate()


def test_cli_info_reports_what_auto_resolves_to(capsys):
    from samtone_tf.cli import main

    assert main(["info", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["precision_auto"] == resolve_precision("auto")
    flags = precision_lib.cpu_flags()
    assert info["cpu_bf16_flags"] == sorted(flags & {"amx_bf16", "avx512_bf16"})
