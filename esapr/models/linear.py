"""Closed-form item-item models (EASE, SLIST): the scores after a history row x (over the items)
are x W, with W [V, V] (V = n_items + 1; row and column 0, the padding, stay 0) the exact
solution of a ridge regression, one per setting of the model's grid; the trainer fits the
settings in turn and keeps the one best on validation.

Memory and time: dense V x V matrices, computed with torch on the run's device: the Gram
matrices (kept over the grid), the regularised copy, its Cholesky factor and the inverse (EASE
turns it into its solution in place, SLIST adds one), in float64 up to FLOAT64_ITEMS items and
float32 beyond, and the weights in float32. ML-1M (3,417 x 3,417): 93 MB
a float64 matrix, seconds an inverse on a CPU core; 30,000 items: 3.6 GB a float32 matrix and
about 2.7e13 operations an inverse (a GPU).
"""
from __future__ import annotations

import os
import resource
import warnings

import torch

from esapr.data.batches.history import scored_rows, scoring_note
from esapr.data.batches.types import HistoryBatch
from esapr.errors import UserError
from esapr.models import DataInfo, SequentialModel

FLOAT64_ITEMS = 12_000


def gram(left: torch.Tensor, right: torch.Tensor) -> torch.Tensor:
    """leftᵀ right, dense [V, V], from sparse [R, V] row matrices."""
    with warnings.catch_warnings():     # torch's notice that the sparse format it uses inside is in beta
        warnings.filterwarnings("ignore", "Sparse CSR tensor support is in beta")
        return torch.sparse.mm(left.t().coalesce(), right).to_dense()


def ridge_inverse(gram: torch.Tensor, lam: float) -> torch.Tensor:
    """P = (G + lam I)⁻¹, by Cholesky (G is a Gram matrix, so G + lam I is positive definite); the
    regularised copy is freed before the inverse is made (two V x V matrices besides G at most).

    One factorisation per lam, although G is the same over a grid: an eigendecomposition G = Q
    diag(e) Qᵀ would serve every lam, but rebuilding P = Q diag(1/(e + lam)) Qᵀ is a V x V matmul,
    which costs more than this Cholesky inverse, and the eigendecomposition itself several of them
    (at 7,900 items, EASE's grid of 3: 3.1x the CPU time of three Cholesky inverses;
    benchmarks/README.md), so it does not pay on any grid."""
    regularised = gram.clone()
    regularised.diagonal().add_(lam)
    factor = torch.linalg.cholesky(regularised)
    del regularised
    return torch.cholesky_inverse(factor)


def zero_diagonal_ridge(gram: torch.Tensor, target: torch.Tensor, lam: float) -> torch.Tensor:
    """W minimising ||Y - A W||² + lam ||W||² with diag(W) = 0, given G = AᵀA and R = AᵀY (A and
    Y may stack several weighted problems): with P = (G + lam I)⁻¹, each column j is P r_j - mu_j
    P e_j, its multiplier mu_j = (PR)_jj / P_jj making W_jj = 0, so W = PR - P diag(mu)."""
    p = ridge_inverse(gram, lam)
    w = p @ target
    w.addcmul_(p, torch.diagonal(w) / torch.diagonal(p), value=-1.0)      # in place: no V x V temporary
    w.fill_diagonal_(0.0)           # 0 up to rounding already
    return w


def solve_dtype(n_items: int) -> torch.dtype:
    return torch.float64 if n_items <= FLOAT64_ITEMS else torch.float32


def available_memory() -> int | None:
    """Bytes of memory free for a new allocation: the machine's free memory, or this process's
    address-space limit where that is lower (None where neither can be read)."""
    free = None
    try:
        with open("/proc/meminfo") as handle:
            free = next((int(line.split()[1]) * 1024 for line in handle if line.startswith("MemAvailable:")), None)
    except OSError:
        pass
    if free is None:
        try:
            free = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        except (ValueError, OSError, AttributeError):
            pass
    limit = resource.getrlimit(resource.RLIMIT_AS)[0]
    if limit != resource.RLIM_INFINITY:
        free = limit if free is None else min(free, limit)
    return free


# the share of the free memory a solve may take: the estimate is of its matrices alone, and the
# process, the data and other programs need the rest
FREE_SHARE = 0.8


def check_dense_memory(model: str, n_items: int, copies: int) -> None:
    """Refuse, before allocating, a closed-form solve whose dense V x V matrices (``copies`` of them
    at the solve's precision, at its peak) need more memory than the machine has free."""
    vocab = n_items + 1
    need = copies * vocab * vocab * torch.finfo(solve_dtype(n_items)).bits // 8
    free = available_memory()
    if free is not None and need > FREE_SHARE * free:
        raise UserError(f"{model} needs about {_size(need)} for its dense {vocab:,} x {vocab:,} item matrices and "
                        f"{_size(free)} are free: keep fewer items (raise --min_sc), use a machine with more memory, "
                        f"or another model")


def _size(count: int) -> str:
    return f"{count / 2**30:.1f} GiB" if count >= 2**30 else f"{count / 2**20:.1f} MiB"


class LinearItemModel(SequentialModel):
    """An item-item weight matrix fitted in closed form over ``grid``; scoring is one matmul
    (sparse rows on a CPU: ``history.sparse_scoring``)."""

    # dense V x V matrices alive at the solve's peak, with a margin (measured above the process's own
    # memory at 7,900 items in float64: 3.4; benchmarks/closed_form.py)
    PEAK_COPIES = 5

    def __init__(self, info: DataInfo, grid: list[dict]):
        super().__init__()
        check_dense_memory(type(self).__name__, info.n_items, self.PEAK_COPIES)
        vocab = info.n_items + 1
        self.grid = grid
        self.solve_dtype = solve_dtype(info.n_items)
        self.register_buffer("weights", torch.zeros(vocab, vocab))

    def closed_form_grid(self) -> list[dict]:
        return self.grid

    def scores(self, batch: HistoryBatch) -> torch.Tensor:
        return scored_rows(batch.history, self.weights)

    def compute_note(self) -> str:
        return scoring_note(self.weights.device)
