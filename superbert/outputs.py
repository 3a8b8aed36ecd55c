"""Where a run writes: one rule for every output path of every script, checked when the run
starts, before any long work, so that a path the run could not write ends in one `error:` line
naming the flag and the path, with nothing written.

An output flag says what it is once, on its config field (`cli.flag(..., output=...)`):

    output_dir: str = flag(help="...", output=Output.dir(owns=("SST-2", "book_tasks.json"),
                                                        marker="book_tasks.json",
                                                        overwrite="overwrite_output_dir"))

and `cli.config_from_args` runs `check_outputs(cfg)` on every config it builds. The rule:

- a folder flag (`Output.dir`, `Output.cache`): the path is a folder or can be created (no file
  on the way up) and can be written; a file there is an error, not something to write into.
- a file flag (`Output.file`, `Output.append`): the path is not a folder, its folder can be
  created and written; a file already there must be one this kind of run wrote (it parses as
  the format, `fmt`): anything else is a user's file and is refused, never replaced or appended
  to.
- ownership (folders a script writes as a whole): every entry already in the folder must match
  the names the script writes (`owns`); with a `marker` (a record the script leaves in every
  folder it writes), a folder without it holds nobody's output of ours, so any entry there is
  foreign. A foreign entry is refused, named in the error, unless the `overwrite` flag is given.
  A `shared` folder (a run's root, where the script writes only the files and subfolders it
  names) may hold other files: they are never touched, and only the files it appends to are
  checked.
- inputs: an output folder may not be a folder the run reads from (an input folder, or the
  folder of an input file) nor one above it.

A cache folder that cannot be used is an error, like any output: the cache is asked for (the
evaluator's --cache_dir is off by default), and a run that silently goes on without it costs
every later run the work the cache was meant to save.
"""
from __future__ import annotations

import fnmatch
import os
import zipfile
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

from .errors import UserError


class Kind(StrEnum):
    FILE = "file"      # written whole (atomic replace)
    APPEND = "append"  # appended to by design (resumable datasets and results)
    DIR = "dir"        # a folder the run writes files into
    CACHE = "cache"    # a folder of derived files reused by later runs


@dataclass(frozen=True)
class Output:
    """What an output flag writes; see the module docstring for the rule it is checked by.

    `fmt(path)` raises UserError when an existing file is not of the flag's format (`what`);
    `appends` names the files a folder's run appends to (name -> (what, fmt)). `when(cfg)`
    says whether the flag is an output in this run (a flag read by one mode, written by
    another). `inputs` are the config fields the run reads. `also(cfg)` gives further paths the
    run writes derived from this one (name shown in errors, path, Output)."""

    kind: Kind
    what: str = ""
    fmt: Callable[[Path], None] | None = None
    owns: tuple[str, ...] = ()
    marker: str | None = None
    overwrite: str | None = None
    shared: bool = False
    beside: bool = False  # staged beside the folder and swapped in: its parent is written too
    appends: Mapping[str, tuple[str, Callable[[Path], None]]] = field(default_factory=dict)
    inputs: tuple[str, ...] = ()
    when: Callable[[Any], bool] | None = None
    also: Callable[[Any], Iterable[tuple[str, Path, "Output"]]] | None = None

    @classmethod
    def file(cls, what: str, fmt: Callable[[Path], None] | None = None, **kw: Any) -> "Output":
        return cls(Kind.FILE, what, fmt, **kw)

    @classmethod
    def append(cls, what: str, fmt: Callable[[Path], None], **kw: Any) -> "Output":
        return cls(Kind.APPEND, what, fmt, **kw)

    @classmethod
    def dir(cls, **kw: Any) -> "Output":
        return cls(Kind.DIR, **kw)

    @classmethod
    def cache(cls, **kw: Any) -> "Output":
        return cls(Kind.CACHE, shared=True, **kw)


OUTPUT_KEY = "superbert.output"


def output_specs(cls: type) -> dict[str, Output]:
    """field name -> Output of every output flag of config class `cls`."""
    import dataclasses
    return {f.name: f.metadata[OUTPUT_KEY] for f in dataclasses.fields(cls)
            if OUTPUT_KEY in f.metadata}


