"""searcher.py's library side: its flags (`SearchConfig`) and one search step.

A step loads the predictor, builds the space and the latency window, runs one method, and
writes its file in the original's format: Candidate writes the candidate file; Random, Fast,
Evolved and Pareto write the next generation (optionally plotted, and its best archs timed for
real with --measure).
"""
from __future__ import annotations

import logging
import random
from dataclasses import dataclass, field

from ..arch import FINE_STEPS, ORIGINAL_STEPS, Arch, Scheme, SearchSpace, SpaceFlags, write_arch_file
from ..cli import flag
from ..errors import UserError
from ..latency import LatencyPredictor, PredictorConfig, load_supernet_config
from ..latency.checks import check_positive
from ..outputs import Output, arch_lines, json_object, png
from ..results import fitness, parse_results
from .candidates import (CandidateSet, check_candidates, enumerate_candidates, read_candidates,
                         write_candidates)
from .evolution import Evolver, sample_generation
from .measure import measure_archs, reference_name
from .pareto import ParetoEvolver
from .plot import plot_generation
from .window import LatencyWindow, window_path, write_window

logger = logging.getLogger(__name__)

METHODS = ("Candidate", "Random", "Fast", "Evolved", "Pareto")


def _method_name(text: str) -> str:
    """--method in any case, written as the original spells it."""
    return {m.lower(): m for m in METHODS}.get(text.lower(), text)


