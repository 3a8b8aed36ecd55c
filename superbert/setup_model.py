"""Command line of setup_superbert_model.sh: write a supernet directory, offline."""
from __future__ import annotations

import argparse
from dataclasses import dataclass

from .arch import Scheme
from .cli import add_flags, config_from_args, flag, run_main
from .configuration import AutoTinyBertConfig
from .errors import UserError
from .hf import count_vocab, make_supernet_dir, vocab_path
from .outputs import Output

# What setup writes into --output (tokenizer files by transformers' save_pretrained); a folder
# without its config.json is not one setup wrote, so a vocab.txt there is a user's.
SETUP_FILES = ("config.json", "vocab.txt", "tokenizer.json", "tokenizer_config.json",
               "special_tokens_map.json")


@dataclass(frozen=True, kw_only=True)
class SetupConfig:
    """The supernet directory's flags, declared once and checked in `__post_init__`."""

    output: str = flag("experiments/models/superbert_model",
                       output=Output.dir(owns=SETUP_FILES, marker="config.json",
                                         overwrite="force", beside=True, inputs=("vocab",)))
    layers: int = flag(8, type=int)
    hidden: int = flag(768, type=int)
    heads: int = flag(12, type=int)
    ffn: int = flag(3072, type=int)
    qkv: int | None = flag(None, type=int, help="total Q/K/V width (default: hidden)")
    max_position_embeddings: int = flag(512, type=int)
    scheme: Scheme = flag("mlm", type=str.lower, choices=["mlm", "kd"],
                          help="attention slicing the supernet will be trained with (MLM: "
                               "first h heads; KD: all heads, leading qkv/H dims each)")
    vocab: str | None = flag(None, help="vocab.txt to use (default: the bundled "
                                        "bert-base-uncased vocab)")
    force: bool = flag(False, help="overwrite a different existing config, or write into a "
                                   "folder holding files setup did not write")

    def __post_init__(self) -> None:
        object.__setattr__(self, "scheme", Scheme.parse(self.scheme))
        for name in ("layers", "hidden", "heads", "ffn", "max_position_embeddings"):
            if getattr(self, name) < 1:
                raise UserError(f"--{name} must be positive")
        if self.qkv_size % self.heads:
            raise UserError(f"--qkv {self.qkv_size} is not divisible by --heads {self.heads}")

    @property
    def qkv_size(self) -> int:
        return self.qkv or self.hidden

    def model_config(self, vocab_size: int) -> AutoTinyBertConfig:
        return AutoTinyBertConfig(
            vocab_size=vocab_size, hidden_size=self.hidden, num_hidden_layers=self.layers,
            num_attention_heads=self.heads, intermediate_size=self.ffn, qkv_size=self.qkv_size,
            max_position_embeddings=self.max_position_embeddings, attention_scheme=self.scheme)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="setup_superbert_model.sh",
        description="Write a SuperBERT model directory (config.json with qkv_size, vocab.txt, "
                    "tokenizer files) without network access. Defaults: the original's "
                    "8 layers / hidden 768 / 12 heads / FFN 3072 / qkv 768 / vocab 30522.")
    add_flags(p, SetupConfig)
    return p


def main(argv: list[str] | None = None) -> None:
    cfg = config_from_args(SetupConfig, build_parser().parse_args(argv))
    config = cfg.model_config(count_vocab(vocab_path(cfg.vocab)))
    out = make_supernet_dir(cfg.output, config, cfg.vocab, force=cfg.force)
    print(f"wrote {out}/config.json and vocab.txt: {cfg.layers} layers, hidden {cfg.hidden}, "
          f"{cfg.heads} heads, qkv {cfg.qkv_size}, FFN {cfg.ffn}, {cfg.scheme.upper()} scheme")


if __name__ == "__main__":
    run_main(main)
