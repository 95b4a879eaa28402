"""SLIST (Choi et al., WWW 2021) in a simple form, for the next item after a user's history.

h(u, e) is ESAPR's recency-weighted bag of the last max_len - 1 items before position e
(``data/batches/history.py``). X has one row per user, h at the validation answer (the user's
training part); S and T one row per training target e: h(u, e) and the one-hot row of the item
at e. The weights

    W = argmin  alpha ||X - XW||² + (1 - alpha) ||T - SW||² + lam ||W||²,  diag(W) = 0
      = PR - P diag(diag(PR) / diag(P)),  P = (G + lam I)⁻¹,
    G = alpha XᵀX + (1 - alpha) SᵀS,  R = alpha XᵀX + (1 - alpha) SᵀT,

join the session part (SLIS: a history rebuilt from itself, as EASE; alpha = 1 is EASE on the
weighted rows) and the transition part (SLIT: the next item from the history before it). The
paper relaxes the zero diagonal to diag(W) <= xi in SLIS and drops it in the joint model; here
it holds throughout, so an item never recommends itself. The scores after a history are h W;
lam and alpha are chosen on validation from slist_lambdas x slist_alphas.
"""
from __future__ import annotations

import torch

from esapr.data.batches.history import RecentHistoryBatches
from esapr.models import DataInfo
from esapr.models.linear import LinearItemModel, gram, zero_diagonal_ridge


Grams = tuple[torch.Tensor, torch.Tensor, torch.Tensor]      # XᵀX, SᵀS, SᵀT


def slist_grams(batches: RecentHistoryBatches, dtype: torch.dtype) -> Grams:
    """The Gram matrices of the training rows (the same for every setting)."""
    users = batches.user_rows().to(dtype)
    xx = gram(users, users)
    ss, st = torch.zeros_like(xx), torch.zeros_like(xx)
    for rows, targets in batches.transition_rows():
        rows = rows.to(dtype)
        ss += gram(rows, rows)
        row, item = rows.indices()
        st.index_put_((item, targets[row]), rows.values(), accumulate=True)   # (SᵀT)_ij += S_ri [t_r = j]
    return xx, ss, st


def slist_weights(grams: Grams, lam: float, alpha: float) -> torch.Tensor:
    """W of the module docstring for one (lambda, alpha)."""
    xx, ss, st = grams
    return zero_diagonal_ridge(ss.mul(1 - alpha).add_(xx, alpha=alpha), st.mul(1 - alpha).add_(xx, alpha=alpha), lam)


class SLIST(LinearItemModel):
    PEAK_COPIES = 9       # three Gram matrices kept over the grid, and the solve's (measured in ESAPR+'s: 7.4)

    def __init__(self, options, info: DataInfo):
        super().__init__(info, [{"slist_lambda": lam, "slist_alpha": alpha}
                                for lam in options.slist_lambdas for alpha in options.slist_alphas])
        self.grams: Grams | None = None

    def fit_closed_form(self, setting: dict, batches: RecentHistoryBatches) -> None:
        if self.grams is None:
            self.grams = slist_grams(batches, self.solve_dtype)
        self.weights.copy_(slist_weights(self.grams, setting["slist_lambda"], setting["slist_alpha"]))
