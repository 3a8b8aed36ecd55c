"""Fitting a latency predictor: the recipes, the split, the metrics, the plot.

The default predictor is the cost model (`CostModel`), fitted in closed form in milliseconds
and chosen by cross-validation on the training and validation archs (`select_cost_model`):
the per-layer cost terms shrunk toward the FLOPs fit by one of a few ridge penalties, or the
FLOPs fit itself, whichever has the lowest cross-validated MAPE (a tie goes to the FLOPs fit),
so that a dataset too small or noisy for the cost terms falls back to the baseline rather than
losing to it; the choice and the cross-validated MAPEs behind it go into time.pt
(`meta["selection"]`).
The original's MLP (`--predictor mlp`) is trained with the original's
recipe: Adam 1e-5, up to 5000 steps of 128 random training examples, MSE on ms / 200; seeded
here, and stopped early on the validation split (its loss is checked every 100 steps, the best
checkpoint kept, training stopped after `patience` checks without a better one). Both are scored
on a seeded 80/10/10 split beside a FLOPs-proportional baseline fitted on the same archs as the
predictor (the cost model: training and validation; the MLP: training, the validation split
being its early-stopping check).

Several datasets can be fitted on together (`--lat_dataset_path A B`, e.g. two sweeps of one
machine): they must agree on the backend, protocol, scheme and reference, else one error says
which; the recorded reference latency is the mean of theirs. The backend goes into time.pt, so
the searcher's --measure times with the runtime the predictor learned.
"""
from __future__ import annotations

import logging
import os
import random
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from torch import nn

from ..arch import FEATURE_NORM, LATENCY_NORM, Arch, Scheme, SpaceFlags
from ..cli import flag
from ..errors import UserError
from ..io import atomic_path
from ..progress import Progress
from ..outputs import Output, arch_lines, png, torch_zip
from .checks import check_output, check_positive
from .dataset import (dataset_arrays, read_latency_dataset, read_sidecar, sidecar_backend,
                      sidecar_path)
from .predictors import (ORIGINAL_BASE_LATENCY_MS, PREDICTOR_KINDS, CostModel, FlopsBaseline,
                         LatencyMLP, LatencyPredictor, fit_cost_terms)

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Metrics:
    n: int
    rmse_ms: float
    mape: float  # percent
    kendall_tau: float

    def line(self) -> str:
        return (f"RMSE {self.rmse_ms:.3f} ms, MAPE {self.mape:.2f}%, Kendall tau "
                f"{self.kendall_tau:.4f} (n={self.n})")


def regression_metrics(pred: np.ndarray, true: np.ndarray) -> Metrics:
    pred, true = np.asarray(pred, dtype=np.float64), np.asarray(true, dtype=np.float64)
    if len(true) == 0:
        return Metrics(0, float("nan"), float("nan"), float("nan"))
    from scipy.stats import kendalltau  # ~0.6 s to import: only when metrics are computed

    tau = kendalltau(pred, true).statistic if len(true) > 1 else float("nan")
    return Metrics(len(true), float(np.sqrt(np.mean((pred - true) ** 2))),
                   float(100.0 * np.mean(np.abs(pred - true) / true)), float(tau))


@dataclass(frozen=True)
class TrainConfig:
    predictor: str = "cost"  # CostModel, or "mlp": the original's MLP
    feature_dim: int = 4
    hidden_dim: int = 2000
    hidden_layer_num: int = 3
    train_steps: int = 5000
    bsz: int = 128
    lr: float = 1e-5
    feature_norm: tuple[float, ...] = FEATURE_NORM
    lat_norm: float = LATENCY_NORM
    seed: int = 0
    log_every: int = 100  # MLP: steps between validation checks (the original's log interval)
    patience: int = 10  # MLP: checks without a better validation loss before stopping; 0: never

    def __post_init__(self) -> None:
        if self.feature_dim != 4:
            raise UserError(f"--feature_dim must be 4 (features [hidden, layers, mean FFN, mean "
                            f"qkv]), got {self.feature_dim}")
        if len(self.feature_norm) != 4:
            raise UserError("--feature_norm needs 4 positive values")
        for value in self.feature_norm:
            check_positive(feature_norm=value)
        check_positive(lat_norm=self.lat_norm, lr=self.lr)
        if self.predictor not in PREDICTOR_KINDS:
            raise UserError(f"--predictor must be one of {', '.join(PREDICTOR_KINDS)}, got "
                            f"{self.predictor!r}")
        for name in ("hidden_dim", "train_steps", "bsz", "log_every"):
            if getattr(self, name) < 1:
                raise UserError(f"--{name} must be at least 1")
        if self.patience < 0:
            raise UserError(f"--patience must be 0 (never stop early) or more, got {self.patience}")


