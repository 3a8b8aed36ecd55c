"""Pre-training data: corpus -> packed token-id shards (generate_data.py), the dataset that
reads them back (memory-mapped), and the dynamic-masking collator.

On-disk formats, both read by `PretrainingDataset`:
- "bin" (ours): `shard_{i}.tokens.bin` (token ids, uint16 when the vocab has < 65536 entries,
  else uint32, all instances concatenated) + `shard_{i}.offsets.bin` (int64, instances + 1
  entries, starting at 0), beside `metadata.json` (format version, vocab md5 and size,
  do_lower_case, max_seq_len, counts, shard list). Instance k of the corpus is in shard
  k % num_shards; the dataset's index runs over shard 0, then shard 1, ...
- "json" (the original's): `train_doc_tokens_ngrams_{i}.json`, one `{"tokens": [wordpieces]}`
  line per instance, round-robin over the shards. We also write `metadata.json` beside them
  (the original's reader globs only the shard names, so it does not see it); shards made by the
  original code have none and are checked token by token against the vocab instead.

Instances hold no special tokens ([CLS]/[SEP] are never added, as in the original).
"""
from __future__ import annotations

import collections
import gzip
import itertools
import json
import logging
import multiprocessing as mp
import os
import re
import shutil
import time
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import torch
from tokenizers import Tokenizer
from tqdm import tqdm

from .cli import flag
from .errors import UserError
from .hf import load_tokenizer, read_vocab, resolve_model_dir
from .io import check_fields, file_digest, read_text, staging_dir

logger = logging.getLogger(__name__)

FORMAT_NAME = "superbert-pretraining-data"
FORMAT_VERSION = 1
METADATA_FILE = "metadata.json"
JSON_SHARD = "train_doc_tokens_ngrams_{}.json"
JSON_SHARD_RE = re.compile(r"^train_doc_tokens_ngrams_(\d+)\.json$")
ORIGINAL_NUM_SHARDS = 28


def bin_shard_names(i: int) -> tuple[str, str]:
    return f"shard_{i}.tokens.bin", f"shard_{i}.offsets.bin"


def token_dtype(vocab_size: int) -> np.dtype:
    return np.dtype(np.uint16) if vocab_size <= np.iinfo(np.uint16).max + 1 else np.dtype(np.uint32)


def vocab_md5(vocab_file: str | os.PathLike) -> str:
    """The vocab's identity, recorded in metadata.json and checked when the data is read."""
    if not Path(vocab_file).is_file():
        raise UserError(f"vocab file not found: {vocab_file}")
    return file_digest(vocab_file, "md5")


