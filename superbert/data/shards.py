"""The pre-training data format: the shard files and `metadata.json`, and the memory-mapped
dataset that reads them back (`PretrainingDataset`), with `sample_batches` for importance.

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
from typing import Any

import numpy as np
import torch

from ..errors import UserError
from ..hf import read_vocab
from ..io import check_fields, file_digest, read_text

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