@dataclass(frozen=True, kw_only=True)
class SearchConfig(SpaceFlags):
    """searcher.py: one search step."""

    ckpt_path: str = flag("latency_dataset/ckpts/time.pt", help="time.pt")
    candidate_file: str = flag("", help="written by --method Candidate, read by the other methods",
                               output=Output.file("a candidate file", arch_lines,
                                                  when=lambda c: c.method == "Candidate",
                                                  inputs=("ckpt_path",)))
    arch_perfs_file: str = flag("", help="subbert.results (Evolved, Pareto)")
    output_file: str = flag("cands/archs.txt", help="the next generation",
                            output=Output.file("a generation (.cands) file", arch_lines,
                                               when=lambda c: c.method != "Candidate",
                                               also=lambda c: [(
                                                   "--output_file's window record",
                                                   window_path(c.output_file),
                                                   Output.file("a window record", json_object))],
                                               inputs=("ckpt_path", "candidate_file",
                                                       "arch_perfs_file")))
    feature_norm: tuple[float, ...] | None = flag(
        None, nargs=4, type=float, metavar=("D", "L", "F", "Q"),
        help="only for a bare original time.pt (default 768 12 3072 768)")
    lat_norm: float | None = flag(None, type=float,
                                  help="only for a bare original time.pt (default 200)")
    feature_dim: int | None = flag(None, type=int, help="checked against time.pt")
    hidden_dim: int | None = flag(None, type=int, help="checked against time.pt")
    hidden_layer_num: int | None = flag(None, type=int, help="checked against time.pt")
    latency_constraint: float = flag(7, type=float, help="speedup vs BERT-base")
    lat_min_ratio: float = flag(0.85, type=float)
    lat_max_ratio: float = flag(1.1, type=float)
    base_latency: float | None = flag(
        None, type=float,
        help="BERT-base latency in ms (default: the one measured and saved in time.pt)")
    method: str = flag("Random", choices=list(METHODS), type=_method_name)
    model: str | None = flag(None, type=str.upper, choices=["MLM", "KD"],
                             help="attention scheme (default: the one recorded in time.pt; MLM "
                                  "for a bare original time.pt); contradicting time.pt is an error")
    gen_size: int = flag(25, type=int, help="archs per generation")
    seed: int = flag(0, type=int)
    hidden_step: int | None = flag(None, type=int, help="default 16 (--fine_grid: 4)")
    ffn_step: int | None = flag(None, type=int, help="default 32 (--fine_grid: 4)")
    qkv_step: int | None = flag(None, type=int, help="default 12")
    fine_grid: bool = flag(False, help="the paper's grid (hidden and FFN step 4, qkv 12) instead "
                                       "of the original searcher's 16/32/12")
    enumeration: str = flag("auto", choices=["auto", "exact", "interp"],
                            help="Candidate: predict every arch, or interpolate and predict "
                                 "exactly near the window edges (auto: by grid size x predictor "
                                 "cost)")
    explore_rate: float = flag(0.5, type=float)
    crossover: float = flag(0.0, type=float, nargs="?", const=0.5,
                            help="Evolved: probability of uniform crossover before mutation (an "
                                 "extension; the original has none)")
    plot: str | None = flag(None, metavar="PNG", help="fitness vs latency of this step",
                            output=Output.file("a PNG image", png,
                                               when=lambda c: c.method != "Candidate",
                                               inputs=("ckpt_path", "candidate_file",
                                                       "arch_perfs_file", "output_file")))
    measure: int = flag(0, type=int, metavar="N",
                        help="time the N best (or first written) archs and BERT-base on this "
                             "machine and print measured beside predicted speedup")
    bert_model: str | None = flag(None, help="supernet directory: clips the space to it, and "
                                             "its config is used by --measure")
    no_progress: bool = flag(False)

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.feature_norm is not None:
            object.__setattr__(self, "feature_norm", tuple(self.feature_norm))
        if self.method not in METHODS:
            raise UserError(f"unknown --method {self.method!r}: {', '.join(METHODS)}")
        if not self.candidate_file:
            raise UserError("--method Candidate needs --candidate_file (where to write them)"
                            if self.method == "Candidate" else
                            f"--method {self.method} needs --candidate_file (from --method "
                            f"Candidate)")
        if self.method in ("Evolved", "Pareto") and not self.arch_perfs_file:
            raise UserError(f"--method {self.method} needs --arch_perfs_file (subbert.results)")
        if self.measure < 0:
            raise UserError(f"--measure must be a number of archs, got {self.measure}")
        check_positive(base_latency=self.base_latency, latency_constraint=self.latency_constraint,
                       lat_min_ratio=self.lat_min_ratio, lat_max_ratio=self.lat_max_ratio,
                       lat_norm=self.lat_norm, gen_size=self.gen_size)
        for value in self.feature_norm or ():
            check_positive(feature_norm=value)
        for name in ("explore_rate", "crossover"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and 0 <= value <= 1):  # nan fails too
                raise UserError(f"--{name} must be a probability in [0, 1], got {value!r}")
        if self.lat_min_ratio > self.lat_max_ratio:
            raise UserError(f"the latency window needs --lat_min_ratio <= --lat_max_ratio, got "
                            f"{self.lat_min_ratio} and {self.lat_max_ratio}")

    @classmethod
    def candidates_of(cls, cfg: PredictorConfig) -> "SearchConfig":
        """latency_predictor.py --get_candidates: --method Candidate on the original's grid of
        that script (hidden step 32, FFN step 64, qkv 12)."""
        same = ("ckpt_path", "candidate_file", "feature_norm", "lat_norm", "feature_dim",
                "hidden_dim", "hidden_layer_num", "latency_constraint", "lat_min_ratio",
                "lat_max_ratio", "base_latency", "model", "no_progress", "layer_num_space",
                "hidden_size_space", "qkv_size_space", "intermediate_size_space",
                "head_num_space")
        return cls(method="Candidate", hidden_step=32, ffn_step=64, qkv_step=12,
                   **{k: getattr(cfg, k) for k in same})

    @property
    def scheme(self) -> Scheme | None:
        return Scheme.parse(self.model) if self.model else None

    def steps(self) -> dict[str, int]:
        """Grid steps: the original searcher's (or --fine_grid's), overridden by the step flags."""
        steps = dict(FINE_STEPS if self.fine_grid else ORIGINAL_STEPS)
        for k in steps:
            if getattr(self, k):
                steps[k] = getattr(self, k)
        return steps