@dataclass(frozen=True)
class EarlyStop:
    """How an MLP fit ended: the step whose validation loss was best (its weights are the ones
    kept), the last step trained, and whether it stopped before `train_steps`."""

    best_step: int
    best_valid_loss: float
    last_step: int
    train_steps: int
    patience: int

    @property
    def stopped(self) -> bool:
        return self.last_step < self.train_steps

    def line(self) -> str:
        end = (f"stopped at step {self.last_step} of {self.train_steps} (no better validation "
               f"loss in {self.patience} checks)" if self.stopped
               else f"ran all {self.train_steps} steps")
        return f"{end}; kept step {self.best_step} (validation loss {self.best_valid_loss:.4g})"


@dataclass
class TrainReport:
    train: Metrics
    valid: Metrics  # the cost model's validation archs are in its fit: see `selection` for CV
    test: Metrics
    flops_test: Metrics
    flops: FlopsBaseline
    test_archs: list[Arch]
    test_true: np.ndarray
    test_pred: np.ndarray
    test_flops_pred: np.ndarray
    seconds: float
    early_stop: EarlyStop | None = None  # the MLP's
    selection: "Selection | None" = None  # the cost model's


def split_indices(n: int, seed: int, fractions: tuple[float, float] = (0.8, 0.1)) -> tuple[np.ndarray, ...]:
    """Shuffled train/valid/test indices, 80/10/10 (at least one test example when n >= 3)."""
    order = np.random.default_rng(seed).permutation(n)
    n_train = int(round(fractions[0] * n))
    n_valid = int(round(fractions[1] * n))
    if n >= 3:
        n_train = min(n_train, n - 2)
        n_valid = max(1, min(n_valid, n - n_train - 1))
    return order[:n_train], order[n_train:n_train + n_valid], order[n_train + n_valid:]


# ---- the cost model's selection -----------------------------------------------------------------
# Ridge penalties toward the FLOPs fit (on unit-norm columns of the relative-error system): 0 is
# the plain non-negative fit, 0.1 close to the FLOPs fit; the FLOPs fit itself is the last
# candidate. The grid and the rule (the lowest CV MAPE) were compared with plain NNLS and with
# one-standard-error rules on synthetic datasets of 30 and 200 archs with 3-10% timing noise (a
# per-layer law, a misspecified one, FLOPs-proportional ones; 20-60 datasets each): as good or
# better on mean test MAPE, and at or below the baseline on more 3-arch test splits.
PENALTIES = (0.0, 1e-4, 3.16e-4, 1e-3, 3.16e-3, 1e-2, 3.16e-2, 1e-1)
FLOPS_FIT = "FLOPs fit"
MAX_LOO = 60  # leave-one-out up to this many archs, else 10 folds


