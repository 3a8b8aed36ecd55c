"""SQuAD v1.1 / v2.0: the JSON files as distributed, windowed features, and n-best decoding.

Features follow the original (BERT's run_squad) windowing: the question is cut to
`max_query_length` tokens; the context is covered by windows of up to
`max_seq_length - len(question) - 3` tokens whose starts advance by `doc_stride` tokens; a
token scores its answers only in the window where it has the most context on both sides
("max context"). The fast tokenizer's character offsets replace the original's whitespace
re-alignment, so a decoded answer is exactly `context[start_char:end_char]`.

Decoding is the original's: the `n_best_size` best start and end logits per window, spans
inside the context, end >= start, at most `max_answer_length` tokens, ranked by start + end
logit; duplicate texts dropped; for v2.0 the null answer competes through
`null_score_diff_threshold` on (null score - best span score).
"""
from __future__ import annotations

import json
import logging
import math
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ..errors import UserError
from ..io import read_text

logger = logging.getLogger(__name__)

TRAIN_FILES = {"squad1": "train-v1.1.json", "squad2": "train-v2.0.json"}
DEV_FILES = {"squad1": "dev-v1.1.json", "squad2": "dev-v2.0.json"}


@dataclass(frozen=True)
class SquadExample:
    qas_id: str
    question: str
    context: str
    answers: tuple[str, ...]  # every gold answer text (dev); the first one (train)
    answer_start: int | None  # character start of the first answer; None if unanswerable
    is_impossible: bool = False


def read_squad(path: str | os.PathLike, is_training: bool, version_2: bool,
               max_examples: int | None = None) -> list[SquadExample]:
    """Questions of a SQuAD JSON file, in file order. Training questions whose answer text is
    not at its `answer_start` are skipped with a warning (as the original did)."""
    path = Path(path)
    text = read_text(path, "SQuAD file")
    try:
        data = json.loads(text)
    except json.JSONDecodeError as err:
        raise UserError(f"{path} is not valid JSON: {err.msg} at line {err.lineno}") from None
    if not isinstance(data, dict) or not isinstance(data.get("data"), list):
        raise UserError(f"{path} is not a SQuAD file: expected an object with a 'data' list")
    examples: list[SquadExample] = []
    skipped = 0
    where = f"{path}"
    try:
        for article in data["data"]:
            for paragraph in article["paragraphs"]:
                context = paragraph["context"]
                if not isinstance(context, str):
                    raise TypeError("context is not a string")
                for qa in paragraph["qas"]:
                    if max_examples is not None and len(examples) >= max_examples:
                        return examples
                    qid, question = str(qa["id"]), str(qa["question"])
                    impossible = bool(qa.get("is_impossible", False)) if version_2 else False
                    answers = [(str(a["text"]), int(a["answer_start"])) for a in qa["answers"]]
                    if qa.get("is_impossible") and not version_2:
                        raise UserError(f"{path}: question {qid} is marked unanswerable "
                                        f"(SQuAD 2.0 data): use the task squad2")
                    if impossible:
                        examples.append(SquadExample(qid, question, context, (), None, True))
                        continue
                    if not answers:
                        raise UserError(f"{path}: question {qid} has no answer (SQuAD 2.0 data "
                                        f"needs the task squad2)")
                    text, start = answers[0]
                    if is_training:
                        found = context[start:start + len(text)]
                        if " ".join(found.split()) != " ".join(text.split()):
                            skipped += 1
                            logger.debug("%s: question %s: answer %r not at %d", path, qid,
                                         text, start)
                            continue
                        examples.append(SquadExample(qid, question, context, (text,), start))
                    else:
                        examples.append(SquadExample(qid, question, context,
                                                     tuple(t for t, _ in answers), start))
    except UserError:
        raise
    except (KeyError, TypeError, ValueError, AttributeError) as err:
        raise UserError(f"{where} is not a SQuAD file: {type(err).__name__}: {err} "
                        f"(expected data[].paragraphs[].context/qas[].id/question/answers)") from None
    if skipped:
        logger.warning("%s: skipped %d training questions whose answer text is not at its "
                       "answer_start", path, skipped)
    if not examples:
        raise UserError(f"{path} holds no SQuAD questions")
    return examples


