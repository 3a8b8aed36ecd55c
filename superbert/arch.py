"""The architecture value, the search space, and what can be counted from an arch alone.

An arch is the original's dict, the interchange format of every file the tools pass around:

    {'sample_layer_num': L, 'sample_num_attention_heads': [h]*L, 'sample_qkv_sizes': [q]*L,
     'sample_hidden_size': d, 'sample_intermediate_sizes': [f]*L}

Inside the library it is the frozen `Arch`; files are read with `ast.literal_eval` (JSON is
accepted too) and written in one canonical key order, and archs are compared on their value,
never on their text.

Two attention schemes, as the original:
- "mlm": heads vary, each head is `head_dim` wide (64 for BERT), q = head_dim * h; a sub-model
  keeps the first h heads.
- "kd": the number of heads is fixed (12 for BERT) and q varies; each head keeps the leading
  q/H dims of its own slot, so the 12 attention maps still align with a 12-head teacher.
"""
from __future__ import annotations

import ast
import json
import os
import random
import re
from dataclasses import dataclass
from typing import Any, Iterable, Iterator, Mapping

import numpy as np

from .cli import Choice, add_flags, flag
from .errors import UserError
from .io import atomic_write_text, read_text

class Scheme(Choice):
    """How a supernet's attention is sliced (see the module docstring). A `str`, so it is
    written to config.json and compared as "mlm"/"kd"; `Scheme.parse` takes any case."""

    MLM = "mlm"
    KD = "kd"

    @classmethod
    def label(cls) -> str:
        return "attention scheme"

    @classmethod
    def resolve(cls, saved: "str | Scheme | None", requested: "str | Scheme | None",
                default: "str | Scheme" = "mlm", what: str = "the supernet") -> "Scheme":
        """The scheme a run uses: the one asked for, else the saved one, else `default`.
        Asking for a scheme other than the one a checkpoint was saved with is an error."""
        saved_s = cls.parse(saved) if saved else None
        requested_s = cls.parse(requested) if requested else None
        if saved_s and requested_s and saved_s != requested_s:
            raise UserError(f"{what} uses the {saved_s.name} attention scheme, but "
                            f"{requested_s.name} was asked for")
        return requested_s or saved_s or cls.parse(default)


SCHEMES = tuple(Scheme)

# The canonical key order: the original's MLM candidate order, also the seed README's example.
KEYS = ("sample_layer_num", "sample_num_attention_heads", "sample_qkv_sizes",
        "sample_hidden_size", "sample_intermediate_sizes")

# The original predictor's feature normalisers [d, L, mean f, mean q] and latency divisor (ms).
FEATURE_NORM = (768.0, 12.0, 3072.0, 768.0)
LATENCY_NORM = 200.0


