"""The scripts' side of the library: the entry guard (a user error becomes one stderr line and
exit status 2), logging, and typed stage configs declared once and built from argparse."""
from __future__ import annotations

import argparse
import dataclasses
import logging
import sys
from enum import StrEnum
from typing import Any, Callable, Iterable, TypeVar

from .errors import UserError

T = TypeVar("T")
C = TypeVar("C", bound="Choice")


def setup_logging(level: int = logging.INFO) -> None:
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        datefmt="%H:%M:%S", level=level)


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
         **argparse_kwargs: Any) -> Any:
    """A dataclass field that is also a command-line flag.

    `names` default to `--<field name>`; a `False` default without an `action` becomes
    `store_true`; no default makes the flag required. `group` names the --help section.
    Other keywords go to `ArgumentParser.add_argument` unchanged.
    """
    meta = {_FLAG: {"names": names, "group": group, "kwargs": argparse_kwargs}}
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
        target.add_argument(*(spec["names"] or (f"--{f.name}",)), dest=f.name, **kwargs)


def config_from_args(cls: type[T], args: argparse.Namespace, **overrides: Any) -> T:
    """Build `cls` from the parsed flags (plus `overrides` for fields that are not flags);
    its `__post_init__` validates."""
    values = {f.name: getattr(args, f.name) for f in config_flags(cls) if hasattr(args, f.name)}
    values.update(overrides)
    return cls(**values)


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