@dataclass
class SquadFeatures:
    """One row per window. Eval-only fields are empty lists for training features."""

    input_ids: torch.Tensor        # [N, T] int32
    token_type_ids: torch.Tensor   # [N, T] uint8
    lengths: torch.Tensor          # [N]
    start_positions: torch.Tensor  # [N] (0 = [CLS]: no answer in this window)
    end_positions: torch.Tensor    # [N]
    example_index: list[int]
    # Per window and token: the (start, end) characters in the context, None outside it.
    offsets: list[list[tuple[int, int] | None]] = field(default_factory=list)
    max_context: list[list[bool]] = field(default_factory=list)

    def __len__(self) -> int:
        return int(self.input_ids.shape[0])


def doc_windows(n_tokens: int, max_tokens: int, doc_stride: int) -> list[tuple[int, int]]:
    """(start, length) of each window over `n_tokens` context tokens (at least one window)."""
    spans, start = [], 0
    while True:
        length = min(n_tokens - start, max_tokens)
        spans.append((start, length))
        if start + length >= n_tokens:
            return spans
        start += min(length, doc_stride)


def is_max_context(spans: list[tuple[int, int]], span_index: int, position: int) -> bool:
    """Whether window `span_index` gives token `position` the most context (the original's
    score: min(left, right) + 0.01 * window length)."""
    best, best_index = None, None
    for i, (start, length) in enumerate(spans):
        end = start + length - 1
        if position < start or position > end:
            continue
        score = min(position - start, end - position) + 0.01 * length
        if best is None or score > best:
            best, best_index = score, i
    return best_index == span_index


def _char_span_to_tokens(offsets: list[tuple[int, int]], start_char: int, end_char: int) -> tuple[int, int] | None:
    """First and last context token overlapping [start_char, end_char)."""
    first = next((i for i, (s, e) in enumerate(offsets) if e > start_char), None)
    last = next((i for i in range(len(offsets) - 1, -1, -1) if offsets[i][0] < end_char), None)
    if first is None or last is None or last < first:
        return None
    return first, last


def convert_examples_to_features(examples: list[SquadExample], tokenizer, max_seq_length: int,
                                 doc_stride: int, max_query_length: int,
                                 is_training: bool) -> SquadFeatures:
    if doc_stride < 1 or max_query_length < 1:
        raise UserError("--doc_stride and --max_query_length must be positive")
    if max_seq_length < max_query_length + 4:
        raise UserError(f"--max_seq_length {max_seq_length} leaves no room for the context after "
                        f"a question of up to --max_query_length {max_query_length} tokens")
    cls_id, sep_id, pad_id = tokenizer.cls_token_id, tokenizer.sep_token_id, tokenizer.pad_token_id
    questions = tokenizer([e.question for e in examples], add_special_tokens=False)["input_ids"]
    # Each paragraph is tokenized once, however many questions it has.
    contexts = list(dict.fromkeys(e.context for e in examples))
    enc = tokenizer(contexts, add_special_tokens=False, return_offsets_mapping=True)
    by_context = {c: (ids, [tuple(o) for o in offs])
                  for c, ids, offs in zip(contexts, enc["input_ids"], enc["offset_mapping"])}

    rows_ids, lengths, prefixes, starts, ends, ex_index = [], [], [], [], [], []
    all_offsets, all_max_ctx = [], []
    for i, example in enumerate(examples):
        q = questions[i][:max_query_length]
        doc_ids, doc_offsets = by_context[example.context]
        answer_tokens = None
        if is_training and not example.is_impossible:
            start_char = example.answer_start
            answer_tokens = _char_span_to_tokens(doc_offsets, start_char,
                                                 start_char + len(example.answers[0]))
        spans = doc_windows(len(doc_ids), max_seq_length - len(q) - 3, doc_stride)
        for span_index, (start, length) in enumerate(spans):
            ids = [cls_id] + q + [sep_id] + doc_ids[start:start + length] + [sep_id]
            prefix = len(q) + 2  # [CLS] q [SEP]: segment 0; the window and [SEP]: segment 1
            sp = ep = 0
            if answer_tokens is not None:
                a, b = answer_tokens
                if a >= start and b <= start + length - 1:
                    sp, ep = a - start + prefix, b - start + prefix
            lengths.append(len(ids))
            prefixes.append(prefix)
            rows_ids.append(np.asarray(ids, dtype=np.int32))
            starts.append(sp)
            ends.append(ep)
            ex_index.append(i)
            if not is_training:
                all_offsets.append([None] * prefix + doc_offsets[start:start + length])
                all_max_ctx.append([False] * prefix + [is_max_context(spans, span_index, start + k)
                                                       for k in range(length)])
    # Compact storage (int32 ids, uint8 segments); batches are widened when cut.
    input_ids = np.full((len(rows_ids), max_seq_length), pad_id, dtype=np.int32)
    token_types = np.zeros((len(rows_ids), max_seq_length), dtype=np.uint8)
    for r, (row, prefix) in enumerate(zip(rows_ids, prefixes)):
        input_ids[r, :len(row)] = row
        token_types[r, prefix:len(row)] = 1
    return SquadFeatures(torch.from_numpy(input_ids), torch.from_numpy(token_types),
                         torch.tensor(lengths, dtype=torch.long),
                         torch.tensor(starts, dtype=torch.long),
                         torch.tensor(ends, dtype=torch.long),
                         ex_index, all_offsets, all_max_ctx)


