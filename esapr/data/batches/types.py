"""The batch types: what a batch builder produces and a model consumes.

Fields mean the same thing in every type: ``users`` are user rows (0-based, in the prepared
sequences), ``labels`` the items a model is trained to predict, ``negatives`` sampled items to
score against them. Evaluation batches also carry ``ends`` (absolute index of each answer in the
CSR items), ``answers`` and ``candidates`` (the answer first, then its negatives).
"""
from __future__ import annotations

from dataclasses import dataclass, fields, replace
from typing import ClassVar

from torch import Tensor


@dataclass(kw_only=True)
class Batch:
    # the [B, T] fields that are right-aligned windows: trimmed from the left by ``rows``
    WINDOW_FIELDS: ClassVar[tuple[str, ...]] = ()

    users: Tensor                       # [B]
    ends: Tensor | None = None          # [B], evaluation only
    answers: Tensor | None = None       # [B], evaluation only
    candidates: Tensor | None = None    # [B, C], evaluation only

    def __len__(self) -> int:
        return len(self.users)

    def rows(self, index: Tensor, length: int | None = None):
        """The rows ``index`` of every field; windows trimmed to their last ``length`` slots."""
        values = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if value is not None:
                value = value.index_select(0, index)
                if length is not None and f.name in self.WINDOW_FIELDS:
                    value = value[:, -length:]
            values[f.name] = value
        return replace(self, **values)


@dataclass(kw_only=True)
class BagBatch(Batch):
    """ESAPR: a recency-weighted bag of the window's items (all but the last slot)."""
    labels: Tensor      # [B, N] the window, right-aligned; slot N-1 is the target
    bag: Tensor         # [B, n_items + 1] the weighted bag
    slots: Tensor       # [B, N-1] the bag's items by slot (labels[:, :-1])
    last: Tensor        # [B, N-1] True at the most recent slot of each distinct item


@dataclass(kw_only=True)
class SequenceBatch(Batch):
    """Transformers and MARank: a left-padded window of item tokens and what goes with it."""
    WINDOW_FIELDS: ClassVar[tuple[str, ...]] = ("tokens", "labels", "negatives", "timestamps", "days")

    tokens: Tensor                      # [B, T] input items (BERT: masked ones are the mask token)
    labels: Tensor | None = None        # training: [B, T] (0 = no target) or [B, 1] (MARank)
    negatives: Tensor | None = None     # training: one negative per label
    timestamps: Tensor | None = None    # [B, T] raw unix seconds (MEANTIME) or rescaled times (TiSASRec)
    days: Tensor | None = None          # [B, T] day numbers (MEANTIME)


@dataclass(kw_only=True)
class HistoryBatch(Batch):
    """EASE and SLIST: each user's history before the target as one row over the items."""
    history: Tensor     # [B, n_items + 1] (column 0, the padding, is 0); sparse COO where scored sparsely
