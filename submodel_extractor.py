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

from superbert.cli import add_flags, config_from_args, run_main, setup_logging
from superbert.hf import ExtractConfig, extract_to_dir


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[1],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    add_flags(p, ExtractConfig)
    return p


def main(argv: list[str] | None = None) -> None:
    setup_logging(logging.WARNING)
    cfg = config_from_args(ExtractConfig, build_parser().parse_args(argv))
    arch = cfg.arch
    sub, out = extract_to_dir(cfg.model, arch, cfg.output, cfg.scheme)
    total = sum(p.numel() for p in sub.parameters())
    params = arch.param_count(sub.config.vocab_size, sub.config.max_position_embeddings,
                              sub.config.type_vocab_size)
    print(f"extracted {arch.short()} ({sub.config.attention_scheme.upper()} scheme): "
          f"{params:,} parameters in embeddings+encoder+pooler, {total:,} with the MLM head "
          f"and dense_fit")
    print(f"wrote {out}")


if __name__ == "__main__":
    run_main(main)