@dataclass(frozen=True)
class NbestEntry:
    text: str
    start_logit: float
    end_logit: float


def _best_indexes(logits: np.ndarray, n: int) -> np.ndarray:
    return np.argsort(-logits, kind="stable")[:n]


def decode_predictions(examples: list[SquadExample], features: SquadFeatures,
                       start_logits: np.ndarray, end_logits: np.ndarray, n_best_size: int = 20,
                       max_answer_length: int = 30, version_2: bool = False,
                       null_score_diff_threshold: float = 0.0
                       ) -> tuple[dict[str, str], dict[str, list[dict]], dict[str, float]]:
    """predictions {qid: text}, n-best {qid: [{text, probability, start_logit, end_logit}]},
    and for v2.0 null odds {qid: null score - best span score}."""
    per_example: dict[int, list[int]] = {}
    for f, e in enumerate(features.example_index):
        per_example.setdefault(e, []).append(f)
    predictions, nbest_json, null_odds = {}, {}, {}
    for e, example in enumerate(examples):
        prelim = []  # (score, feature, start, end)
        null_score, null_logits = math.inf, (0.0, 0.0)
        for f in per_example.get(e, []):
            s_log, e_log = start_logits[f], end_logits[f]
            offsets, max_ctx = features.offsets[f], features.max_context[f]
            if version_2:
                score = float(s_log[0] + e_log[0])
                if score < null_score:
                    null_score, null_logits = score, (float(s_log[0]), float(e_log[0]))
            n = len(offsets)
            for s in _best_indexes(s_log[:n], n_best_size):
                if offsets[s] is None or not max_ctx[s]:
                    continue
                for t in _best_indexes(e_log[:n], n_best_size):
                    if offsets[t] is None or t < s or t - s + 1 > max_answer_length:
                        continue
                    prelim.append((float(s_log[s] + e_log[t]), f, int(s), int(t)))
        prelim.sort(key=lambda p: p[0], reverse=True)
        entries: list[NbestEntry] = []
        seen: set[str] = set()
        if version_2:
            # The null answer competes in the ranking at its (min over windows) score.
            prelim.append((null_score if null_score < math.inf else 0.0, -1, 0, 0))
            prelim.sort(key=lambda p: p[0], reverse=True)
        for score, f, s, t in prelim:
            if len(entries) >= n_best_size:
                break
            if f < 0:
                text, logits = "", null_logits
            else:
                offsets = features.offsets[f]
                text = example.context[offsets[s][0]:offsets[t][1]]
                logits = (float(start_logits[f][s]), float(end_logits[f][t]))
            if text in seen:
                continue
            seen.add(text)
            entries.append(NbestEntry(text, *logits))
        if version_2:
            if "" not in seen:
                entries.append(NbestEntry("", *null_logits))
            if len(entries) == 1:  # only the null answer: add a nonce span, as the original
                entries.insert(0, NbestEntry("empty", 0.0, 0.0))
        if not entries:
            entries.append(NbestEntry("empty", 0.0, 0.0))
        totals = np.array([x.start_logit + x.end_logit for x in entries], dtype=np.float64)
        probs = np.exp(totals - totals.max())
        probs /= probs.sum()
        nbest_json[example.qas_id] = [
            {"text": x.text, "probability": float(p), "start_logit": x.start_logit,
             "end_logit": x.end_logit} for x, p in zip(entries, probs)]
        if not version_2:
            predictions[example.qas_id] = entries[0].text
            continue
        best_span = next(x for x in entries if x.text)
        diff = (null_score if null_score < math.inf else 0.0) - best_span.start_logit - best_span.end_logit
        null_odds[example.qas_id] = float(diff)
        predictions[example.qas_id] = "" if diff > null_score_diff_threshold else best_span.text
    return predictions, nbest_json, null_odds


def gold_answers(examples: list[SquadExample]) -> dict[str, list[str]]:
    """{qid: gold texts} for the official evaluation ([] for unanswerable questions)."""
    return {e.qas_id: list(e.answers) for e in examples}
