"""Extract a sub-model from a trained SuperBERT as a complete, stand-alone model directory.

    python submodel_extractor.py --model SUPERNET_DIR --arch "{'sample_layer_num': 5, ...}" \
        --output extracted_model/ [--kd]

The output holds config.json (the sub-arch, with qkv_size), model.safetensors,
pytorch_model.bin, vocab.txt and tokenizer files; it keeps the MLM head and dense_fit, and
loads with transformers' Auto classes.
"""
from __future__ import annotations

import argparse
import logging

from superbert.arch import Arch
from superbert.hf import extract_to_dir
from superbert.cli import run_main, setup_logging


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[1],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, help="supernet directory (config.json + weights)")
    p.add_argument("--arch", required=True,
                   help="the sub-arch, as the original's dict (Python repr or JSON)")
    p.add_argument("--output", required=True, help="directory to write (created if missing)")
    p.add_argument("--kd", action="store_true",
                   help="the supernet uses the KD scheme (all heads, per-head slices); it is "
                        "recorded in the supernet config, so this only double-checks it")
    return p


def main(argv: list[str] | None = None) -> None:
    setup_logging(logging.WARNING)
    args = build_parser().parse_args(argv)
    arch = Arch.parse(args.arch)
    sub, out = extract_to_dir(args.model, arch, args.output, "kd" if args.kd else None)
    total = sum(p.numel() for p in sub.parameters())
    print(f"extracted {arch.short()} ({sub.config.attention_scheme.upper()} scheme): "
          f"{arch.param_count(sub.config.vocab_size, sub.config.max_position_embeddings, sub.config.type_vocab_size):,} "
          f"parameters in embeddings+encoder+pooler, {total:,} with the MLM head and dense_fit")
    print(f"wrote {out}")


if __name__ == "__main__":
    run_main(main)
