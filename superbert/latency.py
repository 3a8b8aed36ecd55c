"""Latency: the CPU timing protocol, the latency dataset (`lat.tmp` + sidecar), the predictor.

Timing protocol (what `inference_time_evaluation.py` runs): PyTorch on CPU, 1 intra-op thread,
batch 1 x 128 tokens (all token id 9333, as the original), a warm-up forward, then `infer_cnt`
timed forwards under `torch.inference_mode()`; the median (robust to scheduler noise; `min`
with `statistic="min"`, steadier on a machine whose speed wanders) is what the dataset records,
the mean is logged beside it. The default subject is the extracted dense sub-model with random
weights (latency depends only on the shapes): what is deployed. The original timed the sliced
supernet (`TimingProtocol.subject = "supernet"`).

Dataset: the original's `lat.tmp`, one `repr(arch)<TAB>ms` line per timing, appended as each
arch is timed (with several passes an arch has several lines, averaged when the dataset is
read), plus a JSON sidecar (`<file>.json`) naming the machine, threads, backend, torch version,
protocol, scheme and the BERT-base reference latency measured on the same machine.

Predictor: the original's (from HAT) MLP 4 -> 2000 -> 2000 x 3 -> 1 with ReLU on the features
[d, L, mean f, mean q] / [768, 12, 3072, 768], target ms / 200, Adam 1e-5, 5000 steps of 128
random training examples; seeded here. `time.pt` is self-describing (state dict, shape,
normalisers, base latency, scheme, metrics); a bare state dict of the original still loads.

Alternative predictor (`--predictor cost`): latency as a non-negative sum of per-layer cost
terms (L*d*f, L*d*q, L*d, L*f, L*q, L, d, 1; see `CostModel`), fitted by least squares on the
relative error. It fits from a few dozen archs, its coefficients read as ms per unit of work,
and it costs a few flops per arch, so candidate enumeration is exact on any grid.
"""
from __future__ import annotations

import logging
import math
import os
import platform
import random
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
import torch
from torch import nn

from .arch import FEATURE_NORM, LATENCY_NORM, Arch, normalize_scheme
from .errors import UserError

logger = logging.getLogger(__name__)

# BERT-base, the reference of every speedup (12 layers, 768 hidden, 12 heads, qkv 768, FFN 3072).
BERT_BASE = Arch(layers=12, hidden=768, heads=12, qkv=768, ffn=3072)
# The original's hard-coded BERT-base latencies on the authors' CPU (Xeon E7-4850 v2), used only
# when a bare original time.pt is loaded and no measured base latency is given.
ORIGINAL_BASE_LATENCY_MS = {"mlm": 886.0, "kd": 1063.0}
TIMING_TOKEN_ID = 9333
DATASET_FORMAT = "superbert-latency-dataset"
PREDICTOR_FORMAT = "superbert-latency-predictor"


# ---- timing ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class TimingProtocol:
    threads: int = 1
    batch_size: int = 1
    seq_len: int = 128
    warmup: int = 1
    infer_cnt: int = 10
    subject: str = "extracted"  # "extracted" dense sub-model, or "supernet" (sliced, original)
    # What a dataset line records: "median" of the timed runs (the protocol's default), or "min",
    # the most repeatable on a machine whose speed wanders (interference only adds time).
    statistic: str = "median"
    # "wall": perf_counter, what a user waits (the original's time.time()). "cpu": the process's
    # CPU time, which with 1 thread equals wall time on an idle machine but ignores time the
    # scheduler gives to other processes: the robust choice on a shared machine.
    clock: str = "wall"
    # Drift correction for shared machines: a fixed reference arch is timed after every arch and
    # each latency is scaled by (reference at the start / reference now, averaged over the last
    # few), so slow changes in machine load do not leak into the dataset.
    drift_ref: bool = False

    def __post_init__(self) -> None:
        for name in ("threads", "batch_size", "seq_len", "infer_cnt"):
            if int(getattr(self, name)) < 1:
                raise UserError(f"--{name} must be at least 1, got {getattr(self, name)}")
        if self.warmup < 0:
            raise UserError("the number of warm-up runs cannot be negative")
        if self.subject not in ("extracted", "supernet"):
            raise UserError(f"unknown timing subject {self.subject!r}")
        if self.statistic not in ("median", "min"):
            raise UserError(f"--statistic must be median or min, got {self.statistic!r}")
        if self.clock not in ("wall", "cpu"):
            raise UserError(f"--clock must be wall or cpu, got {self.clock!r}")
        if self.clock == "cpu" and self.threads != 1:
            raise UserError("--clock cpu measures the summed CPU time of all threads; it is "
                            "only a latency with --threads 1")


