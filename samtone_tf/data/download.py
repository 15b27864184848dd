"""Checksummed, atomic downloads of the public data sets (for users with internet).

:func:`download` streams a URL into a temporary file *inside the cache directory*,
hashes it while writing, checks the length against ``Content-Length`` and the digest
against the expected one, and only then renames it into place (``os.replace``, atomic
on one file system). Any failure — checksum mismatch, a response cut short, a dropped
connection, an HTTP error — raises :class:`DownloadError` and removes the temporary
file, so the cache never holds a half-written or unverified file under the final name.
A file already in the cache whose digest matches is reused without any request.

:func:`download_dataset` fetches an entry of :data:`DATASETS` (official locations):

* ``"scifact"``: BEIR SciFact, ``scifact.zip`` from the BEIR public host. The archive
  is checked against the MD5 BEIR publishes for it; after (path-safe) extraction every
  file is checked against its SHA-256 (:data:`SCIFACT_FILES`), then the folder is
  renamed into place; the result is a folder for :func:`samtone_tf.data.load_beir`.
* ``"squad-v1.1-train"``: the official SQuAD v1.1 ``train-v1.1.json``.
"""

import dataclasses
import hashlib
import http.client
import os
import tempfile
import urllib.error
import urllib.parse
import urllib.request
import zipfile
from typing import Dict, Optional

from samtone_tf._util import atomic_directory

__all__ = [
    "DATASETS",
    "SCIFACT_FILES",
    "DatasetSpec",
    "DownloadError",
    "download",
    "download_dataset",
    "file_digest",
    "verify_files",
]

_CHUNK = 1 << 16


class DownloadError(RuntimeError):
    """A download or its verification failed; nothing was left under the final name."""


@dataclasses.dataclass(frozen=True)
class DatasetSpec:
    """An official location and its checksums.

    Attributes:
      url: where to download from.
      filename: name in the cache directory.
      sha256: expected SHA-256 of the download, or None when only ``md5`` is published.
      md5: expected MD5 (as published by the host), or None.
      size: expected size in bytes, or None (informational; digests decide).
      extract_to: for archives, the folder (in the cache directory) that the archive's
        top-level folder of the same name becomes; None for plain files.
      files: for archives, ``{relative path: sha256}`` of the extracted files to verify.
    """

    url: str
    filename: str
    sha256: Optional[str] = None
    md5: Optional[str] = None
    size: Optional[int] = None
    extract_to: Optional[str] = None
    files: Optional[Dict[str, str]] = None


#: SHA-256 of the files in the official ``scifact.zip`` (under its ``scifact/`` folder).
#: ``queries.jsonl`` and both qrels equal the copies in the project's shared data.
#: ``corpus.jsonl`` does **not**: the official lines carry ``"metadata": {}``, which the
#: shared copy (MANIFEST sha256 f4a47c54...) lacks; adding it back to every record with
#: ``json.dumps`` reproduces this digest exactly (checked offline in tests).
SCIFACT_FILES = {
    "corpus.jsonl": "dec31c8182f3d744c7d2c09423756fd1d17cbef75808db13ba01cc0aab4d1ac6",
    "queries.jsonl": "8ff84a7c903f722981cd8d595c022660140c51867b27608a6d4910db86080313",
    "qrels/train.tsv": "a53f2114831916c096b6c37d9e54da68cef4efdcdbd5ed46533601af972acf1d",
    "qrels/test.tsv": "0864bb985e0ca2367ba217977e72004d549054b2b06666ed9d4825ac7c21284c",
}

#: Official homes. ``scifact``'s MD5 is the one in BEIR's README; SQuAD's SHA-256 and
#: size (30,288,272 bytes) are those widely pinned for ``train-v1.1.json`` (e.g. ParlAI).
DATASETS = {
    "scifact": DatasetSpec(
        url="https://public.ukp.informatik.tu-darmstadt.de/thakur/BEIR/datasets/scifact.zip",
        filename="scifact.zip",
        md5="5f7d1de60b170fc8027bb7898e2efca1",
        size=2_816_079,
        extract_to="scifact",
        files=SCIFACT_FILES,
    ),
    "squad-v1.1-train": DatasetSpec(
        url="https://rajpurkar.github.io/SQuAD-explorer/dataset/train-v1.1.json",
        filename="train-v1.1.json",
        sha256="3527663986b8295af4f7fcdff1ba1ff3f72d07d61a20f487cb238a6ef92fd955",
        size=30_288_272,
    ),
}


def file_digest(path, algorithm="sha256"):
    """Hex digest of a file, read in chunks."""
    h = hashlib.new(algorithm)
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _expected(sha256, md5):
    if sha256 is None and md5 is None:
        raise ValueError("pass the expected sha256 (or, where only that is published, md5).")
    if sha256 is not None:
        return "sha256", sha256.lower()
    return "md5", md5.lower()


def _remove(path):
    try:
        os.remove(path)
    except FileNotFoundError:
        pass


