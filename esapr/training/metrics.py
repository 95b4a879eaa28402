"""Ranks of the answer on the device (docs/original.md §6, §9.1 item 5): one positive per user, so a
user's metrics (``esapr.metrics``) follow from the 0-based rank of the answer, computed without
sorting.

Tie rule: a competitor scoring the same as the answer counts AGAINST it (rank = number of
competitors not scoring strictly below the answer). A constant model therefore gets the worst
rank, never a flattering one. NaN scores follow the same pessimistic rule: a NaN competitor
counts against the answer and a NaN answer gets the worst rank; nothing raises.

Averages are per user (sums over users / number of users), not means of batch means.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor

from esapr.metrics import metric_names, per_user


def candidate_ranks(scores: Tensor) -> Tensor:
    """``scores[B, C]``: column 0 is the answer, columns 1.. its negatives. Returns the 0-based
    rank [B] (int64): #(negatives scoring >= the answer, or NaN)."""
    answer = scores[:, :1]
    below = scores[:, 1:] < answer
    return (scores.shape[1] - 1) - below.sum(dim=1)


def full_ranks(scores: Tensor, answers: Tensor, mask_rows: Tensor, mask_items: Tensor) -> Tensor:
    """Rank of each answer against every item: ``scores[B, V]`` with V = n_items + 1, column 0
    the padding (never a competitor). The pairs (mask_rows[j], mask_items[j]) (the user's
    history before the target) are excluded from the competitors; the answer itself is always
    ranked, even when it occurs in the history. Rank = #(other non-excluded items scoring >= the
    answer, or NaN). ``scores`` is not modified."""
    batch = scores.shape[0]
    answers = answers.to(device=scores.device, dtype=torch.long)
    arange = torch.arange(batch, device=scores.device)
    answer_score = scores[arange, answers].unsqueeze(1)
    competes = scores < answer_score
    competes.logical_not_()                             # >= the answer, or NaN on either side
    competes[:, 0] = False
    if mask_rows.numel():
        competes[mask_rows.to(scores.device, torch.long), mask_items.to(scores.device, torch.long)] = False
    competes[arange, answers] = False
    return competes.sum(dim=1)


class MetricSums:
    """Sums of per-user metric values (the table's ``esapr.metrics``), kept on the device;
    ``result()`` is the per-user mean.

    ``add(ranks, prefix)`` may be called with several prefixes (e.g. "" for sampled metrics and
    "full_" for full ranking); each prefix has its own user count."""

    def __init__(self, ks: list[int]):
        self.names = metric_names(ks, full_ranking=False)
        self._sums: dict[str, Tensor] = {}
        self._counts: dict[str, int] = {}

    def add(self, ranks: Tensor, prefix: str = "") -> None:
        ranks = ranks.to(torch.float64 if ranks.device.type != "mps" else torch.float32)
        sums = torch.stack([per_user(ranks, name, torch).to(ranks.dtype).sum() for name in self.names])
        if prefix in self._sums:
            self._sums[prefix] += sums
        else:
            self._sums[prefix] = sums
        self._counts[prefix] = self._counts.get(prefix, 0) + ranks.numel()

    def result(self) -> dict[str, float]:
        out = {}
        for prefix, sums in self._sums.items():
            count = self._counts[prefix]
            means = (sums / count).tolist() if count else [math.nan] * len(self.names)
            out.update({prefix + name: float(value) for name, value in zip(self.names, means)})
        return out
