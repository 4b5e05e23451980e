"""Storage helpers over fsspec: every stage reads and writes URIs (local paths or s3://...).

Models are Hugging Face directories. Torch and transformers need local paths, so a remote
directory is mirrored into a local cache to read it, and written locally then uploaded.
Writes are atomic: a reader never sees half a file or half a model.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import posixpath
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import fsspec
import pandas as pd


def is_remote(uri: str) -> bool:
    return "://" in uri and not uri.startswith("file://")


def join(root: str, *parts: str) -> str:
    if is_remote(root):
        return posixpath.join(root, *parts)
    return str(Path(root.removeprefix("file://"), *parts))


def fs_path(uri: str) -> tuple[fsspec.AbstractFileSystem, str]:
    fs, path = fsspec.core.url_to_fs(uri)
    return fs, path


def absolute(uri: str | None) -> str | None:
    """A local path made absolute (a consumer of an event or a report runs in another directory);
    a remote URI (s3://, hf:) or None unchanged."""
    if uri is None or is_remote(uri):
        return uri
    return os.path.abspath(uri.removeprefix("file://"))


def exists(uri: str) -> bool:
    fs, path = fs_path(uri)
    return fs.exists(path)


def _atomic_local(path: str, write) -> None:
    """``write(tmp)`` to a hidden ``.NAME.tmp-<pid>-<random>`` beside ``path``, then rename it over
    ``path``; afterwards the temp files that killed writers of the same file left are removed."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = str(target.parent / f".{target.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    _remove_dead_temps(target)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    return True


def _remove_dead_temps(target: Path) -> None:
    """Delete ``.NAME.tmp-<pid>-*`` beside ``target`` whose writer process is gone (SIGKILL, OOM, a
    lost machine): only files of dead pids, so a live concurrent writer's temp file is never touched."""
    for stale in target.parent.glob(f".{target.name}.tmp-*"):
        pid = stale.name.rsplit(".tmp-", 1)[1].split("-", 1)[0]
        if pid.isdigit() and not _pid_alive(int(pid)):
            with contextlib.suppress(OSError):
                stale.unlink()


def write_file(uri: str, write) -> str:
    """``write(local_path)``, then the file appears at ``uri`` whole: renamed into place locally,
    uploaded in one piece to object storage (an S3 object appears only when its upload completes)."""
    if not is_remote(uri):
        _atomic_local(uri.removeprefix("file://"), write)
        return uri
    with tempfile.TemporaryDirectory() as tmp:
        local = os.path.join(tmp, "file")
        write(local)
        fs, path = fs_path(uri)
        fs.put(local, path)
    return uri


def write_bytes(uri: str, data: bytes) -> str:
    if is_remote(uri):
        fs, path = fs_path(uri)
        with fs.open(path, "wb") as f:  # an S3 object appears only when the upload completes
            f.write(data)
    else:
        path = Path(uri.removeprefix("file://"))
        if path.is_file() and path.stat().st_size == len(data) and path.read_bytes() == data:
            return uri  # unchanged: keep the file (and its mtime, which downstream cache keys read)
        _atomic_local(str(path), lambda p: Path(p).write_bytes(data))
    return uri


def read_bytes(uri: str) -> bytes:
    fs, path = fs_path(uri)
    with fs.open(path, "rb") as f:
        return f.read()


def write_text(uri: str, text: str) -> str:
    return write_bytes(uri, text.encode("utf-8"))


def write_json(uri: str, obj) -> str:
    return write_text(uri, json.dumps(obj, indent=2, sort_keys=False, default=str) + "\n")


def read_json(uri: str):
    return json.loads(read_bytes(uri))


def write_parquet(df: pd.DataFrame, uri: str) -> str:
    buf = io.BytesIO()
    df.to_parquet(buf, index=False)
    return write_bytes(uri, buf.getvalue())


def read_parquet(uri: str, columns: list[str] | None = None) -> pd.DataFrame:
    fs, path = fs_path(uri)
    with fs.open(path, "rb") as f:
        return pd.read_parquet(f, columns=columns)


def frame_fingerprint(df: pd.DataFrame) -> str:
    """Content hash of a frame (row order and values), stable across processes."""
    h = hashlib.sha256()
    h.update(",".join(map(str, df.columns)).encode())
    h.update(pd.util.hash_pandas_object(df.astype("string").fillna("<NA>"), index=False).values.tobytes())
    return h.hexdigest()[:16]


def digest(*parts) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


def cache_root() -> Path:
    root = Path(os.environ.get("SELFTRAIN_CACHE", Path.home() / ".cache" / "selftrain"))
    root.mkdir(parents=True, exist_ok=True)
    return root


def content_id(uri: str):
    """Cheap identity of what is behind ``uri``: fsspec checksums (S3 ETags, local size+mtime)
    of the file, or of every file under a directory; None if nothing is there."""
    try:
        fs, path = fs_path(uri)
        if not fs.exists(path):
            return None
        if fs.isdir(path):
            return sorted((p.rsplit("/", 1)[-1], fs.checksum(p)) for p in fs.find(path))
        return fs.checksum(path)
    except Exception:  # not a URI after all
        return None


def local_dir(uri: str) -> str:
    """A local directory with the content of ``uri`` (the path itself when local).

    Remote directories are mirrored into the cache, keyed by URI *and* content, so a model
    rewritten at the same URI is downloaded again.
    """
    if not is_remote(uri):
        return uri.removeprefix("file://")
    mirror = cache_root() / "mirror"
    mirror.mkdir(parents=True, exist_ok=True)
    dest = mirror / digest(uri, content_id(uri))
    if not (dest / ".complete").exists():
        fs, path = fs_path(uri)
        tmp = Path(tempfile.mkdtemp(dir=mirror))
        fs.get(path.rstrip("/") + "/", str(tmp), recursive=True)
        (tmp / ".complete").touch()
        shutil.rmtree(dest, ignore_errors=True)
        tmp.rename(dest)
    return str(dest)


@contextlib.contextmanager
def output_dir(uri: str) -> Iterator[str]:
    """Yield a fresh local directory; on success it atomically becomes ``uri``.

    Locally: written beside the target, then renamed over it (the previous version stays
    intact if the body raises). Remotely: uploaded after the body finishes.
    """
    if is_remote(uri):
        with tempfile.TemporaryDirectory() as tmp:
            yield tmp
            fs, path = fs_path(uri)
            if fs.exists(path):
                fs.rm(path, recursive=True)
            fs.put(tmp.rstrip("/") + "/", path, recursive=True)
        return
    target = Path(uri.removeprefix("file://"))
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.parent / f".{target.name}.tmp-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        yield str(tmp)
        old = target.parent / f".{target.name}.old-{uuid.uuid4().hex[:8]}"
        if target.exists():
            target.rename(old)
        tmp.rename(target)
        shutil.rmtree(old, ignore_errors=True)
        # what a killed writer of this target left (one writer per target: none of these is live)
        for stale in [*target.parent.glob(f".{target.name}.tmp-*"), *target.parent.glob(f".{target.name}.old-*")]:
            shutil.rmtree(stale, ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
