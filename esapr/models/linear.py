"""Closed-form item-item models (EASE, SLIST): the scores after a history row x (over the items)
are x W, with W [V, V] (V = n_items + 1; row and column 0, the padding, stay 0) the exact
solution of a ridge regression, one per setting of the model's grid; the trainer fits the
settings in turn and keeps the one best on validation.

Memory and time: dense V x V matrices, computed with torch on the run's device: the Gram
matrices (kept over the grid), the inverse, the solution and a temporary, in float64 up to
FLOAT64_ITEMS items and float32 beyond, and the weights in float32. ML-1M (3,417 x 3,417): 93 MB
a float64 matrix, seconds an inverse on a CPU core; 30,000 items: 3.6 GB a float32 matrix and
about 2.7e13 operations an inverse (a GPU).
"""
from __future__ import annotations

import warnings

import torch

from esapr.data.batches.types import HistoryBatch
from esapr.models import DataInfo, SequentialModel

FLOAT64_ITEMS = 12_000


def gram(left: torch.Tensor, right: torch.Tensor) -> torch.Tensor:
    """leftᵀ right, dense [V, V], from sparse [R, V] row matrices."""
    with warnings.catch_warnings():     # torch's notice that the sparse format it uses inside is in beta
        warnings.filterwarnings("ignore", "Sparse CSR tensor support is in beta")
        return torch.sparse.mm(left.t().coalesce(), right).to_dense()


def ridge_inverse(gram: torch.Tensor, lam: float) -> torch.Tensor:
    """P = (G + lam I)⁻¹, by Cholesky (G is a Gram matrix, so G + lam I is positive definite)."""
    regularised = gram.clone()
    regularised.diagonal().add_(lam)
    return torch.cholesky_inverse(torch.linalg.cholesky(regularised))


def zero_diagonal_ridge(gram: torch.Tensor, target: torch.Tensor, lam: float) -> torch.Tensor:
    """W minimising ||Y - A W||² + lam ||W||² with diag(W) = 0, given G = AᵀA and R = AᵀY (A and
    Y may stack several weighted problems): with P = (G + lam I)⁻¹, each column j is P r_j - mu_j
    P e_j, its multiplier mu_j = (PR)_jj / P_jj making W_jj = 0, so W = PR - P diag(mu)."""
    p = ridge_inverse(gram, lam)
    w = p @ target
    w -= p * (torch.diagonal(w) / torch.diagonal(p))
    w.fill_diagonal_(0.0)           # 0 up to rounding already
    return w


class LinearItemModel(SequentialModel):
    """An item-item weight matrix fitted in closed form over ``grid``; scoring is one matmul."""

    def __init__(self, info: DataInfo, grid: list[dict]):
        super().__init__()
        vocab = info.n_items + 1
        self.grid = grid
        self.solve_dtype = torch.float64 if info.n_items <= FLOAT64_ITEMS else torch.float32
        self.register_buffer("weights", torch.zeros(vocab, vocab))

    def closed_form_grid(self) -> list[dict]:
        return self.grid

    def scores(self, batch: HistoryBatch) -> torch.Tensor:
        return batch.history @ self.weights
