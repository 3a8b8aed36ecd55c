"""The end-of-pipeline report: the chosen arch, its predicted and measured speedup, task scores,
parameter count, held-out MLM loss before and after further training, and the search plot.

Everything here reads the files the pipeline stages wrote (generation `.cands` files,
`subbert.results`, `time.pt`, model directories, pre-training data); nothing is re-derived
from a stage's internals. The measured speedup is timed here, in one process, under the
latency protocol of `superbert.latency` (base and chosen arch interleaved, so both see the same
machine state); it is never the predictor's number.
"""
from __future__ import annotations

import json
import logging
import math
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Sequence

import torch
from matplotlib.figure import Figure
from transformers import AutoModelForMaskedLM
from transformers.utils import logging as hf_logging

from .arch import Arch, Scheme, read_arch_file
from .data import MaskingCollator, PretrainingDataset
from .errors import UserError
from .hf import load_config, load_model, read_vocab, resolve_model_dir
from .io import atomic_path, atomic_write_text
from .latency import LatencyPredictor, Timer, TimingProtocol, time_against_reference
from .results import fitness, parse_results

logger = logging.getLogger(__name__)


# ---- search progress ----------------------------------------------------------------------------
@dataclass(frozen=True)
class Evaluated:
    arch: Arch
    generation: int  # first generation file that holds it (1-based); 0 if in none
    scores: dict[str, float]  # task -> 0-100
    fitness: float


def evaluated_archs(results_file: str | os.PathLike,
                    generation_files: Sequence[str | os.PathLike] = ()) -> list[Evaluated]:
    """Every arch of `subbert.results` with its scores, fitness and generation, in file order."""
    if not Path(results_file).is_file():
        raise UserError(f"results file not found: {results_file} (run superbert_run_en_classifier.py)")
    first_gen: dict[Arch, int] = {}
    for g, path in enumerate(generation_files, 1):
        for arch in read_arch_file(str(path)):
            first_gen.setdefault(arch, g)
    scored = parse_results(str(results_file))
    if not scored:
        raise UserError(f"{results_file} holds no results")
    return [Evaluated(a, first_gen.get(a, 0), dict(s), fitness(s)) for a, s in scored.items()]


def best_arch(evaluated: Sequence[Evaluated]) -> Evaluated:
    """Highest fitness; ties go to the arch evaluated first (stable)."""
    return max(evaluated, key=lambda e: e.fitness)


def plot_search_progress(path: str | os.PathLike, evaluated: Sequence[Evaluated]) -> Path:
    """Fitness of every evaluated arch per generation, with the best-so-far line."""
    gens = sorted({e.generation for e in evaluated})
    fig = Figure(figsize=(6, 4))  # no pyplot: no global backend or figure registry to manage
    ax = fig.subplots()
    xs = [e.generation for e in evaluated]
    ax.scatter(xs, [e.fitness for e in evaluated], alpha=0.6, label="evaluated arch")
    best, running = [], -math.inf
    for g in gens:
        running = max(running, max(e.fitness for e in evaluated if e.generation == g))
        best.append(running)
    ax.plot(gens, best, "r-o", label="best so far")
    ax.set_xlabel("generation (1 = Random, then Evolved)")
    ax.set_ylabel("fitness (mean task score, 0-100)")
    ax.set_xticks(gens)
    ax.set_title("search progress")
    ax.legend()
    fig.tight_layout()
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format=path.suffix.lstrip(".") or "png", dpi=100)
    return path


# ---- held-out MLM loss --------------------------------------------------------------------------
@torch.inference_mode()
def heldout_mlm_loss(model_dir: str | os.PathLike, data_dir: str | os.PathLike,
                     max_seq_length: int = 128, masked_lm_prob: float = 0.15, seed: int = 12345,
                     batch_size: int = 32, max_sequences: int | None = None) -> tuple[float, int]:
    """(mean masked-token cross-entropy, number of masked tokens) of a model at its own arch.

    The masks are a pure function of `seed` and the sequence index, so two models compared on
    the same data see exactly the same masked positions and replacements.
    """
    model_dir = resolve_model_dir(str(model_dir), need_weights=True)
    model = load_model(model_dir).eval()
    vocab_file = model_dir / "vocab.txt"
    vocab = read_vocab(vocab_file)
    ids = {t: i for i, t in enumerate(vocab)}
    specials = [ids[t] for t in ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]") if t in ids]
    dataset = PretrainingDataset(data_dir, max_seq_length, vocab_file=str(vocab_file))
    collator = MaskingCollator(len(vocab), ids["[MASK]"], ids["[PAD]"], specials, max_seq_length,
                               masked_lm_prob=masked_lm_prob, seed=seed)
    n = len(dataset) if max_sequences is None else min(len(dataset), max_sequences)
    total, count = 0.0, 0
    for start in range(0, n, batch_size):
        batch = collator([(i, dataset[i][1]) for i in range(start, min(n, start + batch_size))])
        labels = batch["labels"]
        k = int((labels != -100).sum())
        if k == 0:
            continue
        hidden = model.bert(batch["input_ids"], batch["attention_mask"]).last_hidden_state
        total += float(model.masked_lm_loss(hidden, labels)) * k
        count += k
    if count == 0:
        raise UserError(f"no masked tokens in {data_dir}: is it empty?")
    return total / count, count


