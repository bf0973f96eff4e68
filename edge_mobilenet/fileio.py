"""Atomic file writes: a reader never sees a half-written artifact or report."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Iterator


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, suffix: str | None = None) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; rename it onto ``path`` only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix or path.suffix or ".tmp",
                               dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def write_bytes_atomic(path: str | os.PathLike, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    write_bytes_atomic(path, text.encode("utf-8"))


def write_json_atomic(path: str | os.PathLike, obj) -> None:
    write_text_atomic(path, json.dumps(obj, indent=2, sort_keys=False, default=_json_default) + "\n")


def _json_default(value):
    import numpy as np

    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def sha256_file(path: str | os.PathLike, chunk_bytes: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(chunk_bytes), b""):
            digest.update(chunk)
    return digest.hexdigest()


def read_json(path: str | os.PathLike, what: str, hint: str = ""):
    """The JSON value in ``path``; one-line EdgeError naming the file (missing, not UTF-8, empty, not JSON)."""
    return _parse(Path(path), what, hint, "JSON", json.loads, json.JSONDecodeError)


def read_toml(path: str | os.PathLike, what: str, hint: str = "") -> dict:
    """The TOML table in ``path``; one-line EdgeError naming the file when it can't be read."""
    import sys

    if sys.version_info >= (3, 11):
        import tomllib
    else:  # pragma: no cover
        import tomli as tomllib
    return _parse(Path(path), what, hint, "TOML", tomllib.loads, tomllib.TOMLDecodeError)


def _parse(path: Path, what: str, hint: str, kind: str, parse, decode_error):
    from edge_mobilenet.errors import EdgeError

    suffix = f" {hint}" if hint else ""
    if path.is_dir():
        raise EdgeError(f"{path}: is a folder, not a {what}{suffix}")
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise EdgeError(f"{path}: {what} does not exist{suffix}") from None
    except UnicodeDecodeError:
        raise EdgeError(f"{path}: not a {what} (not UTF-8 text)") from None
    except OSError as error:
        raise EdgeError(f"{path}: cannot read the {what} ({error.strerror or error})") from None
    if not text.strip():
        raise EdgeError(f"{path}: the {what} is empty")
    try:
        return parse(text)
    except decode_error as error:
        where = f" at line {error.lineno}" if getattr(error, "lineno", None) else ""
        message = getattr(error, "msg", None) or str(error).splitlines()[0]
        raise EdgeError(f"{path}: not valid {kind} ({message}{where})") from None


@contextlib.contextmanager
def signals_deferred() -> Iterator[None]:
    """Hold SIGINT and SIGTERM until the block ends: what it does (rename a file, record it) happens
    whole or not at all. Only in the main thread (elsewhere signals are not delivered anyway)."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield
        return
    held = {signal.SIGINT, signal.SIGTERM}
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, held)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


@contextlib.contextmanager
def locked(path: str | os.PathLike) -> Iterator[None]:
    """An exclusive advisory lock on ``path`` (created if missing) for a read-modify-write by several
    processes at once; released when the block ends or the process dies."""
    import fcntl

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+b") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
