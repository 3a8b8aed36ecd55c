"""The default-ratio baseline: BERT's shape rules, scaled down, at the latency of a searched arch.

A searched arch is only worth its search if it beats the arch one would pick without searching:
BERT's ratios, FFN = 4 x hidden and qkv = hidden, with the depth and width varied. On a
SearchSpace those ratios are snapped to its grids: the FFN and qkv sizes are the grid values
nearest to 4 x hidden and hidden (in the MLM scheme qkv = head_dim x heads, so the head count
is the one nearest to hidden / head_dim; in the KD scheme the head count is fixed and qkv is on
the qkv grid, a multiple of it). Where the space's range cuts a ratio off, the nearest value
inside it is taken, so every (layers, hidden) pair of the space has one default-ratio arch.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

from ..arch import Arch, Scheme, SearchSpace, unique
from ..errors import UserError
from ..latency import LatencyPredictor


def _nearest(values: Sequence[int], target: float) -> int:
    """The value closest to `target`; a tie goes to the smaller value."""
    return min(values, key=lambda v: (abs(v - target), v))


def default_ratio_arch(space: SearchSpace, layers: int, hidden: int) -> Arch:
    """The arch of `layers` x `hidden` with BERT's ratios, snapped to the space's grids."""
    ffn = _nearest(space.ffn_values(), 4 * hidden)
    if space.scheme == Scheme.KD:
        return Arch(layers, hidden, space.kd_heads, _nearest(space.qkv_values(), hidden), ffn)
    heads = _nearest(space.head_values(), hidden / space.head_dim)
    return Arch(layers, hidden, heads, heads * space.head_dim, ffn)


def default_ratio_archs(space: SearchSpace) -> list[Arch]:
    """Every default-ratio arch of the space: one per (layers, hidden) of its grid (duplicates,
    where snapping maps two hidden sizes to one arch, dropped), smallest first."""
    return unique(default_ratio_arch(space, L, d)
                  for L in space.layer_values() for d in space.hidden_values())


def matching_default_arch(predictor: LatencyPredictor, arch: Arch, space: SearchSpace) -> Arch:
    """The default-ratio arch whose predicted latency is closest to `arch`'s (a tie goes to the
    first in `default_ratio_archs` order, the shallower and narrower)."""
    archs = default_ratio_archs(space)
    if not archs:  # a SearchSpace always has at least one (layers, hidden) pair
        raise UserError("the search space holds no default-ratio arch")
    target = predictor.predict_one(arch)
    latencies = np.asarray(predictor.predict(archs), dtype=float)
    return archs[int(np.argmin(np.abs(latencies - target)))]