@dataclass(frozen=True)
class Timing:
    """One arch timed: statistics of the timed runs, in ms; `ms` is the protocol's statistic."""

    arch: Arch
    median_ms: float
    mean_ms: float
    runs: int
    min_ms: float = float("nan")
    statistic: str = "median"

    @property
    def ms(self) -> float:
        return self.min_ms if self.statistic == "min" else self.median_ms


def set_threads(threads: int) -> None:
    torch.set_num_threads(threads)
    try:  # only allowed before any inter-op work started; harmless to skip afterwards
        torch.set_num_interop_threads(1)
    except RuntimeError:
        pass


class Timer:
    """Times archs of one supernet config under a protocol (model built per arch, random weights)."""

    def __init__(self, config: Any, scheme: str, protocol: TimingProtocol = TimingProtocol()):
        from .modeling import AutoTinyBertModel

        self.config = config
        self.scheme = normalize_scheme(scheme)
        self.protocol = protocol
        set_threads(protocol.threads)
        vocab = int(config.vocab_size)
        token = TIMING_TOKEN_ID if TIMING_TOKEN_ID < vocab else vocab - 1
        if protocol.seq_len > int(config.max_position_embeddings):
            raise UserError(f"--max_seq_length {protocol.seq_len} exceeds the model's "
                            f"max_position_embeddings {config.max_position_embeddings}")
        self.input_ids = torch.full((protocol.batch_size, protocol.seq_len), token, dtype=torch.long)
        self.attention_mask = torch.ones_like(self.input_ids)
        self._supernet = None
        self._model_cls = AutoTinyBertModel

    def _supernet_for(self, arch: Arch):
        """The sliced supernet (original protocol), grown to hold `arch` (e.g. BERT-base)."""
        from .modeling import sub_config

        cfg = self.config
        need = Arch(max(arch.layers, cfg.num_hidden_layers), max(arch.hidden, cfg.hidden_size),
                    cfg.num_attention_heads, max(arch.qkv, cfg.qkv_size),
                    max(arch.ffn, cfg.intermediate_size))
        if self._supernet is None or self._supernet_arch != need:
            full = sub_config(cfg, need)
            full.attention_scheme = self.scheme
            self._supernet = self._model_cls(full).eval()
            self._supernet_arch = need
        return self._supernet

    def build(self, arch: Arch) -> nn.Module:
        """The model whose forward is timed, already set to `arch`."""
        from .modeling import sub_config

        if self.protocol.subject == "supernet":
            model = self._supernet_for(arch)
            model.set_sample_config(arch)
            return model
        cfg = sub_config(self.config, arch)
        cfg.fit_size = None  # dense_fit is a training-time projection, not deployed
        return self._model_cls(cfg).eval()

    def forward(self, model: nn.Module) -> None:
        out = model(self.input_ids, attention_mask=self.attention_mask)
        # The original's KD timing path ended in dense_fit (projection to the teacher width).
        if self.protocol.subject == "supernet" and getattr(model, "dense_fit", None) is not None:
            model.dense_fit(out.last_hidden_state)

    def time(self, arch: Arch) -> Timing:
        return self.time_model(self.build(arch), arch)

    def time_reference(self, arch: Arch, extra_warmup: int = 3) -> Timing:
        """Time a reference arch with extra warm-up: it is often the process's first model, whose
        first forwards (kernel selection, allocator growth) would inflate every speedup."""
        return self.time_model(self.build(arch), arch,
                               warmup=self.protocol.warmup + extra_warmup)

    def time_model(self, model: nn.Module, arch: Arch, runs: int | None = None,
                   warmup: int | None = None) -> Timing:
        clock = time.perf_counter if self.protocol.clock == "wall" else time.process_time
        times = []
        with torch.inference_mode():
            for _ in range(self.protocol.warmup if warmup is None else warmup):
                self.forward(model)
            for _ in range(runs or self.protocol.infer_cnt):
                start = clock()
                self.forward(model)
                times.append((clock() - start) * 1000.0)
        return Timing(arch, float(np.median(times)), float(np.mean(times)), len(times),
                      float(np.min(times)), self.protocol.statistic)


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            for line in fh:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_info(threads: int) -> dict[str, Any]:
    backends = []
    if torch.backends.mkldnn.is_available():
        backends.append("oneDNN")
    if torch.backends.mkl.is_available():
        backends.append("MKL")
    return {"hostname": platform.node(), "cpu_model": cpu_model(), "cpu_count": os.cpu_count(),
            "threads": threads, "backend": "pytorch-cpu" + (f" ({', '.join(backends)})" if backends else ""),
            "torch_version": torch.__version__, "python_version": platform.python_version(),
            "platform": platform.platform()}


