"""Corpus -> packed token-id shards (generate_data.py): tokenising blocks in worker processes,
packing sentences into instances as the original did, and writing the shards and `metadata.json`
into a staging directory published at the end (see `shards.py` for the format)."""
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
from pathlib import Path
from typing import Any, Iterable

import numpy as np
from tokenizers import Tokenizer

from ..errors import UserError
from ..hf import load_tokenizer, read_vocab, resolve_model_dir
from ..io import staging_dir
from ..progress import Progress, Tick, duration
from .config import DataConfig
from .shards import (FORMAT_NAME, FORMAT_VERSION, JSON_SHARD, JSON_SHARD_RE, METADATA_FILE,
                     bin_shard_names, token_dtype, vocab_md5)

logger = logging.getLogger(__name__)


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
        # A bar on a terminal, lines off one (a log stays free of bar frames); --no_progress:
        # neither.
        with Progress(corpus.stat().st_size, "generate_data", unit="B",
                      enabled=cfg.progress is not False, line=_corpus_line, logger=logger,
                      unit_scale=True, mininterval=0.5) as bar:
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
                bar.update_to(pos)
                bar.set_postfix(tokens=packer.pos)
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


def _corpus_line(tick: Tick) -> str:
    """generate_data's progress line: corpus megabytes read, their rate, the ETA, the tokens."""
    mb = 1e6
    return (f"generate_data: {tick.done / mb:.1f}/{tick.total / mb:.1f} MB ({tick.percent:.0f}%), "
            f"{tick.rate / mb:.2f} MB/s, ETA {duration(tick.eta)}"
            + (f", {tick.postfix}" if tick.postfix else ""))