# ---- reading ---------------------------------------------------------------------------------
class PretrainingDataset(torch.utils.data.Dataset):
    """Packed pre-training instances as int64 token-id arrays (no special tokens).

    `data_dir` holds either our "bin" shards (memory-mapped: opening costs no RAM and the
    DataLoader's forked workers share the page cache) or JSON shards (ours or the original's;
    converted to ids with `vocab_file` once, at construction). Every problem a user can cause
    is a UserError: missing directory or shards, a truncated or corrupt shard, a vocab other
    than the one the data was made with, an instance longer than `max_seq_length`, an empty
    instance (the original generate_data.py emits those; they crash its trainer).
    `debug_limit` keeps only the first N instances.
    """

    def __init__(self, data_dir: str | os.PathLike, max_seq_length: int,
                 vocab_file: str | os.PathLike | None = None, debug_limit: int | None = None):
        self.data_dir = Path(data_dir)
        self.max_seq_length = int(max_seq_length)
        if not self.data_dir.is_dir():
            raise UserError(f"pre-training data directory not found: {self.data_dir} "
                            f"(make it with generate_data.py)")
        self.metadata: dict[str, Any] = self._read_metadata()
        self.vocab_file = Path(vocab_file) if vocab_file is not None else None
        if self.vocab_file is not None and self.metadata:
            self._check_vocab(self.vocab_file)
        self._check_max_seq_len()
        fmt = self.metadata.get("format", "json") if self.metadata else "json"
        if fmt == "bin":
            self._open_bin()
        else:
            self._load_json()
        n = len(self._offsets) - 1
        if debug_limit is not None:
            n = min(n, max(0, int(debug_limit)))
        self._len = n
        if n == 0:
            raise UserError(f"{self.data_dir} holds no instances")
        self._check_lengths()

    # metadata ----------------------------------------------------------------------------------
    def _read_metadata(self) -> dict[str, Any]:
        path = self.data_dir / METADATA_FILE
        if not path.is_file():
            return {}
        try:
            meta = json.loads(read_text(path, "data metadata"))
        except json.JSONDecodeError as err:
            raise UserError(f"{path} is corrupt: {err}") from None
        if not isinstance(meta, dict) or meta.get("format_name") != FORMAT_NAME:
            raise UserError(f"{path} is not a generate_data.py metadata file")
        if meta.get("format_version") != FORMAT_VERSION:
            raise UserError(f"{path} has format version {meta.get('format_version')}; this "
                            f"code reads version {FORMAT_VERSION} (regenerate the data)")
        if meta.get("format") not in ("bin", "json"):
            raise UserError(f"{path}: unknown data format {meta.get('format')!r}")
        binary = meta["format"] == "bin"
        check_fields(meta, {"vocab_size": "positive int", "max_seq_len": "positive int",
                            "vocab_md5": "string", "dtype": "string", "shards": "list"},
                     str(path), required=("vocab_size", "shards") if binary else ())
        if meta.get("dtype") is not None and meta["dtype"] not in ("uint16", "uint32", "int32",
                                                                   "int64"):
            raise UserError(f"{path}: field 'dtype' must be uint16, uint32, int32 or int64, got "
                            f"{meta['dtype']!r}")
        shard_kinds = ({"tokens_file": "file name", "offsets_file": "file name",
                        "instances": "count", "tokens": "count"} if binary else
                       {"file": "file name", "instances": "count"})
        for i, shard in enumerate(meta.get("shards") or []):
            where = f"{path}: shards[{i}]"
            if not isinstance(shard, dict):
                raise UserError(f"{where} must be a JSON object, got {shard!r}")
            check_fields(shard, shard_kinds, where,
                         required=tuple(shard_kinds) if binary else ("file",))
        return meta

    def _check_vocab(self, vocab_file: Path) -> None:
        md5 = vocab_md5(vocab_file)
        if md5 != self.metadata.get("vocab_md5"):
            raise UserError(f"{self.data_dir} was made with another vocab (md5 "
                            f"{self.metadata.get('vocab_md5')}) than {vocab_file} (md5 {md5}); "
                            f"regenerate the data with this model's vocab")

    def _check_max_seq_len(self) -> None:
        made = self.metadata.get("max_seq_len")
        if made is None:
            return
        if made > self.max_seq_length:
            raise UserError(f"{self.data_dir} was packed for max_seq_len {made}, longer than "
                            f"--max_seq_length {self.max_seq_length}; regenerate the data with "
                            f"--max_seq_len {self.max_seq_length} or raise --max_seq_length")
        if made < self.max_seq_length:
            logger.warning("%s was packed for max_seq_len %d < %d: sequences will be shorter "
                           "than the model allows", self.data_dir, made, self.max_seq_length)

    # bin ---------------------------------------------------------------------------------------
    def _open_bin(self) -> None:
        meta = self.metadata
        dtype = np.dtype(meta.get("dtype", "uint16"))
        vocab_size = int(meta["vocab_size"])
        token_parts, offset_parts, base = [], [np.zeros(1, np.int64)], 0
        for i, shard in enumerate(meta.get("shards", [])):
            tok_path = self.data_dir / shard["tokens_file"]
            off_path = self.data_dir / shard["offsets_file"]
            n_inst, n_tok = int(shard["instances"]), int(shard["tokens"])
            for path, want in ((tok_path, n_tok * dtype.itemsize), (off_path, (n_inst + 1) * 8)):
                if not path.is_file():
                    raise UserError(f"shard file missing: {path}")
                if path.stat().st_size != want:
                    raise UserError(f"shard file {path} is truncated or corrupt: "
                                    f"{path.stat().st_size} bytes, expected {want}")
            tokens = np.memmap(tok_path, dtype=dtype, mode="r") if n_tok else np.zeros(0, dtype)
            offsets = np.fromfile(off_path, dtype=np.int64)
            if offsets[0] != 0 or offsets[-1] != n_tok or np.any(np.diff(offsets) < 0):
                raise UserError(f"shard file {off_path} is corrupt (offsets out of order)")
            # Checked here, in one pass over the map, not at the step that first meets one.
            top = _max_token(tokens)
            if top >= vocab_size:
                raise UserError(f"shard file {tok_path} holds token id {top}, beyond the "
                                f"{vocab_size}-token vocab (corrupt shard, or made with "
                                f"another vocab)")
            token_parts.append(tokens)
            offset_parts.append(offsets[1:] + base)
            base += n_tok
        if not token_parts:
            raise UserError(f"{self.data_dir / METADATA_FILE} lists no shards")
        self._token_parts = token_parts
        self._offsets = np.concatenate(offset_parts)
        # Global token offset -> (shard, local offset) via the shard start of each token part.
        self._part_starts = np.cumsum([0] + [len(t) for t in token_parts])
        self._vocab_size = vocab_size

    # json --------------------------------------------------------------------------------------
    def _json_shards(self) -> list[Path]:
        found = []
        for p in self.data_dir.iterdir():
            m = JSON_SHARD_RE.match(p.name)
            if m:
                found.append((int(m.group(1)), p))
        return [p for _, p in sorted(found)]

    def _load_json(self) -> None:
        if self.metadata:
            paths = [self.data_dir / s["file"] for s in self.metadata.get("shards", [])]
            for p in paths:
                if not p.is_file():
                    raise UserError(f"shard file missing: {p}")
        else:
            paths = self._json_shards()
            if not paths:
                raise UserError(f"{self.data_dir} holds no pre-training shards (neither "
                                f"{METADATA_FILE} nor {JSON_SHARD.format('*')}); make them with "
                                f"generate_data.py")
        if self.vocab_file is None:
            raise UserError(f"reading JSON shards in {self.data_dir} needs the vocab (vocab.txt "
                            f"of --bert_model) to turn wordpieces into ids")
        vocab = read_vocab(self.vocab_file)
        index = {tok: i for i, tok in enumerate(vocab)}
        self._vocab_size = len(vocab)
        ids: list[int] = []
        lengths: list[int] = []
        for path in paths:
            expected = None
            if self.metadata:
                expected = next(int(s["instances"]) for s in self.metadata["shards"]
                                if s["file"] == path.name)
            n_here = 0
            with open(path, encoding="utf-8", errors="strict") as fh:
                try:
                    for lineno, line in enumerate(fh, 1):
                        if not line.strip():
                            continue
                        try:
                            tokens = json.loads(line)["tokens"]
                        except (json.JSONDecodeError, KeyError, TypeError):
                            raise UserError(f"{path}:{lineno}: not a {{\"tokens\": [...]}} line "
                                            f"(corrupt or truncated shard)") from None
                        try:
                            ids.extend(index[t] for t in tokens)
                        except (KeyError, TypeError):
                            bad = next(t for t in tokens
                                       if not isinstance(t, str) or t not in index)
                            raise UserError(f"{path}:{lineno}: wordpiece {bad!r} is not in "
                                            f"{self.vocab_file} (data made with another "
                                            f"vocab?)") from None
                        lengths.append(len(tokens))
                        n_here += 1
                except UnicodeDecodeError as err:
                    raise UserError(f"{path} is not UTF-8 (corrupt shard): {err}") from None
            if expected is not None and n_here != expected:
                raise UserError(f"{path} holds {n_here} instances, metadata says {expected} "
                                f"(truncated or corrupt shard)")
        dtype = token_dtype(len(vocab))
        self._token_parts = [np.asarray(ids, dtype=dtype)]
        self._offsets = np.concatenate([[0], np.cumsum(lengths, dtype=np.int64)]).astype(np.int64)
        self._part_starts = np.array([0, len(ids)])

    # checks and access -------------------------------------------------------------------------
    def _check_lengths(self) -> None:
        lengths = self.lengths
        if lengths.size and lengths.min() == 0:
            k = int(np.argmin(lengths))
            raise UserError(f"{self.data_dir}: instance {k} is empty (data made by the original "
                            f"generate_data.py? regenerate it with ours)")
        if lengths.size and lengths.max() > self.max_seq_length:
            k = int(np.argmax(lengths))
            raise UserError(f"{self.data_dir}: instance {k} has {int(lengths[k])} tokens, more "
                            f"than --max_seq_length {self.max_seq_length} (data packed for "
                            f"another max_seq_len?)")

    @property
    def lengths(self) -> np.ndarray:
        """Token count of every instance (int64)."""
        return np.diff(self._offsets[: self._len + 1])

    @property
    def num_tokens(self) -> int:
        return int(self._offsets[self._len])

    @property
    def vocab_size(self) -> int:
        return self._vocab_size

    def __len__(self) -> int:
        return self._len

    def __getitem__(self, i: int) -> tuple[int, np.ndarray]:
        i = int(i)
        if i < 0:
            i += self._len
        if not 0 <= i < self._len:
            raise IndexError(i)
        start, end = int(self._offsets[i]), int(self._offsets[i + 1])
        part = int(np.searchsorted(self._part_starts, start, side="right")) - 1
        local = start - int(self._part_starts[part])
        ids = np.asarray(self._token_parts[part][local: local + end - start], dtype=np.int64)
        return i, ids

    def __getstate__(self) -> dict[str, Any]:
        # Spawned DataLoader workers re-open the memory maps instead of pickling the data.
        state = dict(self.__dict__)
        if self.metadata.get("format") == "bin":
            state["_token_parts"] = None
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        if self._token_parts is None:
            dtype = np.dtype(self.metadata.get("dtype", "uint16"))
            self._token_parts = [
                np.memmap(self.data_dir / s["tokens_file"], dtype=dtype, mode="r")
                if int(s["tokens"]) else np.zeros(0, dtype) for s in self.metadata["shards"]]