# ---- the latency dataset -----------------------------------------------------------------------
def sidecar_path(dataset: str | os.PathLike) -> Path:
    return Path(str(dataset) + ".json")


def read_latency_dataset(path: str | os.PathLike) -> list[tuple[Arch, float]]:
    """The `repr(arch)<TAB>ms` lines of a `lat.tmp` (ours or the original's), in file order."""
    try:
        with open(path, encoding="utf-8") as fh:
            lines = fh.read().splitlines()
    except FileNotFoundError:
        raise UserError(f"latency dataset not found: {path} (make it with "
                        f"inference_time_evaluation.py)") from None
    except (OSError, UnicodeDecodeError) as err:
        raise UserError(f"cannot read latency dataset {path}: {err}") from None
    out = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        parts = line.rstrip("\n").split("\t")
        if len(parts) < 2:
            raise UserError(f"{path}:{number}: expected '<arch dict><TAB><ms>', got {line[:80]!r}")
        try:
            arch = Arch.parse(parts[0])
            ms = float(parts[1])
        except UserError as err:
            raise UserError(f"{path}:{number}: {err}") from None
        except ValueError:
            raise UserError(f"{path}:{number}: latency {parts[1]!r} is not a number") from None
        if not math.isfinite(ms) or ms <= 0:
            raise UserError(f"{path}:{number}: latency {ms} ms is not a positive number")
        out.append((arch, ms))
    return out


def dataset_arrays(records: Iterable[tuple[Arch, float]]) -> tuple[list[Arch], np.ndarray]:
    """Unique archs (first-seen order) and their latency; repeated timings are averaged."""
    sums: dict[Arch, list[float]] = {}
    for arch, ms in records:
        sums.setdefault(arch, []).append(ms)
    archs = list(sums)
    return archs, np.asarray([float(np.mean(sums[a])) for a in archs])


def read_sidecar(dataset: str | os.PathLike) -> dict[str, Any] | None:
    import json

    path = sidecar_path(dataset)
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise UserError(f"cannot read the latency dataset sidecar {path}: {err}") from None
    if not isinstance(data, dict) or data.get("format") != DATASET_FORMAT:
        raise UserError(f"{path} is not a latency dataset sidecar")
    return data


def write_sidecar(dataset: str | os.PathLike, data: dict[str, Any]) -> None:
    import json

    from superbert.io import atomic_write_text

    atomic_write_text(sidecar_path(dataset), json.dumps(data, indent=2, sort_keys=True) + "\n")


def format_latency_line(arch: Arch, ms: float) -> str:
    return f"{arch}\t{ms}\n"


def sample_archs(space: Any, n: int, seed: int) -> list[Arch]:
    """`n` distinct archs drawn uniformly per dimension (all layer counts), seeded.

    The same (space, n, seed) always gives the same list, and a larger n extends it, so a
    resumed or enlarged run times only what is missing.
    """
    total = space.size()
    if n > total:
        raise UserError(f"--num_archs {n} exceeds the {total} archs of the space")
    rng = random.Random(seed)
    seen: set[Arch] = set()
    out: list[Arch] = []
    tries = 0
    while len(out) < n:
        tries += 1
        if tries > 100 * n + 1000:
            raise UserError(f"could not draw {n} distinct archs from a space of {total}")
        a = space.sample(rng)
        if a not in seen:
            seen.add(a)
            out.append(a)
    return out


