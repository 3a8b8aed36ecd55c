"""Checks shared by the latency and search stages: numeric flags, output paths, record fields.

- `check_positive`: a flag that divides or scales a latency must be a positive finite number
  (inf, nan, 0 and negatives would flow silently into every latency and speedup).
- `check_output`: an output path may not be an existing directory (writing there used to
  delete it) nor the same file as one of the run's inputs.
- `record_field`: a value read from a sidecar or time.pt, type-checked, with an error naming
  the file and the field.
"""
from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any, Mapping

from ..cli import check_positive  # noqa: F401 - re-exported: the latency flags' checks
from ..errors import UserError


def _same_file(a: Path, b: Path) -> bool:
    if a.exists() and b.exists():
        return os.path.samefile(a, b)
    return a.resolve() == b.resolve()


def check_output(flag: str, path: str | os.PathLike,
                 inputs: Mapping[str, str | os.PathLike | None] = {}) -> None:
    """`--flag path` is where a run writes: not an existing directory, and not the same file
    as any of `inputs` (flag name -> path read by the run; empty or None entries skipped)."""
    out = Path(path)
    if out.is_dir():
        raise UserError(f"--{flag} {path} is an existing directory; give a file path (nothing "
                        f"in the directory is touched)")
    for name, given in inputs.items():
        if given and _same_file(out, Path(given)):
            raise UserError(f"--{flag} {path} is the same file as --{name} {given}, which this "
                            f"run reads; write somewhere else")


_TYPES = {int: "an integer", float: "a number", str: "a string", dict: "an object",
          list: "a list", bool: "true or false"}


def record_field(record: Mapping[str, Any], key: str, kind: type | tuple[type, ...], where: Any,
          default: Any = None, optional: bool = True) -> Any:
    """`record[key]` if it is of `kind` (a float field takes an int; bool is never a number),
    `default` if absent (or null) and `optional`; else one UserError naming `where` and `key`."""
    value = record.get(key) if isinstance(record, Mapping) else None
    if value is None:
        if optional:
            return default
        raise UserError(f"{where}: field {key!r} is missing")
    kinds = kind if isinstance(kind, tuple) else (kind,)
    if float in kinds:
        kinds = (*kinds, int)
    ok = isinstance(value, kinds) and not (isinstance(value, bool) and bool not in kinds)
    if ok and isinstance(value, float) and not math.isfinite(value):
        ok = False
    if not ok:
        want = " or ".join(_TYPES.get(k, k.__name__) for k in
                           (kind if isinstance(kind, tuple) else (kind,)))
        raise UserError(f"{where}: field {key!r} must be {want}, got {value!r}")
    return value
