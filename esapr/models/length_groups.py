"""Length groups: never compute long runs of padding in a transformer batch.

A transformer's output at real positions does not depend on how much padding precedes them
(padding keys are masked; positions count from the right), so running each group of rows of
similar length on its last ``length`` slots gives the same numbers as the full batch at a
fraction of the cost when lengths vary.

What one more group costs depends on the device. On a CPU it is little besides its arithmetic.
On a GPU it is a host sync (the lengths are needed on the host) and another forward and backward
of a few hundred small kernels, which outweighs the padding it saves at these models' sizes
(H = 64), so a GPU batch runs whole, without looking at its lengths.
"""
from __future__ import annotations

import math
from typing import Callable

import numpy as np
import torch

from esapr.data.batches.types import SequenceBatch

# the fixed cost of a group, in the units of the row cost below (about multiply-adds)
GROUP_COST = {"cpu": 4e7}


def device_group_cost(device: torch.device) -> float:
    return GROUP_COST.get(device.type, math.inf)


def length_groups(tokens: torch.Tensor, hidden: int, group_cost: float | None = None) -> list[tuple[torch.Tensor, int]]:
    """Split a batch of left-padded windows into groups of rows of similar length, each to be
    run trimmed to its longest row: [(row indices, length)], rows in ascending length order.

    The split minimises sum(rows * cost(length)) + group_cost * groups (dynamic programming over
    the sorted lengths), with cost(L) ~ L * (12 H^2 + L * 4 H) for the linear layers and the
    attention; ``group_cost`` defaults to the device's. An infinite group cost keeps the batch
    whole and untrimmed without reading the lengths (no host sync)."""
    group_cost = device_group_cost(tokens.device) if group_cost is None else group_cost
    if math.isinf(group_cost):
        return [(torch.arange(tokens.size(0), device=tokens.device), tokens.size(1))]
    lengths, order = torch.sort((tokens > 0).sum(1))
    sizes = np.maximum(lengths.cpu().numpy(), 1).astype(np.float64)
    n = len(sizes)
    row_cost = sizes * (12.0 * hidden * hidden + sizes * 4.0 * hidden)
    best = np.zeros(n + 1)
    cut = np.zeros(n + 1, dtype=np.int64)
    counts = np.arange(n, 0, -1, dtype=np.float64)  # group (i, j] for i = 0..j-1 has j - i rows
    for j in range(1, n + 1):
        costs = best[:j] + counts[n - j:] * row_cost[j - 1] + group_cost
        cut[j] = int(np.argmin(costs))
        best[j] = costs[cut[j]]
    groups = []
    j = n
    while j > 0:
        i = cut[j]
        groups.append((order[i:j], int(sizes[j - 1])))
        j = i
    return groups[::-1]


def _whole(groups: list, batch: SequenceBatch) -> bool:
    return len(groups) == 1 and groups[0][1] == batch.tokens.size(1)


def per_group(batch: SequenceBatch, hidden: int, fn: Callable[[SequenceBatch], torch.Tensor]) -> torch.Tensor:
    """fn(sub-batch) -> [b, ...] for each length group, reassembled in the batch's row order."""
    groups = length_groups(batch.tokens, hidden)
    if _whole(groups, batch):
        return fn(batch)
    parts = [fn(batch.rows(rows, length)) for rows, length in groups]
    order = torch.cat([rows for rows, _ in groups])
    out = torch.cat(parts)
    return torch.empty_like(out).index_copy_(0, order, out)


def grouped_loss(batch: SequenceBatch, hidden: int,
                 fn: Callable[[SequenceBatch], tuple[torch.Tensor, int | torch.Tensor]]) -> torch.Tensor:
    """Sum of fn's (loss sum, count) over the length groups, divided by the total count (so the
    mean is over all positions of the batch, as without groups; 0 when there are none). A count
    may be a tensor (no host sync to learn it)."""
    groups = length_groups(batch.tokens, hidden)
    if _whole(groups, batch):
        total, count = fn(batch)
    else:
        total, count = 0.0, 0
        for rows, length in groups:
            part, n = fn(batch.rows(rows, length))
            total, count = total + part, count + n
    return total / (count.clamp(min=1) if isinstance(count, torch.Tensor) else max(1, count))