@dataclass(frozen=True, order=True)
class Arch:
    """One homogeneous sub-architecture: every layer has the same heads, qkv and FFN width."""

    layers: int
    hidden: int
    heads: int
    qkv: int
    ffn: int

    def __post_init__(self) -> None:
        for name in ("layers", "hidden", "heads", "qkv", "ffn"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
                raise UserError(f"arch field {name} must be a positive integer, got {value!r}")
            object.__setattr__(self, name, int(value))
        if self.qkv % self.heads:
            raise UserError(f"arch qkv size {self.qkv} is not divisible by its "
                            f"{self.heads} attention heads")

    # ---- parsing and formatting -------------------------------------------------------------
    @classmethod
    def parse(cls, text: str) -> "Arch":
        """Parse a Python-repr or JSON arch dict (one line of a candidate/results file)."""
        text = text.strip()
        if not text:
            raise UserError("empty arch string")
        try:
            value = ast.literal_eval(text)
        except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
            # TypeError: a literal that cannot be built, such as a list as a key ({[1]: 2})
            try:
                value = json.loads(text)
            except json.JSONDecodeError:
                raise UserError(f"cannot parse arch {_clip(text)}: expected a dict such as "
                                f"{Arch(1, 128, 2, 128, 512)}") from None
        if not isinstance(value, Mapping):
            raise UserError(f"arch {_clip(text)} is not a dict")
        return cls.from_dict(value)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "Arch":
        missing = [k for k in KEYS if k not in d]
        extra = [k for k in d if k not in KEYS]
        if missing or extra:
            parts = []
            if missing:
                parts.append("missing " + ", ".join(missing))
            if extra:
                parts.append("unknown " + ", ".join(map(str, extra)))
            raise UserError(f"arch dict has wrong keys ({'; '.join(parts)})")
        layers = d["sample_layer_num"]
        if isinstance(layers, bool) or not isinstance(layers, int) or layers < 1:
            raise UserError(f"arch field sample_layer_num must be a positive integer, "
                            f"got {layers!r}")
        return cls(layers=layers, hidden=_scalar(d, "sample_hidden_size", None),
                   heads=_scalar(d, "sample_num_attention_heads", layers),
                   qkv=_scalar(d, "sample_qkv_sizes", layers),
                   ffn=_scalar(d, "sample_intermediate_sizes", layers))

    @classmethod
    def coerce(cls, value: "Arch | Mapping[str, Any] | str") -> "Arch":
        if isinstance(value, Arch):
            return value
        if isinstance(value, str):
            return cls.parse(value)
        return cls.from_dict(value)

    def to_dict(self) -> dict[str, Any]:
        L = self.layers
        return {"sample_layer_num": L, "sample_num_attention_heads": [self.heads] * L,
                "sample_qkv_sizes": [self.qkv] * L, "sample_hidden_size": self.hidden,
                "sample_intermediate_sizes": [self.ffn] * L}

    def __str__(self) -> str:
        """The canonical file form: the Python repr of the dict in canonical key order."""
        return repr(self.to_dict())

    def short(self) -> str:
        return f"L{self.layers}/d{self.hidden}/h{self.heads}/q{self.qkv}/f{self.ffn}"

    # ---- what can be computed from the arch alone -------------------------------------------
    @property
    def head_dim(self) -> int:
        return self.qkv // self.heads

    def features(self) -> list[float]:
        """The latency predictor's raw features [d, L, mean f, mean q] (original order)."""
        return [float(self.hidden), float(self.layers), float(self.ffn), float(self.qkv)]

    def param_count(self, vocab_size: int = 30522, max_positions: int = 512,
                    type_vocab_size: int = 2, pooler: bool = True) -> int:
        """Parameters of embeddings + encoder (+ pooler), the original's `parameter size`."""
        return param_count(self.layers, self.hidden, self.qkv, self.ffn, vocab_size,
                           max_positions, type_vocab_size, pooler)

    def flops(self, seq_len: int = 128) -> int:
        """Forward FLOPs (2 per multiply-add) of the encoder for one sequence of `seq_len`."""
        return int(encoder_flops(self.layers, self.hidden, self.qkv, self.ffn, seq_len))


def _scalar(d: Mapping[str, Any], key: str, layers: int | None) -> int:
    value = d[key]
    if layers is None:
        return value
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        return int(value)  # a scalar for all layers is accepted as a convenience
    if not isinstance(value, (list, tuple)) or len(value) != layers:
        raise UserError(f"arch field {key} must be a list of {layers} values "
                        f"(one per layer), got {value!r}")
    if not all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in value):
        raise UserError(f"arch field {key} must be a list of integers, got {list(value)!r}")
    value = [int(v) for v in value]
    if len(set(value)) != 1:
        raise UserError(f"arch field {key} = {list(value)} differs between layers; only "
                        f"homogeneous layers are supported (as in every sampler of the method)")
    return value[0]


def _clip(text: str, n: int = 80) -> str:
    return repr(text if len(text) <= n else text[:n] + "...")


def param_count(layers, hidden, qkv, ffn, vocab_size=30522, max_positions=512,
                type_vocab_size=2, pooler=True):
    """Vectorised parameter count (works on ints or numpy arrays)."""
    d, q, f = hidden, qkv, ffn
    embeddings = (vocab_size + max_positions + type_vocab_size) * d + 2 * d
    per_layer = (3 * (d * q + q) + (q * d + d) + 2 * d
                 + (d * f + f) + (f * d + d) + 2 * d)
    total = embeddings + layers * per_layer
    if pooler:
        total = total + d * d + d
    return total