@dataclass(frozen=True)
class Selection:
    """How the default predictor was chosen: cross-validated MAPE (%) of each candidate on the
    archs it was fitted on, the chosen one and why."""

    method: str  # "leave-one-out" or "10-fold"
    n: int
    penalties: list[float]
    cv_mape: list[float]  # per penalty
    flops_cv_mape: float
    best_penalty: float  # the best cost model's
    se: float  # standard error of (best cost model - FLOPs fit), paired per arch, in points
    chosen: str  # "cost model" or FLOPS_FIT
    penalty: float | None  # the chosen cost model's, None for the FLOPs fit
    clipped: bool = False  # the FLOPs fit held at a, b >= 0 (the baseline's were not)

    @property
    def best_cv_mape(self) -> float:
        return self.cv_mape[self.penalties.index(self.best_penalty)]

    def reason(self) -> str:
        gap = (f"{abs(self.flops_cv_mape - self.best_cv_mape):.2f} +- {self.se:.2f} points")
        if self.chosen == FLOPS_FIT:
            what = ("the baseline with its negative intercept held at 0" if self.clipped
                    else "the baseline itself")
            return (f"the lowest CV MAPE, {gap} below the best cost model's (penalty "
                    f"{self.best_penalty:g}); the default is {what}")
        return f"the lowest CV MAPE, {gap} below the FLOPs fit's"

    def lines(self) -> list[str]:
        curve = ", ".join(f"{p:g}: {m:.2f}%" for p, m in zip(self.penalties, self.cv_mape))
        picked = (FLOPS_FIT if self.chosen == FLOPS_FIT
                  else f"cost model, penalty {self.penalty:g}")
        return [f"{self.method} CV MAPE on the {self.n} training + validation archs: FLOPs fit "
                f"{self.flops_cv_mape:.2f}%; cost model at ridge penalty {curve}",
                f"chose {picked}: {self.reason()}"]

    def record(self) -> dict[str, Any]:
        return {**asdict(self), "reason": self.reason()}


def cv_folds(n: int, seed: int) -> list[np.ndarray]:
    """Leave-one-out up to MAX_LOO archs, else 10 seeded folds."""
    if n <= MAX_LOO:
        return [np.array([i]) for i in range(n)]
    return np.array_split(np.random.default_rng(seed).permutation(n), 10)


def select_cost_model(X: torch.Tensor, ms: np.ndarray, flops: np.ndarray, cfg: TrainConfig,
                      seq_len: int = 128) -> tuple[CostModel, FlopsBaseline, Selection]:
    """The default predictor on normalised features X, the archs' latencies (ms) and FLOPs:
    every candidate (the cost model at each of PENALTIES toward the FLOPs fit, and the
    FLOPs fit) scored by cross-validated MAPE, the lowest chosen (the FLOPs fit on a tie) and
    refitted on all the archs given. The FLOPs fit is the baseline's, a and b held >= 0 (the
    baseline itself unless its intercept is negative). Returns the model, the baseline fitted
    on those archs and the selection record."""
    A = CostModel.terms(X.double()).numpy()
    ms = np.asarray(ms, dtype=np.float64)
    t = ms / cfg.lat_norm
    n = len(t)
    folds = cv_folds(n, cfg.seed)

    def fits(idx: np.ndarray) -> tuple[np.ndarray, list[np.ndarray]]:
        # the FLOPs fit as a cost model: the baseline's, with a, b >= 0 (the baseline itself
        # unless its intercept is negative, which would predict <= 0 ms for small archs)
        anchor = FlopsBaseline.fit_flops(flops[idx], ms[idx], seq_len, nonnegative=True).coef(
            cfg.feature_norm, cfg.lat_norm)
        return anchor, [fit_cost_terms(A[idx], t[idx], anchor, lam) for lam in PENALTIES]

    pred = np.zeros((len(PENALTIES) + 1, n))  # the candidates' out-of-fold predictions
    for held in folds:
        keep = np.setdiff1d(np.arange(n), held)
        anchor, coefs = fits(keep)
        for j, c in enumerate([*coefs, anchor]):
            pred[j, held] = A[held] @ c
    err = 100.0 * np.abs(pred - t) / t  # per candidate and arch, percent
    cv = err.mean(axis=1)
    best = int(np.argmin(cv[:-1]))
    diff = err[best] - err[-1]
    se = float(diff.std(ddof=1) / np.sqrt(n)) if n > 1 else float("inf")
    use_cost = cv[best] < cv[-1]
    anchor, coefs = fits(np.arange(n))
    flops_fit = FlopsBaseline.fit_flops(flops, ms, seq_len)  # the baseline, as it is
    model = CostModel().set_coef(coefs[best] if use_cost else anchor)
    sel = Selection("leave-one-out" if n <= MAX_LOO else f"{len(folds)}-fold", n,
                    list(PENALTIES), [float(v) for v in cv[:-1]], float(cv[-1]),
                    PENALTIES[best], se, "cost model" if use_cost else FLOPS_FIT,
                    PENALTIES[best] if use_cost else None, flops_fit.a < 0 or flops_fit.b < 0)
    return model, flops_fit, sel


