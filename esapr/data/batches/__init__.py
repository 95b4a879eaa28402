"""Batch builders: index arithmetic on the CSR sequences, done on the training device.

Every model family has a builder (``vae``, ``bert``, ``sas``) with the same shape:
``train_batches(epoch)`` yields shuffled training batches (a function of the seed and the epoch
only, so a resumed run sees the same batches) and ``eval_batches(split)`` yields validation or
test batches with ``users``, ``answers``, ``ends`` and ``candidates`` (answer first).
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Iterator

import numpy as np
import torch

from esapr.config import Config

if TYPE_CHECKING:
    from esapr.data.prepare import PreparedData


def training_ends(offsets: np.ndarray, max_len: int, window: int | None) -> tuple[np.ndarray, np.ndarray]:
    """reference.md §3.2: each user's training history ends (exclusive) at n-2; with a sliding
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


def gather_windows(items: torch.Tensor, starts: torch.Tensor, ends: torch.Tensor, length: int) -> torch.Tensor:
    """Right-aligned windows items[max(start, end-length):end], left-padded with 0: [B, length]."""
    index, valid = window_index(starts, ends, length)
    return torch.where(valid, items[index], 0)


class BatchBuilder:
    """Shared parts: CSR arrays on the device, training examples, shuffling, evaluation batches."""

    def __init__(self, data: "PreparedData", config: Config, device: torch.device):
        seqs = data.sequences
        self.config = config
        self.device = device
        self.n_items = seqs.n_items
        self.items = torch.as_tensor(seqs.items.astype(np.int64), device=device)
        self.offsets = torch.as_tensor(seqs.offsets, device=device)
        self.starts = self.offsets[:-1]
        self.negatives = torch.as_tensor(data.test_negatives.astype(np.int64), device=device)
        users, ends = training_ends(seqs.offsets, config.max_len, config.train_window)
        self.train_users = torch.as_tensor(users, device=device)
        self.train_ends = torch.as_tensor(ends, device=device)

    @property
    def num_train_examples(self) -> int:
        return len(self.train_users)

    def num_train_batches(self) -> int:
        # drop_last as the original, but never zero batches on a tiny dataset
        return max(1, self.num_train_examples // self.config.train_batch_size)

    def generator(self, epoch: int, stream: int = 0) -> torch.Generator:
        """A generator that depends only on (dataloader_random_seed, epoch, stream)."""
        g = torch.Generator(device=self.device)
        g.manual_seed((self.config.dataloader_random_seed * 1_000_003 + epoch) * 31 + stream)
        return g

    def train_batches(self, epoch: int, limit: int | None = None) -> Iterator[dict]:
        g = self.generator(epoch)
        order = torch.randperm(self.num_train_examples, generator=g, device=self.device)
        size = min(self.config.train_batch_size, self.num_train_examples)
        count = self.num_train_batches() if limit is None else min(limit, self.num_train_batches())
        for b in range(count):
            index = order[b * size:(b + 1) * size]
            yield self.train_batch(self.train_users[index], self.train_ends[index], g)

    def eval_batches(self, split: str, limit: int | None = None) -> Iterator[dict]:
        """Users in row order; the answer is items[end], the visible history items[start:end]."""
        batch_size = self.config.val_batch_size if split == "val" else self.config.test_batch_size
        answers_at = self.offsets[1:] - (1 if split == "test" else 2)
        n_users = len(answers_at)
        for b, first in enumerate(range(0, n_users, batch_size)):
            if limit is not None and b >= limit:
                break
            users = torch.arange(first, min(first + batch_size, n_users), device=self.device)
            ends = answers_at[users]
            answers = self.items[ends]
            batch = self.eval_batch(users, ends)
            batch.update(users=users, ends=ends, answers=answers,
                         candidates=torch.cat([answers.unsqueeze(1), self.negatives[users]], dim=1))
            yield batch

    def train_batch(self, users: torch.Tensor, ends: torch.Tensor, generator: torch.Generator) -> dict:
        raise NotImplementedError

    def eval_batch(self, users: torch.Tensor, ends: torch.Tensor) -> dict:
        raise NotImplementedError
