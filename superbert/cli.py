"""The scripts' side of the library: the entry guard (a user error becomes one stderr line and
exit status 2), logging, and typed stage configs declared once and built from argparse."""
from __future__ import annotations

import argparse
import dataclasses
import logging
import math
import os
import re
import site
import sys
from enum import StrEnum
from typing import Any, Callable, Iterable, TypeVar

from .errors import UserError
from .outputs import OUTPUT_KEY, Output, check_outputs

T = TypeVar("T")
C = TypeVar("C", bound="Choice")


class ShortPathFormatter(logging.Formatter):
    """Log lines with paths under the working directory written relative to it, and paths into
    the installed packages as `<site-packages>/...`: a line says which file, not where the
    machine keeps it (a MiniLM teacher path is otherwise 80 characters)."""

    def __init__(self, fmt: str, datefmt: str, cwd: str | None = None,
                 site_dirs: Iterable[str] | None = None):
        super().__init__(fmt, datefmt)
        self.cwd = (cwd if cwd is not None else os.getcwd()).rstrip("/") + "/"
        dirs = site_dirs if site_dirs is not None else site.getsitepackages()
        prefixes = [(d.rstrip("/") + "/", "<site-packages>/")
                    for d in sorted(dirs, key=len, reverse=True)]
        if self.cwd != "/":
            prefixes.append((self.cwd, ""))
        # compiled once; only where a path starts (not inside /other/<cwd>/...)
        self.rewrites = [(re.compile(r"(?<![\w./~-])" + re.escape(p)), short)
                         for p, short in prefixes]

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        for pattern, short in self.rewrites:
            text = pattern.sub(short, text)
        return text


PROGRESS_ENV = "SUPERBERT_PROGRESS_SECONDS"


def progress_seconds(default: float) -> float:
    """Seconds between progress lines when no bar is drawn (a log file, a batch job): the
    stage's `default`, or the SUPERBERT_PROGRESS_SECONDS environment variable (0: every step;
    a cluster log may want fewer lines). A value that is not a number >= 0 is ignored, with a
    warning, rather than stopping a long run."""
    text = os.environ.get(PROGRESS_ENV)
    if text is None:
        return default
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and value >= 0):
        logging.getLogger(__name__).warning("%s=%r is not a number of seconds >= 0: using %g",
                                            PROGRESS_ENV, text, default)
        return default
    return value


def setup_logging(level: int = logging.INFO) -> None:
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        datefmt="%H:%M:%S", level=level)
    root = logging.getLogger()
    for handler in root.handlers:
        handler.setFormatter(ShortPathFormatter("%(asctime)s %(levelname)s %(name)s: "
                                                "%(message)s", "%H:%M:%S"))


def run_main(main: Callable[[list[str] | None], object], argv: list[str] | None = None) -> None:
    """Run a script's main(); a UserError exits 2 with `error: <message>` and no traceback."""
    try:
        main(argv)
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        sys.exit(130)


# ---- typed configs from argparse ----------------------------------------------------------------
# A stage's flags are listed once, as the fields of its frozen config dataclass:
#
#     @dataclass(frozen=True, kw_only=True)   # kw_only: required flags may follow defaults
#     class SearchConfig:
#         latency_constraint: float = flag(7.0, help="target speedup over the reference arch")
#         method: str = flag("Random", choices=["Candidate", "Random", "Fast", "Evolved"])
#         def __post_init__(self): ...   # the one place the values are validated
#
# `add_flags(parser, SearchConfig)` declares them, `config_from_args(SearchConfig, args)` builds
# the value; the library receives the config, never the Namespace.
_FLAG = "superbert.flag"


def flag(default: Any = dataclasses.MISSING, *names: str, group: str | None = None,
         output: Output | None = None, **argparse_kwargs: Any) -> Any:
    """A dataclass field that is also a command-line flag.

    `names` default to `--<field name>`; a `False` default without an `action` becomes
    `store_true`; no default makes the flag required. `group` names the --help section.
    `output` declares a path the run writes (`superbert.outputs`): `config_from_args` checks it
    before the run starts. Other keywords go to `ArgumentParser.add_argument` unchanged.
    """
    meta: dict[str, Any] = {_FLAG: {"names": names, "group": group, "kwargs": argparse_kwargs}}
    if output is not None:
        meta[OUTPUT_KEY] = output
    return dataclasses.field(default=default, metadata=meta)


def config_flags(cls: type) -> list[dataclasses.Field]:
    return [f for f in dataclasses.fields(cls) if _FLAG in f.metadata]


def group_of(parser: argparse.ArgumentParser, title: str) -> Any:
    """The parser's --help section titled `title`, made on first use (so flags declared in
    different places land in one section)."""
    for group in parser._action_groups:  # argparse keeps no public index of its groups
        if group.title == title:
            return group
    return parser.add_argument_group(title)


def add_flags(parser: argparse.ArgumentParser, cls: type, skip: Iterable[str] = ()) -> None:
    """Declare every `flag()` field of `cls` on `parser`, grouped by their `group`."""
    skip = set(skip)
    for f in config_flags(cls):
        if f.name in skip:
            continue
        spec = f.metadata[_FLAG]
        kwargs = dict(spec["kwargs"])
        if f.default is dataclasses.MISSING:
            kwargs.setdefault("required", True)
        else:
            kwargs["default"] = f.default
            if f.default is False and "action" not in kwargs:
                kwargs["action"] = "store_true"
        target: Any = group_of(parser, spec["group"]) if spec["group"] else parser
        action = target.add_argument(*(spec["names"] or (f"--{f.name}",)), dest=f.name, **kwargs)
        # the parser says which of its flags are outputs (tests walk every script's outputs)
        action.output = f.metadata.get(OUTPUT_KEY)


def config_from_args(cls: type[T], args: argparse.Namespace, **overrides: Any) -> T:
    """Build `cls` from the parsed flags (plus `overrides` for fields that are not flags);
    its `__post_init__` validates, then every output path is checked (`outputs.check_outputs`),
    so a run that could not write its results stops before it starts."""
    values = {f.name: getattr(args, f.name) for f in config_flags(cls) if hasattr(args, f.name)}
    values.update(overrides)
    cfg = cls(**values)
    check_outputs(cfg)
    return cfg


class Choice(StrEnum):
    """A closed set of names a user may type (a scheme, an importance measure, an ONNX head):
    `parse` accepts any case and surrounding blanks, and anything else is one UserError listing
    the choices, named by `label()`."""

    @classmethod
    def label(cls) -> str:
        return cls.__name__.lower()

    @classmethod
    def parse(cls: type[C], text: Any) -> C:
        try:
            return cls(str(text).strip().lower())
        except ValueError:
            raise UserError(f"unknown {cls.label()} {text!r}: expected one of "
                            f"{', '.join(c.value for c in cls)}") from None


def is_finite_number(value: Any) -> bool:
    """An int or float (not a bool) that is neither NaN nor infinite."""
    return not isinstance(value, bool) and isinstance(value, (int, float)) and math.isfinite(value)


def check_positive(**values: Any) -> None:
    """One UserError for the first flag (by its --name) that is given but not a positive,
    finite number (NaN and inf pass a bare `value <= 0` test)."""
    for name, value in values.items():
        if value is not None and not (is_finite_number(value) and value > 0):
            raise UserError(f"--{name} must be a positive finite number, got {value!r}")


def check_non_negative(**values: Any) -> None:
    """As `check_positive`, for flags where 0 is allowed."""
    for name, value in values.items():
        if value is not None and not (is_finite_number(value) and value >= 0):
            raise UserError(f"--{name} must be a finite number >= 0, got {value!r}")
