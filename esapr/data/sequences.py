"""Ratings -> filtered, re-indexed, time-ordered user sequences in CSR arrays, and the
leave-one-out split as index arithmetic on them.

Dense ids are 1-based (0 is padding): user u (0-based row) has dense id u + 1, item i is the
i-th smallest original item id. Each user's items are stably sorted by (timestamp, file order).
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from esapr.data.sources import RawInteractions
from esapr.errors import UserError

SECONDS_PER_DAY = 86400


@dataclass(frozen=True)
class Sequences:
    offsets: np.ndarray     # int64 [n_users + 1]; user u's rows are offsets[u]:offsets[u+1]
    items: np.ndarray       # int32 [n_interactions], dense ids 1..n_items
    timestamps: np.ndarray  # int64 [n_interactions], unix seconds (or file order)
    user_ids: np.ndarray    # original user id of row u
    item_ids: np.ndarray    # original item id of dense item i at index i - 1

    @property
    def n_users(self) -> int:
        return len(self.offsets) - 1

    @property
    def n_items(self) -> int:
        return len(self.item_ids)

    @property
    def n_interactions(self) -> int:
        return len(self.items)

    @property
    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)

    @property
    def days(self) -> np.ndarray:
        """Whole UTC days since the first interaction's day (MEANTIME's day kernel)."""
        day = self.timestamps // SECONDS_PER_DAY
        return (day - day.min()).astype(np.int64) if len(day) else day

    def user_items(self, user: int) -> np.ndarray:
        return self.items[self.offsets[user]: self.offsets[user + 1]]

    def target_positions(self, split: str) -> np.ndarray:
        """Absolute index into ``items`` of each user's held-out answer (leave-one-out).

        ``train``: the exclusive end of the training history (= the validation answer's index).
        """
        ends = self.offsets[1:]
        return ends - (1 if split == "test" else 2)

    def item_index(self) -> dict:
        """Original item id -> dense id."""
        return {original: i + 1 for i, original in enumerate(self.item_ids.tolist())}

    def user_index(self) -> dict:
        """Original user id -> row."""
        return {original: u for u, original in enumerate(self.user_ids.tolist())}

    def stats(self) -> dict:
        lengths = self.lengths
        q = np.quantile(lengths, [0.0, 0.25, 0.5, 0.75, 0.9, 0.99, 1.0]) if len(lengths) else [0] * 7
        return {
            "users": self.n_users, "items": self.n_items, "interactions": self.n_interactions,
            "density": self.n_interactions / max(1, self.n_users * self.n_items),
            "length_mean": float(lengths.mean()) if len(lengths) else 0.0,
            "length_quantiles": dict(zip(["min", "q25", "median", "q75", "q90", "q99", "max"],
                                         [float(v) for v in q])),
        }

    def save(self, path: Path) -> None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp.npz")
        np.savez(tmp, offsets=self.offsets, items=self.items, timestamps=self.timestamps,
                 user_ids=self.user_ids, item_ids=self.item_ids)
        os.replace(tmp, path)

    @classmethod
    def load(cls, path: Path) -> "Sequences":
        with np.load(path, allow_pickle=False) as f:
            return cls(f["offsets"], f["items"], f["timestamps"], f["user_ids"], f["item_ids"])


def _id_array(values: np.ndarray) -> np.ndarray:
    """Original ids as a pickle-free array: integers stay int64, anything else becomes unicode."""
    if values.dtype.kind in "iu":
        return values.astype(np.int64)
    return values.astype(str)


def build_sequences(raw: RawInteractions, min_rating: float = 0, min_sc: int = 5, min_uc: int = 5) -> Sequences:
    """reference.md §1.2: rating filter, item filter, then user filter (one pass each),
    sorted-unique dense ids, stable (timestamp, file order) sort per user."""
    if min_uc < 3:
        raise UserError(f"min_uc must be at least 3 for leave_one_out (a training, a validation and a test item), got {min_uc}")
    keep = np.ones(len(raw), dtype=bool)
    if raw.rating is not None and min_rating > 0:
        keep &= raw.rating >= min_rating
    item_codes, item_uniques = pd.factorize(raw.item, sort=True)
    if min_sc > 0:
        item_counts = np.bincount(item_codes[keep], minlength=len(item_uniques))
        keep &= item_counts[item_codes] >= min_sc
    user_codes, user_uniques = pd.factorize(raw.user, sort=True)
    user_counts = np.bincount(user_codes[keep], minlength=len(user_uniques))
    keep &= user_counts[user_codes] >= max(min_uc, 3)
    if not keep.any():
        raise UserError(f"no interactions left after filtering (min_rating={min_rating}, min_sc={min_sc}, "
                        f"min_uc={min_uc}); lower the thresholds or use a larger dataset")
    rows = np.flatnonzero(keep)
    kept_items, item_dense = np.unique(item_codes[rows], return_inverse=True)
    kept_users, user_dense = np.unique(user_codes[rows], return_inverse=True)
    timestamps = raw.timestamp[rows].astype(np.int64)
    order = np.lexsort((timestamps, user_dense))  # stable: ties keep file order
    offsets = np.zeros(len(kept_users) + 1, dtype=np.int64)
    np.cumsum(np.bincount(user_dense, minlength=len(kept_users)), out=offsets[1:])
    return Sequences(
        offsets=offsets,
        items=(item_dense[order] + 1).astype(np.int32),
        timestamps=timestamps[order],
        user_ids=_id_array(np.asarray(user_uniques)[kept_users]),
        item_ids=_id_array(np.asarray(item_uniques)[kept_items]),
    )
