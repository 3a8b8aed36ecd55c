"""Dynamic BERT masking and padding of pre-training batches (`MaskingCollator`): a pure function of
(seed, epoch, example index)."""
from __future__ import annotations

from typing import Iterable

import numpy as np
import torch


# ---- masking ---------------------------------------------------------------------------------
def _mix64(x: np.ndarray) -> np.ndarray:
    """SplitMix64's finaliser: a bijective 64-bit hash with full avalanche (uint64, wrapping)."""
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


def _uniforms(keys: np.ndarray, stream: int, width: int) -> np.ndarray:
    """[B, width] uniforms in [0, 1), a pure function of (key of the row, stream, column)."""
    cols = np.arange(width, dtype=np.uint64) + np.uint64(stream << 32)
    bits = _mix64(keys[:, None] ^ _mix64(cols * np.uint64(0x9E3779B97F4A7C15))[None, :])
    return (bits >> np.uint64(11)).astype(np.float64) * (1.0 / (1 << 53))


class MaskingCollator:
    """Dynamic BERT masking and padding, a pure function of (seed, epoch, example index).

    Every random number of an example is a hash of (seed, epoch, index, position, purpose)
    (a counter-based generator: SplitMix64's finaliser), so the masks do not depend on batch
    composition, padding width, rank count or DataLoader workers: a 2-rank run masks exactly
    as a 1-rank run with twice the batch, and an epoch re-run after `--resume` masks as
    before. The whole batch is masked in a few vectorised numpy operations. Call `set_epoch`
    at every epoch (dynamic masking).

    Per example of n tokens: k = min(max_predictions_per_seq, round(n * masked_lm_prob))
    positions are chosen uniformly without replacement (the k smallest of n uniforms); 80%
    become [MASK], 10% keep their token, 10% become a random token (`labels` hold the original
    id there, -100 elsewhere).
    Default (fixed) behaviour: positions over the whole sequence (the data holds no [CLS]/[SEP]),
    random tokens drawn from the non-special ids, and masked_lm_prob == 0 masks nothing (KD).
    `original_masking=True` reproduces the original: k is at least 1, positions exclude the first
    and last token, random tokens come from the whole vocab (including [PAD], [unused*]). The
    original crashes on sequences of <= 2 tokens there; we mask nothing in them instead.
    Batches are padded to their longest sequence (<= max_seq_length) with `pad_token_id`.
    """

    def __init__(self, vocab_size: int, mask_token_id: int, pad_token_id: int,
                 special_token_ids: Iterable[int], max_seq_length: int,
                 masked_lm_prob: float = 0.15, max_predictions_per_seq: int = 77,
                 seed: int = 42, original_masking: bool = False):
        self.vocab_size = int(vocab_size)
        self.mask_token_id = int(mask_token_id)
        self.pad_token_id = int(pad_token_id)
        self.special_token_ids = sorted({int(t) for t in special_token_ids})
        self.max_seq_length = int(max_seq_length)
        self.masked_lm_prob = float(masked_lm_prob)
        self.max_predictions_per_seq = int(max_predictions_per_seq)
        self.seed = int(seed)
        self.original_masking = bool(original_masking)
        self.epoch = 0
        if original_masking:
            self._random_ids = np.arange(self.vocab_size, dtype=np.int64)
        else:
            self._random_ids = np.setdiff1d(np.arange(self.vocab_size, dtype=np.int64),
                                            np.asarray(self.special_token_ids, dtype=np.int64))

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def num_to_mask(self, lengths: np.ndarray) -> np.ndarray:
        """Masked positions per example of these lengths."""
        lengths = np.asarray(lengths, dtype=np.int64)
        k = np.rint(lengths * self.masked_lm_prob).astype(np.int64)  # half to even, as round()
        if self.original_masking:
            k = np.maximum(k, 1)
        k = np.minimum(np.minimum(k, self.max_predictions_per_seq), self._num_candidates(lengths))
        return np.maximum(k, 0)

    def _num_candidates(self, lengths: np.ndarray) -> np.ndarray:
        return np.maximum(lengths - 2, 0) if self.original_masking else lengths

    def _keys(self, indices: np.ndarray) -> np.ndarray:
        with np.errstate(over="ignore"):
            key = _mix64(np.full(len(indices), self.seed & (2**64 - 1), dtype=np.uint64))
            key = _mix64(key ^ np.uint64(self.epoch & (2**64 - 1)))
            return _mix64(key ^ indices.astype(np.uint64))

    def mask_batch(self, indices: np.ndarray, ids: np.ndarray,
                   lengths: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(input_ids, labels) of a padded [B, T] batch; labels are -100 where nothing is
        predicted. Row b holds example `indices[b]`, whose first `lengths[b]` ids are real."""
        batch, width = ids.shape
        k = self.num_to_mask(lengths)
        pos = np.arange(width)[None, :]
        first = 1 if self.original_masking else 0
        candidate = (pos >= first) & (pos < first + self._num_candidates(lengths)[:, None])
        with np.errstate(over="ignore"):
            keys = self._keys(np.asarray(indices))
            u_pos, u_kind, u_token = (_uniforms(keys, s, width) for s in range(3))
        u_pos[~candidate] = 2.0  # never among the k smallest
        order = np.argsort(u_pos, axis=1)
        rank = np.empty_like(order)
        np.put_along_axis(rank, order, np.broadcast_to(pos, order.shape), axis=1)
        chosen = rank < k[:, None]
        labels = np.where(chosen, ids, -100)
        pick = np.minimum((u_token * len(self._random_ids)).astype(np.int64),
                          len(self._random_ids) - 1)
        inputs = np.where(chosen & (u_kind < 0.8), self.mask_token_id, ids)
        inputs = np.where(chosen & (u_kind >= 0.9), self._random_ids[pick], inputs)
        return inputs, labels

    def __call__(self, batch: list[tuple[int, np.ndarray]]) -> dict[str, torch.Tensor]:
        lengths = np.array([len(ids) for _, ids in batch], dtype=np.int64)
        longest = int(lengths.max())
        if longest > self.max_seq_length:
            raise ValueError(f"an example has {longest} tokens > max_seq_length "
                             f"{self.max_seq_length}")
        width = max(longest, 1)
        ids = np.full((len(batch), width), self.pad_token_id, dtype=np.int64)
        for row, (_, x) in enumerate(batch):
            ids[row, :len(x)] = x
        attention_mask = (np.arange(width)[None, :] < lengths[:, None]).astype(np.int64)
        indices = np.array([int(i) for i, _ in batch], dtype=np.int64)
        input_ids, labels = self.mask_batch(indices, ids, lengths)
        return {"input_ids": torch.from_numpy(input_ids),
                "attention_mask": torch.from_numpy(attention_mask),
                "labels": torch.from_numpy(labels)}
