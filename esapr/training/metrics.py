"""Ranking metrics on the device (reference.md §6, §9.1 item 5): one positive per user, so a
user's metrics follow from the 0-based rank of the answer, computed without sorting.

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

from esapr.errors import UserError


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


def ragged_positions(starts: Tensor, ends: Tensor) -> tuple[Tensor, Tensor]:
    """Every index of the spans [starts[r], ends[r]) (empty where end <= start), flattened with
    repeat_interleave: (span r of each, the index), both int64 on ``starts``' device."""
    device = starts.device
    starts, ends = starts.long(), ends.to(device=device, dtype=torch.long)
    lengths = (ends - starts).clamp(min=0)
    total = int(lengths.sum())                           # one sync, needed for the output size
    rows = torch.repeat_interleave(torch.arange(len(starts), device=device), lengths, output_size=total)
    first = torch.cumsum(lengths, 0) - lengths           # where each span begins in the output
    position = torch.arange(total, device=device) + torch.repeat_interleave(starts - first, lengths,
                                                                            output_size=total)
    return rows, position


def history_pairs(offsets: Tensor, items: Tensor, users: Tensor, ends: Tensor) -> tuple[Tensor, Tensor]:
    """The (batch row, item) pairs of each batch user's visible history ``items[offsets[u]:end]``
    (CSR arrays; ``ends`` absolute exclusive indices into ``items``). Returns (rows, items), both
    int64 on ``items``' device."""
    users = users.to(device=items.device, dtype=torch.long)
    rows, position = ragged_positions(offsets.to(items.device)[users], ends)
    return rows, items[position].long()


def rank_metrics(ranks: Tensor, ks: list[int]) -> dict[str, Tensor]:
    """Per-user values from 0-based ranks: NDCG@k = 1/log2(rank+2) if rank < k else 0;
    Recall@k = 1 if rank < k else 0 (HR@k, one positive); MRR = 1/(rank+1). Keys: NDCG@k for
    ascending k, then Recall@k, then MRR."""
    ranks = ranks.to(torch.float64 if ranks.device.type != "mps" else torch.float32)
    gain = 1.0 / torch.log2(ranks + 2.0)
    ks = sorted(set(int(k) for k in ks))
    out = {}
    for k in ks:
        out[f"NDCG@{k}"] = torch.where(ranks < k, gain, torch.zeros_like(gain))
    for k in ks:
        out[f"Recall@{k}"] = (ranks < k).to(gain.dtype)
    out["MRR"] = 1.0 / (ranks + 1.0)
    return out


class MetricAccumulator:
    """Sums of per-user metric values, kept on the device; ``result()`` is the per-user mean.

    ``add(ranks, prefix)`` may be called with several prefixes (e.g. "" for sampled metrics and
    "full_" for full ranking); each prefix has its own user count."""

    def __init__(self, ks: list[int]):
        self.ks = sorted(set(int(k) for k in ks))
        if not self.ks or self.ks[0] < 1:
            raise UserError(f"metric_ks must be positive integers, got {ks}")
        self._sums: dict[str, Tensor] = {}
        self._counts: dict[str, int] = {}
        self._names = list(rank_metrics(torch.zeros(0), self.ks))

    def add(self, ranks: Tensor, prefix: str = "") -> None:
        values = rank_metrics(ranks, self.ks)
        sums = torch.stack([values[name].sum() for name in self._names])
        if prefix in self._sums:
            self._sums[prefix] += sums
        else:
            self._sums[prefix] = sums
        self._counts[prefix] = self._counts.get(prefix, 0) + ranks.numel()

    def result(self) -> dict[str, float]:
        out = {}
        for prefix, sums in self._sums.items():
            count = self._counts[prefix]
            means = (sums / count).tolist() if count else [math.nan] * len(self._names)
            out.update({prefix + name: float(value) for name, value in zip(self._names, means)})
        return out