# ---- the steps of a search --------------------------------------------------------------------
def load_predictor(cfg: SearchConfig) -> LatencyPredictor:
    """time.pt; the flags given must agree with what it records."""
    return LatencyPredictor.load(cfg.ckpt_path, feature_norm=cfg.feature_norm,
                                 lat_norm=cfg.lat_norm, base_latency_ms=cfg.base_latency,
                                 scheme=cfg.scheme, feature_dim=cfg.feature_dim,
                                 hidden_dim=cfg.hidden_dim, hidden_layer_num=cfg.hidden_layer_num)


def build_space(cfg: SearchConfig, scheme: Scheme) -> SearchSpace:
    """The flags' space and grid, clipped to (and checked against) --bert_model when given."""
    ranges, steps = cfg.space_ranges(), cfg.steps()
    if not cfg.bert_model:
        return SearchSpace(scheme=scheme, **ranges, **steps)
    from ..hf import load_config, resolve_model_dir  # transformers: only with a supernet

    config = load_config(resolve_model_dir(cfg.bert_model), scheme)
    space = SearchSpace.for_supernet(config, scheme, **ranges, **steps)
    space.validate_against(config)
    return space


def build_window(cfg: SearchConfig, predictor: LatencyPredictor) -> LatencyWindow:
    if predictor.base_latency_ms is None:
        raise UserError(f"{cfg.ckpt_path} records no reference latency: pass --base_latency")
    return LatencyWindow(predictor.base_latency_ms, cfg.latency_constraint, cfg.lat_min_ratio,
                         cfg.lat_max_ratio,
                         base_name="BERT-base" if cfg.base_latency else reference_name(predictor))


def write_candidate_file(cfg: SearchConfig, predictor: LatencyPredictor, space: SearchSpace,
                         window: LatencyWindow) -> CandidateSet:
    """Candidate: every grid arch in the window, written to --candidate_file."""
    logger.info("predictor %s: %s, fitted on %s latencies", cfg.ckpt_path, predictor.describe(),
                predictor.backend)
    logger.info("window: %s", window.describe())
    cands = enumerate_candidates(predictor, space, window, cfg.enumeration,
                                 progress=not cfg.no_progress)
    if not len(cands):
        raise UserError(f"no arch of the {space.size()}-arch grid meets a "
                        f"{cfg.latency_constraint:g}x speedup ({window.describe()}); nothing "
                        f"written")
    write_candidates(cfg.candidate_file, cands)
    s = cands.stats
    logger.info("%d of %d archs in the window -> %s (%.1f s, %s; %d predictor calls)",
                len(cands), s["grid"], cfg.candidate_file, s["seconds"], s["method"],
                s["predicted"])
    return cands


@dataclass
class Generation:
    """A new generation and what it was bred from (Evolved / Pareto)."""

    children: list[Arch]
    evaluated: dict[Arch, float] = field(default_factory=dict)
    parents: list[Arch] = field(default_factory=list)
    front: list[Arch] = field(default_factory=list)


def next_generation(cfg: SearchConfig, predictor: LatencyPredictor, space: SearchSpace,
                    window: LatencyWindow) -> Generation:
    """Random / Fast: drawn from the candidates; Evolved / Pareto: bred from the results."""
    rng = random.Random(cfg.seed)
    candidates = read_candidates(cfg.candidate_file)
    check_candidates(cfg.candidate_file, candidates, space)
    if cfg.method in ("Random", "Fast"):
        gen = Generation(sample_generation(candidates, predictor, window, cfg.gen_size, rng,
                                           fast=cfg.method == "Fast"))
    else:
        evaluated = {a: fitness(s) for a, s in parse_results(cfg.arch_perfs_file).items()}
        cls = ParetoEvolver if cfg.method == "Pareto" else Evolver
        evo = cls(predictor, space, window, candidates, evaluated, rng, population=cfg.gen_size,
                  parent_size=25, explore_rate=cfg.explore_rate, crossover_rate=cfg.crossover)
        best = max(evaluated.items(), key=lambda kv: kv[1])
        logger.info("%d archs evaluated; best fitness %.3f: %s", len(evaluated), best[1], best[0])
        gen = Generation(evo.next_generation(), evaluated, evo.parents,
                         evo.front_archs if isinstance(evo, ParetoEvolver) else [])
    logger.info("%d candidates; window (%s latencies): %s", len(candidates), predictor.backend,
                window.describe())
    return gen