def encoder_flops(layers, hidden, qkv, ffn, seq_len=128):
    """Vectorised forward FLOPs of the encoder (projections, attention, FFN)."""
    d, q, f, T = hidden, qkv, ffn, seq_len
    projections = 2 * T * (3 * d * q + q * d + 2 * d * f)
    attention = 2 * 2 * T * T * q  # scores and context
    return layers * (projections + attention)


# ---- reading and writing arch files -----------------------------------------------------------
def read_arch_file(path: str | os.PathLike, what: str = "arch file",
                   missing_hint: str | None = None) -> list[Arch]:
    """The archs of a candidate / .cands / arch file, in file order (duplicates kept; see
    `unique`): one per line, repr or JSON in any key order, text after a tab ignored, blank
    lines skipped. Streamed, since a candidate file can hold millions of lines; a bad line is
    an error naming `path:line`, a missing file one naming `what` (and `missing_hint`)."""
    archs: list[Arch] = []
    try:
        with open(path, encoding="utf-8") as fh:
            for number, line in enumerate(fh, 1):
                if line.strip():
                    archs.append(_parse_line(line.split("\t")[0].strip(), path, number))
    except (OSError, UnicodeDecodeError):
        raise _read_error(path, what, missing_hint) from None
    return archs


def _parse_line(text: str, path: str | os.PathLike, number: int) -> Arch:
    arch = _parse_canonical(text)
    if arch is not None:
        return arch
    try:
        return Arch.parse(text)
    except UserError as err:
        raise UserError(f"{path}:{number}: {err}") from None


_KEY_RE = {k: re.compile(rf"'{k}': (\[[\d, ]*\]|\d+)") for k in KEYS}


def _parse_canonical(text: str) -> Arch | None:
    """A line in the canonical form `str(arch)`, read without literal_eval (large candidate
    files); None for anything else, which `Arch.parse` then reads (or rejects)."""
    vals = []
    for rx in _KEY_RE.values():
        m = rx.search(text)
        if m is None:
            return None
        vals.append(m.group(1))
    try:
        layers, heads, qkv, hidden, ffn = (int(v.strip("[]").split(",")[0]) for v in vals)
        arch = Arch(layers, hidden, heads, qkv, ffn)
    except (ValueError, UserError):
        return None
    return arch if str(arch) == text else None  # exactly canonical: same value as Arch.parse


def _read_error(path: str | os.PathLike, what: str, missing_hint: str | None) -> UserError:
    """The UserError for an arch file that cannot be opened or decoded, worded by
    `io.read_text` (the project's one wording of file-read errors)."""
    try:
        read_text(path, what)
    except UserError as err:
        if missing_hint and not os.path.exists(path):
            return UserError(f"{err} ({missing_hint})")
        return err
    return UserError(f"cannot read {what} {path}")


def format_arch_lines(archs: Iterable[Arch]) -> str:
    """The file form of `archs`: one canonical line each (what `read_arch_file` reads)."""
    return "".join(f"{a}\n" for a in archs)


def write_arch_file(path: str | os.PathLike, archs: Iterable[Arch]) -> None:
    """Write `archs` one canonical line each, atomically."""
    atomic_write_text(path, format_arch_lines(archs))


def unique(archs: Iterable[Arch]) -> list[Arch]:
    """De-duplicate on the value, keeping first occurrences in order."""
    seen: set[Arch] = set()
    out = []
    for a in archs:
        if a not in seen:
            seen.add(a)
            out.append(a)
    return out


# ---- the search space -------------------------------------------------------------------------
def _inclusive(lo: int, hi: int, step: int) -> list[int]:
    return list(range(lo, hi + 1, step))


# The original searcher's grid steps ("for efficiency") and the paper's fine grid.
ORIGINAL_STEPS = {"hidden_step": 16, "ffn_step": 32, "qkv_step": 12}
FINE_STEPS = {"hidden_step": 4, "ffn_step": 4, "qkv_step": 12}


