"""SASRec / TiSASRec / MARank batches: next-item targets, built on the device (docs/original.md §3.4).

Training (SAS): the T+1 items before the window end give T input tokens and, shifted by one,
T labels (left padding 0); every label gets one negative drawn uniformly (with replacement)
from the user's fixed training pool (``train_negatives``; none without a pool: the ce losses
need none). Evaluation: the T items before the
answer, without the answer and without a mask token.

TiSASRec (``TisasBatches``): per-user rescaled times
ts'_k = round((t_k - min t_u) / scale_u) + 1, scale_u = the user's smallest positive gap (1 if
none), computed once on the host over the CSR arrays, then kept on the device; 0 is padding.

MARank (``MarankBatches``): each training example draws its own end uniformly in
[start+2, start+pos] (pos = the user's training length, n-2), takes the M = marank_max_len items
before the target, right-padded by repeating the last one, one label and one negative; the
model reads the user rows (``users``; it adds 1 for its embedding).
"""
from __future__ import annotations

import numpy as np
import torch

from esapr.data.batches import BatchBuilder, Interactions, window_index
from esapr.data.batches.types import SequenceBatch
from esapr.errors import UserError


def rescaled_timestamps(offsets: np.ndarray, timestamps: np.ndarray) -> np.ndarray:
    """§3.4: per user, round((t - min t) / smallest positive consecutive gap) + 1 (half to even,
    as Python's round); the gap defaults to 1 when the user has no positive gap."""
    t = timestamps.astype(np.int64)
    n = len(t)
    lengths = np.diff(offsets)
    user = np.repeat(np.arange(len(lengths)), lengths)
    gaps = np.full(n, np.iinfo(np.int64).max, dtype=np.int64)
    if n > 1:
        step = t[1:] - t[:-1]
        inside = (user[1:] == user[:-1]) & (step > 0)
        gaps[:-1] = np.where(inside, step, gaps[:-1])
    starts = offsets[:-1]
    scale = np.minimum.reduceat(gaps, starts) if n else np.zeros(0, dtype=np.int64)
    scale = np.where(scale == np.iinfo(np.int64).max, 1, scale)
    first = np.minimum.reduceat(t, starts) if n else np.zeros(0, dtype=np.int64)
    return np.round((t - first[user]) / scale[user]).astype(np.int64) + 1


class SasBatches(BatchBuilder):
    def __init__(self, data, options, evaluation, device, training=None):
        super().__init__(data, options, evaluation, device, training)
        # stored compactly; gathered entries are widened per batch
        self.pool = (None if data.train_negatives is None else
                     torch.as_tensor(data.train_negatives.astype(np.int32), device=device))

    def _negatives(self, users: torch.Tensor, shape: tuple, generator: torch.Generator) -> torch.Tensor:
        """One uniform draw from each user's pool per slot: [B, *shape[1:]]."""
        picks = torch.randint(0, self.pool.size(1), shape, generator=generator, device=self.device)
        rows = users.view(-1, *([1] * (len(shape) - 1)))
        return self.pool[rows, picks].long()

    def train_batch(self, users, ends, generator) -> SequenceBatch:
        length = self.options.max_len
        index, valid = window_index(self.starts[users], ends, length + 1)
        seq = torch.where(valid, self.items[index], 0)
        tokens = seq[:, :-1]
        labels = torch.where(tokens > 0, seq[:, 1:], 0)
        negatives = (None if self.pool is None else
                     torch.where(labels > 0, self._negatives(users, labels.shape, generator), 0))
        times = self.data.timestamps
        return SequenceBatch(users=users, tokens=tokens, labels=labels, negatives=negatives,
                             timestamps=None if times is None else torch.where(valid, times[index], 0)[:, :-1])

    def eval_batch(self, users, starts, ends, source: Interactions) -> SequenceBatch:
        index, valid = window_index(starts, ends, self.options.max_len)
        times = source.timestamps
        return SequenceBatch(users=users, tokens=torch.where(valid, source.items[index], 0),
                             timestamps=None if times is None else torch.where(valid, times[index], 0))


class TisasBatches(SasBatches):
    def interactions(self, items, timestamps, offsets) -> Interactions:
        return Interactions(torch.as_tensor(items.astype(np.int64), device=self.device),
                            timestamps=torch.as_tensor(rescaled_timestamps(offsets, timestamps), device=self.device))


class MarankBatches(SasBatches):
    """MARank mode: the number of examples still follows max_len/train_window (§3.2), so the
    amount of computation matches the other models, but every example draws its own end."""

    def __init__(self, data, options, evaluation, device, training=None):
        super().__init__(data, options, evaluation, device, training)
        self.context = options.marank_max_len
        self.train_stop = self.offsets[1:] - 2  # absolute exclusive end of each user's training part

    def _context(self, items: torch.Tensor, starts: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """The up to M items before ``target`` (absolute index), right-padded by repeating the
        last one: slot k holds items[beg + min(k, count-1)]. A user without any item before the
        target (possible only with min_uc 3) gets padding."""
        beg = torch.maximum(starts, target - self.context)
        count = (target - beg).unsqueeze(1)
        slot = torch.minimum(torch.arange(self.context, device=self.device), count - 1)
        return torch.where(count > 0, items[(beg.unsqueeze(1) + slot).clamp(min=0)], 0)

    def train_batch(self, users, ends, generator) -> SequenceBatch:
        starts, stop = self.starts[users], self.train_stop[users]
        # relative end uniform in [2, pos] (both inclusive), as the original's randint(2, pos)
        low = torch.minimum(starts + 2, stop)
        draws = torch.rand(users.shape, generator=generator, device=self.device, dtype=torch.float64)
        end = low + (draws * (stop - low + 1).double()).long()
        end = torch.minimum(end, stop)
        target = end - 1
        return SequenceBatch(users=users, tokens=self._context(self.items, starts, target),
                             labels=self.items[target].unsqueeze(1),
                             negatives=self._negatives(users, (len(users), 1), generator))

    def eval_batch(self, users, starts, ends, source: Interactions) -> SequenceBatch:
        return SequenceBatch(users=users, tokens=self._context(source.items, starts, ends))

    def history_batch(self, items, timestamps, user=None) -> SequenceBatch:
        if user is None:
            raise UserError("MARank scores with a user embedding, so it recommends only for known users: "
                            "pass user=ID")
        return super().history_batch(items, timestamps, user)
