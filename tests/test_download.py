"""Tests for samtone_tf.data.download against a local HTTP server on 127.0.0.1 (no internet)."""

import hashlib
import http.server
import io
import json
import os
import threading
import zipfile

import pytest

from samtone_tf.data import load_beir
from samtone_tf.data.download import (
    DATASETS,
    SCIFACT_FILES,
    DatasetSpec,
    DownloadError,
    download,
    download_dataset,
    file_digest,
    verify_files,
)
from tests import _requirements

pytestmark = pytest.mark.keras_independent  # run once: tests/conftest.py

DATA = os.path.normpath(os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data"))
SCIFACT = os.path.join(DATA, "scifact")
needs_data = _requirements.needs_data(SCIFACT)

# From MANIFEST.md (the shared copies).
QUERIES_SHA256 = "8ff84a7c903f722981cd8d595c022660140c51867b27608a6d4910db86080313"
SHARED_CORPUS_SHA256 = "f4a47c54e01f9dfe7f0cbbcae0e1df17c5a90d6553f3a9d5b1ba32184545b3d8"


class _Handler(http.server.BaseHTTPRequestHandler):
    """GET /<path>: the file under DATA, or an in-memory blob from ``server.blobs``.
    GET /truncated/<path>: Content-Length 1000 bytes longer than the body, then close.
    GET /dropped/<path>: correct Content-Length, half the body, then close."""

    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def do_GET(self):
        self.server.requests.append(self.path)
        mode, path = "full", self.path.lstrip("/")
        for prefix in ("truncated/", "dropped/"):
            if path.startswith(prefix):
                mode, path = prefix[:-1], path[len(prefix):]
        if path in self.server.blobs:
            body = self.server.blobs[path]
        else:
            full = os.path.join(DATA, *path.split("/"))
            if not os.path.isfile(full):
                self.send_error(404, "not found")
                return
            with open(full, "rb") as f:
                body = f.read()
        self.send_response(200)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(len(body) + (1000 if mode == "truncated" else 0)))
        self.end_headers()
        self.wfile.write(body if mode != "dropped" else body[: len(body) // 2])
        self.wfile.flush()
        self.close_connection = True


@pytest.fixture()
def server():
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    httpd.requests = []
    httpd.blobs = {}
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    httpd.base = f"http://127.0.0.1:{httpd.server_address[1]}/"
    yield httpd
    httpd.shutdown()
    httpd.server_close()
    thread.join(5)


def _listing(directory):
    return sorted(os.listdir(directory)) if os.path.isdir(directory) else []


@needs_data
def test_good_download_verifies_and_cached_file_makes_no_request(server, tmp_path):
    cache = tmp_path / "cache"
    path = download(server.base + "scifact/queries.jsonl", QUERIES_SHA256, cache, progress=False)
    assert path == os.path.join(str(cache), "queries.jsonl")
    assert file_digest(path) == QUERIES_SHA256
    with open(path, "rb") as a, open(os.path.join(SCIFACT, "queries.jsonl"), "rb") as b:
        assert a.read() == b.read()
    assert _listing(cache) == ["queries.jsonl"]  # no temporary file left
    assert server.requests == ["/scifact/queries.jsonl"]
    # Second call: verified cached copy, no request at all.
    again = download(server.base + "scifact/queries.jsonl", QUERIES_SHA256, cache, progress=False)
    assert again == path and server.requests == ["/scifact/queries.jsonl"]
    # A custom file name.
    named = download(server.base + "scifact/queries.jsonl", QUERIES_SHA256.upper(), cache, "q.jsonl", progress=False)
    assert os.path.basename(named) == "q.jsonl" and len(server.requests) == 2


@needs_data
def test_wrong_checksum_errors_and_leaves_nothing(server, tmp_path):
    cache = tmp_path / "cache"
    with pytest.raises(DownloadError, match=r"queries\.jsonl: sha256 mismatch: expected 0{64}, got " + QUERIES_SHA256):
        download(server.base + "scifact/queries.jsonl", "0" * 64, cache, progress=False)
    assert _listing(cache) == []


@needs_data
@pytest.mark.parametrize("mode", ["truncated", "dropped"])
def test_cut_off_response_errors_and_leaves_nothing(server, tmp_path, mode):
    cache = tmp_path / "cache"
    size = os.path.getsize(os.path.join(SCIFACT, "queries.jsonl"))
    expected_received = size if mode == "truncated" else size // 2
    expected_length = size + 1000 if mode == "truncated" else size
    with pytest.raises(DownloadError, match=rf"(received {expected_received} bytes but Content-Length is "
                                            rf"{expected_length}|cut off after {expected_received} bytes)"):
        download(server.base + f"{mode}/scifact/queries.jsonl", QUERIES_SHA256, cache, progress=False)
    assert _listing(cache) == []


@needs_data
def test_stale_cached_file_is_replaced_only_after_verification(server, tmp_path):
    cache = tmp_path / "cache"
    cache.mkdir()
    (cache / "queries.jsonl").write_bytes(b"stale")
    with pytest.raises(DownloadError):
        download(server.base + "truncated/scifact/queries.jsonl", QUERIES_SHA256, cache, progress=False)
    assert (cache / "queries.jsonl").read_bytes() == b"stale"  # untouched by the failed attempt
    path = download(server.base + "scifact/queries.jsonl", QUERIES_SHA256, cache, progress=False)
    assert file_digest(path) == QUERIES_SHA256 and _listing(cache) == ["queries.jsonl"]


def test_http_error_and_md5_and_argument_errors(server, tmp_path):
    with pytest.raises(DownloadError, match="HTTP 404"):
        download(server.base + "no/such/file", "0" * 64, tmp_path, progress=False)
    assert _listing(tmp_path) == []
    server.blobs["blob.bin"] = b"hello"
    md5 = hashlib.md5(b"hello").hexdigest()
    path = download(server.base + "blob.bin", None, tmp_path, md5=md5, progress=False)
    assert open(path, "rb").read() == b"hello"
    with pytest.raises(DownloadError, match="md5 mismatch"):
        download(server.base + "blob.bin", None, tmp_path, "other.bin", md5="f" * 32, progress=False)
    with pytest.raises(ValueError, match="expected sha256"):
        download(server.base + "blob.bin", None, tmp_path, progress=False)
    with pytest.raises(DownloadError, match="connection failed"):
        download("http://127.0.0.1:9/x", "0" * 64, tmp_path, progress=False, timeout=2)


def _zip(members):
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return buf.getvalue()


def _shared_scifact_members(tamper=False):
    members = {}
    for rel in ("corpus.jsonl", "queries.jsonl", "qrels/train.tsv", "qrels/test.tsv"):
        with open(os.path.join(SCIFACT, *rel.split("/")), "rb") as f:
            members["scifact/" + rel] = f.read()
    if tamper:
        members["scifact/qrels/test.tsv"] += b"1\t2\t1\n"
    return members


@needs_data
def test_download_dataset_extracts_verifies_and_reuses(server, tmp_path):
    blob = _zip(_shared_scifact_members())
    server.blobs["scifact.zip"] = blob
    files = dict(SCIFACT_FILES, **{"corpus.jsonl": SHARED_CORPUS_SHA256})  # the shared copy
    spec = DatasetSpec(url=server.base + "scifact.zip", filename="scifact.zip",
                       md5=hashlib.md5(blob).hexdigest(), extract_to="scifact", files=files)
    cache = tmp_path / "cache"
    path = download_dataset("scifact", cache, progress=False, registry={"scifact": spec})
    assert path == os.path.join(str(cache), "scifact")
    assert verify_files(path, files) == []
    assert _listing(cache) == ["scifact", "scifact.zip"]  # no staging folder left
    corpus, queries, qrels = load_beir(path, "test")
    assert (len(corpus), len(queries), len(qrels)) == (5183, 1109, 300)
    n = len(server.requests)
    download_dataset("scifact", cache, progress=False, registry={"scifact": spec})
    assert len(server.requests) == n  # verified folder reused, no request


@needs_data
def test_download_dataset_tampered_member_leaves_no_folder(server, tmp_path):
    blob = _zip(_shared_scifact_members(tamper=True))
    server.blobs["scifact.zip"] = blob
    files = dict(SCIFACT_FILES, **{"corpus.jsonl": SHARED_CORPUS_SHA256})
    spec = DatasetSpec(url=server.base + "scifact.zip", filename="scifact.zip",
                       md5=hashlib.md5(blob).hexdigest(), extract_to="scifact", files=files)
    cache = tmp_path / "cache"
    with pytest.raises(DownloadError, match=r"qrels/test\.tsv: sha256 [0-9a-f]{64}, expected 0864bb98"):
        download_dataset("scifact", cache, progress=False, registry={"scifact": spec})
    assert _listing(cache) == ["scifact.zip"]  # the (md5-verified) archive only


def test_download_dataset_rejects_path_traversal(server, tmp_path):
    blob = _zip({"scifact/ok.txt": b"x", "../evil.txt": b"y"})
    server.blobs["evil.zip"] = blob
    spec = DatasetSpec(url=server.base + "evil.zip", filename="evil.zip", sha256=hashlib.sha256(blob).hexdigest(),
                       extract_to="scifact", files={"ok.txt": hashlib.sha256(b"x").hexdigest()})
    with pytest.raises(DownloadError, match="outside"):
        download_dataset("evil", tmp_path / "c", progress=False, registry={"evil": spec})
    assert not (tmp_path / "evil.txt").exists() and _listing(tmp_path / "c") == ["evil.zip"]
    with pytest.raises(KeyError, match="unknown data set 'nope'"):
        download_dataset("nope", tmp_path)


@needs_data
def test_registry_digests_match_the_shared_data():
    # Registry entries are official; check what can be checked offline.
    spec = DATASETS["scifact"]
    assert spec.url.endswith("/BEIR/datasets/scifact.zip") and spec.md5 and spec.extract_to == "scifact"
    for rel in ("queries.jsonl", "qrels/train.tsv", "qrels/test.tsv"):
        assert file_digest(os.path.join(SCIFACT, *rel.split("/"))) == SCIFACT_FILES[rel], rel
    # The official corpus.jsonl = the shared copy with "metadata": {} on every record.
    h = hashlib.sha256()
    with open(os.path.join(SCIFACT, "corpus.jsonl"), encoding="utf-8") as f:
        for line in f:
            record = json.loads(line)
            record["metadata"] = {}
            h.update((json.dumps(record) + "\n").encode("utf-8"))
    assert h.hexdigest() == SCIFACT_FILES["corpus.jsonl"]
    assert file_digest(os.path.join(SCIFACT, "corpus.jsonl")) == SHARED_CORPUS_SHA256
    squad = DATASETS["squad-v1.1-train"]
    assert squad.filename == "train-v1.1.json" and len(squad.sha256) == 64 and squad.size == 30_288_272


@needs_data
def test_cli_download_verb_fetches_verifies_and_reports(server, tmp_path, monkeypatch, capsys):
    from samtone_tf import cli
    from samtone_tf.data import download as download_lib

    blob = _zip(_shared_scifact_members())
    server.blobs["scifact.zip"] = blob
    files = dict(SCIFACT_FILES, **{"corpus.jsonl": SHARED_CORPUS_SHA256})
    spec = DatasetSpec(url=server.base + "scifact.zip", filename="scifact.zip",
                       md5=hashlib.md5(blob).hexdigest(), extract_to="scifact", files=files)
    monkeypatch.setattr(download_lib, "DATASETS", {"scifact": spec})
    target = tmp_path / "data"
    assert cli.main(["download", "scifact", "--to", str(target), "--quiet"]) == 0
    out = capsys.readouterr().out
    assert str(target / "scifact") in out and "checksums verified" in out
    assert verify_files(str(target / "scifact"), files) == []
    # A tampered archive: exit code 2, the reason on stderr, no extracted folder.
    server.blobs["scifact.zip"] = _zip(_shared_scifact_members(tamper=True))
    bad = DatasetSpec(url=server.base + "scifact.zip", filename="scifact.zip",
                      md5=hashlib.md5(server.blobs["scifact.zip"]).hexdigest(),
                      extract_to="scifact", files=files)
    monkeypatch.setattr(download_lib, "DATASETS", {"scifact": bad})
    other = tmp_path / "other"
    assert cli.main(["download", "scifact", "--to", str(other), "--quiet"]) == 2
    assert "do not verify" in capsys.readouterr().err
    assert not (other / "scifact").exists()
    # An unknown name is refused by the parser (exit code 2 from argparse).
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["download", "no-such-set", "--to", str(other)])
    assert exit_info.value.code == 2
