"""The latency predictors and `time.pt`.

The default (`--predictor cost`): latency as a non-negative sum of per-layer cost terms (L*d*f,
L*d*q, L*d, L*f, L*q, L, d, 1; see `CostModel`), fitted by least squares on the relative error,
shrunk toward the FLOPs baseline's fit (which is a point of the same family: FLOPs are a sum of
three of the terms) by a penalty chosen by cross-validation, or the FLOPs fit itself where the
cost terms do not earn their keep (`fit.select_cost_model`); it fits from a few dozen archs in
milliseconds, its coefficients read as ms per unit of work, and it costs a few flops per arch,
so candidate enumeration is exact on any grid. The original's
predictor (from HAT, `--predictor mlp`): an MLP 4 -> 2000 -> 2000 x 3 -> 1 with ReLU on the
features [d, L, mean f, mean q] / [768, 12, 3072, 768], target ms / 200. `FlopsBaseline` is what
both must beat.

`time.pt` is self-describing (state dict, shape, normalisers, base latency, scheme, the timing
backend its dataset was measured with, metrics); every field read back is type-checked, with an
error naming the file and the field. A bare state dict of the original still loads; a time.pt
without a backend (older, or the original's) was fitted on torch timings.
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np
import torch
from scipy.optimize import lsq_linear, nnls
from torch import nn

from ..arch import FEATURE_NORM, LATENCY_NORM, Arch, Scheme, encoder_flops
from ..errors import UserError
from ..io import atomic_path
from ..timing_protocol import TimingProtocol, check_backend
from .checks import record_field

logger = logging.getLogger(__name__)

PREDICTOR_FORMAT = "superbert-latency-predictor"
PREDICTOR_KINDS = ("mlp", "cost")
# The original's hard-coded BERT-base latencies on the authors' CPU (Xeon E7-4850 v2), used only
# when a bare original time.pt is loaded and no measured base latency is given.
ORIGINAL_BASE_LATENCY_MS = {Scheme.MLM: 886.0, Scheme.KD: 1063.0}


# ---- the predictor -----------------------------------------------------------------------------
class LatencyMLP(nn.Module):
    """The original's predictor network; parameter names match its state dict."""

    def __init__(self, feature_dim: int = 4, hidden_dim: int = 2000, hidden_layer_num: int = 3):
        super().__init__()
        self.first_layer = nn.Linear(feature_dim, hidden_dim)
        self.layers = nn.ModuleList(nn.Linear(hidden_dim, hidden_dim) for _ in range(hidden_layer_num))
        self.predict = nn.Linear(hidden_dim, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.first_layer(x))
        for layer in self.layers:
            x = torch.relu(layer(x))
        return self.predict(x)


COST_TERMS = ("L*d*f", "L*d*q", "L*d", "L*f", "L*q", "L", "d", "1")


