"""ESAPR+: ESAPR with a closed-form sequential linear path blended into its scores.

ESAPR's VAE (recency-weighted bag in, weighted multinomial loss, transfer training) trains as in
``vae.py``. Before its first epoch, SLIST's item-item weights W (``slist.py``: the session part
and the item -> next-item transition part over the same recency-weighted histories, one ridge
solve) are fitted from the training parts of the sequences; they are a fixed buffer, saved with
the model. The two score rows of a user live on different scales (log-probabilities against
regression outputs), so each is standardised over the items before they are added:

    s = z(VAE logits) + linear_weight * z(bag W)

The blended scores also choose the best epoch and drive the transfer stages (validation).
linear_weight 0 is ESAPR. The linear path costs one V x V solve per data and options, cached
beside the prepared data (``linear_cache_file``) and read by every later run that shares them
(other seeds, other VAE options, a search's trials), and one product per evaluation batch (sparse
on a CPU); the template's values were chosen on validation (docs/esapr_plus.md).
"""
from __future__ import annotations

import hashlib
import pickle
from pathlib import Path

import numpy as np
import torch

from esapr.data.batches.history import RecentHistoryBatches, scored_rows, scoring_note, sparse_scoring
from esapr.data.batches.types import BagBatch
from esapr.data.prepare import cache_lock
from esapr.files import atomic_write
from esapr.models import DataInfo
from esapr.models.linear import check_dense_memory, solve_dtype
from esapr.models.slist import SLIST, slist_grams, slist_weights
from esapr.models.vae import VAE

# raised when the solve changes what it writes: solutions cached by an older version are not read
LINEAR_CACHE_VERSION = 1


def linear_cache_file(data, options) -> Path:
    """Where the linear path's W for ``data`` (``PreparedData``) and ``options`` is kept: in the
    prepared data's folder, named by exactly the options that change W and a hash of the sequences
    it is fitted on (not the data fingerprint, which also covers the negatives: W does not read
    them, so runs that differ only there share it)."""
    seqs = data.sequences
    digest = hashlib.sha1(f"v{LINEAR_CACHE_VERSION} {seqs.n_items}".encode())
    for array in (seqs.offsets, seqs.items):
        array = np.ascontiguousarray(array)
        digest.update(f"{array.dtype}{array.shape}".encode())
        digest.update(array.tobytes())
    name = (f"max_len{options.max_len}-{options.weight_type}{float(options.weight_constant)!r}"
            f"-lambda{float(options.linear_lambda)!r}-alpha{float(options.linear_alpha)!r}-{digest.hexdigest()[:12]}")
    return Path(data.cache_dir) / "linear" / name / "weights.pt"


def read_linear(path: Path, shape: torch.Size) -> torch.Tensor | None:
    """A cached W of ``shape``, or None where there is none; a damaged file is removed (solved again)."""
    if not path.is_file():
        return None
    try:
        weights = torch.load(path, map_location="cpu", weights_only=True)
    except (OSError, RuntimeError, EOFError, ValueError, pickle.UnpicklingError):
        weights = None
    if isinstance(weights, torch.Tensor) and weights.shape == shape and weights.dtype == torch.float32:
        return weights
    path.unlink()
    return None


def standardised(scores: torch.Tensor) -> torch.Tensor:
    """Each row to mean 0 and standard deviation 1 over the items (column 0, padding, is left out
    of the statistics)."""
    items = scores[:, 1:]
    return (scores - items.mean(dim=1, keepdim=True)) / items.std(dim=1, keepdim=True).clamp_min(1e-12)


class EsaprPlus(VAE):
    def __init__(self, options, info: DataInfo):
        if options.linear_weight:
            check_dense_memory("ESAPR+'s linear path", info.n_items, SLIST.PEAK_COPIES)
        super().__init__(options, info)
        self.linear_weight = options.linear_weight
        self.solve_dtype = solve_dtype(info.n_items)
        vocab = info.n_items + 1
        self.register_buffer("linear", torch.zeros(vocab, vocab))

    def prepare(self, data) -> None:
        """W from the cache, else solved and cached (one process solves; others wait, then read it)."""
        if self.linear_weight == 0:
            return
        path = linear_cache_file(data, self.options)
        with cache_lock(path.parent):
            weights = read_linear(path, self.linear.shape)
            if weights is None:
                weights = self.solve_linear(data).cpu()
                atomic_write(path, lambda stream: torch.save(weights, stream))
        self.linear.copy_(weights)

    def solve_linear(self, data) -> torch.Tensor:
        """SLIST's W (float32, as the buffer keeps it) on the training parts of ``data``."""
        histories = RecentHistoryBatches(data, self.options, None, self.linear.device)
        grams = slist_grams(histories, self.solve_dtype)
        return slist_weights(grams, self.options.linear_lambda, self.options.linear_alpha).to(torch.float32)

    def fixed_state(self) -> set[str]:
        return {"linear"}

    def scores(self, batch: BagBatch) -> torch.Tensor:
        logits = super().scores(batch).float()
        if self.linear_weight == 0:
            return logits
        bag = batch.bag.float()
        if sparse_scoring(self.linear.device):
            bag = bag.to_sparse()       # the bag's own values: identical whatever built them
        return standardised(logits) + self.linear_weight * standardised(scored_rows(bag, self.linear))

    def compute_note(self) -> str:
        return scoring_note(self.linear.device) if self.linear_weight else ""