def _train_mlp(X: torch.Tensor, Y: torch.Tensor, tr: np.ndarray, va: np.ndarray, cfg: TrainConfig,
               rng: random.Random, progress: bool) -> tuple[LatencyMLP, EarlyStop]:
    """The original's recipe (Adam, MSE on ms / lat_norm, random batches of the training split),
    checked on the validation split every `log_every` steps: the best checkpoint is kept, and
    training stops after `patience` checks without a better one (0: runs every step)."""
    model = LatencyMLP(cfg.feature_dim, cfg.hidden_dim, cfg.hidden_layer_num)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    loss_fn = nn.MSELoss()
    train_list = tr.tolist()
    best_loss, best_step, best_state, since_best = float("inf"), 0, None, 0
    step = 0
    with Progress(cfg.train_steps, "training predictor", unit="step", enabled=progress,
                  logger=logger) as bar:
        while step < cfg.train_steps:
            batch = rng.sample(train_list, min(cfg.bsz, len(train_list)))
            model.train()
            loss = loss_fn(model(X[batch]).squeeze(-1), Y[batch])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            step += 1
            bar.update()
            if step % cfg.log_every and step != cfg.train_steps:
                continue
            model.eval()
            with torch.no_grad():
                vloss = loss_fn(model(X[va]).squeeze(-1), Y[va]).item()
            if vloss < best_loss:
                best_loss, best_step, since_best = vloss, step, 0
                best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
            else:
                since_best += 1
            bar.set_postfix(train_loss=f"{loss.item():.3g}", valid_loss=f"{vloss:.3g}",
                            best=f"{best_loss:.3g}@{best_step}")
            if cfg.patience and since_best >= cfg.patience:
                break
    if best_state is not None:
        model.load_state_dict(best_state)
    stop = EarlyStop(best_step, best_loss, step, cfg.train_steps, cfg.patience)
    logger.info("MLP %s", stop.line())
    return model, stop


def train_predictor(archs: Sequence[Arch], ms: np.ndarray, cfg: TrainConfig = TrainConfig(),
                    base_latency_ms: float | None = None, scheme: str | Scheme | None = None,
                    meta: dict[str, Any] | None = None, progress: bool = True,
                    seq_len: int = 128) -> tuple[LatencyPredictor, TrainReport]:
    """Fit `cfg.predictor` on the training split; score it on all three splits beside the FLOPs
    baseline, which counts FLOPs at the timed sequence length `seq_len`."""
    if len(archs) < 10:
        raise UserError(f"the latency dataset holds {len(archs)} distinct archs; at least 10 are "
                        f"needed for a train/valid/test split")
    start = time.perf_counter()
    torch.manual_seed(cfg.seed)
    rng = random.Random(cfg.seed)
    ms = np.asarray(ms, dtype=np.float64)
    tr, va, te = split_indices(len(archs), cfg.seed)
    X = torch.tensor([a.features() for a in archs], dtype=torch.float32) / torch.tensor(cfg.feature_norm)
    Y = torch.tensor(ms / cfg.lat_norm, dtype=torch.float32)
    stop = selection = None
    if cfg.predictor == "cost":  # chosen and fitted on the training and validation archs
        fit_idx = np.concatenate([tr, va])
        arch_flops = np.asarray([archs[i].flops(seq_len) for i in fit_idx], dtype=np.float64)
        model, flops, selection = select_cost_model(X[fit_idx], ms[fit_idx], arch_flops, cfg,
                                                    seq_len)
        for line in selection.lines():
            logger.debug("%s", line)
    else:
        model, stop = _train_mlp(X, Y, tr, va, cfg, rng, progress)
        flops = FlopsBaseline.fit([archs[i] for i in tr], ms[tr], seq_len)
    meta = dict(meta or {})
    meta.update(train_config=asdict(cfg))
    if stop is not None:
        meta["early_stop"] = asdict(stop)
    if selection is not None:
        meta["selection"] = selection.record()
    pred = LatencyPredictor(model, tuple(cfg.feature_norm), cfg.lat_norm, base_latency_ms,
                            scheme, meta)
    all_pred = pred.predict(archs)
    test_archs = [archs[i] for i in te]
    flops_pred = flops.predict(test_archs)
    report = TrainReport(regression_metrics(all_pred[tr], ms[tr]),
                         regression_metrics(all_pred[va], ms[va]),
                         regression_metrics(all_pred[te], ms[te]),
                         regression_metrics(flops_pred, ms[te]), flops, test_archs, ms[te],
                         all_pred[te], flops_pred, time.perf_counter() - start, stop, selection)
    pred.meta["metrics"] = {"test": asdict(report.test), "valid": asdict(report.valid),
                            "flops_baseline_test": asdict(report.flops_test),
                            "split": [len(tr), len(va), len(te)]}
    return pred, report


