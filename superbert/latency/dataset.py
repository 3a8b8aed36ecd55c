"""The latency dataset: `lat.tmp` and its sidecar, the arch sample, and the run that builds it.

`lat.tmp` is the original's file: one `repr(arch)<TAB>ms` line per timing, appended as each arch
is timed (with several passes an arch has several lines, averaged when the dataset is read). The
JSON sidecar `<file>.json` names the machine, threads, torch version, protocol, scheme, the
backend ("torch", "onnxruntime" or "onnxruntime-int8"; absent in older sidecars: torch) with
its runtime (for ONNX Runtime: version, providers, precision, opset, exporter), and the
reference (BERT-base) latency measured on the same machine with the same backend. Every field
read back is type-checked (`read_sidecar`): a wrong type is one error naming the file and field.

A dataset holds one backend's latencies: resuming it with another backend is refused.
"""
from __future__ import annotations

import json
import logging
import math
import os
import random
import time
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Sequence

import numpy as np

from ..arch import Arch, Scheme, SearchSpace, SupernetSpaceFlags, validate_arch
from ..cli import flag, progress_seconds
from ..deploy import require_onnx
from ..errors import UserError
from ..io import append_text_durably, atomic_write_text, read_json
from ..outputs import Output, json_object, latency_lines
from ..progress import Progress, Tick
from ..timing_protocol import TIMING_TOKEN_ID, TimingProtocol, check_backend
from .checks import record_field
from .timing import BERT_BASE, Drift, Timer, machine_info

if TYPE_CHECKING:
    from ..configuration import AutoTinyBertConfig

logger = logging.getLogger(__name__)

DATASET_FORMAT = "superbert-latency-dataset"


# ---- the files ---------------------------------------------------------------------------------
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


# The sidecar's fields and their types (all optional: older sidecars lack some).
SIDECAR_FIELDS: dict[str, type | tuple[type, ...]] = {
    "version": int, "machine": dict, "protocol": dict, "scheme": str, "timing_subject": str,
    "base_arch": str, "supernet": str, "token_id": int, "base_latency_ms": float,
    "base_latency_mean_ms": float, "drift_ref_arch": str, "drift_ref_ms": float,
    "backend": str, "runtime": dict}
MACHINE_FIELDS: dict[str, type | tuple[type, ...]] = {
    "hostname": str, "cpu_model": str, "cpu_count": int, "threads": int, "backend": str,
    "torch_version": str, "python_version": str, "platform": str}
RUNTIME_FIELDS: dict[str, type | tuple[type, ...]] = {
    "backend": str, "precision": str, "opset": int, "exporter": str, "ort_version": str,
    "providers": list, "session_providers": list, "torch_version": str}


def read_sidecar(dataset: str | os.PathLike) -> dict[str, Any] | None:
    """The sidecar of a dataset (None when there is none), every known field type-checked."""
    path = sidecar_path(dataset)
    if not path.is_file():
        return None
    data = read_json(path, "latency dataset sidecar")
    if not isinstance(data, dict) or data.get("format") != DATASET_FORMAT:
        raise UserError(f"{path} is not a latency dataset sidecar")
    for key, kind in SIDECAR_FIELDS.items():
        record_field(data, key, kind, path)
    for parent, fields in (("machine", MACHINE_FIELDS), ("runtime", RUNTIME_FIELDS)):
        for key, kind in fields.items():
            record_field(data.get(parent) or {}, key, kind, f"{path}: {parent}")
    for key in ("base_latency_ms", "drift_ref_ms"):
        if key in data and data[key] <= 0:
            raise UserError(f"{path}: field {key!r} must be a positive number of ms, got "
                            f"{data[key]!r}")
    if "scheme" in data:
        try:
            Scheme.parse(data["scheme"])
        except UserError as err:
            raise UserError(f"{path}: field 'scheme': {err}") from None
    if "base_arch" in data:
        try:
            Arch.parse(data["base_arch"])
        except UserError as err:
            raise UserError(f"{path}: field 'base_arch': {err}") from None
    TimingProtocol.from_record(data.get("protocol"), str(path))
    try:
        check_backend(sidecar_backend(data))
    except UserError as err:
        raise UserError(f"{path}: field 'backend': {err}") from None
    return data


def sidecar_backend(sidecar: dict[str, Any] | None) -> str:
    """The backend a dataset was timed with; a sidecar older than the field (or none): torch."""
    if not sidecar:
        return "torch"
    return sidecar.get("backend") or (sidecar.get("protocol") or {}).get("backend") or "torch"


