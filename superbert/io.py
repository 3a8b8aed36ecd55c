"""File I/O with the project's guarantees: atomic writes (a killed process never leaves a
half-written result), durable appends, and reads that fail as one clear UserError."""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Mapping

from .cli import is_finite_number
from .errors import UserError


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


def read_text(path: str | os.PathLike, what: str = "file") -> str:
    """The whole of a UTF-8 text file; a missing, unreadable or non-UTF-8 file is one UserError
    naming `what` and the path."""
    path = Path(path)
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise UserError(f"{what} not found: {path}") from None
    except IsADirectoryError:
        raise UserError(f"{what} {path} is a directory, not a file") from None
    except PermissionError:
        raise UserError(f"{what} {path} is not readable (permission denied)") from None
    except UnicodeDecodeError as err:
        raise UserError(f"{what} {path} is not UTF-8 text ({err.reason} at byte {err.start})") from None
    except OSError as err:
        raise UserError(f"cannot read {what} {path}: {err.strerror or err}") from None


def file_digest(path: str | os.PathLike, algorithm: str = "sha256") -> str:
    """Hex digest of a file, read in 1 MiB blocks (checkpoint manifests, vocab identity)."""
    h = hashlib.new(algorithm)
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def read_json(path: str | os.PathLike, what: str = "JSON file") -> Any:
    """A JSON file's value; unreadable or malformed is one UserError naming `what` and the path."""
    text = read_text(path, what)
    try:
        return json.loads(text)
    except ValueError as err:
        raise UserError(f"{what} {path} is not valid JSON: {err}") from None


# ---- typed fields of files a user may have edited ------------------------------------------------
def _int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


# name -> (test, what the value must be); `check_fields` applies them
FIELD_KINDS: dict[str, tuple[Callable[[Any], bool], str]] = {
    "positive int": (lambda v: _int(v) and v > 0, "a positive integer"),
    "count": (lambda v: _int(v) and v >= 0, "an integer >= 0"),
    "positive number": (lambda v: is_finite_number(v) and v > 0, "a positive finite number"),
    "probability": (lambda v: is_finite_number(v) and 0 <= v < 1, "a number in [0, 1)"),
    "string": (lambda v: isinstance(v, str) and v != "", "a non-empty string"),
    "file name": (lambda v: isinstance(v, str) and v not in ("", ".", "..") and "/" not in v
                  and "\\" not in v, "a plain file name (no directories)"),
    "list": (lambda v: isinstance(v, list), "a list"),
    "object": (lambda v: isinstance(v, dict), "a JSON object"),
}


def check_fields(data: Mapping[str, Any], kinds: Mapping[str, str], source: str,
                 required: Iterable[str] = ()) -> None:
    """One UserError naming `source` and the field for the first value of `data` whose type
    or range is wrong (`kinds`: field -> a FIELD_KINDS name). Fields not present, or null,
    are not checked unless `required`."""
    for name in required:
        if data.get(name) is None:
            raise UserError(f"{source}: field {name!r} is missing")
    for name, kind in kinds.items():
        value = data.get(name)
        if value is None:
            continue
        test, what = FIELD_KINDS[kind]
        if not test(value):
            raise UserError(f"{source}: field {name!r} must be {what}, got {value!r}")