@dataclass(frozen=True)
class SearchSpace:
    """Ranges (inclusive) and grid steps of each dimension, for one attention scheme.

    `head_dim` is the MLM head width (qkv = head_dim * heads); `kd_heads` the fixed head count
    of the KD scheme. Both come from the supernet (`SearchSpace.for_supernet`).
    """

    scheme: Scheme = Scheme.MLM
    layers: tuple[int, int] = (1, 8)
    hidden: tuple[int, int] = (128, 768)
    qkv: tuple[int, int] = (180, 768)
    ffn: tuple[int, int] = (128, 3072)
    heads: tuple[int, int] = (1, 12)
    hidden_step: int = 4
    ffn_step: int = 4
    qkv_step: int = 12
    head_dim: int = 64
    kd_heads: int = 12

    def __post_init__(self) -> None:
        object.__setattr__(self, "scheme", Scheme.parse(self.scheme))
        for name in ("layers", "hidden", "qkv", "ffn", "heads"):
            rng = getattr(self, name)
            if len(rng) != 2:
                raise UserError(f"--{name} space needs two values (min max), got {list(rng)}")
            lo, hi = int(rng[0]), int(rng[1])
            if lo < 1 or hi < lo:
                raise UserError(f"{name} space {lo}..{hi} is empty or not positive")
            object.__setattr__(self, name, (lo, hi))
        for name in ("hidden_step", "ffn_step", "qkv_step", "head_dim", "kd_heads"):
            if int(getattr(self, name)) < 1:
                raise UserError(f"{name} must be a positive integer")
        if not self.qkv_values():
            raise UserError(f"the qkv space {self.qkv[0]}..{self.qkv[1]} holds no size that "
                            f"{self.kd_heads} heads divide")

    @classmethod
    def for_supernet(cls, config: Any, scheme: str | Scheme | None = None,
                     **overrides: Any) -> "SearchSpace":
        """The space of the seed README, clipped to what the supernet `config` can hold.

        Explicit `overrides` (from the `--*_space` / `--*_step` flags) win over the clipping,
        and `validate_against` then checks them.
        """
        scheme = Scheme.parse(scheme or getattr(config, "attention_scheme", Scheme.MLM))
        H = int(config.num_attention_heads)
        qkv_max = int(getattr(config, "qkv_size", None) or config.hidden_size)
        head_dim = qkv_max // H
        base = dict(
            scheme=scheme,
            layers=(1, min(8, int(config.num_hidden_layers))),
            hidden=(min(128, int(config.hidden_size)), int(config.hidden_size)),
            qkv=(min(180, qkv_max), qkv_max),
            ffn=(min(128, int(config.intermediate_size)), int(config.intermediate_size)),
            heads=(1, H), head_dim=head_dim, kd_heads=H, qkv_step=H,
        )
        base.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**base)

    # ---- values of each dimension ----
    def layer_values(self) -> list[int]:
        return _inclusive(*self.layers, 1)

    def hidden_values(self) -> list[int]:
        return _inclusive(*self.hidden, self.hidden_step)

    def ffn_values(self) -> list[int]:
        return _inclusive(*self.ffn, self.ffn_step)

    def head_values(self) -> list[int]:
        """Head counts (MLM); the KD scheme has one, `kd_heads`."""
        if self.scheme == Scheme.KD:
            return [self.kd_heads]
        return [h for h in _inclusive(*self.heads, 1)]

    def qkv_values(self) -> list[int]:
        """qkv sizes: head_dim * h for MLM, the qkv grid (divisible by the heads) for KD."""
        if self.scheme == Scheme.MLM:
            return [self.head_dim * h for h in self.head_values()]
        return [q for q in _inclusive(*self.qkv, self.qkv_step) if q % self.kd_heads == 0]

    def size(self) -> int:
        n_attn = len(self.head_values()) if self.scheme == Scheme.MLM else len(self.qkv_values())
        return len(self.layer_values()) * len(self.hidden_values()) * len(self.ffn_values()) * n_attn

    # ---- sampling, enumeration, membership ----
    def sample(self, rng: random.Random) -> Arch:
        """One arch, each dimension uniform and independent, in the original's draw order."""
        L = rng.choice(self.layer_values())
        if self.scheme == Scheme.KD:
            d = rng.choice(self.hidden_values())
            f = rng.choice(self.ffn_values())
            q = rng.choice(self.qkv_values())
            h = self.kd_heads
        else:
            h = rng.choice(self.head_values())
            d = rng.choice(self.hidden_values())
            f = rng.choice(self.ffn_values())
            q = self.head_dim * h
        return Arch(layers=L, hidden=d, heads=h, qkv=q, ffn=f)

    def largest(self) -> Arch:
        h = max(self.head_values())
        q = max(self.qkv_values())
        return Arch(self.layer_values()[-1], self.hidden_values()[-1], h, q, self.ffn_values()[-1])

    def smallest(self) -> Arch:
        h = min(self.head_values())
        q = min(self.qkv_values())
        return Arch(self.layer_values()[0], self.hidden_values()[0], h, q, self.ffn_values()[0])

    def grid(self) -> dict[str, np.ndarray]:
        """Every arch of the grid as flat int arrays (layers, hidden, heads, qkv, ffn)."""
        L = np.asarray(self.layer_values())
        d = np.asarray(self.hidden_values())
        f = np.asarray(self.ffn_values())
        if self.scheme == Scheme.KD:
            q = np.asarray(self.qkv_values())
            h = np.full_like(q, self.kd_heads)
        else:
            h = np.asarray(self.head_values())
            q = h * self.head_dim
        idx = np.indices((len(L), len(d), len(f), len(q))).reshape(4, -1)
        return {"layers": L[idx[0]], "hidden": d[idx[1]], "ffn": f[idx[2]],
                "qkv": q[idx[3]], "heads": h[idx[3]]}

    def iter_grid(self) -> Iterator[Arch]:
        g = self.grid()
        for i in range(len(g["layers"])):
            yield Arch(int(g["layers"][i]), int(g["hidden"][i]), int(g["heads"][i]),
                       int(g["qkv"][i]), int(g["ffn"][i]))

    def check(self, arch: Arch, on_grid: bool = False) -> None:
        """Raise a UserError naming the first field outside the space (and grid, if asked)."""
        def out(name: str, value: int, rng: tuple[int, int], step: int = 1, base: int | None = None):
            lo, hi = rng
            if not lo <= value <= hi:
                raise UserError(f"arch {arch.short()}: {name} {value} is outside the search "
                                f"space {lo}..{hi}")
            if on_grid and step > 1 and (value - (lo if base is None else base)) % step:
                raise UserError(f"arch {arch.short()}: {name} {value} is not on the grid "
                                f"{lo}..{hi} step {step}")

        out("layers", arch.layers, self.layers)
        out("hidden size", arch.hidden, self.hidden, self.hidden_step)
        out("FFN size", arch.ffn, self.ffn, self.ffn_step)
        if self.scheme == Scheme.KD:
            if arch.heads != self.kd_heads:
                raise UserError(f"arch {arch.short()}: the KD scheme keeps all {self.kd_heads} "
                                f"heads, got {arch.heads}")
            out("qkv size", arch.qkv, self.qkv, self.qkv_step)
        else:
            out("heads", arch.heads, self.heads)
            if arch.qkv != arch.heads * self.head_dim:
                raise UserError(f"arch {arch.short()}: in the MLM scheme qkv must be "
                                f"{self.head_dim} x heads = {arch.heads * self.head_dim}, "
                                f"got {arch.qkv}")

    def contains(self, arch: Arch, on_grid: bool = False) -> bool:
        try:
            self.check(arch, on_grid)
        except UserError:
            return False
        return True

    def validate_against(self, config: Any) -> None:
        """The space must fit the supernet: every arch it holds can be sliced from it."""
        validate_arch(self.largest(), config, self.scheme)


