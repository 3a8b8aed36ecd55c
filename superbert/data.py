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

import json
import logging
import os
import re
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import torch

from .errors import UserError

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


def read_vocab(vocab_file: str | os.PathLike) -> list[str]:
    """The tokens of a vocab.txt, one per line, in id order (as BERT's loader reads it)."""
    try:
        with open(vocab_file, encoding="utf-8") as fh:
            return [line.rstrip("\n").rstrip("\r") for line in fh]
    except FileNotFoundError:
        raise UserError(f"vocab file not found: {vocab_file}") from None
    except UnicodeDecodeError as err:
        raise UserError(f"vocab file {vocab_file} is not UTF-8: {err}") from None


def vocab_md5(vocab_file: str | os.PathLike) -> str:
    from .hf import file_md5

    if not Path(vocab_file).is_file():
        raise UserError(f"vocab file not found: {vocab_file}")
    return file_md5(vocab_file)


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
            meta = json.loads(path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise UserError(f"{path} is corrupt: {err}") from None
        if not isinstance(meta, dict) or meta.get("format_name") != FORMAT_NAME:
            raise UserError(f"{path} is not a generate_data.py metadata file")
        if meta.get("format_version") != FORMAT_VERSION:
            raise UserError(f"{path} has format version {meta.get('format_version')}; this "
                            f"code reads version {FORMAT_VERSION} (regenerate the data)")
        if meta.get("format") not in ("bin", "json"):
            raise UserError(f"{path}: unknown data format {meta.get('format')!r}")
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
        self._shards: list[tuple[np.ndarray, np.ndarray]] = []
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
            token_parts.append(tokens)
            offset_parts.append(offsets[1:] + base)
            base += n_tok
        if not token_parts:
            raise UserError(f"{self.data_dir / METADATA_FILE} lists no shards")
        self._token_parts = token_parts
        self._offsets = np.concatenate(offset_parts)
        # Global token offset -> (shard, local offset) via the shard start of each token part.
        self._part_starts = np.cumsum([0] + [len(t) for t in token_parts])
        self._vocab_size = int(meta["vocab_size"])

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
                            bad = next(t for t in tokens if not isinstance(t, str) or t not in index)
                            raise UserError(f"{path}:{lineno}: wordpiece {bad!r} is not in "
                                            f"{self.vocab_file} (data made with another vocab?)") from None
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


# ---- masking ---------------------------------------------------------------------------------
class MaskingCollator:
    """Dynamic BERT masking and padding, a pure function of (seed, epoch, example index).

    Each example draws from its own `np.random.default_rng([seed, epoch, index])`, so the
    masks do not depend on batch composition, rank count or DataLoader workers: a 2-rank run
    masks exactly as a 1-rank run with twice the batch, and an epoch re-run after `--resume`
    masks as before. Call `set_epoch` at every epoch (dynamic masking).

    Per example of n tokens: k = min(max_predictions_per_seq, round(n * masked_lm_prob))
    positions are chosen without replacement; 80% become [MASK], 10% keep their token, 10%
    become a random token (`labels` hold the original id there, -100 elsewhere).
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
        if not 0.0 <= masked_lm_prob <= 1.0:
            raise UserError(f"--masked_lm_prob must be in [0, 1], got {masked_lm_prob}")
        if max_predictions_per_seq < 0:
            raise UserError(f"--max_predictions_per_seq must be >= 0, got {max_predictions_per_seq}")
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

    def num_to_mask(self, n: int) -> int:
        # Python's round (half to even), as the original.
        k = round(n * self.masked_lm_prob)
        if self.original_masking:
            k = max(1, k)
        return max(0, min(self.max_predictions_per_seq, k, self._num_candidates(n)))

    def _num_candidates(self, n: int) -> int:
        return max(0, n - 2) if self.original_masking else n

    def mask(self, index: int, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(input_ids, labels) of one example; labels are -100 where nothing is predicted."""
        ids = np.asarray(ids, dtype=np.int64)
        n = len(ids)
        inputs = ids.copy()
        labels = np.full(n, -100, dtype=np.int64)
        k = self.num_to_mask(n)
        if k == 0:
            return inputs, labels
        rng = np.random.default_rng([self.seed, self.epoch, int(index)])
        first = 1 if self.original_masking else 0
        positions = first + rng.choice(self._num_candidates(n), size=k, replace=False)
        draw = rng.random(k)
        random_tokens = self._random_ids[rng.integers(0, len(self._random_ids), size=k)]
        labels[positions] = ids[positions]
        to_mask = draw < 0.8
        to_random = draw >= 0.9
        inputs[positions[to_mask]] = self.mask_token_id
        inputs[positions[to_random]] = random_tokens[to_random]
        return inputs, labels

    def __call__(self, batch: list[tuple[int, np.ndarray]]) -> dict[str, torch.Tensor]:
        longest = max(len(ids) for _, ids in batch)
        if longest > self.max_seq_length:
            raise ValueError(f"an example has {longest} tokens > max_seq_length {self.max_seq_length}")
        width = max(longest, 1)
        input_ids = np.full((len(batch), width), self.pad_token_id, dtype=np.int64)
        labels = np.full((len(batch), width), -100, dtype=np.int64)
        attention_mask = np.zeros((len(batch), width), dtype=np.int64)
        for row, (index, ids) in enumerate(batch):
            inputs, lab = self.mask(index, ids)
            n = len(inputs)
            input_ids[row, :n] = inputs
            labels[row, :n] = lab
            attention_mask[row, :n] = 1
        return {"input_ids": torch.from_numpy(input_ids),
                "attention_mask": torch.from_numpy(attention_mask),
                "labels": torch.from_numpy(labels)}