def write_sidecar(dataset: str | os.PathLike, data: dict[str, Any]) -> None:
    atomic_write_text(sidecar_path(dataset), json.dumps(data, indent=2, sort_keys=True) + "\n")


def format_latency_line(arch: Arch, ms: float) -> str:
    return f"{arch}\t{ms}\n"


# ---- what is timed -----------------------------------------------------------------------------
def sample_archs(space: SearchSpace, n: int, seed: int) -> list[Arch]:
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
    scheme: Scheme
    protocol: TimingProtocol
    base_arch: Arch = BERT_BASE
    supernet: str = "default"

    def expected_sidecar(self, runtime: dict[str, Any] | None = None) -> dict[str, Any]:
        """The sidecar this run writes; `runtime` is its Timer's `info()`."""
        return {"format": DATASET_FORMAT, "version": 1,
                "machine": machine_info(self.protocol.threads),
                "backend": self.protocol.backend,
                "runtime": runtime or {"backend": self.protocol.backend},
                "protocol": asdict(self.protocol), "scheme": str(self.scheme),
                "timing_subject": self.protocol.subject, "base_arch": str(self.base_arch),
                "supernet": self.supernet,
                "token_id": TIMING_TOKEN_ID if TIMING_TOKEN_ID < self.config.vocab_size
                else self.config.vocab_size - 1}

    def check_resume(self, existing: dict[str, Any] | None, have_lines: bool,
                     runtime: dict[str, Any] | None = None) -> None:
        if existing is None:
            if have_lines:
                raise UserError(f"{self.output} exists but has no sidecar "
                                f"{sidecar_path(self.output)}: its timing protocol and machine "
                                f"are unknown, so new timings cannot be appended; use another "
                                f"--output")
            return
        now = self.expected_sidecar(runtime)
        was = sidecar_backend(existing)
        if was != self.protocol.backend:
            raise UserError(f"{self.output} holds latencies timed with --backend {was}, this run "
                            f"uses --backend {self.protocol.backend}; a dataset holds one "
                            f"backend's timings: use another --output")
        saved = TimingProtocol.from_record(existing.get("protocol"), str(sidecar_path(self.output)))
        if saved != self.protocol:
            differ = [f"{k} {getattr(saved, k)!r} vs {getattr(self.protocol, k)!r}"
                      for k in TimingProtocol.__dataclass_fields__
                      if getattr(saved, k) != getattr(self.protocol, k)]
            raise UserError(f"{self.output} was timed with another protocol ({'; '.join(differ)}); "
                            f"use another --output")
        for key in ("scheme", "base_arch"):
            if existing.get(key) != now[key]:
                raise UserError(f"{self.output} was timed with {key} = {existing.get(key)}, "
                                f"this run uses {now[key]}; use another --output")
        for key in ("hostname", "cpu_model", "torch_version"):
            if existing.get("machine", {}).get(key) != now["machine"][key]:
                raise UserError(f"{self.output} was timed on another machine or software "
                                f"({key} {existing.get('machine', {}).get(key)!r} vs "
                                f"{now['machine'][key]!r}); use another --output")
        old = (existing.get("runtime") or {}).get("ort_version")
        new = now["runtime"].get("ort_version")
        if old != new and self.protocol.backend != "torch":
            raise UserError(f"{self.output} was timed with onnxruntime {old}, this run has "
                            f"{new}; use another --output")

    def run(self, archs: Sequence[Arch], progress: bool = True, passes: int = 1) -> dict[str, Any]:
        """Time what is missing. `progress`: a bar on a terminal; off a terminal (or with
        `progress=False`) a log line every 50 archs or ~10 s (`timing_progress`)."""
        if passes < 1:
            raise UserError("--passes must be at least 1")
        have = read_latency_dataset(self.output) if self.output.exists() else []
        existing = read_sidecar(self.output)
        with Timer(self.config, self.scheme, self.protocol) as timer:
            self.check_resume(existing, bool(have), timer.info())
            done = Counter(a for a, _ in have)
            # pass-major: each pass sweeps every arch, so a slow drift of the machine's speed
            # lands on different archs in different passes and averages out (repeats are
            # averaged on reading)
            todo = [a for k in range(passes) for a in dict.fromkeys(archs) if done[a] <= k]
            sidecar = existing or self.expected_sidecar(timer.info())
            return self._time_all(timer, sidecar, archs, todo, passes, progress)

    def _time_all(self, timer: Timer, sidecar: dict[str, Any], archs: Sequence[Arch],
                  todo: list[Arch], passes: int, progress: bool) -> dict[str, Any]:
        drift = Drift(timer) if self.protocol.drift_ref else None
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
        logger.info("%d archs requested x %d pass(es), %d timings to take (backend %s)",
                    len(archs), passes, len(todo), self.protocol.backend)
        with timing_progress(len(todo), bar=progress) as bar:
            for arch in todo:
                t = timer.time(arch)
                ms = t.ms
                if drift is not None:
                    ms *= sidecar["drift_ref_ms"] / drift.update()
                append_text_durably(self.output, format_latency_line(arch, round(ms, 4)))
                bar.set_postfix(f"{arch.short()} {ms:.1f} ms (mean {t.mean_ms:.1f})")
                bar.update()
        return sidecar


