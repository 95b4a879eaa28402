"""BERT4Rec / MEANTIME batches: masked windows, built on the device (docs/original.md §3.3).

Training: the window items[max(start, end-T):end] is right-aligned in T slots (left padding 0);
each real token is picked with probability mask_prob, and a picked token becomes the mask token
(80%), a uniformly random item in 1..n_items (10%) or stays (10%); its label is the original item
(0 elsewhere). Evaluation: the window ends with the answer, which is replaced by the mask token.

MEANTIME (``MeantimeBatches``) also gets the raw unix ``timestamps`` (for its relative kernels)
and ``days`` (day numbers, for its day kernel) over the same slots, 0 at padding; at evaluation
they include the answer's own time (§3.3).
"""
from __future__ import annotations

import numpy as np
import torch

from esapr.data.batches import BatchBuilder, Interactions, window_index
from esapr.data.batches.types import SequenceBatch
from esapr.data.sequences import SECONDS_PER_DAY


class BertBatches(BatchBuilder):
    def __init__(self, data, options, evaluation, device, training=None):
        super().__init__(data, options, evaluation, device, training)
        self.mask_token = self.n_items + 1

    def _window(self, users, source: Interactions, starts, ends) -> SequenceBatch:
        index, valid = window_index(starts, ends, self.options.max_len)
        extra = {name: torch.where(valid, values[index], 0)
                 for name, values in (("timestamps", source.timestamps), ("days", source.days)) if values is not None}
        return SequenceBatch(users=users, tokens=torch.where(valid, source.items[index], 0), **extra)

    def train_batch(self, users, ends, generator) -> SequenceBatch:
        batch = self._window(users, self.data, self.starts[users], ends)
        tokens = batch.tokens
        p = self.options.mask_prob
        draws = torch.rand(tokens.shape, generator=generator, device=self.device)
        random_items = torch.randint(1, self.n_items + 1, tokens.shape, generator=generator, device=self.device)
        picked = (draws < p) & (tokens > 0)
        kind = draws / p  # uniform on [0, 1) among picked tokens
        replacement = torch.where(kind < 0.8, self.mask_token, torch.where(kind < 0.9, random_items, tokens))
        batch.tokens = torch.where(picked, replacement, tokens)
        batch.labels = torch.where(picked, tokens, 0)
        return batch

    def eval_batch(self, users, starts, ends, source: Interactions) -> SequenceBatch:
        batch = self._window(users, source, starts, ends + 1)
        batch.tokens[:, -1] = self.mask_token
        return batch


class MeantimeBatches(BertBatches):
    def interactions(self, items, timestamps, offsets) -> Interactions:
        times = timestamps.astype(np.int64)
        days = np.maximum(times // SECONDS_PER_DAY - self.first_day, 0)
        return Interactions(torch.as_tensor(items.astype(np.int64), device=self.device),
                            timestamps=torch.as_tensor(times, device=self.device),
                            days=torch.as_tensor(days, device=self.device))