def check_outputs(cfg: Any) -> None:
    """Apply the rule to every output flag of `cfg` given a path in this run."""
    for name, spec in output_specs(type(cfg)).items():
        value = getattr(cfg, name)
        if not value or (spec.when is not None and not spec.when(cfg)):
            continue
        inputs = {n: getattr(cfg, n) for n in spec.inputs}
        overwrite = bool(getattr(cfg, spec.overwrite)) if spec.overwrite else False
        check_path(f"--{name}", Path(value), spec, inputs, overwrite)
        if spec.also is not None:
            for label, path, extra in spec.also(cfg):
                check_path(label, path, extra, inputs, overwrite)


# ---- the checks ---------------------------------------------------------------------------------
def check_path(label: str, path: Path, spec: Output,
               inputs: Mapping[str, Any] = {}, overwrite: bool = False) -> None:
    """One UserError, naming `label` and `path`, when the run could not write `path` as `spec`
    says (or would write over a user's files); nothing is written either way."""
    where = f"{label} {path}"
    folder = spec.kind in (Kind.DIR, Kind.CACHE)
    if path.is_dir() and not folder:
        raise UserError(f"{where} is a folder; this flag takes a file path (nothing in the "
                        f"folder is touched)")
    if path.exists() and not path.is_dir() and folder:
        raise UserError(f"{where} is a file; this flag takes a folder")
    existing = _existing_ancestor(label, path)
    if folder:
        _check_writable(where, path if path.is_dir() else existing)
        if spec.beside and path.is_dir():
            _check_writable(where, path.parent, "its parent folder ")
        _check_not_above_inputs(where, path, inputs)
        if path.is_dir():
            _check_owned(where, path, spec, overwrite)
            for name, (what, fmt) in ({} if overwrite else spec.appends).items():
                _check_format(f"{where}: {name}", path / name, fmt, append=True, what=what)
    else:
        _check_writable(where, path.parent if path.parent.is_dir() else existing)
        _check_not_an_input(where, path, inputs)
        if path.exists() and spec.fmt is not None:
            _check_format(where, path, spec.fmt, append=spec.kind == Kind.APPEND, what=spec.what)
        elif path.exists() and spec.kind == Kind.APPEND:
            _check_writable(where, path)


def _existing_ancestor(label: str, path: Path) -> Path:
    """The nearest folder at or above `path` that exists; a file on the way is an error."""
    for p in [path, *path.parents] if not path.exists() else [path.parent]:
        if p.exists() or p.is_symlink():
            if not p.is_dir():
                raise UserError(f"{label} {path} cannot be created: {p} is a file, not a folder")
            return p
    return Path(".")


def _check_writable(where: str, path: Path, what: str = "") -> None:
    # access() answers EROFS for a read-only mount even as root (where permission bits pass)
    mode = os.W_OK | os.X_OK if path.is_dir() else os.W_OK
    if not os.access(path, mode):
        raise UserError(f"{where} cannot be written: {what}{path} is read-only (a read-only "
                        f"file system, or no write permission)")


def _inside(inner: Path, outer: Path) -> bool:
    try:
        inner.relative_to(outer)
        return True
    except ValueError:
        return False


def _check_not_above_inputs(where: str, out: Path, inputs: Mapping[str, Any]) -> None:
    out_r = out.resolve()
    for name, given in inputs.items():
        for value in (given if isinstance(given, (list, tuple)) else [given]):
            if not value:
                continue
            p = Path(value)
            if not p.exists():
                continue  # a name (bert-base-uncased), or missing: its reader says so
            folder = p.resolve() if p.is_dir() else p.resolve().parent
            if _inside(folder, out_r):
                how = ("is" if folder == out_r else "is above") + (
                    " the folder of" if not p.is_dir() else "")
                raise UserError(f"{where} {how} --{name} {value}, which this run reads; write "
                                f"somewhere else")


def _check_not_an_input(where: str, out: Path, inputs: Mapping[str, Any]) -> None:
    for name, given in inputs.items():
        for value in (given if isinstance(given, (list, tuple)) else [given]):
            if value and _same_file(out, Path(value)):
                raise UserError(f"{where} is the same file as --{name} {value}, which this run "
                                f"reads; write somewhere else")


def _same_file(a: Path, b: Path) -> bool:
    if a.exists() and b.exists():
        return os.path.samefile(a, b)
    return a.resolve() == b.resolve()