def plot_predictions(path: str | os.PathLike, true: np.ndarray, pred: np.ndarray,
                     baseline: np.ndarray | None = None, title: str = "latency predictor",
                     label: str = "predictor") -> None:
    """Predicted-vs-measured scatter (log axes), with the FLOPs baseline when given; `label`
    names the fitted predictor in the legend, each series with its MAPE and Kendall tau."""
    from matplotlib.figure import Figure
    from matplotlib.ticker import LogLocator, NullFormatter, StrMethodFormatter

    fig = Figure(figsize=(5.5, 5))
    ax = fig.subplots()
    lo = float(min(np.min(true), np.min(pred))) * 0.9
    hi = float(max(np.max(true), np.max(pred))) * 1.1
    def scored(name: str, values: np.ndarray) -> str:
        m = regression_metrics(values, true)
        return f"{name}: MAPE {m.mape:.2f}%, Kendall tau {m.kendall_tau:.3f}"

    if baseline is not None:
        ax.scatter(true, baseline, s=10, alpha=0.5, label=scored("FLOPs baseline", baseline),
                   color="tab:gray")
    ax.scatter(true, pred, s=10, alpha=0.8, label=scored(label, pred), color="tab:blue")
    ax.plot([lo, hi], [lo, hi], "k--", lw=1, label="y = x")
    ax.set_xscale("log")
    ax.set_yscale("log")
    for axis in (ax.xaxis, ax.yaxis):  # plain 1, 2, 5, 10, ... ms: no crowded "3 x 10^1" labels
        axis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
        axis.set_major_formatter(StrMethodFormatter("{x:g}"))
        axis.set_minor_formatter(NullFormatter())
    ax.set_xlabel("measured latency (ms)")
    ax.set_ylabel("predicted latency (ms)")
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=8)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format=Path(path).suffix.lstrip(".") or "png", dpi=120)


def read_datasets(datasets: Sequence[str | os.PathLike]) -> tuple[list[tuple[Arch, float]],
                                                                   dict[str, Any] | None]:
    """The records of one or more datasets and the sidecar they share. Datasets of different
    backends, protocols, schemes or references are refused (one line naming the two files);
    the shared sidecar's reference latency is the mean of theirs."""
    records: list[tuple[Arch, float]] = []
    sidecars = []
    for path in datasets:
        records += read_latency_dataset(path)
        sidecars.append((path, read_sidecar(path)))
    first_path, first = sidecars[0]
    for path, side in sidecars[1:]:
        if sidecar_backend(side) != sidecar_backend(first):
            raise UserError(f"the latency datasets {first_path} and {path} were timed with "
                            f"different backends ({sidecar_backend(first)} vs "
                            f"{sidecar_backend(side)}); a predictor learns one backend's "
                            f"latencies: fit them separately")
        if (side is None) != (first is None):
            raise UserError(f"{first_path if first is None else path} has no sidecar: its "
                            f"protocol is unknown, so it cannot be fitted together with "
                            f"{path if first is None else first_path}")
        if side is None:
            continue
        for key in ("protocol", "scheme", "base_arch"):
            if side.get(key) != first.get(key):
                raise UserError(f"the latency datasets {first_path} and {path} differ in "
                                f"{key} ({first.get(key)} vs {side.get(key)}); fit them "
                                f"separately")
    if first is None or len(sidecars) == 1:
        return records, first
    shared = dict(first)
    bases = [s["base_latency_ms"] for _, s in sidecars if "base_latency_ms" in s]
    if bases:
        shared["base_latency_ms"] = float(np.mean(bases))
    return records, shared


