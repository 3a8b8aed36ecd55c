"""What the summary measures on saved model directories: the held-out MLM loss, a fine-tuned
classifier's dev predictions (the collapse check), loading through transformers' Auto classes,
and the final evaluation of a further-trained model."""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Mapping

import numpy as np
import torch
from transformers import AutoModelForMaskedLM
from transformers.utils import logging as hf_logging

from ..arch import Arch
from ..data.masking import MaskingCollator
from ..data.shards import PretrainingDataset
from ..errors import UserError
from ..finetuning.config import COMMON_KEYS, TABLE_KEYS, RunConfig, resolve_task_config
from ..finetuning.evaluation import forward_dev, glue_scores
from ..finetuning.features import load_task_data
from ..finetuning.setup import check_sequence_lengths
from ..hf import load_model, load_tokenizer, read_vocab, resolve_model_dir
from ..hf import _do_lower_case as saved_do_lower_case
from ..modeling import AutoTinyBertForSequenceClassification
from ..results import evaluated_archs, read_results
from ..tasks import canonical_task, is_squad
from ..tasks import glue
from ..tasks.metrics import best_key
from .chance import TaskLevels, collapse_flag, score_flags

logger = logging.getLogger(__name__)


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


@dataclass(frozen=True)
class DevPredictions:
    """A saved fine-tuned classifier run over its task's dev set again."""

    model_dir: str
    seed: int | None
    counts: dict[str, int]   # dev predictions per label (every label listed)
    rescored: float          # its score on the dev set now (0-100), to check the saved model

    @property
    def flag(self) -> str | None:
        return collapse_flag(self.counts)


def predict_dev(model_dir: str | os.PathLike, task: str, data_dir: str | os.PathLike,
                seed: int | None = None, max_seq_length: int | None = None) -> DevPredictions:
    """Predict the dev set of `task` with a fine-tuned model (`--save_best_model` output)
    through the evaluator's own path: its task config (per-task defaults), data loading and
    tokenization, and its dev forward pass and GLUE scoring."""
    task = canonical_task(task)
    if is_squad(task):
        raise UserError(f"{task}: the predicted-class check is for classification tasks")
    model_dir = resolve_model_dir(str(model_dir), need_weights=True)
    common = {f.name: f.default for f in fields(RunConfig)
              if f.name in COMMON_KEYS}
    common["max_train_examples"] = 1  # only the dev set is used; read one training example
    explicit = {k: None for k in TABLE_KEYS}
    explicit["max_seq_length"] = max_seq_length
    cfg = resolve_task_config(task, str(data_dir), explicit, common)
    tokenizer = load_tokenizer(model_dir, saved_do_lower_case(model_dir))
    data = load_task_data(cfg, tokenizer)
    model = load_model(model_dir, AutoTinyBertForSequenceClassification)
    if model.config.num_labels != data.num_labels:
        raise UserError(f"{model_dir} has {model.config.num_labels} labels but {task} has "
                        f"{data.num_labels}")
    check_sequence_lengths((cfg,), model.config)
    dev = forward_dev(model, data.dev, False, cfg.eval_batch_size, torch.device("cpu"), False)
    metrics = glue_scores(task, data.num_labels, dev, data.dev)
    preds = np.concatenate([o[0] for o in dev.outputs]).argmax(axis=1)
    labels = glue.GLUE[task].labels
    counts = {name: int((preds == i).sum()) for i, name in enumerate(labels)}
    return DevPredictions(str(model_dir), seed, counts, 100.0 * metrics[best_key(task)])


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


@dataclass
class FinalEvaluation:
    """A further-trained model fine-tuned on the tasks (`--final_results`), with its saved best
    models run over the dev sets again."""

    scores: dict[str, float]
    flags: dict[str, list[str]]
    predictions: dict[str, list[DevPredictions]]
    notes: dict[str, str]  # why a task has no predictions


def final_evaluation(results_file: str | os.PathLike, arch: Arch,
                     levels: Mapping[str, TaskLevels], task_data: Mapping[str, str],
                     max_seq_length: int | None = None) -> FinalEvaluation:
    """The scores of `arch` in `results_file` (which must hold it only), their chance flags, and
    for each classification task the predicted-class counts of every seed's saved best model
    (`<dir of results_file>/<task>_seed<seed>`, as the evaluator's --save_best_model names it)."""
    final = evaluated_archs(results_file)
    if len(final) != 1 or final[0].arch != arch:
        raise UserError(f"{results_file} should hold the arch {arch.short()} only")
    scores = final[0].scores
    preds: dict[str, list[DevPredictions]] = {}
    notes: dict[str, str] = {}
    reported: dict[tuple[str, int | None], float] = {}
    for block in read_results(results_file):
        if block.runtime is None:
            reported[(block.task, block.seed)] = block.score
    for (task, seed), score in reported.items():
        if is_squad(task):
            notes[task] = "n/a (span task)"
            continue
        if task not in task_data:
            notes[task] = "n/a (no --task_data for it)"
            continue
        model_dir = Path(results_file).parent / f"{task}_seed{seed}"
        if seed is None or not (model_dir / "config.json").is_file():
            notes[task] = (f"n/a (no saved model {model_dir.name}: run the evaluation with "
                           f"--save_best_model)")
            continue
        p = predict_dev(model_dir, task, task_data[task], seed, max_seq_length)
        if abs(p.rescored - score) > 0.5:
            logger.warning("%s re-scored %.2f on %s dev, but %s reports %.2f: was the evaluation "
                           "run with another --max_seq_length or dev set?", model_dir, p.rescored,
                           task, results_file, score)
        preds.setdefault(task, []).append(p)
    return FinalEvaluation(scores, score_flags(scores, levels), preds, notes)
