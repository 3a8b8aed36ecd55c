"""Shared test helpers: tiny supernets saved to disk in our real format."""
from __future__ import annotations

from pathlib import Path

import torch

from superbert.configuration import AutoTinyBertConfig
from superbert.hf import bundled_vocab_path, save_model
from superbert.modeling import AutoTinyBertForMaskedLM

VOCAB = bundled_vocab_path()

# float32 rounding grows with the values' magnitude and the number of summed terms, and the
# order of those sums differs between CPUs and thread counts: two computations of the same
# function agree to a tolerance relative to the largest value compared, not to a fixed 1e-5.
REL_TOL = 1e-5


def scaled_tolerance(reference: torch.Tensor, rel: float = REL_TOL) -> float:
    """rel x the largest magnitude in ``reference`` (at least rel, for values near zero)."""
    return rel * max(1.0, float(reference.detach().abs().max()))


def same_float(a: float, b: float, rel: float = REL_TOL) -> bool:
    """Two float32 scalars (a loss summed over ranks or parts in another order) agree to
    rounding scaled to their magnitude."""
    return abs(a - b) <= rel * max(1.0, abs(a), abs(b))


def max_difference(a: torch.Tensor, b: torch.Tensor) -> float:
    """Largest elementwise difference, computed in float64 so the check adds no rounding."""
    return float((a.detach().double() - b.detach().double()).abs().max())


def assert_same_values(actual: torch.Tensor, expected: torch.Tensor, what: str = "values",
                       rel: float = REL_TOL) -> None:
    """``actual`` equals ``expected`` up to float32 rounding scaled to ``expected``'s magnitude."""
    assert actual.shape == expected.shape, \
        f"{what}: shape {tuple(actual.shape)} != {tuple(expected.shape)}"
    diff, tol = max_difference(actual, expected), scaled_tolerance(expected, rel)
    assert diff <= tol, f"{what} differs by {diff:.3g} (tolerance {tol:.3g})"


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