SPACE_FLAGS = ("layer_num", "hidden_size", "qkv_size", "intermediate_size", "head_num")
# The seed README's space (the original searcher's defaults): SearchSpace's own defaults.
ORIGINAL_SPACE = {"layer_num": SearchSpace.layers, "hidden_size": SearchSpace.hidden,
                  "qkv_size": SearchSpace.qkv, "intermediate_size": SearchSpace.ffn,
                  "head_num": SearchSpace.heads}


def _space_flag(name: str, original_default: bool) -> Any:
    return flag(ORIGINAL_SPACE[name] if original_default else None, nargs=2, type=int,
                metavar=("MIN", "MAX"), help="inclusive range" + (
                    "" if original_default else " (default: the seed README's, clipped to the "
                    "supernet)"))


@dataclass(frozen=True, kw_only=True)
class SpaceFlags:
    """The `--{layer_num,hidden_size,qkv_size,intermediate_size,head_num}_space MIN MAX` flags,
    the seed README's space by default; a stage's config inherits them."""

    layer_num_space: tuple[int, int] | None = _space_flag("layer_num", True)
    hidden_size_space: tuple[int, int] | None = _space_flag("hidden_size", True)
    qkv_size_space: tuple[int, int] | None = _space_flag("qkv_size", True)
    intermediate_size_space: tuple[int, int] | None = _space_flag("intermediate_size", True)
    head_num_space: tuple[int, int] | None = _space_flag("head_num", True)

    def __post_init__(self) -> None:
        for name in SPACE_FLAGS:
            value = getattr(self, f"{name}_space")
            if value is not None:
                object.__setattr__(self, f"{name}_space", tuple(value))

    def space_ranges(self) -> dict[str, tuple[int, int] | None]:
        """SearchSpace's keywords; None where the flag was left to the supernet."""
        return dict(layers=self.layer_num_space, hidden=self.hidden_size_space,
                    qkv=self.qkv_size_space, ffn=self.intermediate_size_space,
                    heads=self.head_num_space)


