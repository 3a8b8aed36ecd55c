"""Command line of setup_superbert_model.sh: write a supernet directory, offline."""
from __future__ import annotations

import argparse

from .arch import normalize_scheme
from .cli import run_main
from .configuration import AutoTinyBertConfig
from .hf import make_supernet_dir


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="setup_superbert_model.sh",
        description="Write a SuperBERT model directory (config.json with qkv_size, vocab.txt, "
                    "tokenizer files) without network access. Defaults: the original's "
                    "8 layers / hidden 768 / 12 heads / FFN 3072 / qkv 768 / vocab 30522.")
    p.add_argument("--output", default="experiments/models/superbert_model")
    p.add_argument("--layers", type=int, default=8)
    p.add_argument("--hidden", type=int, default=768)
    p.add_argument("--heads", type=int, default=12)
    p.add_argument("--ffn", type=int, default=3072)
    p.add_argument("--qkv", type=int, default=None, help="total Q/K/V width (default: hidden)")
    p.add_argument("--max_position_embeddings", type=int, default=512)
    p.add_argument("--scheme", default="mlm", type=str.lower, choices=["mlm", "kd"],
                   help="attention slicing the supernet will be trained with (MLM: first h "
                        "heads; KD: all heads, leading qkv/H dims each)")
    p.add_argument("--vocab", default=None,
                   help="vocab.txt to use (default: the bundled bert-base-uncased vocab)")
    p.add_argument("--force", action="store_true", help="overwrite a different existing config")
    return p


def main(argv: list[str] | None = None) -> None:
    from .errors import UserError
    from .hf import count_vocab, _vocab_file

    args = build_parser().parse_args(argv)
    qkv = args.qkv or args.hidden
    for name in ("layers", "hidden", "heads", "ffn", "max_position_embeddings"):
        if getattr(args, name) < 1:
            raise UserError(f"--{name} must be positive")
    if qkv % args.heads:
        raise UserError(f"--qkv {qkv} is not divisible by --heads {args.heads}")
    config = AutoTinyBertConfig(
        vocab_size=count_vocab(_vocab_file(args.vocab)), hidden_size=args.hidden,
        num_hidden_layers=args.layers, num_attention_heads=args.heads,
        intermediate_size=args.ffn, qkv_size=qkv,
        max_position_embeddings=args.max_position_embeddings,
        attention_scheme=normalize_scheme(args.scheme))
    out = make_supernet_dir(args.output, config, args.vocab, force=args.force)
    print(f"wrote {out}/config.json and vocab.txt: {args.layers} layers, hidden {args.hidden}, "
          f"{args.heads} heads, qkv {qkv}, FFN {args.ffn}, {args.scheme.upper()} scheme")


if __name__ == "__main__":
    run_main(main)
