"""Extract a sub-model from a trained SuperBERT as a complete, stand-alone model directory.

    python submodel_extractor.py --model SUPERNET_DIR --arch "{'sample_layer_num': 5, ...}" \
        --output extracted_model/ [--kd]

The output holds config.json (the sub-arch, with qkv_size), model.safetensors,
pytorch_model.bin, vocab.txt and tokenizer files, and extraction.json (source, arch, scheme);
it keeps the MLM head and dense_fit, and loads with transformers' Auto classes.

With --onnx the extracted encoder is also exported to <output>/model.onnx (and, with --int8,
model.int8.onnx), each with a .json sidecar, checked against torch on export. An output
directory that holds model files an earlier extraction did not write (a foreign config.json,
weights) is refused unless --force; one that an earlier extraction wrote is rewritten, and its
now stale ONNX files removed.
"""
from __future__ import annotations

import argparse
import logging

from superbert.cli import add_flags, config_from_args, run_main, setup_logging
from superbert.deploy import export_onnx, require_onnx
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
    if cfg.onnx:
        require_onnx()  # before the extraction: a missing runtime fails with nothing written
    sub, out = extract_to_dir(cfg.model, arch, cfg.output, cfg.scheme, force=cfg.force)
    total = sum(p.numel() for p in sub.parameters())
    params = arch.param_count(sub.config.vocab_size, sub.config.max_position_embeddings,
                              sub.config.type_vocab_size)
    print(f"extracted {arch.short()} ({sub.config.attention_scheme.upper()} scheme): "
          f"{params:,} parameters in embeddings+encoder+pooler, {total:,} with the MLM head "
          f"and dense_fit")
    print(f"wrote {out}")
    if cfg.onnx:
        files = export_onnx(out, opset=cfg.opset, int8=cfg.int8)
        print(f"wrote {files.fp32}" + (f" and {files.int8}" if files.int8 else ""))


if __name__ == "__main__":
    run_main(main)