# ---- speedup, measured --------------------------------------------------------------------------
def measure_speedup(config: Any, scheme: str | Scheme, arch: Arch, base: Arch, threads: int = 1,
                    infer_cnt: int = 10, rounds: int = 3) -> tuple[float, float]:
    """(base ms, arch ms), timed under the latency protocol by the one speedup measurement
    (`latency.time_against_reference`: the base brackets every round)."""
    timer = Timer(config, scheme, TimingProtocol(threads=threads, infer_cnt=infer_cnt))
    t = time_against_reference(timer, [arch], base, rounds)
    return t.reference_ms, t.arch_ms[0]


def load_with_transformers(model_dir: str | os.PathLike) -> tuple[str, int]:
    """Load a model directory through transformers' Auto classes, as a user would; returns
    (class name, parameters of the encoder: embeddings + layers + pooler, without dense_fit)."""
    hf_logging.disable_progress_bar()
    mlm = AutoModelForMaskedLM.from_pretrained(str(model_dir), trust_remote_code=True).eval()
    with torch.inference_mode():
        out = mlm(torch.tensor([[101, 7592, 103, 102]]))
    if not torch.isfinite(out.logits).all():
        raise UserError(f"{model_dir}: the transformers-loaded model gives non-finite outputs")
    encoder = mlm.base_model
    params = sum(p.numel() for n, p in encoder.named_parameters() if "dense_fit" not in n)
    return type(mlm).__name__, params


# ---- the summary --------------------------------------------------------------------------------
@dataclass
class Summary:
    chosen: dict[str, Any]
    base_arch: str
    predicted_ms: float
    predicted_base_ms: float | None
    measured_ms: float
    measured_base_ms: float
    params: int
    params_transformers: int | None
    transformers_class: str | None
    mlm_loss_inherited: float | None
    mlm_loss_further: float | None
    mlm_masked_tokens: int | None
    generations: list[dict[str, Any]]
    top: list[dict[str, Any]]
    plots: list[str] = field(default_factory=list)
    final_scores: dict[str, float] | None = None  # the further-trained model, fine-tuned

    @property
    def predicted_speedup(self) -> float | None:
        return None if self.predicted_base_ms is None else self.predicted_base_ms / self.predicted_ms

    @property
    def measured_speedup(self) -> float:
        return self.measured_base_ms / self.measured_ms

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d["predicted_speedup"] = self.predicted_speedup
        d["measured_speedup"] = self.measured_speedup
        return d


def _fmt(x: float | None, spec: str = ".2f") -> str:
    return "-" if x is None else format(x, spec)


def format_summary(s: Summary) -> str:
    """The summary as Markdown tables (readable in a terminal as well)."""
    tasks = sorted(s.chosen["scores"])
    lines = ["## AutoTinyBERT quickstart summary", "",
             f"Speedups are relative to the base arch `{Arch.parse(s.base_arch).short()}`, "
             "timed here under the latency protocol (1 thread, batch 1 x 128 tokens, median).", "",
             "| arch | params | predicted speedup | measured speedup | "
             + " | ".join(tasks) + " | fitness |",
             "|---|---|---|---|" + "---|" * len(tasks) + "---|",
             f"| `{Arch.parse(s.chosen['arch']).short()}` (chosen) | {s.params:,} | "
             f"{_fmt(s.predicted_speedup)}x ({s.predicted_ms:.2f} ms) | "
             f"{s.measured_speedup:.2f}x ({s.measured_ms:.2f} ms) | "
             + " | ".join(f"{s.chosen['scores'][t]:.2f}" for t in tasks)
             + f" | {s.chosen['fitness']:.2f} |", ""]
    if s.params_transformers is not None:
        lines += [f"Loaded with transformers as `{s.transformers_class}` "
                  f"(`trust_remote_code=True`): {s.params_transformers:,} encoder parameters.", ""]
    if s.final_scores:
        names = sorted(s.final_scores)
        lines += ["| further-trained model, fine-tuned | " + " | ".join(names) + " |",
                  "|---|" + "---|" * len(names),
                  "| `" + Arch.parse(s.chosen["arch"]).short() + "` | "
                  + " | ".join(f"{s.final_scores[t]:.2f}" for t in names) + " |", ""]
    if s.mlm_loss_further is not None:
        lines += ["| MLM loss on held-out chapters | inherited sub-model | further-trained |",
                  "|---|---|---|",
                  f"| masked-token cross-entropy ({s.mlm_masked_tokens:,} tokens) | "
                  f"{_fmt(s.mlm_loss_inherited, '.4f')} | {_fmt(s.mlm_loss_further, '.4f')} |", ""]
    lines += ["| generation | archs evaluated | best fitness | best so far |", "|---|---|---|---|"]
    lines += [f"| {g['generation']} | {g['evaluated']} | {g['best']:.2f} | {g['best_so_far']:.2f} |"
              for g in s.generations]
    lines += ["", "Top archs by fitness:", "", "| arch | generation | " + " | ".join(tasks)
              + " | fitness |", "|---|---|" + "---|" * len(tasks) + "---|"]
    lines += [f"| `{Arch.parse(t['arch']).short()}` | {t['generation']} | "
              + " | ".join(_fmt(t["scores"].get(k)) for k in tasks) + f" | {t['fitness']:.2f} |"
              for t in s.top]
    if s.plots:
        lines += ["", "Plots: " + ", ".join(s.plots)]
    return "\n".join(lines) + "\n"