def download(url, sha256, cache_dir, filename=None, *, md5=None, progress=True, timeout=60.0):
    """Downloads ``url`` into ``cache_dir`` and verifies it; returns the file's path.

    Args:
      url: http(s) URL.
      sha256: expected SHA-256 hex digest (may be None only when ``md5`` is given).
      cache_dir: folder for the file (created if missing).
      filename: name in ``cache_dir``; default: the URL's last path component.
      md5: expected MD5, used when ``sha256`` is None (hosts that publish only MD5).
      progress: show a tqdm progress bar.
      timeout: socket timeout in seconds.

    Returns:
      the path ``cache_dir/filename``. If that file exists and its digest matches, it
      is returned at once with no network request; if it exists with another digest it
      is downloaded again (replaced only once the new copy verifies).

    Raises:
      DownloadError: HTTP error, connection failure, response shorter than its
        ``Content-Length`` or cut off, or digest mismatch. The temporary file is
        removed; an existing file under the final name is left as it was.
    """
    algorithm, expected = _expected(sha256, md5)
    if filename is None:
        filename = os.path.basename(urllib.parse.urlparse(url).path)
        if not filename:
            raise ValueError(f"cannot infer a file name from {url!r}; pass filename=.")
    cache_dir = os.fspath(cache_dir)
    os.makedirs(cache_dir, exist_ok=True)
    final = os.path.join(cache_dir, filename)
    if os.path.isfile(final) and file_digest(final, algorithm) == expected:
        return final

    from tqdm.auto import tqdm

    fd, tmp = tempfile.mkstemp(dir=cache_dir, prefix=f".{filename}.", suffix=".part")
    try:
        h = hashlib.new(algorithm)
        received = 0
        try:
            request = urllib.request.Request(url, headers={"User-Agent": "samtone-tf"})
            with urllib.request.urlopen(request, timeout=timeout) as response, os.fdopen(fd, "wb") as out:
                fd = None
                length = response.headers.get("Content-Length")
                length = int(length) if length is not None and length.isdigit() else None
                with tqdm(total=length, unit="B", unit_scale=True, desc=filename, disable=not progress) as bar:
                    while True:
                        chunk = response.read(_CHUNK)
                        if not chunk:
                            break
                        out.write(chunk)
                        h.update(chunk)
                        received += len(chunk)
                        bar.update(len(chunk))
                out.flush()
                os.fsync(out.fileno())
        except urllib.error.HTTPError as e:
            raise DownloadError(f"{url}: HTTP {e.code} {e.reason}.") from e
        except (urllib.error.URLError, http.client.HTTPException, OSError) as e:
            reason = getattr(e, "reason", e)
            raise DownloadError(f"{url}: connection failed or cut off after {received} bytes ({reason!r}).") from e
        if length is not None and received != length:
            raise DownloadError(
                f"{url}: received {received} bytes but Content-Length is {length}; the download was cut off."
            )
        actual = h.hexdigest()
        if actual != expected:
            raise DownloadError(
                f"{url}: {algorithm} mismatch: expected {expected}, got {actual} ({received} bytes). "
                "The file was not kept."
            )
        os.replace(tmp, final)
    except BaseException:
        if fd is not None:
            os.close(fd)
        _remove(tmp)
        raise
    return final


def verify_files(directory, expected: Dict[str, str]):
    """Checks ``{relative path: sha256}`` under ``directory``.

    Returns:
      list of ``(relative path, problem)`` — empty if all files exist and match.
    """
    problems = []
    for rel, digest in expected.items():
        path = os.path.join(directory, *rel.split("/"))
        if not os.path.isfile(path):
            problems.append((rel, "missing"))
        else:
            actual = file_digest(path)
            if actual != digest:
                problems.append((rel, f"sha256 {actual}, expected {digest}"))
    return problems


def _safe_extract(archive_path, target):
    with zipfile.ZipFile(archive_path) as zf:
        root = os.path.realpath(target)
        for member in zf.infolist():
            dest = os.path.realpath(os.path.join(target, member.filename))
            if dest != root and not dest.startswith(root + os.sep):
                raise DownloadError(f"{archive_path}: member {member.filename!r} would extract outside {target!r}.")
        zf.extractall(target)


def download_dataset(name, cache_dir, *, progress=True, registry=None) -> str:
    """Downloads (or reuses) a registered data set; returns its local path.

    Args:
      name: a key of :data:`DATASETS` (``"scifact"``, ``"squad-v1.1-train"``).
      cache_dir: cache folder.
      progress: tqdm progress bar.
      registry: mapping to look ``name`` up in (default :data:`DATASETS`).

    Returns:
      for ``scifact`` the extracted folder ``cache_dir/scifact`` (for
      :func:`samtone_tf.data.load_beir`); for ``squad-v1.1-train`` the JSON file.

    Raises:
      KeyError: unknown name. DownloadError: download or verification failed; an
      archive whose extracted files do not verify leaves no extracted folder.
    """
    registry = DATASETS if registry is None else registry
    if name not in registry:
        raise KeyError(f"unknown data set {name!r}; known: {sorted(registry)}.")
    spec = registry[name]
    cache_dir = os.fspath(cache_dir)
    if spec.extract_to is None:
        return download(spec.url, spec.sha256, cache_dir, spec.filename, md5=spec.md5, progress=progress)

    target = os.path.join(cache_dir, spec.extract_to)
    if os.path.isdir(target) and not verify_files(target, spec.files):
        return target
    archive = download(spec.url, spec.sha256, cache_dir, spec.filename, md5=spec.md5, progress=progress)
    # extracted and verified beside the cache, then one rename (an old copy that failed
    # verification is replaced only by a verified one). `out` is <scratch>/<extract_to>: the
    # archive's top-level folder of that name, extracted into the scratch folder, is it.
    with atomic_directory(target, exists="replace") as out:
        _safe_extract(archive, os.path.dirname(out))
        if not os.path.isdir(out):
            raise DownloadError(f"{archive}: no top-level folder {spec.extract_to!r} in the archive.")
        problems = verify_files(out, spec.files)
        if problems:
            detail = "; ".join(f"{rel}: {why}" for rel, why in problems)
            raise DownloadError(f"{archive}: extracted files do not verify ({detail}); nothing was extracted.")
    return target