def _check_owned(where: str, folder: Path, spec: Output, overwrite: bool) -> None:
    if spec.shared or overwrite:
        return
    entries = sorted(os.listdir(folder))
    if not entries:
        return
    own = (*spec.owns, *([spec.marker] if spec.marker else []))
    marked = spec.marker is not None and spec.marker in entries
    for name in entries:
        leftover = name.startswith(".") and _matches(name, own)  # a killed run's staging
        if not _matches(name, own) or (spec.marker is not None and not marked and not leftover):
            hint = (f"pass --{spec.overwrite} to write there anyway, or choose"
                    if spec.overwrite else "choose")
            raise UserError(f"{where} holds {name}, which this script did not write; {hint} "
                            f"an empty or new folder")


def _matches(name: str, patterns: Iterable[str]) -> bool:
    return any(fnmatch.fnmatchcase(name, p) for p in patterns)


def _check_format(where: str, path: Path, fmt: Callable[[Path], None], append: bool,
                  what: str = "") -> None:
    if not path.exists():
        return
    if path.is_dir():
        raise UserError(f"{where} is a folder, where this run writes a file")
    try:
        fmt(path)
    except UserError as err:
        verb = "appends to" if append else "replaces"
        raise UserError(f"{where} exists and is not {what or 'a file of this run'} ({err}); this "
                        f"run only {verb} its own files: move it away or choose another "
                        f"path") from None
    if append:
        _check_writable(where, path)


# ---- formats of the files the scripts write -------------------------------------------------------
def head_lines(path: Path, n: int = 20) -> list[str]:
    """The first `n` non-blank lines of a text file (enough to tell a format; the big candidate
    files are not read whole)."""
    out: list[str] = []
    try:
        with open(path, encoding="utf-8") as fh:
            for line in fh:
                if line.strip():
                    out.append(line.rstrip("\n"))
                    if len(out) >= n:
                        break
    except UnicodeDecodeError:
        raise UserError("not UTF-8 text") from None
    except OSError as err:
        raise UserError(f"cannot read it: {err.strerror or err}") from None
    return out


def arch_lines(path: Path) -> None:
    """A candidate / .cands / arch file: one arch dict per line (text after a tab ignored)."""
    from .arch import Arch
    for number, line in enumerate(head_lines(path), 1):
        try:
            Arch.parse(line.split("\t", 1)[0])
        except UserError:
            raise UserError(f"line {number} is not an arch dict") from None


def latency_lines(path: Path) -> None:
    from .latency.dataset import read_latency_dataset
    read_latency_dataset(path)


def results_blocks(path: Path) -> None:
    """subbert.results: blocks (the reader skips text between them, so a file of other text
    holds none)."""
    from .io import read_text
    from .results import read_results
    if not read_results(path) and read_text(path).strip():
        raise UserError("no results block in it")


def key_value_lines(path: Path) -> None:
    """eval_results.txt: `key = value` lines, blank lines between records."""
    from .io import read_text
    for number, line in enumerate(read_text(path).splitlines(), 1):
        if line.strip() and " = " not in line:
            raise UserError(f"line {number} is not 'key = value'")


def json_object(path: Path) -> None:
    from .io import read_json
    if not isinstance(read_json(path), dict):
        raise UserError("not a JSON object")


def torch_zip(path: Path) -> None:
    """A file torch.save wrote (time.pt): a zip holding a pickle."""
    if not zipfile.is_zipfile(path):
        raise UserError("not a torch.save file")
    with zipfile.ZipFile(path) as z:
        if not any(n.endswith("data.pkl") for n in z.namelist()):
            raise UserError("not a torch.save file")


def png(path: Path) -> None:
    with open(path, "rb") as fh:
        if fh.read(8) != b"\x89PNG\r\n\x1a\n":
            raise UserError("not a PNG image")


# ---- the bash wrappers' folders --------------------------------------------------------------------
def main(argv: list[str] | None = None) -> None:
    """`python -m superbert.outputs NAME=PATH ...`: the rule for the run folders a bash wrapper
    makes itself (named by its variable), before it makes them."""
    import sys
    for item in sys.argv[1:] if argv is None else argv:
        name, sep, path = item.partition("=")
        if not sep or not name or not path:
            raise UserError(f"expected NAME=PATH, got {item!r}")
        check_path(name, Path(path), Output.dir(shared=True))


if __name__ == "__main__":
    from .cli import run_main
    run_main(main)