def train_from_dataset(dataset: str | os.PathLike | Sequence[str | os.PathLike],
                       ckpt_path: str | os.PathLike, cfg: TrainConfig,
                       base_latency_ms: float | None = None, scheme: str | Scheme | None = None,
                       plot: str | os.PathLike | None = None,
                       progress: bool = True) -> tuple[LatencyPredictor, TrainReport]:
    """Train on one or more `lat.tmp` (+ sidecar), save `time.pt` (with the datasets' backend),
    optionally plot the test split."""
    datasets = [dataset] if isinstance(dataset, (str, os.PathLike)) else list(dataset)
    for p in datasets:
        check_output("ckpt_path", ckpt_path, {"lat_dataset_path": p,
                                              "lat_dataset_path (sidecar)": sidecar_path(p)})
        if plot:
            check_output("plot", plot, {"lat_dataset_path": p, "ckpt_path": ckpt_path})
    records, sidecar = read_datasets(datasets)
    named = ", ".join(str(p) for p in datasets)
    archs, ms = dataset_arrays(records)
    if len(records) != len(archs):
        logger.info("%d repeated timings averaged", len(records) - len(archs))
    saved_scheme = sidecar.get("scheme") if sidecar else None
    if scheme or saved_scheme:
        scheme = Scheme.resolve(saved_scheme, scheme, what=f"the latency dataset {named}")
    if base_latency_ms is None and sidecar:
        base_latency_ms = sidecar.get("base_latency_ms")
    if base_latency_ms is None:
        base_latency_ms = ORIGINAL_BASE_LATENCY_MS[scheme or Scheme.MLM]
        logger.warning("%s has no sidecar with a measured BERT-base latency: recording the "
                       "original's %.0f ms (authors' CPU); pass --base_latency with the value "
                       "measured on this machine", named, base_latency_ms)
    backend = sidecar_backend(sidecar)
    meta = {"dataset": named if len(datasets) > 1 else str(datasets[0]), "n_archs": len(archs),
            "timing": {k: sidecar[k] for k in ("machine", "protocol", "timing_subject", "base_arch",
                                               "runtime") if k in sidecar} if sidecar else None}
    seq_len = ((sidecar or {}).get("protocol") or {}).get("seq_len") or 128
    predictor, report = train_predictor(archs, ms, cfg, base_latency_ms, scheme, meta, progress,
                                        int(seq_len))
    predictor.backend = backend
    predictor.save(ckpt_path)
    if plot:
        name = "MLP" if predictor.kind == "mlp" else "cost model"
        plot_predictions(plot, report.test_true, report.test_pred, report.test_flops_pred,
                         title=f"{name} latency predictor ({backend} timings), test split "
                               f"(n={report.test.n})", label=f"{name} predictor")
    return predictor, report


# ---- latency_predictor.py's flags ---------------------------------------------------------------
MLP_ONLY = ("hidden_dim", "hidden_layer_num", "train_steps", "bsz", "lr", "patience")


