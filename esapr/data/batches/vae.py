"""ESAPR batches: the recency-weighted bag of items, built on the device (docs/original.md §3.5).

A window of the last ``max_len`` items is right-aligned in ``labels`` [B, N] (slot N-1 is the
target); the bag [B, n_items+1] holds, for each item in slots 0..N-2, its slot weight.
"""
from __future__ import annotations

import math

import torch

from esapr.data.batches import BatchBuilder, Interactions, gather_windows
from esapr.data.batches.types import BagBatch


def position_weights(weight_type: str, max_len: int, constant: float) -> torch.Tensor:
    """w_j for slots j = 0..N-1, a function of d = N-1-j, the distance from the last slot."""
    d = torch.arange(max_len - 1, -1, -1, dtype=torch.float32)
    c = torch.tensor(constant, dtype=torch.float32)
    if weight_type == "exp_stair":
        return c ** -torch.floor(torch.log2(d + 0.5))
    if weight_type == "exp":
        return c ** -torch.log2(d + 0.5)
    if weight_type == "linear":
        return c * (torch.arange(max_len, dtype=torch.float32) + 1) / max_len
    return torch.full((max_len,), float(constant))


def last_occurrence(slots: torch.Tensor) -> torch.Tensor:
    """True at the most recent slot of each distinct item in a row [B, S]."""
    sorted_items, order = torch.sort(slots, dim=1, stable=True)
    last = torch.ones_like(slots, dtype=torch.bool)
    last[:, :-1] = sorted_items[:, 1:] != sorted_items[:, :-1]
    return torch.zeros_like(last).scatter_(1, order, last)


def build_bag(slots: torch.Tensor, weights: torch.Tensor, vocab: int, legacy: bool,
              last: torch.Tensor | None = None) -> torch.Tensor:
    """Dense bag [B, vocab] from item indices ``slots`` [B, S] and per-slot ``weights`` [S].

    legacy (the original): the pad index 0 is an item like any other, and an item seen several
    times keeps the weight of its most recent slot (its non-accumulating ``+=``).
    Fixed: padding is left out and repeated items add their weights.
    """
    w = weights.expand(slots.shape)
    if legacy:
        w = w * (last_occurrence(slots) if last is None else last)
    else:
        w = w * (slots != 0)
    return torch.zeros(slots.shape[0], vocab, device=slots.device, dtype=weights.dtype).scatter_add_(1, slots, w)


class VaeBatches(BatchBuilder):
    def __init__(self, data, options, evaluation, device, training=None):
        super().__init__(data, options, evaluation, device, training)
        self.weights = position_weights(options.weight_type, options.max_len, options.weight_constant).to(device)
        self.vocab = self.n_items + 1

    def _batch(self, users, items, starts, window_ends, generator=None) -> BagBatch:
        labels = gather_windows(items, starts, window_ends, self.options.max_len)
        slots = labels[:, :-1]
        last = last_occurrence(slots)
        bag = build_bag(slots, self.weights[:-1], self.vocab, self.options.legacy_bag, last)
        if generator is not None and self.options.aug_prob > 0:
            bag = self._augment(bag, labels, generator)
        # slots + last let the model drop out each distinct bag item without a dense random mask
        return BagBatch(users=users, labels=labels, bag=bag, slots=slots, last=last)

    def _augment(self, bag, labels, generator) -> torch.Tensor:
        """Halve the entries of slots drawn below aug/2, then double those drawn above 1-aug/2
        (once per item, like the original's indexed multiply)."""
        draws = torch.rand(labels.shape, generator=generator, device=labels.device)
        half = self.options.aug_prob / 2
        for hit, factor in ((draws < half, 0.5), (draws >= 1 - half, 2.0)):
            touched = torch.zeros_like(bag).scatter_reduce_(1, labels, hit.to(bag.dtype), "amax")
            bag = torch.where(touched > 0, bag * factor, bag)
        return bag

    def train_batch(self, users, ends, generator) -> BagBatch:
        return self._batch(users, self.items, self.starts[users], ends, generator)

    def eval_batch(self, users, starts, ends, source: Interactions) -> BagBatch:
        return self._batch(users, source.items, starts, ends + 1)


def truncated_geometric(highest: torch.Tensor, q: float, generator: torch.Generator) -> torch.Tensor:
    """One d in [0, highest] per entry of ``highest`` with P(d) proportional to q**d (0 < q < 1), by
    inverse CDF: F(d) = (1 - q**(d+1)) / (1 - q**(highest+1))."""
    u = torch.rand(highest.shape, generator=generator, device=highest.device)
    mass = 1 - q ** (highest + 1).float()
    d = torch.floor(torch.log1p(-u * mass) / math.log(q)).long()
    return torch.minimum(d.clamp_(min=0), highest)      # rounding never lands past either bound


class EsaprPlusBatches(VaeBatches):
    """ESAPR+'s batches: with prefix_decay, every epoch each training window ends d items before
    its end (P(d) proportional to prefix_decay**d, at least one item left before the target), so
    every prefix of a history is a training example, the recent ones most often; without it, and
    in evaluation, ESAPR's."""

    def train_batch(self, users, ends, generator) -> BagBatch:
        if self.options.prefix_decay:
            highest = (ends - self.starts[users] - 2).clamp_(min=0)
            ends = ends - truncated_geometric(highest, self.options.prefix_decay, generator)
        return super().train_batch(users, ends, generator)
