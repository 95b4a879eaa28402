"""Batch builders: index arithmetic on the CSR sequences, done on the training device.

Every model family has a builder (see ``esapr.families``), built from the family's own options
and the evaluation and training groups, with the same shape:
``train_batches(epoch)`` yields shuffled training batches (a function of the seed and the epoch
only, so a resumed run sees the same batches); ``eval_batches(split)`` yields validation or test
batches with ``users``, ``ends``, ``answers`` and ``candidates`` (answer first);
``history_mask(batch)`` gives the items full ranking leaves out; ``history_batch(items, times)``
scores a history that is not in the data. Batches are the dataclasses of ``types``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Iterator

import numpy as np
import torch

from esapr.data.batches.types import Batch
from esapr.data.sequences import SECONDS_PER_DAY
from esapr.options.groups import EvalOptions, TrainOptions
from esapr.data.ragged import history_pairs

if TYPE_CHECKING:
    from esapr.data.prepare import PreparedData


def training_ends(offsets: np.ndarray, max_len: int, window: int | None) -> tuple[np.ndarray, np.ndarray]:
    """docs/original.md §3.2: each user's training history ends (exclusive) at n-2; with a sliding
    step W, windows end at pos, pos-W, ... while the relative end stays >= max_len.
    Returns (user row, absolute exclusive end) for every training example, users in order."""
    starts = offsets[:-1]
    pos = (offsets[1:] - 2) - starts
    if window:
        counts = np.where(pos >= max_len, (pos - max_len) // window + 1, 1)
    else:
        counts = np.ones_like(pos)
    users = np.repeat(np.arange(len(pos)), counts)
    first = np.cumsum(counts) - counts
    step_index = np.arange(counts.sum()) - np.repeat(first, counts)
    ends = starts[users] + pos[users] - step_index * (window or 0)
    return users, ends


def window_index(starts: torch.Tensor, ends: torch.Tensor, length: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Absolute indices [B, length] of the right-aligned windows [max(start, end-length), end)
    (clamped to be valid) and the mask of real slots; gather any per-interaction array with it."""
    index = ends.unsqueeze(1) - length + torch.arange(length, device=ends.device)
    valid = index >= starts.unsqueeze(1)
    return index.clamp(min=0), valid


def gather_windows(values: torch.Tensor, starts: torch.Tensor, ends: torch.Tensor, length: int) -> torch.Tensor:
    """Right-aligned windows values[max(start, end-length):end], left-padded with 0: [B, length]."""
    index, valid = window_index(starts, ends, length)
    return torch.where(valid, values[index], 0)


@dataclass
class Interactions:
    """Per-interaction arrays on the device, in CSR order: what batches gather their windows from."""
    items: torch.Tensor
    timestamps: torch.Tensor | None = None   # what SequenceBatch.timestamps carries (raw or rescaled)
    days: torch.Tensor | None = None


class BatchBuilder:
    """Shared parts: CSR arrays on the device, training examples, shuffling, evaluation batches."""

    def __init__(self, data: "PreparedData", options, evaluation: EvalOptions, device: torch.device,
                 training: TrainOptions | None = None):
        seqs = data.sequences
        self.options = options          # the family's own options
        self.evaluation = evaluation
        self.training = training        # None: no training batches (a closed-form model, or scoring only)
        self.device = device
        self.n_items = seqs.n_items
        self.first_day = int(seqs.timestamps.min()) // SECONDS_PER_DAY if seqs.n_interactions else 0
        self.offsets = torch.as_tensor(seqs.offsets, device=device)
        self.starts = self.offsets[:-1]
        self.data = self.interactions(seqs.items, seqs.timestamps, seqs.offsets)
        self.items = self.data.items
        self.negatives = torch.as_tensor(data.test_negatives.astype(np.int64), device=device)
        if training is not None:
            users, ends = training_ends(seqs.offsets, options.max_len, training.train_window)
            self.train_users = torch.as_tensor(users, device=device)
            self.train_ends = torch.as_tensor(ends, device=device)

    def interactions(self, items: np.ndarray, timestamps: np.ndarray, offsets: np.ndarray) -> Interactions:
        """The per-interaction arrays this family's batches need (items; more in subclasses)."""
        return Interactions(torch.as_tensor(items.astype(np.int64), device=self.device))

    @property
    def num_train_examples(self) -> int:
        return len(self.train_users)

    def num_train_batches(self) -> int:
        # drop_last as the original, but never zero batches on a tiny dataset
        return max(1, self.num_train_examples // self.training.train_batch_size)

    def generator(self, epoch: int, stream: int = 0) -> torch.Generator:
        """A generator that depends only on (dataloader_random_seed, epoch, stream)."""
        g = torch.Generator(device=self.device)
        g.manual_seed(((self.training.dataloader_random_seed * 1_000_003 + epoch) * 31 + stream) % 2**63)
        return g

    def train_batches(self, epoch: int, limit: int | None = None) -> Iterator[Batch]:
        g = self.generator(epoch)
        order = torch.randperm(self.num_train_examples, generator=g, device=self.device)
        size = min(self.training.train_batch_size, self.num_train_examples)
        count = self.num_train_batches() if limit is None else min(limit, self.num_train_batches())
        for b in range(count):
            index = order[b * size:(b + 1) * size]
            yield self.train_batch(self.train_users[index], self.train_ends[index], g)

    def eval_batches(self, split: str, limit: int | None = None) -> Iterator[Batch]:
        """Users in row order; the answer is items[end], the visible history items[start:end]."""
        batch_size = self.evaluation.val_batch_size if split == "val" else self.evaluation.test_batch_size
        answers_at = self.offsets[1:] - (1 if split == "test" else 2)
        n_users = len(answers_at)
        for b, first in enumerate(range(0, n_users, batch_size)):
            if limit is not None and b >= limit:
                break
            users = torch.arange(first, min(first + batch_size, n_users), device=self.device)
            ends = answers_at[users]
            batch = self.eval_batch(users, self.starts[users], ends, self.data)
            batch.ends = ends
            batch.answers = self.items[ends]
            batch.candidates = torch.cat([batch.answers.unsqueeze(1), self.negatives[users]], dim=1)
            yield batch

    def history_mask(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        """(batch row, item) pairs of each user's visible history: full ranking leaves them out."""
        return history_pairs(self.offsets, self.items, batch.users, batch.ends)

    def history_batch(self, items: np.ndarray, timestamps: np.ndarray, user: int | None = None) -> Batch:
        """A one-row batch for scoring what follows ``items`` (dense ids, oldest first, with their
        unix ``timestamps``): an evaluation batch over the history and a dummy answer (the last
        item again, at the last time), which no builder shows the model. ``user``: the user's
        row when the history is a known user's (-1 otherwise)."""
        items = np.append(items, items[-1])
        timestamps = np.append(timestamps, timestamps[-1])
        source = self.interactions(items, timestamps, np.array([0, len(items)]))
        zero = torch.zeros(1, dtype=torch.long, device=self.device)
        users = torch.full((1,), -1 if user is None else int(user), device=self.device)
        return self.eval_batch(users, zero, zero + len(items) - 1, source)

    def train_batch(self, users: torch.Tensor, ends: torch.Tensor, generator: torch.Generator) -> Batch:
        raise NotImplementedError

    def eval_batch(self, users: torch.Tensor, starts: torch.Tensor, ends: torch.Tensor,
                   source: Interactions) -> Batch:
        """The model's input for predicting ``source.items[ends]`` from ``source.items[starts:ends]``."""
        raise NotImplementedError