def timing_progress(total: int, bar: bool = True, every: int = 50, seconds: float | None = None,
                    clock: Any = time.monotonic, tty: bool | None = None) -> Progress:
    """The latency stage's progress: a bar on a terminal (unless `bar=False`), else a line
    with the count, wall ms per arch and ETA every `every` archs or `seconds` (default 10 s,
    or SUPERBERT_PROGRESS_SECONDS), and at the end."""
    return Progress(total, "timing", unit="arch", every=every, bar=bar, tty=tty, clock=clock,
                    seconds=progress_seconds(10.0) if seconds is None else seconds,
                    line=_timed_line, logger=logger)


def _timed_line(tick: Tick) -> str:
    eta = int(round(tick.eta))
    return (f"timed {tick.done}/{tick.total} archs, {1000 * tick.seconds_per_item:.0f} ms/arch, "
            f"ETA {eta // 3600}:{eta // 60 % 60:02d}:{eta % 60:02d}")


# ---- inference_time_evaluation.py's library side ------------------------------------------------
def load_supernet_config(bert_model: str | None, scheme: str | Scheme | None = None
                         ) -> tuple[AutoTinyBertConfig, Scheme, str]:
    """(config, scheme, label) of the supernet whose space is timed.

    Without `bert_model`: the default supernet (8 layers, 768, 12 heads, 3072, qkv 768, vocab
    30522). The scheme is the requested one (--mlm/--kd), else the one saved in config.json,
    else KD (the original's default timing path); a contradiction is an error.
    """
    from ..configuration import AutoTinyBertConfig  # transformers: imported when needed
    from ..hf import load_config, read_config_json, resolve_model_dir

    if bert_model is None:
        return AutoTinyBertConfig(), Scheme.resolve(None, scheme, default=Scheme.KD), "default"
    model_dir = resolve_model_dir(bert_model)
    saved = read_config_json(model_dir).get("attention_scheme")
    resolved = Scheme.resolve(saved, scheme, default=Scheme.KD, what=str(bert_model))
    return load_config(model_dir, resolved), resolved, str(bert_model)


