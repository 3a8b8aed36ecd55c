"""generate_data.py's configuration (`DataConfig`): its flags, declared once and validated once."""
from __future__ import annotations

import os
from dataclasses import dataclass

from ..cli import flag
from ..errors import UserError
from ..outputs import Output
from .shards import ORIGINAL_NUM_SHARDS


# What generate_data.py writes into --output_dir: shards (bin or the original's json), the
# metadata, and its staging folder while it runs.
OUTPUT_FILES = ("shard_*.bin", "train_doc_tokens_ngrams_*.json", "metadata.json",
                ".generate_data.*")
BLOCK_BYTES = 1 << 18  # corpus bytes per tokenisation task: small enough to balance workers


@dataclass(frozen=True, kw_only=True)
class DataConfig:
    """What generate_data.py makes: its flags, declared once here and validated once."""

    train_corpus: str | os.PathLike = flag(
        help="one sentence per line, blank line between documents (.gz accepted)")
    output_dir: str | os.PathLike = flag(
        help="directory to write (created if missing; refused if it already holds data)",
        output=Output.dir(owns=OUTPUT_FILES, marker="metadata.json",
                          overwrite="overwrite_output_dir", inputs=("train_corpus", "bert_model")))
    overwrite_output_dir: bool = flag(False, help="write into --output_dir even when it holds "
                                                  "files generate_data.py did not write (they "
                                                  "are left as they are)")
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