@dataclass(frozen=True, kw_only=True)
class SupernetSpaceFlags(SpaceFlags):
    """The same flags, unset by default: the space is the seed README's clipped to the supernet."""

    layer_num_space: tuple[int, int] | None = _space_flag("layer_num", False)
    hidden_size_space: tuple[int, int] | None = _space_flag("hidden_size", False)
    qkv_size_space: tuple[int, int] | None = _space_flag("qkv_size", False)
    intermediate_size_space: tuple[int, int] | None = _space_flag("intermediate_size", False)
    head_num_space: tuple[int, int] | None = _space_flag("head_num", False)


def add_space_args(parser: Any, original_defaults: bool) -> None:
    """Declare the space flags on `parser`: defaults are the seed README's space, or None (the
    caller clips to its supernet)."""
    add_flags(parser, SpaceFlags if original_defaults else SupernetSpaceFlags)


def validate_arch(arch: Arch, config: Any, scheme: str | Scheme | None = None) -> None:
    """Check that `arch` can be sliced from the supernet described by `config`."""
    scheme = Scheme.parse(scheme or getattr(config, "attention_scheme", Scheme.MLM))
    H = int(config.num_attention_heads)
    qkv_max = int(getattr(config, "qkv_size", None) or config.hidden_size)
    limits = [("layers", arch.layers, int(config.num_hidden_layers)),
              ("hidden size", arch.hidden, int(config.hidden_size)),
              ("FFN size", arch.ffn, int(config.intermediate_size)),
              ("qkv size", arch.qkv, qkv_max),
              ("heads", arch.heads, H)]
    for name, value, limit in limits:
        if value > limit:
            raise UserError(f"arch {arch.short()}: {name} {value} exceeds the supernet's "
                            f"{limit}")
    if scheme == Scheme.KD:
        if arch.heads != H:
            raise UserError(f"arch {arch.short()}: a KD supernet keeps all {H} heads "
                            f"(got {arch.heads}); the qkv size sets the head width")
    elif arch.head_dim != qkv_max // H:
        raise UserError(f"arch {arch.short()}: an MLM supernet has heads {qkv_max // H} wide, "
                        f"so qkv must be {qkv_max // H} x heads = {arch.heads * (qkv_max // H)}")


def arch_of_config(config: Any) -> Arch:
    """The full arch of a (super- or sub-) model config."""
    qkv = int(getattr(config, "qkv_size", None) or config.hidden_size)
    return Arch(layers=int(config.num_hidden_layers), hidden=int(config.hidden_size),
                heads=int(config.num_attention_heads), qkv=qkv,
                ffn=int(config.intermediate_size))