@dataclass(frozen=True, kw_only=True)
class LatencyConfig(SupernetSpaceFlags):
    """inference_time_evaluation.py: which archs of which supernet to time, and how."""

    bert_model: str | None = flag(
        None, help="supernet directory or name (its config bounds the space and sets vocab, "
                   "positions, activation); default: the 8-layer/768/12-head/3072/qkv-768 "
                   "supernet of the seed README")
    max_seq_length: int = flag(128, type=int)
    batch_size: int = flag(1, type=int)
    seed: int = flag(0, type=int, help="seed of the arch sample")
    hidden_step: int | None = flag(
        None, type=int, help="grid step of the hidden size (default 4 when sampling, the "
                             "original's 16 with --full_grid)")
    ffn_step: int | None = flag(
        None, type=int, help="grid step of the FFN size (default 4 when sampling, 12 with "
                             "--full_grid)")
    qkv_step: int | None = flag(None, type=int, help="grid step of qkv (KD; default 12)")
    mlm: bool = flag(False, help="MLM scheme: heads vary, qkv = 64 x heads (the original "
                                 "default is KD)")
    kd: bool = flag(False, help="KD scheme: 12 heads, qkv varies")
    infer_cnt: int = flag(10, type=int, help="timed forwards per arch")
    warmup: int = flag(1, type=int, help="untimed forwards before timing")
    passes: int = flag(1, type=int,
                       help="sweeps over the archs, one line per arch per sweep (the predictor "
                            "uses their mean): 2 roughly halves the noise a slowly wandering "
                            "machine adds")
    threads: int = flag(1, type=int, help="intra-op threads (torch or ONNX Runtime)")
    backend: str = flag("torch", metavar="{torch,onnxruntime,onnxruntime-int8}",
                        help="runtime of the timed forward (the reference too): torch eager, or "
                             "the model exported to ONNX and run by ONNX Runtime (FP32, or "
                             "dynamic INT8); recorded in the sidecar and time.pt")
    clock: str = flag("wall", choices=["wall", "cpu"],
                      help="wall: elapsed time; cpu: the process's CPU time (1 thread only), "
                           "robust when other processes share the CPU")
    statistic: str = flag("median", choices=["median", "min"],
                          help="what each line records: the median of the timed forwards, or "
                               "the minimum (more repeatable on a machine whose speed wanders)")
    drift_ref: bool = flag(False, help="time a fixed reference arch after each arch and scale "
                                       "out slow drifts of machine load (for shared machines)")
    time_supernet: bool = flag(False, help="time the sliced supernet (the original's subject) "
                                           "instead of the extracted dense sub-model")
    num_archs: int = flag(1000, type=int,
                          help="archs sampled uniformly from the whole space (all layer counts)")
    full_grid: bool = flag(False, help="time every arch of the grid instead")
    output: str = flag("./latency_dataset/lat.tmp",
                       help="dataset file, appended to; the sidecar is <output>.json",
                       output=Output.append("a latency dataset", latency_lines,
                                            inputs=("bert_model",), also=lambda c: [(
                                                "--output's sidecar", sidecar_path(c.output),
                                                Output.file("a latency sidecar", json_object))]))
    base_arch: str | None = flag(
        None, help="reference arch dict (default BERT-base 12/768/12/768/3072; a tiny one makes "
                   "quick runs quick)")
    no_progress: bool = flag(False)

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.mlm and self.kd:
            raise UserError("--mlm and --kd contradict each other")
        if not self.full_grid and self.num_archs < 1:
            raise UserError("--num_archs must be at least 1")
        if self.passes < 1:
            raise UserError("--passes must be at least 1")
        # TimingProtocol and Arch.parse check the timing flags and --base_arch: build both once
        # here, so a bad value fails before any model is loaded
        self.protocol  # noqa: B018
        self.reference  # noqa: B018
        if self.backend != "torch":
            require_onnx()  # one line saying how to install it, before anything is loaded

    @property
    def scheme(self) -> Scheme | None:
        """The scheme asked for (--mlm / --kd), None to take the supernet's."""
        return Scheme.MLM if self.mlm else Scheme.KD if self.kd else None

    @property
    def protocol(self) -> TimingProtocol:
        return TimingProtocol(threads=self.threads, batch_size=self.batch_size,
                              seq_len=self.max_seq_length, warmup=self.warmup,
                              infer_cnt=self.infer_cnt, clock=self.clock,
                              drift_ref=self.drift_ref, statistic=self.statistic,
                              subject="supernet" if self.time_supernet else "extracted",
                              backend=self.backend)

    @property
    def reference(self) -> Arch:
        return Arch.parse(self.base_arch) if self.base_arch else BERT_BASE

    def space_overrides(self) -> dict[str, Any]:
        """SearchSpace keywords from the flags (None: clipped to the supernet)."""
        hidden_step, ffn_step = (16, 12) if self.full_grid else (4, 4)
        out: dict[str, Any] = dict(self.space_ranges(), hidden_step=self.hidden_step or hidden_step,
                                   ffn_step=self.ffn_step or ffn_step)
        if self.qkv_step:
            out["qkv_step"] = self.qkv_step
        return out


def collect_latency_dataset(cfg: LatencyConfig) -> tuple[Path, dict[str, Any], int]:
    """Time the reference, then the requested archs, appending to `cfg.output` (resumable).
    Returns (dataset path, sidecar, number of archs requested)."""
    config, scheme, label = load_supernet_config(cfg.bert_model, cfg.scheme)
    space = SearchSpace.for_supernet(config, scheme, **cfg.space_overrides())
    space.validate_against(config)
    if cfg.full_grid:
        archs = list(space.iter_grid())
        logger.info("full grid: %d archs (%s scheme)", len(archs), scheme.name)
    else:
        archs = sample_archs(space, cfg.num_archs, cfg.seed)
    protocol = cfg.protocol
    if protocol.subject == "supernet":
        for a in (archs[0], space.largest()):
            validate_arch(a, config, scheme)
    run = DatasetRun(Path(cfg.output), config, scheme, protocol, cfg.reference, label)
    sidecar = run.run(archs, progress=not cfg.no_progress, passes=cfg.passes)
    return Path(cfg.output), sidecar, len(archs)