@dataclass
class DatasetRun:
    """Build or extend a latency dataset (resumable: archs already in the file are skipped)."""

    output: Path
    config: Any
    scheme: str
    protocol: TimingProtocol
    base_arch: Arch = BERT_BASE
    supernet: str = "default"

    def expected_sidecar(self) -> dict[str, Any]:
        return {"format": DATASET_FORMAT, "version": 1,
                "machine": machine_info(self.protocol.threads),
                "protocol": asdict(self.protocol), "scheme": self.scheme,
                "timing_subject": self.protocol.subject, "base_arch": str(self.base_arch),
                "supernet": self.supernet,
                "token_id": TIMING_TOKEN_ID if TIMING_TOKEN_ID < self.config.vocab_size
                else self.config.vocab_size - 1}

    def check_resume(self, existing: dict[str, Any] | None, have_lines: bool) -> None:
        if existing is None:
            if have_lines:
                raise UserError(f"{self.output} exists but has no sidecar "
                                f"{sidecar_path(self.output)}: its timing protocol and machine "
                                f"are unknown, so new timings cannot be appended; use another "
                                f"--output")
            return
        now = self.expected_sidecar()
        for key in ("protocol", "scheme", "base_arch"):
            if existing.get(key) != now[key]:
                raise UserError(f"{self.output} was timed with {key} = {existing.get(key)}, "
                                f"this run uses {now[key]}; use another --output")
        for key in ("hostname", "cpu_model", "torch_version"):
            if existing.get("machine", {}).get(key) != now["machine"][key]:
                raise UserError(f"{self.output} was timed on another machine or software "
                                f"({key} {existing.get('machine', {}).get(key)!r} vs "
                                f"{now['machine'][key]!r}); use another --output")

    def run(self, archs: Sequence[Arch], progress: bool = True, passes: int = 1) -> dict[str, Any]:
        from tqdm import tqdm

        from superbert.io import append_text_durably

        have = read_latency_dataset(self.output) if self.output.exists() else []
        existing = read_sidecar(self.output)
        self.check_resume(existing, bool(have))
        if passes < 1:
            raise UserError("--passes must be at least 1")
        done = Counter(a for a, _ in have)
        # pass-major: each pass sweeps every arch, so a slow drift of the machine's speed lands
        # on different archs in different passes and averages out (repeats are averaged on reading)
        todo = [a for k in range(passes) for a in dict.fromkeys(archs) if done[a] <= k]
        timer = Timer(self.config, self.scheme, self.protocol)
        sidecar = existing or self.expected_sidecar()
        drift = _Drift(timer) if self.protocol.drift_ref else None
        if drift is not None and "drift_ref_ms" not in sidecar:
            sidecar.update(drift_ref_arch=str(drift.arch), drift_ref_ms=drift.now())
        if "base_latency_ms" not in sidecar:
            logger.info("timing the reference %s first", self.base_arch.short())
            base = timer.time_reference(self.base_arch)
            sidecar.update(base_latency_ms=base.ms, base_latency_mean_ms=base.mean_ms)
            logger.info("reference latency: %s %.2f ms, mean %.2f ms",
                        self.protocol.statistic, base.ms, base.mean_ms)
            self.output.parent.mkdir(parents=True, exist_ok=True)
            write_sidecar(self.output, sidecar)
        logger.info("%d archs requested x %d pass(es), %d timings to take", len(archs), passes,
                    len(todo))
        bar = tqdm(todo, desc="timing", unit="arch", disable=not progress)
        for arch in bar:
            t = timer.time(arch)
            ms = t.ms
            if drift is not None:
                ms *= sidecar["drift_ref_ms"] / drift.update()
            append_text_durably(self.output, format_latency_line(arch, round(ms, 4)))
            bar.set_postfix_str(f"{arch.short()} {ms:.1f} ms (mean {t.mean_ms:.1f})")
        return sidecar


# A mid-size arch (about a tenth of BERT-base) timed between archs for drift correction.
DRIFT_REF = Arch(layers=4, hidden=384, heads=12, qkv=384, ffn=1536)


