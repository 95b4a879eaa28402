"""EASE (Steck, WWW 2019): item-item weights B = argmin ||X - XB||² + lam ||B||², diag(B) = 0,
whose closed form is B = I - P diag(1/diag(P)), P = (XᵀX + lam I)⁻¹, with X the binary user x
item matrix of every user's training part (the items before the validation answer; never the
validation or test items). A user's scores are their history row times B. The regulariser is
chosen on validation from ``ease_lambdas``.
"""
from __future__ import annotations

import torch

from esapr.data.batches.history import HistoryBatches
from esapr.models import DataInfo
from esapr.models.linear import LinearItemModel, gram, ridge_inverse


class EASE(LinearItemModel):
    def __init__(self, options, info: DataInfo):
        super().__init__(info, [{"ease_lambda": lam} for lam in options.ease_lambdas])
        self.user_gram: torch.Tensor | None = None      # XᵀX, the same for every lambda

    def fit_closed_form(self, setting: dict, batches: HistoryBatches) -> None:
        if self.user_gram is None:
            rows = batches.user_rows().to(self.solve_dtype)
            self.user_gram = gram(rows, rows)
        b = ridge_inverse(self.user_gram, setting["ease_lambda"])
        b /= -torch.diagonal(b).clone()     # B_ij = -P_ij / P_jj off the diagonal, in place
        b.fill_diagonal_(0.0)
        self.weights.copy_(b)
