"""Which positions a loss reads, chosen by device.

On a CPU the labelled positions are gathered first (``nonzero``): fewer rows to compute. On a GPU
``nonzero`` is a host sync (the number of rows must reach the host before the next kernel can be
queued), which stalls the step; there every position is computed and the unlabelled ones weigh 0,
as long as the widest tensor that needs stays within ``DENSE_ELEMENTS`` (BERT4Rec's logits on
ML-1M: 256 x 200 x 3,417 = 175M elements; on ML-20M they would not fit a T4, and are gathered).
"""
from __future__ import annotations

import torch

DENSE_ELEMENTS = 1 << 28     # 1 GiB of float32


def labelled_rows(labels: torch.Tensor, width: int) -> torch.Tensor | None:
    """The flat indices of the positions with label > 0, or None: compute every position and mask
    the others (on a GPU, when positions x ``width`` fit DENSE_ELEMENTS)."""
    flat = labels.reshape(-1)
    if labels.device.type != "cpu" and flat.numel() * width <= DENSE_ELEMENTS:
        return None
    return torch.nonzero(flat, as_tuple=True)[0]