def write_generation(cfg: SearchConfig, gen: Generation, predictor: LatencyPredictor,
                     window: LatencyWindow) -> None:
    write_arch_file(cfg.output_file, gen.children)
    write_window(cfg.output_file, window)  # what the summary draws
    lat = predictor.predict(gen.children)
    logger.info("wrote %d archs to %s (predicted %s latency %.2f..%.2f ms, speedup "
                "%.2fx..%.2fx)", len(gen.children), cfg.output_file, predictor.backend,
                lat.min(), lat.max(), window.base_ms / lat.max(), window.base_ms / lat.min())
    if cfg.plot:
        if gen.evaluated:
            plot_generation(cfg.plot, gen.evaluated, predictor, window, gen.parents,
                            gen.children, gen.front, gen_size=cfg.gen_size)
        else:
            plot_generation(cfg.plot, {a: 0.0 for a in gen.children}, predictor, window)
        logger.info("plot: %s", cfg.plot)


def print_measured(cfg: SearchConfig, gen: Generation, predictor: LatencyPredictor,
                   window: LatencyWindow, scheme: Scheme) -> None:
    """--measure: the best evaluated (else the first written) archs and the reference, timed
    on this machine, measured speedups beside predicted ones."""
    if gen.evaluated:
        to_time = sorted(gen.evaluated, key=lambda a: -gen.evaluated[a])[: cfg.measure]
        what = "best evaluated"
    else:
        to_time = gen.children[: cfg.measure]
        what = "written"
    config, _, _ = load_supernet_config(cfg.bert_model, scheme)
    base, rows = measure_archs(to_time, predictor, config, scheme, progress=not cfg.no_progress,
                               where=cfg.ckpt_path)
    print(f"measured on this machine with the {predictor.backend} backend (the predictor's): "
          f"{window.base_name} {base:.2f} ms (time.pt records "
          f"{predictor.base_latency_ms:.2f} ms); {what} archs:")
    lo_s, hi_s = window.base_ms / window.hi, window.base_ms / window.lo
    print(f"{'arch':<28} {'pred ms':>9} {'meas ms':>9} {'pred x':>7} {'meas x':>7}  "
          f"target {lo_s:.2f}x..{hi_s:.2f}x")
    for m in rows:
        inside = lo_s <= m.measured_speedup <= hi_s
        print(f"{m.arch.short():<28} {m.predicted_ms:9.2f} {m.measured_ms:9.2f} "
              f"{m.predicted_speedup:7.2f} {m.measured_speedup:7.2f}  "
              f"{'in window' if inside else 'OUTSIDE'}")


def search_command(cfg: SearchConfig) -> list[Arch] | CandidateSet:
    """searcher.py: one method, files in the original's formats."""
    predictor = load_predictor(cfg)
    scheme = predictor.scheme or Scheme.MLM
    space, window = build_space(cfg, scheme), build_window(cfg, predictor)
    if cfg.method == "Candidate":
        return write_candidate_file(cfg, predictor, space, window)
    gen = next_generation(cfg, predictor, space, window)
    write_generation(cfg, gen, predictor, window)
    if cfg.measure:
        print_measured(cfg, gen, predictor, window, scheme)
    return gen.children
