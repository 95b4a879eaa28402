"""Index helpers for ragged spans over the CSR arrays (a user's history is items[start:end]),
vectorised with repeat_interleave: what batches and full ranking gather histories with."""
from __future__ import annotations

import torch
from torch import Tensor


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