def sample_batches(dataset: PretrainingDataset, num_sequences: int, batch_size: int,
                   seed: int, pad_token_id: int) -> list[dict[str, torch.Tensor]]:
    """`num_sequences` instances of `dataset` (all of them if it holds fewer), drawn without
    replacement with `seed`, unmasked and padded into batches of `batch_size`: what unit
    importance is measured on before a grown supernet trains (`growth.reorder`)."""
    rng = np.random.default_rng(seed)
    n = min(int(num_sequences), len(dataset))
    chosen = np.sort(rng.choice(len(dataset), size=n, replace=False))
    batches = []
    for start in range(0, n, batch_size):
        rows = [dataset[int(i)][1] for i in chosen[start: start + batch_size]]
        width = max(len(r) for r in rows)
        ids = torch.full((len(rows), width), int(pad_token_id), dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for b, r in enumerate(rows):
            ids[b, :len(r)] = torch.from_numpy(r)
            mask[b, :len(r)] = 1
        batches.append({"input_ids": ids, "attention_mask": mask})
    return batches


def _max_token(tokens: np.ndarray, block: int = 1 << 24) -> int:
    """The largest id of a (memory-mapped) token array, read in blocks; -1 when empty."""
    top = -1
    for start in range(0, len(tokens), block):
        top = max(top, int(tokens[start: start + block].max()))
    return top


# ---- masking ---------------------------------------------------------------------------------
def _mix64(x: np.ndarray) -> np.ndarray:
    """SplitMix64's finaliser: a bijective 64-bit hash with full avalanche (uint64, wrapping)."""
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


def _uniforms(keys: np.ndarray, stream: int, width: int) -> np.ndarray:
    """[B, width] uniforms in [0, 1), a pure function of (key of the row, stream, column)."""
    cols = np.arange(width, dtype=np.uint64) + np.uint64(stream << 32)
    bits = _mix64(keys[:, None] ^ _mix64(cols * np.uint64(0x9E3779B97F4A7C15))[None, :])
    return (bits >> np.uint64(11)).astype(np.float64) * (1.0 / (1 << 53))


class MaskingCollator:
    """Dynamic BERT masking and padding, a pure function of (seed, epoch, example index).

    Every random number of an example is a hash of (seed, epoch, index, position, purpose)
    (a counter-based generator: SplitMix64's finaliser), so the masks do not depend on batch
    composition, padding width, rank count or DataLoader workers: a 2-rank run masks exactly
    as a 1-rank run with twice the batch, and an epoch re-run after `--resume` masks as
    before. The whole batch is masked in a few vectorised numpy operations. Call `set_epoch`
    at every epoch (dynamic masking).

    Per example of n tokens: k = min(max_predictions_per_seq, round(n * masked_lm_prob))
    positions are chosen uniformly without replacement (the k smallest of n uniforms); 80%
    become [MASK], 10% keep their token, 10% become a random token (`labels` hold the original
    id there, -100 elsewhere).
    Default (fixed) behaviour: positions over the whole sequence (the data holds no [CLS]/[SEP]),
    random tokens drawn from the non-special ids, and masked_lm_prob == 0 masks nothing (KD).
    `original_masking=True` reproduces the original: k is at least 1, positions exclude the first
    and last token, random tokens come from the whole vocab (including [PAD], [unused*]). The
    original crashes on sequences of <= 2 tokens there; we mask nothing in them instead.
    Batches are padded to their longest sequence (<= max_seq_length) with `pad_token_id`.
    """

    def __init__(self, vocab_size: int, mask_token_id: int, pad_token_id: int,
                 special_token_ids: Iterable[int], max_seq_length: int,
                 masked_lm_prob: float = 0.15, max_predictions_per_seq: int = 77,
                 seed: int = 42, original_masking: bool = False):
        self.vocab_size = int(vocab_size)
        self.mask_token_id = int(mask_token_id)
        self.pad_token_id = int(pad_token_id)
        self.special_token_ids = sorted({int(t) for t in special_token_ids})
        self.max_seq_length = int(max_seq_length)
        self.masked_lm_prob = float(masked_lm_prob)
        self.max_predictions_per_seq = int(max_predictions_per_seq)
        self.seed = int(seed)
        self.original_masking = bool(original_masking)
        self.epoch = 0
        if original_masking:
            self._random_ids = np.arange(self.vocab_size, dtype=np.int64)
        else:
            self._random_ids = np.setdiff1d(np.arange(self.vocab_size, dtype=np.int64),
                                            np.asarray(self.special_token_ids, dtype=np.int64))

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def num_to_mask(self, lengths: np.ndarray) -> np.ndarray:
        """Masked positions per example of these lengths."""
        lengths = np.asarray(lengths, dtype=np.int64)
        k = np.rint(lengths * self.masked_lm_prob).astype(np.int64)  # half to even, as round()
        if self.original_masking:
            k = np.maximum(k, 1)
        k = np.minimum(np.minimum(k, self.max_predictions_per_seq), self._num_candidates(lengths))
        return np.maximum(k, 0)

    def _num_candidates(self, lengths: np.ndarray) -> np.ndarray:
        return np.maximum(lengths - 2, 0) if self.original_masking else lengths

    def _keys(self, indices: np.ndarray) -> np.ndarray:
        with np.errstate(over="ignore"):
            key = _mix64(np.full(len(indices), self.seed & (2**64 - 1), dtype=np.uint64))
            key = _mix64(key ^ np.uint64(self.epoch & (2**64 - 1)))
            return _mix64(key ^ indices.astype(np.uint64))

    def mask_batch(self, indices: np.ndarray, ids: np.ndarray,
                   lengths: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(input_ids, labels) of a padded [B, T] batch; labels are -100 where nothing is
        predicted. Row b holds example `indices[b]`, whose first `lengths[b]` ids are real."""
        batch, width = ids.shape
        k = self.num_to_mask(lengths)
        pos = np.arange(width)[None, :]
        first = 1 if self.original_masking else 0
        candidate = (pos >= first) & (pos < first + self._num_candidates(lengths)[:, None])
        with np.errstate(over="ignore"):
            keys = self._keys(np.asarray(indices))
            u_pos, u_kind, u_token = (_uniforms(keys, s, width) for s in range(3))
        u_pos[~candidate] = 2.0  # never among the k smallest
        order = np.argsort(u_pos, axis=1)
        rank = np.empty_like(order)
        np.put_along_axis(rank, order, np.broadcast_to(pos, order.shape), axis=1)
        chosen = rank < k[:, None]
        labels = np.where(chosen, ids, -100)
        pick = np.minimum((u_token * len(self._random_ids)).astype(np.int64),
                          len(self._random_ids) - 1)
        inputs = np.where(chosen & (u_kind < 0.8), self.mask_token_id, ids)
        inputs = np.where(chosen & (u_kind >= 0.9), self._random_ids[pick], inputs)
        return inputs, labels

    def __call__(self, batch: list[tuple[int, np.ndarray]]) -> dict[str, torch.Tensor]:
        lengths = np.array([len(ids) for _, ids in batch], dtype=np.int64)
        longest = int(lengths.max())
        if longest > self.max_seq_length:
            raise ValueError(f"an example has {longest} tokens > max_seq_length "
                             f"{self.max_seq_length}")
        width = max(longest, 1)
        ids = np.full((len(batch), width), self.pad_token_id, dtype=np.int64)
        for row, (_, x) in enumerate(batch):
            ids[row, :len(x)] = x
        attention_mask = (np.arange(width)[None, :] < lengths[:, None]).astype(np.int64)
        indices = np.array([int(i) for i, _ in batch], dtype=np.int64)
        input_ids, labels = self.mask_batch(indices, ids, lengths)
        return {"input_ids": torch.from_numpy(input_ids),
                "attention_mask": torch.from_numpy(attention_mask),
                "labels": torch.from_numpy(labels)}


# ---- generating ------------------------------------------------------------------------------
BLOCK_BYTES = 1 << 18  # corpus bytes per tokenisation task: small enough to balance workers


@dataclass(frozen=True, kw_only=True)
class DataConfig:
    """What generate_data.py makes: its flags, declared once here and validated once."""

    train_corpus: str | os.PathLike = flag(
        help="one sentence per line, blank line between documents (.gz accepted)")
    output_dir: str | os.PathLike = flag(
        help="directory to write (created if missing; refused if it already holds data)")
    bert_model: str = flag(help="model directory with vocab.txt, a vocab file, or a name such "
                                "as bert-base-uncased")
    do_lower_case: bool = flag(False, help="lower-case (uncased vocabs)")
    max_seq_len: int = flag(128, type=int, help="WordPieces per instance (max)")
    reduce_memory: bool = flag(False, help="stream the packed ids to disk as they are made (flat "
                                           "memory for large corpora) instead of holding them "
                                           "until the end")
    num_workers: int = flag(1, type=int,
                            help="tokenising processes (the output does not depend on it); with "
                                 "1, the Rust tokenizer's own thread pool still uses every core")
    fmt: str = flag("bin", "--format", choices=("bin", "json"),
                    help="bin: token-id shards + metadata.json (fast, memory-mapped); json: the "
                         "original's train_doc_tokens_ngrams_{i}.json shards")
    num_shards: int | None = flag(None, type=int,
                                  help="instances go round-robin to this many shards (default: "
                                       "1 for bin, 28 for json, as the original)")
    encoding_errors: str = flag("strict", choices=("strict", "replace"),
                                help="non-UTF-8 bytes: strict stops with the line number; "
                                     "replace substitutes U+FFFD")
    # None: a bar only on a terminal; --no_progress sets False.
    progress: bool | None = flag(None, "--no_progress", action="store_const", const=False,
                                 help="no progress bar (it is shown only on a terminal anyway)")
    block_bytes: int = BLOCK_BYTES

    def __post_init__(self) -> None:
        if self.fmt not in ("bin", "json"):
            raise UserError(f"--format must be bin or json, got {self.fmt!r}")
        if self.encoding_errors not in ("strict", "replace"):
            raise UserError(f"--encoding_errors must be strict or replace, got "
                            f"{self.encoding_errors!r}")
        if self.max_seq_len < 1:
            raise UserError(f"--max_seq_len must be >= 1, got {self.max_seq_len}")
        if self.num_workers < 1:
            raise UserError(f"--num_workers must be >= 1, got {self.num_workers}")
        if self.num_shards is None:  # the original's 28 JSON shards; one bin shard
            object.__setattr__(self, "num_shards", ORIGINAL_NUM_SHARDS if self.fmt == "json" else 1)
        if self.num_shards < 1:
            raise UserError(f"--num_shards must be >= 1, got {self.num_shards}")
        if self.block_bytes < 1:
            raise UserError(f"block_bytes must be >= 1, got {self.block_bytes}")


def resolve_vocab(bert_model: str) -> Path:
    """The vocab.txt of --bert_model: a model directory, a vocab file, or a known name."""
    path = Path(bert_model).expanduser()
    if path.is_file():
        return path
    vocab = resolve_model_dir(bert_model) / "vocab.txt"
    if not vocab.is_file():
        raise UserError(f"no vocab.txt in {vocab.parent} (--bert_model must be a directory "
                        f"holding vocab.txt, a vocab file, or a model name)")
    return vocab


def _open_corpus(path: Path):
    """A binary file object over the corpus, transparently gunzipped; and its raw handle
    (whose position drives the progress bar)."""
    try:
        raw = open(path, "rb")
    except FileNotFoundError:
        raise UserError(f"corpus not found: {path}") from None
    except IsADirectoryError:
        raise UserError(f"--train_corpus {path} is a directory; expected a text file") from None
    if raw.read(2) == b"\x1f\x8b":
        raw.seek(0)
        return gzip.GzipFile(fileobj=raw, mode="rb"), raw
    raw.seek(0)
    return raw, raw


def _read_blocks(path: Path, block_bytes: int):
    """(first line number, bytes) blocks that end on a line boundary, and the bytes read so far."""
    fh, raw = _open_corpus(path)
    line = 1
    try:
        with raw, fh:
            while True:
                block = fh.read(block_bytes)
                if not block:
                    return
                if not block.endswith(b"\n"):
                    block += fh.readline()
                yield line, block, raw.tell()
                line += block.count(b"\n")
    except (EOFError, gzip.BadGzipFile, zlib.error) as err:
        raise UserError(f"{path} is not a readable gzip file: {err}") from None


class _BlockTokenizer:
    """Turns a corpus block into (token ids, per-line lengths with -1 for a blank line).

    Lines are split on b"\\n" and stripped (a whitespace-only line is a document break, as in
    the original's `line.strip() == ""`). A line whose text yields no WordPiece still counts
    as a (empty) sentence, not a break.
    """

    def __init__(self, tokenizer_json: str, dtype: str, corpus: str, encoding_errors: str):
        self.tokenizer = Tokenizer.from_str(tokenizer_json)
        # encode_batch_fast (tokenizers >= 0.20) skips the character offsets we do not use.
        self.encode = getattr(self.tokenizer, "encode_batch_fast", self.tokenizer.encode_batch)
        self.dtype = np.dtype(dtype)
        self.corpus = corpus
        self.encoding_errors = encoding_errors

    def __call__(self, first_line: int, block: bytes) -> tuple[np.ndarray, np.ndarray]:
        try:
            text = block.decode("utf-8", errors=self.encoding_errors)
        except UnicodeDecodeError as err:
            lineno = first_line + block.count(b"\n", 0, err.start)
            raise UserError(f"{self.corpus}:{lineno}: invalid UTF-8 bytes "
                            f"({block[err.start:err.end]!r}); fix the file or pass "
                            f"--encoding_errors replace") from None
        lines = text.split("\n")
        if text.endswith("\n"):
            lines.pop()
        lines = [line.strip() for line in lines]
        sentences = [line for line in lines if line]
        encodings = self.encode(sentences, add_special_tokens=False)
        per_sentence = [e.ids for e in encodings]
        ids = np.fromiter(itertools.chain.from_iterable(per_sentence), dtype=self.dtype,
                          count=sum(map(len, per_sentence)))
        lengths = np.full(len(lines), -1, dtype=np.int64)
        blank = np.fromiter((not line for line in lines), dtype=bool, count=len(lines))
        lengths[~blank] = np.fromiter(map(len, per_sentence), dtype=np.int64,
                                      count=len(per_sentence))
        return ids, lengths


_WORKER: _BlockTokenizer | None = None


def _worker_init(*args: Any) -> None:
    # One process per core: the Rust thread pool would only oversubscribe the cores.
    os.environ["TOKENIZERS_PARALLELISM"] = "false"
    global _WORKER
    _WORKER = _BlockTokenizer(*args)


def _worker_call(first_line: int, block: bytes) -> tuple[np.ndarray, np.ndarray]:
    return _WORKER(first_line, block)


def _tokenized_blocks(blocks, block_tokenizer_args: tuple, num_workers: int, window: int):
    """Token ids per block, in corpus order, from `num_workers` processes with at most
    `window` blocks in flight (bounded memory; Pool.imap would read the whole corpus ahead)."""
    if num_workers <= 1:
        tok = _BlockTokenizer(*block_tokenizer_args)
        for first_line, block, pos in blocks:
            yield (*tok(first_line, block), pos)
        return
    methods = mp.get_all_start_methods()
    ctx = mp.get_context("fork" if "fork" in methods else "spawn")
    with ctx.Pool(num_workers, initializer=_worker_init, initargs=block_tokenizer_args) as pool:
        pending: collections.deque = collections.deque()
        for first_line, block, pos in blocks:
            pending.append((pool.apply_async(_worker_call, (first_line, block)), pos))
            if len(pending) >= window:
                result, p = pending.popleft()
                yield (*result.get(), p)
        while pending:
            result, p = pending.popleft()
            yield (*result.get(), p)


class _Packer:
    """The packing rule, on sentence lengths only (instances tile the token stream in order).

    Whole sentences are added to the current instance while it stays <= max_seq_len tokens;
    a document break or a sentence that does not fit closes it. Fixes over the original: an
    instance is never empty, and a sentence longer than max_seq_len is cut into max_seq_len
    chunks (its remainder starts the next instance) instead of being emitted over-long.
    """

    def __init__(self, max_seq_len: int):
        self.max_len = max_seq_len
        self.pos = 0          # tokens seen so far
        self.buf = 0          # tokens in the open instance
        self.doc_tokens = 0
        self.documents = 0
        self.sentences = 0

    def feed(self, lengths: np.ndarray) -> list[int]:
        """The end offsets (in the token stream) of the instances these lines close."""
        ends: list[int] = []
        max_len = self.max_len
        for n in lengths.tolist():
            if n < 0:
                self._close_document(ends)
                continue
            if n == 0:
                continue
            self.sentences += 1
            self.doc_tokens += n
            if self.buf + n <= max_len:
                self.buf += n
            elif n <= max_len:
                ends.append(self.pos)
                self.buf = n
            else:
                if self.buf:
                    ends.append(self.pos)
                start, rest = self.pos, n
                while rest > max_len:
                    start += max_len
                    rest -= max_len
                    ends.append(start)
                self.buf = rest
            self.pos += n
        return ends

    def _close_document(self, ends: list[int]) -> None:
        if self.buf:
            ends.append(self.pos)
            self.buf = 0
        if self.doc_tokens:
            self.documents += 1
            self.doc_tokens = 0

    def finish(self) -> list[int]:
        ends: list[int] = []
        self._close_document(ends)
        return ends


class _ShardWriter:
    """Round-robin instances over the shards, in memory or streamed to files (reduce_memory)."""

    def __init__(self, staging: Path, fmt: str, num_shards: int, dtype: np.dtype,
                 vocab: list[str], stream: bool):
        self.staging, self.fmt, self.num_shards = staging, fmt, num_shards
        self.dtype, self.stream = dtype, stream
        self.vocab = np.asarray(vocab, dtype=object) if fmt == "json" else None
        self.instances = [0] * num_shards
        self.tokens = [0] * num_shards
        self.total = 0
        self.parts: list[list[Any]] = [[] for _ in range(num_shards)]
        self.lengths: list[list[int]] = [[] for _ in range(num_shards)]
        self.files = []
        if stream:
            for i in range(num_shards):
                names = self.names(i)
                self.files.append([open(staging / n, "wb") for n in names])
                if fmt == "bin":
                    self.files[i][1].write(np.zeros(1, np.int64).tobytes())

    def names(self, i: int) -> tuple[str, ...]:
        return bin_shard_names(i) if self.fmt == "bin" else (JSON_SHARD.format(i),)

    def add(self, stream_tokens: np.ndarray, bounds: list[int]) -> None:
        """Write the instances whose token ranges are [bounds[j], bounds[j+1]) of
        `stream_tokens` (one block's worth)."""
        per_shard_parts: list[list[Any]] = [[] for _ in range(self.num_shards)]
        per_shard_lengths: list[list[int]] = [[] for _ in range(self.num_shards)]
        for start, end in zip(bounds[:-1], bounds[1:]):
            s = self.total % self.num_shards
            piece = stream_tokens[start:end]
            if self.fmt == "bin":
                per_shard_parts[s].append(piece)
            else:
                per_shard_parts[s].append(json.dumps({"tokens": self.vocab[piece].tolist()}) + "\n")
            per_shard_lengths[s].append(end - start)
            self.instances[s] += 1
            self.tokens[s] += end - start
            self.total += 1
        for s in range(self.num_shards):
            if not per_shard_lengths[s]:
                continue
            # One array (or string) per shard and block: no per-instance objects are kept.
            if self.fmt == "bin":
                payload = np.concatenate(per_shard_parts[s])
            else:
                payload = "".join(per_shard_parts[s])
            if not self.stream:
                self.parts[s].append(payload)
                self.lengths[s].append(np.asarray(per_shard_lengths[s], dtype=np.int64))
            elif self.fmt == "bin":
                self.files[s][0].write(payload.tobytes())
                ends = self.tokens[s] - sum(per_shard_lengths[s]) + np.cumsum(per_shard_lengths[s])
                self.files[s][1].write(ends.astype(np.int64).tobytes())
            else:
                self.files[s][0].write(payload.encode("utf-8"))

    def close(self) -> list[dict[str, Any]]:
        """Finish the shard files; their descriptions for the metadata."""
        shards = []
        for s in range(self.num_shards):
            names = self.names(s)
            if self.stream:
                for f in self.files[s]:
                    f.flush()
                    os.fsync(f.fileno())
                    f.close()
            elif self.fmt == "bin":
                lengths = np.concatenate([np.zeros(0, np.int64), *self.lengths[s]])
                offsets = np.concatenate([[0], np.cumsum(lengths, dtype=np.int64)])
                _write_durably(self.staging / names[0], (np.ascontiguousarray(p, self.dtype)
                                                          for p in self.parts[s]))
                _write_durably(self.staging / names[1], [offsets.astype(np.int64)])
            else:
                _write_durably(self.staging / names[0], (p.encode("utf-8") for p in self.parts[s]))
            self.parts[s], self.lengths[s] = [], []
            if self.fmt == "bin":
                shards.append({"tokens_file": names[0], "offsets_file": names[1],
                               "instances": self.instances[s], "tokens": self.tokens[s]})
            else:
                shards.append({"file": names[0], "instances": self.instances[s],
                               "tokens": self.tokens[s]})
        return shards

    def abort(self) -> None:
        for files in self.files:
            for f in files:
                f.close()


def _write_durably(path: Path, chunks: Iterable[Any]) -> None:
    """Write buffers (bytes, contiguous arrays) one after another, then fsync."""
    with open(path, "wb") as fh:
        for chunk in chunks:
            fh.write(chunk)
        fh.flush()
        os.fsync(fh.fileno())


def _output_files(out: Path) -> list[str]:
    if not out.is_dir():
        return []
    return sorted(p.name for p in out.iterdir()
                  if p.name == METADATA_FILE or JSON_SHARD_RE.match(p.name)
                  or re.match(r"^shard_\d+\.(tokens|offsets)\.bin$", p.name))


def generate_pretraining_data(cfg: DataConfig) -> dict[str, Any]:
    """Tokenise a corpus (one sentence per line, blank line between documents; plain or gzip)
    and pack it into pre-training instances under `cfg.output_dir`. Returns the metadata.

    One streaming pass: the main process reads blocks of lines and packs; `num_workers`
    processes tokenise (batched Rust WordPiece); the output is identical for any worker count.
    By default the packed ids stay in memory until the end (2 bytes a token); `reduce_memory`
    streams them to the shard files as they come, so memory stays flat whatever the corpus
    size. Everything is staged in a temporary directory under `output_dir` and moved into
    place at the end (metadata.json last): a failed run leaves no partial output, and a
    directory that already holds data is refused rather than overwritten.
    """
    corpus, out = Path(cfg.train_corpus), Path(cfg.output_dir)
    _check_paths(corpus, out)
    vocab_file, tokenizer, vocab = _load_vocab(cfg)
    created = next((d for d in [*reversed(out.parents), out] if not d.exists()), None)
    out.mkdir(parents=True, exist_ok=True)
    try:
        with staging_dir(out / "generate_data") as staging:
            start = time.perf_counter()
            packer, shards, instances = _pack_corpus(cfg, corpus, staging, tokenizer, vocab)
            elapsed = time.perf_counter() - start
            meta = {"format_name": FORMAT_NAME, "format_version": FORMAT_VERSION,
                    "format": cfg.fmt, "vocab_md5": vocab_md5(vocab_file),
                    "vocab_size": len(vocab), "do_lower_case": bool(cfg.do_lower_case),
                    "max_seq_len": int(cfg.max_seq_len), "documents": packer.documents,
                    "sentences": packer.sentences, "instances": instances, "tokens": packer.pos,
                    "dtype": token_dtype(len(vocab)).name, "num_shards": cfg.num_shards,
                    "shards": shards, "corpus": corpus.name,
                    "encoding_errors": cfg.encoding_errors}
            _publish(staging, out, meta)
    except BaseException:
        if created is not None:  # leave no directory behind that this run made
            shutil.rmtree(created, ignore_errors=True)
        raise
    return {**meta, "seconds": elapsed}


def _check_paths(corpus: Path, out: Path) -> None:
    """The corpus is a file and the output directory holds no data yet."""
    if not corpus.is_file():
        raise UserError(f"corpus not found: {corpus}" if not corpus.exists()
                        else f"--train_corpus {corpus} is not a file")
    if out.exists() and not out.is_dir():
        raise UserError(f"--output_dir {out} exists and is not a directory")
    existing = _output_files(out)
    if existing:
        raise UserError(f"--output_dir {out} already holds pre-training data ({existing[0]}, ...); "
                        f"remove it or choose another directory")


def _load_vocab(cfg: DataConfig) -> tuple[Path, Any, list[str]]:
    """(vocab file, fast tokenizer, tokens) of --bert_model, checked against each other."""
    vocab_file = resolve_vocab(cfg.bert_model)
    tokenizer = load_tokenizer(vocab_file, do_lower_case=cfg.do_lower_case)
    vocab = read_vocab(vocab_file)
    if len(vocab) != len(tokenizer):
        raise UserError(f"{vocab_file}: {len(vocab)} lines but the tokenizer has "
                        f"{len(tokenizer)} tokens")
    _warn_lower_case(vocab_file.parent, cfg.do_lower_case)
    return vocab_file, tokenizer, vocab


def _pack_corpus(cfg: DataConfig, corpus: Path, staging: Path, tokenizer: Any,
                 vocab: list[str]) -> tuple[_Packer, list[dict[str, Any]], int]:
    """The streaming pass: tokenise, pack and write the shards into `staging`.
    Returns (the packer's counts, the shard descriptions, the instance count)."""
    dtype = token_dtype(len(vocab))
    writer = _ShardWriter(staging, cfg.fmt, cfg.num_shards, dtype, vocab, stream=cfg.reduce_memory)
    try:
        packer = _Packer(cfg.max_seq_len)
        args = (tokenizer.backend_tokenizer.to_str(), dtype.str, str(corpus), cfg.encoding_errors)
        window = (2 if cfg.reduce_memory else 8) * cfg.num_workers
        carry = np.zeros(0, dtype)  # tokens of the open instance, not yet written
        with tqdm(total=corpus.stat().st_size, unit="B", unit_scale=True, desc="generate_data",
                  # None: shown only on a terminal, so logs and error output stay clean.
                  disable=None if cfg.progress is None else not cfg.progress,
                  mininterval=0.5) as bar:
            for ids, lengths, pos in _tokenized_blocks(_read_blocks(corpus, cfg.block_bytes),
                                                       args, cfg.num_workers, window):
                stream_start = packer.pos - len(carry)
                ends = packer.feed(lengths)
                if ends:
                    tokens = np.concatenate([carry, ids]) if len(carry) else ids
                    bounds = [0] + [e - stream_start for e in ends]
                    writer.add(tokens, bounds)
                    carry = tokens[bounds[-1]:].copy()
                else:
                    carry = np.concatenate([carry, ids])
                bar.update(pos - bar.n)
                bar.set_postfix(tokens=packer.pos, refresh=False)
            ends = packer.finish()
            if ends:
                stream_start = packer.pos - len(carry)
                writer.add(carry, [0] + [e - stream_start for e in ends])
        if packer.documents == 0:
            raise UserError(f"the corpus {corpus} is empty (no tokens)")
        return packer, writer.close(), writer.total
    except BaseException:
        writer.abort()
        raise


def _publish(staging: Path, out: Path, meta: dict[str, Any]) -> None:
    """Move the staged shards into `out`, metadata.json last (its presence marks the data
    complete)."""
    (staging / METADATA_FILE).write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
    for name in sorted(p.name for p in staging.iterdir() if p.name != METADATA_FILE):
        os.replace(staging / name, out / name)
    os.replace(staging / METADATA_FILE, out / METADATA_FILE)


def _warn_lower_case(model_dir: Path, do_lower_case: bool) -> None:
    try:
        saved = json.loads((model_dir / "tokenizer_config.json").read_text()).get("do_lower_case")
    except (OSError, json.JSONDecodeError, AttributeError):
        return
    if saved is not None and bool(saved) != do_lower_case:
        logger.warning("%s is %s but --do_lower_case is %s", model_dir,
                       "uncased" if saved else "cased", "on" if do_lower_case else "off")
