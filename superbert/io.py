"""Atomic file and directory writes: a killed process never leaves a half-written result."""
from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterator


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside `path`; on success it is renamed onto `path`.

    Works for a file or a directory written at the yielded path. On error the temporary is
    removed and `path` is left as it was.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    target = tmp / "payload"
    try:
        yield target
        if path.is_dir() and not path.is_symlink():
            # Swap directories: move the old one aside first so the rename cannot fail on it.
            old = tmp / "old"
            os.replace(path, old)
            os.replace(target, path)
        else:
            os.replace(target, path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


@contextlib.contextmanager
def staging_dir(beside: str | os.PathLike) -> Iterator[Path]:
    """A fresh temporary directory next to `beside` (same filesystem, so its files can be
    renamed into place), removed on exit whatever happens."""
    beside = Path(beside)
    beside.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{beside.name}.", suffix=".staging", dir=beside.parent))
    try:
        yield tmp
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def append_text_durably(path: str | os.PathLike, text: str) -> None:
    """Append a whole block in one write and fsync it, so a crash never leaves half a block."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, text.encode("utf-8"))
        os.fsync(fd)
    finally:
        os.close(fd)