class CostModel(nn.Module):
    """ms / lat_norm = sum_k coef_k * term_k of the normalised features [d, L, f, q].

    The terms are where a BERT forward at fixed batch and sequence length spends its time: the
    FFN (L*d*f) and attention projections (L*d*q) matmuls, per-layer elementwise work over the
    hidden, FFN and attention widths (LayerNorm, GELU, softmax, bias adds), per-layer overhead
    (L), the embeddings (d) and a constant. Coefficients are non-negative (work never saves
    time), which keeps extrapolation to the grid's corners sane.

    `fit(..., anchor=c0, penalty=lam)` adds lam * ||s * (coef - c0)||^2 to the relative error
    (s: the columns' norms, so one penalty suits every term): lam = 0 is the plain fit, a large
    lam the anchor (clipped at 0).
    """

    def __init__(self):
        super().__init__()
        self.register_buffer("coef", torch.zeros(len(COST_TERMS), dtype=torch.float64))

    @staticmethod
    def terms(x: torch.Tensor) -> torch.Tensor:
        d, L, f, q = x.unbind(-1)
        return torch.stack([L * d * f, L * d * q, L * d, L * f, L * q, L, d, torch.ones_like(d)], -1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (self.terms(x.double()) @ self.coef).unsqueeze(-1).to(x.dtype)

    def fit(self, x: torch.Tensor, y: torch.Tensor, anchor: np.ndarray | None = None,
            penalty: float = 0.0) -> "CostModel":
        """Non-negative least squares on the relative error (every arch counts alike, as in
        MAPE), with an optional ridge penalty toward the coefficients `anchor`."""
        coef = fit_cost_terms(self.terms(x.double()).numpy(), y.double().numpy(), anchor, penalty)
        return self.set_coef(coef)

    def set_coef(self, coef: np.ndarray | Sequence[float]) -> "CostModel":
        self.coef.copy_(torch.as_tensor(np.asarray(coef, dtype=np.float64)))
        return self

    def formula(self, feature_norm: Sequence[float], lat_norm: float) -> str:
        """The fitted model in raw units: 'ms = 1.2e-05*L*d*f + ...'."""
        dn, Ln, fn, qn = feature_norm
        scale = {"L*d*f": Ln * dn * fn, "L*d*q": Ln * dn * qn, "L*d": Ln * dn, "L*f": Ln * fn,
                 "L*q": Ln * qn, "L": Ln, "d": dn, "1": 1.0}
        parts = [f"{float(c) * lat_norm / scale[t]:.4g}" + ("" if t == "1" else f"*{t}")
                 for c, t in zip(self.coef, COST_TERMS) if float(c) != 0]
        return "ms = " + (" + ".join(parts).replace("+ -", "- ") if parts else "0")


def fit_cost_terms(A: np.ndarray, t: np.ndarray, anchor: np.ndarray | None = None,
                   penalty: float = 0.0) -> np.ndarray:
    """Coefficients c >= 0 minimising ||(A c - t) / t||^2 + penalty * ||s * (c - anchor)||^2,
    s the norms of the columns of A / t (the cost terms of the archs, their latencies)."""
    M = A / t[:, None]
    # Unit columns: the terms span orders of magnitude, and scipy's active-set NNLS (1.12+)
    # can stop at its iteration cap on the raw matrix (seen on 1 of 60 synthetic datasets)
    scale = np.linalg.norm(M, axis=0)
    scale[scale == 0] = 1.0
    M = M / scale
    rhs = np.ones_like(t)
    if penalty > 0:
        if anchor is None:
            raise ValueError("a penalty needs an anchor")
        root = np.sqrt(penalty)
        M = np.vstack([M, root * np.eye(M.shape[1])])
        rhs = np.concatenate([rhs, root * np.asarray(anchor, dtype=np.float64) * scale])
    try:
        coef, _ = nnls(M, rhs, maxiter=100 * M.shape[1])
    except RuntimeError:  # the cap again: a bounded least-squares solver always returns
        coef = lsq_linear(M, rhs, bounds=(0.0, np.inf)).x
    return coef / scale


def mlp_shape(state: dict[str, torch.Tensor]) -> tuple[int, int, int]:
    """(feature_dim, hidden_dim, hidden_layer_num) of an original-shape state dict."""
    try:
        hidden_dim, feature_dim = state["first_layer.weight"].shape
        n = len({k.split(".")[1] for k in state if k.startswith("layers.")})
        state["predict.weight"]
    except (KeyError, AttributeError, ValueError, TypeError, IndexError):
        raise UserError("not a latency predictor state dict (expected first_layer.*, "
                        "layers.N.*, predict.*)") from None
    return int(feature_dim), int(hidden_dim), n


@dataclass
class LatencyPredictor:
    """The model (the original MLP or a CostModel) plus everything needed to use it:
    normalisers, base latency, scheme."""

    model: LatencyMLP | CostModel
    feature_norm: tuple[float, ...] = FEATURE_NORM
    lat_norm: float = LATENCY_NORM
    base_latency_ms: float | None = None
    scheme: Scheme | None = None
    meta: dict[str, Any] = field(default_factory=dict)
    # the runtime the latencies it learned were timed with (TimingProtocol.backend)
    backend: str = "torch"

    def __post_init__(self) -> None:
        if self.scheme is not None:
            self.scheme = Scheme.parse(self.scheme)
        check_backend(self.backend)
        self.model.eval()
        self._norm = torch.tensor(self.feature_norm, dtype=torch.float32)

    @property
    def kind(self) -> str:
        return "cost" if isinstance(self.model, CostModel) else "mlp"

    @property
    def feature_dim(self) -> int:
        return 4 if self.kind == "cost" else self.model.first_layer.in_features

    @property
    def hidden_dim(self) -> int | None:
        return None if self.kind == "cost" else self.model.first_layer.out_features

    @property
    def hidden_layer_num(self) -> int | None:
        return None if self.kind == "cost" else len(self.model.layers)

    def describe(self) -> str:
        if self.kind == "cost":
            selection = self.meta.get("selection")
            chosen = selection.get("chosen") if isinstance(selection, dict) else None
            what = "FLOPs fit" if chosen == "FLOPs fit" else "cost model"
            return f"{what} ({self.model.formula(self.feature_norm, self.lat_norm)})"
        return f"MLP {self.feature_dim}-{self.hidden_dim}x{self.hidden_layer_num + 1}-1"

    def flops_per_prediction(self) -> float:
        if self.kind == "cost":
            return 4.0 * len(COST_TERMS)
        h = self.hidden_dim
        return 2.0 * (self.feature_dim * h + self.hidden_layer_num * h * h + h)

    @torch.inference_mode()
    def predict_features(self, features: np.ndarray | torch.Tensor, chunk: int = 8192) -> np.ndarray:
        """Latency (ms) of raw feature rows [d, L, mean f, mean q], batched (chunks of 8192 keep
        the 2000-wide activations in cache: 1.2x the throughput of 32768 here)."""
        x = torch.as_tensor(features, dtype=torch.float32).reshape(-1, self.feature_dim)
        out = np.empty(len(x), dtype=np.float64)
        for i in range(0, len(x), chunk):
            y = self.model(x[i:i + chunk] / self._norm).squeeze(-1)
            out[i:i + chunk] = (y * self.lat_norm).double().numpy()
        return out

    def predict(self, archs: Sequence[Arch]) -> np.ndarray:
        return self.predict_features(np.asarray([a.features() for a in archs], dtype=np.float32))

    def predict_one(self, arch: Arch) -> float:
        return float(self.predict([arch])[0])

    # ---- time.pt ----
    def to_checkpoint(self) -> dict[str, Any]:
        return {"format": PREDICTOR_FORMAT, "version": 1, "kind": self.kind,
                "state_dict": {k: v.detach().cpu() for k, v in self.model.state_dict().items()},
                "feature_dim": self.feature_dim, "hidden_dim": self.hidden_dim,
                "hidden_layer_num": self.hidden_layer_num,
                **({"terms": list(COST_TERMS)} if self.kind == "cost" else {}),
                "feature_norm": [float(v) for v in self.feature_norm],
                "lat_norm": float(self.lat_norm),
                "base_latency_ms": None if self.base_latency_ms is None else float(self.base_latency_ms),
                "scheme": None if self.scheme is None else str(self.scheme), "meta": self.meta,
                "backend": self.backend}

    def save(self, path: str | os.PathLike) -> None:
        with atomic_path(path) as tmp:
            torch.save(self.to_checkpoint(), tmp)

    @classmethod
    def load(cls, path: str | os.PathLike, feature_norm: Sequence[float] | None = None,
             lat_norm: float | None = None, base_latency_ms: float | None = None,
             scheme: str | Scheme | None = None, feature_dim: int | None = None,
             hidden_dim: int | None = None, hidden_layer_num: int | None = None) -> "LatencyPredictor":
        """Load `time.pt`: ours (self-describing) or the original's bare state dict.

        Explicit arguments (from flags) must agree with what a self-describing file records;
        for a bare state dict they supply the normalisers and the base latency (default: the
        original's constants, with a warning that they belong to the authors' CPU).
        """
        try:
            blob = torch.load(path, map_location="cpu", weights_only=True)
        except FileNotFoundError:
            raise UserError(f"latency predictor not found: {path} (train it with "
                            f"latency_predictor.py)") from None
        except Exception as err:  # torch raises many types for a corrupt or foreign file
            raise UserError(f"cannot read latency predictor {path}: "
                            f"{str(err).splitlines()[0][:200] if str(err) else type(err).__name__}") from None
        if not isinstance(blob, dict):
            raise UserError(f"{path} does not hold a latency predictor")
        bare = blob.get("format") != PREDICTOR_FORMAT
        state = blob if bare else blob.get("state_dict")
        if not isinstance(state, dict):
            raise UserError(f"{path} does not hold a latency predictor state dict")
        kind = "mlp" if bare else blob.get("kind", "mlp")
        if kind == "cost":
            model = cls._load_cost_model(path, blob, state, feature_dim, hidden_dim,
                                         hidden_layer_num)
        elif kind != "mlp":
            raise UserError(f"{path} holds a latency predictor of unknown kind {kind!r}")
        else:
            model = cls._load_mlp(path, state, feature_dim, hidden_dim, hidden_layer_num)
        if bare:
            scheme = None if scheme is None else Scheme.parse(scheme)
            base = base_latency_ms
            if base is None:
                base = ORIGINAL_BASE_LATENCY_MS[scheme or Scheme.MLM]
                logger.warning("%s is a bare state dict (no base latency recorded): using the "
                               "original's BERT-base latency %.0f ms of the authors' CPU; pass "
                               "--base_latency with the value measured here", path, base)
            return cls(model, tuple(feature_norm or FEATURE_NORM),
                       float(lat_norm if lat_norm is not None else LATENCY_NORM),
                       float(base), scheme, {"source": "bare state dict"})
        saved_fn, saved_ln = cls._checked_fields(path, blob)
        if feature_norm is not None and tuple(float(v) for v in feature_norm) != saved_fn:
            raise UserError(f"{path} was trained with --feature_norm {list(saved_fn)}, "
                            f"not {list(feature_norm)}")
        if lat_norm is not None and float(lat_norm) != saved_ln:
            raise UserError(f"{path} was trained with --lat_norm {saved_ln}, not {lat_norm}")
        saved_scheme = blob.get("scheme")
        if scheme or saved_scheme:
            scheme = Scheme.resolve(saved_scheme, scheme, what=f"{path} (the latency predictor)")
        base = base_latency_ms if base_latency_ms is not None else blob.get("base_latency_ms")
        return cls(model, saved_fn, saved_ln, None if base is None else float(base),
                   scheme, dict(blob.get("meta") or {}), blob.get("backend") or "torch")

    @staticmethod
    def _checked_fields(path, blob: dict[str, Any]) -> tuple[tuple[float, ...], float]:
        """Type-check what a self-describing time.pt records; (feature_norm, lat_norm)."""
        for key, kind in (("version", int), ("kind", str), ("feature_dim", int),
                          ("hidden_dim", int), ("hidden_layer_num", int), ("terms", list),
                          ("base_latency_ms", float), ("scheme", str), ("meta", dict),
                          ("backend", str)):
            record_field(blob, key, kind, path)
        fn = record_field(blob, "feature_norm", list, path, optional=False)
        ln = record_field(blob, "lat_norm", float, path, optional=False)
        if len(fn) != 4 or any(isinstance(v, bool) or not isinstance(v, (int, float))
                               or not np.isfinite(v) or v <= 0 for v in fn):
            raise UserError(f"{path}: field 'feature_norm' must be 4 positive numbers, got {fn!r}")
        for key, value in (("lat_norm", ln), ("base_latency_ms", blob.get("base_latency_ms"))):
            if value is not None and value <= 0:
                raise UserError(f"{path}: field {key!r} must be positive, got {value!r}")
        try:
            check_backend(blob.get("backend") or "torch")
        except UserError as err:
            raise UserError(f"{path}: field 'backend': {err}") from None
        meta = blob.get("meta") or {}
        timing = record_field(meta, "timing", dict, f"{path}: meta")
        if timing:
            record_field(timing, "base_arch", str, f"{path}: meta.timing")
            where = f"{path}: meta.timing"
            TimingProtocol.from_record(record_field(timing, "protocol", dict, where), where)
        return tuple(float(v) for v in fn), float(ln)

    @staticmethod
    def _load_mlp(path, state, feature_dim, hidden_dim, hidden_layer_num) -> LatencyMLP:
        fdim, hdim, nlayers = mlp_shape(state)
        for name, want, have in (("--feature_dim", feature_dim, fdim), ("--hidden_dim", hidden_dim, hdim),
                                 ("--hidden_layer_num", hidden_layer_num, nlayers)):
            if want is not None and int(want) != have:
                raise UserError(f"{path} holds an MLP with {name.lstrip('-')} {have}, "
                                f"but {name} {want} was given")
        if fdim != 4:
            raise UserError(f"{path}: feature_dim {fdim} is not supported (the features are "
                            f"[hidden, layers, mean FFN, mean qkv])")
        return _filled(LatencyMLP(fdim, hdim, nlayers), state, path, "the MLP")

    @staticmethod
    def _load_cost_model(path, blob, state, feature_dim, hidden_dim,
                         hidden_layer_num) -> CostModel:
        if feature_dim is not None and int(feature_dim) != 4:
            raise UserError(f"{path} holds a cost model on the 4 features [hidden, layers, mean "
                            f"FFN, mean qkv], but --feature_dim {feature_dim} was given")
        if hidden_dim is not None or hidden_layer_num is not None:
            raise UserError(f"{path} holds a cost model, not an MLP: drop --hidden_dim / "
                            f"--hidden_layer_num")
        if tuple(blob.get("terms") or ()) != COST_TERMS:
            raise UserError(f"{path}: cost model terms {blob.get('terms')} are not "
                            f"{list(COST_TERMS)} (written by another version?)")
        return _filled(CostModel(), state, path, "the cost model")


def _filled(model: nn.Module, state: dict[str, torch.Tensor], path, what: str) -> nn.Module:
    try:
        model.load_state_dict(state)
    except RuntimeError as err:
        raise UserError(f"{path}: state dict does not fit {what}: "
                        f"{str(err).splitlines()[0][:200]}") from None
    return model


@dataclass(frozen=True)
class FlopsBaseline:
    """ms ~ a * FLOPs + b, least squares on the training split: what a predictor must beat.

    Encoder FLOPs are L * (4T*d*f + 8T*d*q + 4T^2*q) at sequence length T, a sum of three cost
    terms, so the fit is also a `CostModel` (`coef`): the default predictor can fall back to it.
    """

    a: float
    b: float
    seq_len: int = 128

    @classmethod
    def fit(cls, archs: Sequence[Arch], ms: np.ndarray, seq_len: int = 128) -> "FlopsBaseline":
        flops = np.asarray([a.flops(seq_len) for a in archs], dtype=np.float64)
        return cls.fit_flops(flops, ms, seq_len)

    @classmethod
    def fit_flops(cls, flops: np.ndarray, ms: np.ndarray, seq_len: int = 128,
                  nonnegative: bool = False) -> "FlopsBaseline":
        """The fit on the archs' FLOPs (`Arch.flops(seq_len)`) and latencies; `nonnegative`:
        with a, b >= 0 (the same fit unless least squares makes one negative), so that no
        arch, however small, is predicted at or below 0 ms."""
        flops = np.asarray(flops, dtype=np.float64)
        ms = np.asarray(ms, dtype=np.float64)
        A = np.stack([flops, np.ones_like(flops)], axis=1)
        (a, b), *_ = np.linalg.lstsq(A, ms, rcond=None)
        if nonnegative and (a < 0 or b < 0):
            scale = np.linalg.norm(A, axis=0)
            (a, b), _ = nnls(A / scale, ms)
            a, b = a / scale[0], b / scale[1]
        return cls(float(a), float(b), seq_len)

    def predict(self, archs: Sequence[Arch]) -> np.ndarray:
        return np.asarray([self.a * a.flops(self.seq_len) + self.b for a in archs])

    def coef(self, feature_norm: Sequence[float] = FEATURE_NORM,
             lat_norm: float = LATENCY_NORM) -> np.ndarray:
        """The `CostModel` coefficients (on features / feature_norm, ms / lat_norm) that
        predict exactly a * FLOPs + b."""
        return self.b / lat_norm * _unit(COST_TERMS.index("1")) + self.a / lat_norm * flops_terms(
            feature_norm, self.seq_len)


def _unit(i: int) -> np.ndarray:
    e = np.zeros(len(COST_TERMS))
    e[i] = 1.0
    return e


def flops_terms(feature_norm: Sequence[float] = FEATURE_NORM, seq_len: int = 128) -> np.ndarray:
    """u with Arch.flops(seq_len) == CostModel.terms(features / feature_norm) @ u, checked on
    probe shapes against `encoder_flops` (so a change there cannot go unnoticed)."""
    dn, Ln, fn, qn = (float(v) for v in feature_norm)
    T = float(seq_len)
    u = np.zeros(len(COST_TERMS))
    u[COST_TERMS.index("L*d*f")] = 4 * T * Ln * dn * fn
    u[COST_TERMS.index("L*d*q")] = 8 * T * Ln * dn * qn
    u[COST_TERMS.index("L*q")] = 4 * T * T * Ln * qn
    probe = np.array([[768, 12, 3072, 768], [128, 1, 256, 64], [512, 5, 1024, 300]], np.float64)
    want = [encoder_flops(int(L), int(d), int(q), int(f), seq_len) for d, L, f, q in probe]
    got = CostModel.terms(torch.from_numpy(probe / np.asarray([dn, Ln, fn, qn]))).numpy() @ u
    if not np.allclose(got, want, rtol=1e-9):
        raise RuntimeError("encoder_flops is no longer a sum of the cost terms L*d*f, L*d*q, "
                           "L*q: update flops_terms")
    return u
