"""ESAPR+: ESAPR with a closed-form sequential linear path blended into its scores.

ESAPR's VAE (recency-weighted bag in, weighted multinomial loss, transfer training) trains as in
``vae.py``. Before its first epoch, SLIST's item-item weights W (``slist.py``: the session part
and the item -> next-item transition part over the same recency-weighted histories, one ridge
solve) are fitted from the training parts of the sequences; they are a fixed buffer, saved with
the model. The two score rows of a user live on different scales (log-probabilities against
regression outputs), so each is standardised over the items before they are added:

    s = z(VAE logits) + linear_weight * z(bag W)

The blended scores also choose the best epoch and drive the transfer stages (validation).
linear_weight 0 is ESAPR. The linear path costs one V x V solve before training and one matmul
per evaluation batch; the template's values were chosen on validation (docs/esapr_plus.md).
"""
from __future__ import annotations

import torch

from esapr.data.batches.history import RecentHistoryBatches
from esapr.data.batches.types import BagBatch
from esapr.models import DataInfo
from esapr.models.linear import check_dense_memory, solve_dtype
from esapr.models.slist import SLIST, slist_grams, slist_weights
from esapr.models.vae import VAE


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
        if self.linear_weight == 0:
            return
        histories = RecentHistoryBatches(data, self.options, None, self.linear.device)
        grams = slist_grams(histories, self.solve_dtype)
        self.linear.copy_(slist_weights(grams, self.options.linear_lambda, self.options.linear_alpha))

    def fixed_state(self) -> set[str]:
        return {"linear"}

    def scores(self, batch: BagBatch) -> torch.Tensor:
        logits = super().scores(batch).float()
        if self.linear_weight == 0:
            return logits
        return standardised(logits) + self.linear_weight * standardised(batch.bag.float() @ self.linear)
