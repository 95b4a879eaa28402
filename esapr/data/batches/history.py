"""EASE / SLIST batches: a user's history before a target as one row over the items, built on
the device as a sparse matrix (an evaluation batch stays sparse where ``sparse_scoring`` says so,
else it is made dense).

``HistoryBatches`` (EASE): 1 for every item before the target. ``RecentHistoryBatches`` (SLIST):
ESAPR's recency-weighted bag (``vae.position_weights``): the last max_len - 1 items before the
target, the one d positions before it weighted w(d), repeats adding up.

Besides evaluation batches, the builder gives a closed-form fit its training rows: each user's
history before the validation answer (``user_rows``), and the history before every training
target with the target (``transition_rows``). No training batches: nothing is trained by steps.
"""
from __future__ import annotations

from typing import Iterator

import torch

from esapr.data.batches import BatchBuilder, Interactions
from esapr.data.batches.types import HistoryBatch
from esapr.data.batches.vae import position_weights
from esapr.data.ragged import ragged_positions

# entries of one chunk of SLIST's transition rows (indices and value: about 20 bytes each)
CHUNK_ENTRIES = 1 << 24


def sparse_scoring(device: torch.device) -> bool:
    """Whether rows are scored through item-item weights [V, V] as a sparse product on ``device``.
    A row holds at most max_len (EASE: a history's) nonzeros of V, so on a CPU ``torch.sparse.mm``
    does about V / max_len times less work than the dense product (Amazon Sports at 19,922 users x
    7,900 items: an EASE validation pass 58x less CPU time, benchmarks/README.md); a GPU's dense
    matmul is faster than its sparse kernels."""
    return device.type == "cpu"


def scoring_note(device: torch.device) -> str:
    """How rows are scored on ``device``, for the start-up line."""
    return f"{'sparse' if sparse_scoring(device) else 'dense'} item-item scoring"


def scored_rows(rows: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """rows @ weights: a sparse product for sparse (COO) rows, the dense one otherwise."""
    return torch.sparse.mm(rows, weights) if rows.is_sparse else rows @ weights


class HistoryBatches(BatchBuilder):
    def __init__(self, data, options, evaluation, device, training=None):
        super().__init__(data, options, evaluation, device, training)
        self.vocab = self.n_items + 1
        self.train_stop = self.offsets[1:] - 2      # the validation answer: the training part ends before it
        self.weights: torch.Tensor | None = None    # by distance (last = 1 before the target); None: binary

    def history_rows(self, items: torch.Tensor, starts: torch.Tensor, ends: torch.Tensor) -> torch.Tensor:
        """Sparse (coalesced) [R, n_items + 1]: row r holds items[starts[r]:ends[r]], binary or
        weighted by distance from ends[r] (only the last len(weights) items)."""
        if self.weights is not None:
            starts = torch.maximum(starts, ends - len(self.weights))
        rows, positions = ragged_positions(starts, ends)
        if self.weights is None:
            values = torch.ones(len(positions), device=self.device)
        else:
            values = self.weights[positions - ends[rows] + len(self.weights)]
        matrix = torch.sparse_coo_tensor(torch.stack([rows, items[positions]]), values, (len(starts), self.vocab),
                                         check_invariants=False).coalesce()
        if self.weights is None:        # an item seen twice is still a 1
            matrix = torch.sparse_coo_tensor(matrix.indices(), matrix.values().clamp(max=1), matrix.shape,
                                             is_coalesced=True, check_invariants=False)
        return matrix

    def user_rows(self) -> torch.Tensor:
        """Each user's training part (everything before the validation answer), one row per user."""
        return self.history_rows(self.items, self.starts, self.train_stop)

    def eval_batch(self, users, starts, ends, source: Interactions) -> HistoryBatch:
        rows = self.history_rows(source.items, starts, ends)
        return HistoryBatch(users=users, history=rows if sparse_scoring(self.device) else rows.to_dense())


class RecentHistoryBatches(HistoryBatches):
    def __init__(self, data, options, evaluation, device, training=None):
        super().__init__(data, options, evaluation, device, training)
        self.weights = position_weights(options.weight_type, options.max_len, options.weight_constant)[:-1].to(device)

    def transition_rows(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """(history rows, target items) for every training target (each position of a user's
        training part but its first), in chunks of at most CHUNK_ENTRIES entries."""
        users, targets = ragged_positions(self.starts + 1, self.train_stop)
        size = max(1, CHUNK_ENTRIES // len(self.weights))
        for first in range(0, len(targets), size):
            user, target = users[first:first + size], targets[first:first + size]
            yield self.history_rows(self.items, self.starts[user], target), self.items[target]