def generation_table(evaluated: Sequence[Evaluated]) -> list[dict[str, Any]]:
    rows, running = [], -math.inf
    for g in sorted({e.generation for e in evaluated}):
        fits = [e.fitness for e in evaluated if e.generation == g]
        running = max(running, max(fits))
        rows.append({"generation": g, "evaluated": len(fits), "best": max(fits),
                     "best_so_far": running})
    return rows


def build_summary(results_file: str | os.PathLike, generation_files: Sequence[str | os.PathLike],
                  supernet_dir: str | os.PathLike, time_pt: str | os.PathLike, base_arch: Arch,
                  further_dir: str | os.PathLike | None = None,
                  inherited_dir: str | os.PathLike | None = None,
                  heldout_data: str | os.PathLike | None = None, max_seq_length: int = 128,
                  heldout_sequences: int | None = None, threads: int = 1, infer_cnt: int = 10,
                  plot: str | os.PathLike | None = None,
                  extra_plots: Sequence[str] = (), top: int = 5,
                  final_results: str | os.PathLike | None = None) -> Summary:
    """Gather everything the summary shows; see the module docstring."""
    evaluated = evaluated_archs(results_file, generation_files)
    chosen = best_arch(evaluated)
    config = load_config(resolve_model_dir(str(supernet_dir)))
    predictor = LatencyPredictor.load(time_pt)
    scheme = Scheme.parse(config.attention_scheme)
    base_ms, arch_ms = measure_speedup(config, scheme, chosen.arch, base_arch, threads, infer_cnt)
    cls_name, hf_params = (None, None)
    if further_dir is not None:
        cls_name, hf_params = load_with_transformers(further_dir)
    loss_inh = loss_fur = tokens = None
    if heldout_data is not None and further_dir is not None and inherited_dir is not None:
        loss_inh, tokens = heldout_mlm_loss(inherited_dir, heldout_data, max_seq_length,
                                            max_sequences=heldout_sequences)
        loss_fur, _ = heldout_mlm_loss(further_dir, heldout_data, max_seq_length,
                                       max_sequences=heldout_sequences)
    plots = list(extra_plots)
    if plot is not None:
        plots.append(str(plot_search_progress(plot, evaluated)))
    ranked = sorted(evaluated, key=lambda e: -e.fitness)[:top]
    final_scores = None
    if final_results is not None:
        final = evaluated_archs(final_results)
        if len(final) != 1 or final[0].arch != chosen.arch:
            raise UserError(f"{final_results} should hold the chosen arch {chosen.arch.short()} only")
        final_scores = final[0].scores
    return Summary(
        chosen={"arch": str(chosen.arch), "generation": chosen.generation,
                "scores": chosen.scores, "fitness": chosen.fitness},
        base_arch=str(base_arch), predicted_ms=predictor.predict_one(chosen.arch),
        predicted_base_ms=predictor.base_latency_ms, measured_ms=arch_ms,
        measured_base_ms=base_ms,
        params=chosen.arch.param_count(config.vocab_size, config.max_position_embeddings,
                                       config.type_vocab_size),
        params_transformers=hf_params, transformers_class=cls_name,
        mlm_loss_inherited=loss_inh, mlm_loss_further=loss_fur, mlm_masked_tokens=tokens,
        generations=generation_table(evaluated),
        top=[{"arch": str(e.arch), "generation": e.generation, "scores": e.scores,
              "fitness": e.fitness} for e in ranked],
        plots=plots, final_scores=final_scores)


def write_summary(summary: Summary, output_dir: str | os.PathLike) -> tuple[Path, Path]:
    """`summary.md` and `summary.json` under `output_dir` (atomic)."""
    out = Path(output_dir)
    md, js = out / "summary.md", out / "summary.json"
    atomic_write_text(md, format_summary(summary))
    atomic_write_text(js, json.dumps(summary.to_json(), indent=1) + "\n")
    return md, js
