"""Shared test helpers: tiny supernets saved to disk in our real format."""
from __future__ import annotations

from pathlib import Path

import torch

from superbert.configuration import AutoTinyBertConfig
from superbert.hf import bundled_vocab_path, save_model
from superbert.modeling import AutoTinyBertForMaskedLM

VOCAB = bundled_vocab_path()


def tiny_config(scheme: str = "mlm", layers: int = 3, hidden: int = 64, heads: int = 4,
                qkv: int | None = None, ffn: int = 128, vocab_size: int = 30522,
                fit_size: int | None = None, max_positions: int = 128) -> AutoTinyBertConfig:
    return AutoTinyBertConfig(vocab_size=vocab_size, hidden_size=hidden, num_hidden_layers=layers,
                              num_attention_heads=heads, intermediate_size=ffn,
                              qkv_size=qkv or hidden, attention_scheme=scheme,
                              fit_size=fit_size, max_position_embeddings=max_positions)


def make_tiny_supernet(out_dir: str | Path, scheme: str = "mlm", seed: int = 0,
                       **config_kwargs) -> Path:
    """A randomly initialised tiny supernet saved as a complete model directory (30522 vocab)."""
    torch.manual_seed(seed)
    model = AutoTinyBertForMaskedLM(tiny_config(scheme, **config_kwargs))
    with torch.no_grad():  # non-trivial LayerNorm and bias values make slicing bugs visible
        for name, p in model.named_parameters():
            if "LayerNorm" in name or name.endswith("bias"):
                p.add_(torch.randn_like(p) * 0.1)
    return save_model(model, out_dir, VOCAB)
