"""Super layers: ordinary torch layers that keep their full parameter and compute with a slice.

Each layer is told its active size once per step (`set_sample`), computes with views of its
full tensors (so gradients land in the full parameter and unsampled regions get zeros), and
hands out the active slice (`active_params`) so that extraction is the same slicing, copied.

Imports only torch: this file travels with exported models (see configuration.py).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class SuperLinear(nn.Linear):
    """nn.Linear computing with W[rows, :in] and b[rows].

    Rows (outputs) are either the leading `out` rows or, for per-head slicing, the leading
    `keep` rows of each of `groups` equal row groups. Columns (inputs) likewise: leading `in`
    columns or the leading `keep` columns of each of `groups` column groups.
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = True):
        super().__init__(in_features, out_features, bias=bias)
        self.set_sample(in_features, out_features)

    def set_sample(self, in_features: int, out_features: int, out_groups: int = 0,
                   in_groups: int = 0) -> None:
        """Active input/output widths; `*_groups > 0` takes the leading width/groups of
        each of `groups` equal slots instead of a leading block."""
        self.sample_in, self.sample_out = in_features, out_features
        self.sample_in_groups, self.sample_out_groups = in_groups, out_groups

    def active_weight(self) -> torch.Tensor:
        return _slice_matrix(self.weight, self.sample_out, self.sample_out_groups,
                             self.sample_in, self.sample_in_groups)

    def active_bias(self) -> torch.Tensor | None:
        if self.bias is None:
            return None
        return _slice_vector(self.bias, self.sample_out, self.sample_out_groups)

    def active_params(self) -> dict[str, torch.Tensor]:
        params = {"weight": self.active_weight()}
        if self.bias is not None:
            params["bias"] = self.active_bias()
        return params

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.active_weight(), self.active_bias())


def _slice_vector(v: torch.Tensor, n: int, groups: int) -> torch.Tensor:
    if not groups:
        return v if n == v.shape[0] else v[:n]
    slot = v.shape[0] // groups
    return v.view(groups, slot)[:, : n // groups].reshape(n)


def _slice_matrix(w: torch.Tensor, rows: int, row_groups: int, cols: int,
                  col_groups: int) -> torch.Tensor:
    full_rows, full_cols = w.shape
    if not row_groups and not col_groups:
        if rows == full_rows and cols == full_cols:
            return w
        return w[:rows, :cols]
    if row_groups:
        slot = full_rows // row_groups
        w = w.view(row_groups, slot, full_cols)[:, : rows // row_groups, :cols]
        return w.reshape(rows, cols)
    slot = full_cols // col_groups
    w = w.view(full_rows, col_groups, slot)[:rows, :, : cols // col_groups]
    return w.reshape(rows, cols)


class SuperEmbedding(nn.Embedding):
    """nn.Embedding whose vectors are the leading `dim` columns of the full table."""

    def __init__(self, num_embeddings: int, embedding_dim: int, padding_idx: int | None = None):
        super().__init__(num_embeddings, embedding_dim, padding_idx=padding_idx)
        self.set_sample(embedding_dim)

    def set_sample(self, dim: int) -> None:
        self.sample_dim = dim

    def active_weight(self) -> torch.Tensor:
        return self.weight if self.sample_dim == self.embedding_dim else self.weight[:, : self.sample_dim]

    def active_params(self) -> dict[str, torch.Tensor]:
        return {"weight": self.active_weight()}

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return F.embedding(ids, self.active_weight(), self.padding_idx)


class SuperLayerNorm(nn.LayerNorm):
    """nn.LayerNorm normalising over the active width only, with the leading affine entries."""

    def __init__(self, dim: int, eps: float = 1e-12):
        super().__init__(dim, eps=eps)
        self.set_sample(dim)

    def set_sample(self, dim: int) -> None:
        self.sample_dim = dim

    def active_params(self) -> dict[str, torch.Tensor]:
        n = self.sample_dim
        return {"weight": self.weight[:n], "bias": self.bias[:n]}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n = self.sample_dim
        return F.layer_norm(x, (n,), self.weight[:n], self.bias[:n], self.eps)


SUPER_LAYERS = (SuperLinear, SuperEmbedding, SuperLayerNorm)