@dataclass(frozen=True, kw_only=True)
class PredictorConfig(SpaceFlags):
    """latency_predictor.py: train a predictor on a dataset, or (--get_candidates) list the
    archs a trained one places in the latency window."""

    lat_dataset_path: tuple[str, ...] = flag(
        ("./latency_dataset/lat.tmp",), nargs="+", metavar="LAT_TMP",
        help="latency dataset written by inference_time_evaluation.py; several are fitted on "
             "together if they share backend, protocol, scheme and reference")
    ckpt_path: str = flag("latency_dataset/ckpts/time.pt",
                          help="where time.pt is saved (training) or read (--get_candidates)",
                          output=Output.file("a latency predictor (time.pt)", torch_zip,
                                             when=lambda c: not c.get_candidates,
                                             inputs=("lat_dataset_path",)))
    feature_norm: tuple[float, ...] | None = flag(
        None, nargs=4, type=float, metavar=("D", "L", "F", "Q"),
        help=f"feature divisors (default {list(FEATURE_NORM)})")
    lat_norm: float | None = flag(None, type=float,
                                  help=f"latency divisor in ms (default {LATENCY_NORM:g})")
    predictor: str = flag("cost", choices=list(PREDICTOR_KINDS),
                          help="cost: non-negative least squares on per-layer cost terms (L*d*f, "
                               "L*d*q, L*d, L*f, L*q, L, d, 1), shrunk toward the FLOPs fit (or "
                               "that fit itself) as cross-validation on the training + "
                               "validation archs chooses, fitted in milliseconds, exact "
                               "enumeration on any grid; mlp: the original's MLP (4-2000x4-1, "
                               "minutes, a 48 MB time.pt), stopped early on the validation split")
    feature_dim: int | None = flag(None, type=int, help="default 4")
    hidden_dim: int | None = flag(None, type=int, help="default 2000")
    hidden_layer_num: int | None = flag(None, type=int, help="default 3")
    train_steps: int | None = flag(None, type=int, help="MLP only (default 5000)")
    bsz: int | None = flag(None, type=int, help="MLP only (default 128)")
    lr: float | None = flag(None, type=float, help="MLP only (default 1e-5)")
    patience: int | None = flag(
        None, type=int, help="MLP only: validation checks (every 100 steps) without a better "
                             "loss before stopping, the best checkpoint kept; 0 runs every step "
                             "(default 10)")
    seed: int = flag(0, type=int, help="split, initialisation and batches")
    base_latency: float | None = flag(
        None, type=float, help="BERT-base latency (ms) to record (default: the one measured in "
                               "the dataset's sidecar)")
    plot: str | None = flag(None, metavar="PNG",
                            help="write a predicted-vs-measured plot of the test split",
                            output=Output.file("a PNG image", png,
                                               when=lambda c: not c.get_candidates,
                                               inputs=("lat_dataset_path", "ckpt_path")))
    get_candidates: bool = flag(False, help="list candidates instead of training")
    model: str | None = flag(None, type=str.upper, choices=["MLM", "KD"],
                             help="attention scheme (default: the one recorded in the dataset / "
                                  "time.pt)")
    candidate_file: str = flag("", help="output of --get_candidates",
                               output=Output.file("a candidate file", arch_lines,
                                                  when=lambda c: c.get_candidates,
                                                  inputs=("ckpt_path",)))
    latency_constraint: float = flag(7, type=float, help="target speedup vs BERT-base")
    lat_min_ratio: float = flag(0.85, type=float)
    lat_max_ratio: float = flag(1.1, type=float)
    no_progress: bool = flag(False)

    def __post_init__(self) -> None:
        super().__post_init__()
        paths = self.lat_dataset_path
        object.__setattr__(self, "lat_dataset_path",
                           (paths,) if isinstance(paths, (str, os.PathLike)) else tuple(paths))
        if not self.lat_dataset_path:
            raise UserError("--lat_dataset_path needs at least one dataset")
        if self.feature_norm is not None:
            object.__setattr__(self, "feature_norm", tuple(self.feature_norm))
            for value in self.feature_norm:
                check_positive(feature_norm=value)
        check_positive(base_latency=self.base_latency, latency_constraint=self.latency_constraint,
                       lat_min_ratio=self.lat_min_ratio, lat_max_ratio=self.lat_max_ratio,
                       lat_norm=self.lat_norm, lr=self.lr)
        if self.get_candidates:
            if not self.candidate_file:
                raise UserError("--get_candidates needs --candidate_file")
            return  # SearchConfig.candidates_of checks the rest
        given = [f"--{k}" for k in MLP_ONLY if getattr(self, k) is not None]
        if self.predictor == "cost" and given:
            raise UserError(f"{', '.join(given)}: for --predictor mlp only (the default "
                            f"predictor, the cost model, is fitted in closed form)")
        self.train_config()  # TrainConfig validates the recipe

    @property
    def scheme(self) -> Scheme | None:
        return Scheme.parse(self.model) if self.model else None

    def train_config(self) -> TrainConfig:
        """The training recipe; flags left unset take TrainConfig's defaults (the original's MLP
        recipe, with early stopping)."""
        given = {k: getattr(self, k) for k in ("feature_dim", *MLP_ONLY)
                 if getattr(self, k) is not None}
        return TrainConfig(predictor=self.predictor,
                           feature_norm=tuple(self.feature_norm or FEATURE_NORM),
                           lat_norm=LATENCY_NORM if self.lat_norm is None else self.lat_norm,
                           seed=self.seed, **given)