class _Drift:
    """Running reference latency: the mean of the last `window` reference timings."""

    def __init__(self, timer: "Timer", window: int = 8, runs: int = 3):
        from .arch import arch_of_config

        self.timer, self.window, self.runs, self.recent = timer, window, runs, []
        # The sliced supernet is one shared model: its reference is its own full arch.
        self.arch = (arch_of_config(timer.config) if timer.protocol.subject == "supernet"
                     else DRIFT_REF)
        self.model = timer.build(self.arch)  # built once: only its timing is repeated
        timer.time_model(self.model, self.arch, runs=1, warmup=1)

    def now(self) -> float:
        model = self.timer.build(self.arch) if self.timer.protocol.subject == "supernet" else self.model
        return self.timer.time_model(model, self.arch, runs=self.runs, warmup=0).ms

    def update(self) -> float:
        self.recent = (self.recent + [self.now()])[-self.window:]
        return float(np.mean(self.recent))


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

    def fit(self, x: torch.Tensor, y: torch.Tensor) -> "CostModel":
        """Non-negative least squares on the relative error (every arch counts alike, as in MAPE)."""
        from scipy.optimize import nnls

        A = self.terms(x.double()).numpy()
        t = y.double().numpy()
        coef, _ = nnls(A / t[:, None], np.ones_like(t))
        self.coef.copy_(torch.from_numpy(coef))
        return self

    def formula(self, feature_norm: Sequence[float], lat_norm: float) -> str:
        """The fitted model in raw units: 'ms = 1.2e-05*L*d*f + ...'."""
        dn, Ln, fn, qn = feature_norm
        scale = {"L*d*f": Ln * dn * fn, "L*d*q": Ln * dn * qn, "L*d": Ln * dn, "L*f": Ln * fn,
                 "L*q": Ln * qn, "L": Ln, "d": dn, "1": 1.0}
        parts = [f"{float(c) * lat_norm / scale[t]:.4g}" + ("" if t == "1" else f"*{t}")
                 for c, t in zip(self.coef, COST_TERMS) if float(c) > 0]
        return "ms = " + (" + ".join(parts) if parts else "0")


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
    scheme: str | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
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
            return f"cost model ({self.model.formula(self.feature_norm, self.lat_norm)})"
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
                "scheme": self.scheme, "meta": self.meta}

    def save(self, path: str | os.PathLike) -> None:
        from superbert.io import atomic_path

        with atomic_path(path) as tmp:
            torch.save(self.to_checkpoint(), tmp)

    @classmethod
    def load(cls, path: str | os.PathLike, feature_norm: Sequence[float] | None = None,
             lat_norm: float | None = None, base_latency_ms: float | None = None,
             scheme: str | None = None, feature_dim: int | None = None,
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
        scheme = None if scheme is None else normalize_scheme(scheme)
        if bare:
            base = base_latency_ms
            eff_scheme = scheme or "mlm"
            if base is None:
                base = ORIGINAL_BASE_LATENCY_MS[eff_scheme]
                logger.warning("%s is a bare state dict (no base latency recorded): using the "
                               "original's BERT-base latency %.0f ms of the authors' CPU; pass "
                               "--base_latency with the value measured here", path, base)
            return cls(model, tuple(feature_norm or FEATURE_NORM),
                       float(lat_norm if lat_norm is not None else LATENCY_NORM),
                       float(base), scheme, {"source": "bare state dict"})
        saved_fn = tuple(float(v) for v in blob["feature_norm"])
        saved_ln = float(blob["lat_norm"])
        if feature_norm is not None and tuple(float(v) for v in feature_norm) != saved_fn:
            raise UserError(f"{path} was trained with --feature_norm {list(saved_fn)}, "
                            f"not {list(feature_norm)}")
        if lat_norm is not None and float(lat_norm) != saved_ln:
            raise UserError(f"{path} was trained with --lat_norm {saved_ln}, not {lat_norm}")
        saved_scheme = blob.get("scheme")
        if scheme is not None and saved_scheme and scheme != saved_scheme:
            raise UserError(f"{path} predicts latencies of the {saved_scheme.upper()} scheme, but "
                            f"--model {scheme.upper()} was given")
        base = base_latency_ms if base_latency_ms is not None else blob.get("base_latency_ms")
        return cls(model, saved_fn, saved_ln, None if base is None else float(base),
                   scheme or saved_scheme, dict(blob.get("meta") or {}))

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


# ---- training and evaluation -------------------------------------------------------------------
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
    from scipy.stats import kendalltau

    pred, true = np.asarray(pred, dtype=np.float64), np.asarray(true, dtype=np.float64)
    if len(true) == 0:
        return Metrics(0, float("nan"), float("nan"), float("nan"))
    tau = kendalltau(pred, true).statistic if len(true) > 1 else float("nan")
    return Metrics(len(true), float(np.sqrt(np.mean((pred - true) ** 2))),
                   float(100.0 * np.mean(np.abs(pred - true) / true)), float(tau))


@dataclass(frozen=True)
class FlopsBaseline:
    """ms ~ a * FLOPs + b, least squares on the training split: what the MLP must beat."""

    a: float
    b: float
    seq_len: int = 128

    @classmethod
    def fit(cls, archs: Sequence[Arch], ms: np.ndarray, seq_len: int = 128) -> "FlopsBaseline":
        flops = np.asarray([a.flops(seq_len) for a in archs], dtype=np.float64)
        A = np.stack([flops, np.ones_like(flops)], axis=1)
        (a, b), *_ = np.linalg.lstsq(A, np.asarray(ms, dtype=np.float64), rcond=None)
        return cls(float(a), float(b), seq_len)

    def predict(self, archs: Sequence[Arch]) -> np.ndarray:
        return np.asarray([self.a * a.flops(self.seq_len) + self.b for a in archs])


PREDICTOR_KINDS = ("mlp", "cost")


@dataclass(frozen=True)
class TrainConfig:
    predictor: str = "mlp"  # the original MLP, or "cost": CostModel
    feature_dim: int = 4
    hidden_dim: int = 2000
    hidden_layer_num: int = 3
    train_steps: int = 5000
    bsz: int = 128
    lr: float = 1e-5
    feature_norm: tuple[float, ...] = FEATURE_NORM
    lat_norm: float = LATENCY_NORM
    seed: int = 0
    log_every: int = 100


@dataclass
class TrainReport:
    train: Metrics
    valid: Metrics
    test: Metrics
    flops_test: Metrics
    flops: FlopsBaseline
    test_archs: list[Arch]
    test_true: np.ndarray
    test_pred: np.ndarray
    test_flops_pred: np.ndarray
    seconds: float


def split_indices(n: int, seed: int, fractions: tuple[float, float] = (0.8, 0.1)) -> tuple[np.ndarray, ...]:
    """Shuffled train/valid/test indices, 80/10/10 (at least one test example when n >= 3)."""
    order = np.random.default_rng(seed).permutation(n)
    n_train = int(round(fractions[0] * n))
    n_valid = int(round(fractions[1] * n))
    if n >= 3:
        n_train = min(n_train, n - 2)
        n_valid = max(1, min(n_valid, n - n_train - 1))
    return order[:n_train], order[n_train:n_train + n_valid], order[n_train + n_valid:]


def _train_mlp(X: torch.Tensor, Y: torch.Tensor, tr: np.ndarray, va: np.ndarray, cfg: TrainConfig,
               rng: random.Random, progress: bool) -> LatencyMLP:
    """The original's recipe: Adam, MSE on ms / lat_norm, random batches of the training split."""
    from tqdm import tqdm

    model = LatencyMLP(cfg.feature_dim, cfg.hidden_dim, cfg.hidden_layer_num)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    loss_fn = nn.MSELoss()
    train_list = tr.tolist()
    bar = tqdm(range(cfg.train_steps), desc="training predictor", unit="step", disable=not progress)
    for step in bar:
        batch = rng.sample(train_list, min(cfg.bsz, len(train_list)))
        model.train()
        loss = loss_fn(model(X[batch]).squeeze(-1), Y[batch])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if len(va) and ((step + 1) % cfg.log_every == 0 or step + 1 == cfg.train_steps):
            model.eval()
            with torch.no_grad():
                vloss = loss_fn(model(X[va]).squeeze(-1), Y[va]).item()
            bar.set_postfix(train_loss=f"{loss.item():.3g}", valid_loss=f"{vloss:.3g}")
    return model


def train_predictor(archs: Sequence[Arch], ms: np.ndarray, cfg: TrainConfig = TrainConfig(),
                    base_latency_ms: float | None = None, scheme: str | None = None,
                    meta: dict[str, Any] | None = None,
                    progress: bool = True) -> tuple[LatencyPredictor, TrainReport]:
    if cfg.feature_dim != 4:
        raise UserError(f"--feature_dim must be 4 (features [hidden, layers, mean FFN, mean "
                        f"qkv]), got {cfg.feature_dim}")
    if len(cfg.feature_norm) != 4 or any(v <= 0 for v in cfg.feature_norm) or cfg.lat_norm <= 0:
        raise UserError("--feature_norm needs 4 positive values and --lat_norm a positive value")
    if cfg.predictor not in PREDICTOR_KINDS:
        raise UserError(f"--predictor must be one of {', '.join(PREDICTOR_KINDS)}, got "
                        f"{cfg.predictor!r}")
    if len(archs) < 10:
        raise UserError(f"the latency dataset holds {len(archs)} distinct archs; at least 10 are "
                        f"needed for a train/valid/test split")
    for name in ("hidden_dim", "train_steps", "bsz"):
        if getattr(cfg, name) < 1:
            raise UserError(f"--{name} must be at least 1")
    start = time.perf_counter()
    torch.manual_seed(cfg.seed)
    rng = random.Random(cfg.seed)
    ms = np.asarray(ms, dtype=np.float64)
    tr, va, te = split_indices(len(archs), cfg.seed)
    X = torch.tensor([a.features() for a in archs], dtype=torch.float32) / torch.tensor(cfg.feature_norm)
    Y = torch.tensor(ms / cfg.lat_norm, dtype=torch.float32)
    if cfg.predictor == "cost":
        model = CostModel().fit(X[tr], Y[tr])
    else:
        model = _train_mlp(X, Y, tr, va, cfg, rng, progress)
    meta = dict(meta or {})
    meta.update(train_config=asdict(cfg))
    pred = LatencyPredictor(model, tuple(cfg.feature_norm), cfg.lat_norm, base_latency_ms,
                            scheme, meta)
    all_pred = pred.predict(archs)
    flops = FlopsBaseline.fit([archs[i] for i in tr], ms[tr])
    test_archs = [archs[i] for i in te]
    flops_pred = flops.predict(test_archs)
    report = TrainReport(regression_metrics(all_pred[tr], ms[tr]),
                         regression_metrics(all_pred[va], ms[va]),
                         regression_metrics(all_pred[te], ms[te]),
                         regression_metrics(flops_pred, ms[te]), flops, test_archs, ms[te],
                         all_pred[te], flops_pred, time.perf_counter() - start)
    pred.meta["metrics"] = {"test": asdict(report.test), "valid": asdict(report.valid),
                            "flops_baseline_test": asdict(report.flops_test),
                            "split": [len(tr), len(va), len(te)]}
    return pred, report


def plot_predictions(path: str | os.PathLike, true: np.ndarray, pred: np.ndarray,
                     baseline: np.ndarray | None = None, title: str = "latency predictor") -> None:
    """Predicted-vs-measured scatter (log axes), with the FLOPs baseline when given."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from superbert.io import atomic_path

    fig, ax = plt.subplots(figsize=(5.5, 5))
    lo = float(min(np.min(true), np.min(pred))) * 0.9
    hi = float(max(np.max(true), np.max(pred))) * 1.1
    if baseline is not None:
        ax.scatter(true, baseline, s=10, alpha=0.5, label="FLOPs baseline", color="tab:gray")
    ax.scatter(true, pred, s=10, alpha=0.8, label="MLP predictor", color="tab:blue")
    ax.plot([lo, hi], [lo, hi], "k--", lw=1, label="y = x")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("measured latency (ms)")
    ax.set_ylabel("predicted latency (ms)")
    ax.set_title(title)
    ax.legend()
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format=Path(path).suffix.lstrip(".") or "png", dpi=120)
    plt.close(fig)


# ---- the command-line entry points' library side ----------------------------------------------
def resolve_scheme(config_scheme: str | None, mlm: bool = False, kd: bool = False,
                   default: str = "kd", what: str = "the supernet") -> str:
    """The attention scheme from flags and the saved config; a contradiction is an error."""
    if mlm and kd:
        raise UserError("--mlm and --kd contradict each other")
    flag = "mlm" if mlm else "kd" if kd else None
    if flag and config_scheme and flag != config_scheme:
        raise UserError(f"{what} uses the {config_scheme.upper()} attention scheme, but "
                        f"--{flag} was given")
    return flag or config_scheme or default


def load_supernet_config(bert_model: str | None, mlm: bool = False, kd: bool = False):
    """(config, scheme, label) of the supernet whose space is timed.

    Without --bert_model: the default supernet (8 layers, 768, 12 heads, 3072, qkv 768, vocab
    30522). The scheme is --mlm/--kd, else the one saved in config.json, else KD (the
    original's default timing path).
    """
    from .configuration import AutoTinyBertConfig

    if bert_model is None:
        return AutoTinyBertConfig(), resolve_scheme(None, mlm, kd), "default"
    from .hf import load_config, read_config_json, resolve_model_dir

    model_dir = resolve_model_dir(bert_model)
    saved = read_config_json(model_dir).get("attention_scheme")
    scheme = resolve_scheme(str(saved).lower() if saved else None, mlm, kd,
                            what=str(bert_model))
    return load_config(model_dir, scheme), scheme, str(bert_model)


def collect_latency_dataset(output: str | os.PathLike, bert_model: str | None, space_overrides: dict[str, Any],
                            protocol: TimingProtocol, num_archs: int, full_grid: bool, seed: int,
                            mlm: bool = False, kd: bool = False, base_arch: Arch = BERT_BASE,
                            progress: bool = True, passes: int = 1) -> tuple[Path, dict[str, Any], int]:
    """Time the reference, then the requested archs, appending to `output` (resumable)."""
    from .arch import SearchSpace

    config, scheme, label = load_supernet_config(bert_model, mlm, kd)
    space = SearchSpace.for_supernet(config, scheme, **space_overrides)
    space.validate_against(config)
    if full_grid:
        archs = list(space.iter_grid())
        logger.info("full grid: %d archs (%s scheme)", len(archs), scheme.upper())
    else:
        if num_archs < 1:
            raise UserError("--num_archs must be at least 1")
        archs = sample_archs(space, num_archs, seed)
    if protocol.subject == "supernet":
        from .arch import validate_arch

        for a in (archs[0], space.largest()):
            validate_arch(a, config, scheme)
    run = DatasetRun(Path(output), config, scheme, protocol, base_arch, label)
    sidecar = run.run(archs, progress=progress, passes=passes)
    return Path(output), sidecar, len(archs)


def train_from_dataset(dataset: str | os.PathLike, ckpt_path: str | os.PathLike, cfg: TrainConfig,
                       base_latency_ms: float | None = None, scheme: str | None = None,
                       plot: str | os.PathLike | None = None,
                       progress: bool = True) -> tuple[LatencyPredictor, TrainReport]:
    """Train on a `lat.tmp` (+ sidecar), save `time.pt`, optionally plot the test split."""
    records = read_latency_dataset(dataset)
    sidecar = read_sidecar(dataset)
    archs, ms = dataset_arrays(records)
    if len(records) != len(archs):
        logger.info("%d repeated timings averaged", len(records) - len(archs))
    saved_scheme = sidecar.get("scheme") if sidecar else None
    if scheme and saved_scheme and scheme != saved_scheme:
        raise UserError(f"the latency dataset {dataset} was timed with the {saved_scheme.upper()} "
                        f"scheme, but --model {scheme.upper()} was given")
    scheme = scheme or saved_scheme
    if base_latency_ms is None and sidecar:
        base_latency_ms = sidecar.get("base_latency_ms")
    if base_latency_ms is None:
        eff = scheme or "mlm"
        base_latency_ms = ORIGINAL_BASE_LATENCY_MS[eff]
        logger.warning("%s has no sidecar with a measured BERT-base latency: recording the "
                       "original's %.0f ms (authors' CPU); pass --base_latency with the value "
                       "measured on this machine", dataset, base_latency_ms)
    meta = {"dataset": str(dataset), "n_archs": len(archs),
            "timing": {k: sidecar[k] for k in ("machine", "protocol", "timing_subject", "base_arch")
                       if k in sidecar} if sidecar else None}
    predictor, report = train_predictor(archs, ms, cfg, base_latency_ms, scheme, meta, progress)
    predictor.save(ckpt_path)
    if plot:
        plot_predictions(plot, report.test_true, report.test_pred, report.test_flops_pred,
                         title=f"latency predictor, test split (n={report.test.n})")
    return predictor, report
