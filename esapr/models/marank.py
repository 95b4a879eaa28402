"""MARank (docs/original.md §4.7): multi-order attentive ranking over a user and the M items before
the target (right-padded by repeating the last item, ``MarankBatches``), trained with BPR against
one negative from the user's training pool (§5.2).

score(item) = final . ctx_emb[item] + user_latent . item_latent[item], where ``final`` comes from
the item-context attention, the residual stacks, the per-layer relational attention and the
hidden attention. Differences from the original: the loss is computed as -logsigmoid(diff)
(the same number, but finite when diff is very negative), and batches of one example work (the
original's ``squeeze()`` calls break there).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from esapr.data.batches.types import SequenceBatch
from esapr.models import DataInfo, SequentialModel
from esapr.models.attention import init_weights
from esapr.models.dropout import Dropout


class Attention(nn.Module):
    """weights = softmax over the set of sigmoid(out(tanh(W_x drop(x) [+ W_u drop(u)]))), then
    the weighted sum of the undropped x."""

    def __init__(self, hidden: int, with_user: bool):
        super().__init__()
        self.item = nn.Linear(hidden, hidden)
        self.user = nn.Linear(hidden, hidden) if with_user else None
        self.out = nn.Linear(hidden, 1)

    def forward(self, x: torch.Tensor, dropout: Dropout, user: torch.Tensor | None = None) -> torch.Tensor:
        h = self.item(dropout(x))                                  # B S H
        if self.user is not None:
            h = h + self.user(dropout(user)).unsqueeze(1)
        weights = torch.sigmoid(self.out(torch.tanh(h))).squeeze(-1).softmax(-1)   # B S
        return torch.einsum("bs,bsh->bh", weights, x)


class MARank(SequentialModel):
    def __init__(self, options, info: DataInfo):
        super().__init__()
        hidden = options.hidden_units
        self.n_classes = info.n_items + 1
        self.user_latent = nn.Embedding(info.n_users + 1, hidden)
        self.item_latent = nn.Embedding(info.n_items + 1, hidden)
        self.item_context = nn.Embedding(info.n_items + 1, hidden)
        self.user_res = nn.ModuleList(nn.Linear(hidden, hidden) for _ in range(options.marank_num_att_layers))
        self.item_res = nn.ModuleList(nn.Linear(hidden, hidden) for _ in range(options.marank_num_att_layers))
        self.final_res = nn.ModuleList(nn.Linear(hidden, hidden) for _ in range(options.marank_num_linear_layers))
        self.context_attention = Attention(hidden, with_user=True)
        self.relation_attention = nn.ModuleList(Attention(hidden, with_user=True)
                                                for _ in range(options.marank_num_att_layers))
        self.hidden_attention = Attention(hidden, with_user=False)
        self.dropout = Dropout(options.dropout)
        init_weights(self, options.model_init_range)

    def residual_stack(self, x: torch.Tensor, layers: nn.ModuleList) -> list:
        """out = ReLU(Linear(drop(out)) + out) per layer; every layer's output."""
        outputs = []
        for layer in layers:
            x = F.relu(layer(self.dropout(x)) + x)
            outputs.append(x)
        return outputs

    def encode(self, batch: SequenceBatch) -> tuple[torch.Tensor, torch.Tensor]:
        """(final [B, H], user latent [B, H])."""
        user = self.user_latent(batch.users + 1)  # rows 0.. -> dense ids 1.. (0 unused)
        context = self.item_context(batch.tokens)                                # B M H
        attended = self.context_attention(context, self.dropout, user) + context[:, -1]
        user_layers = self.residual_stack(user, self.user_res)
        item_layers = self.residual_stack(context, self.item_res)
        hidden = [att(i, self.dropout, u) for att, u, i in zip(self.relation_attention, user_layers, item_layers)]
        g = self.hidden_attention(torch.stack(hidden + [attended], 1), self.dropout)
        final = self.residual_stack(g, self.final_res)[-1] + g if len(self.final_res) else g
        return final, user

    def forward(self, batch: SequenceBatch) -> torch.Tensor:
        final, user = self.encode(batch)
        pos, neg = batch.labels.reshape(-1), batch.negatives.reshape(-1)
        short = (final * (self.item_context(pos) - self.item_context(neg))).sum(-1)
        long = (user * (self.item_latent(pos) - self.item_latent(neg))).sum(-1)
        return -F.logsigmoid((short + long).float()).mean()

    def scores(self, batch: SequenceBatch) -> torch.Tensor:
        final, user = self.encode(batch)
        return final @ self.item_context.weight.t() + user @ self.item_latent.weight.t()

    def direct_candidate_scores(self, batch: SequenceBatch) -> torch.Tensor:
        final, user = self.encode(batch)
        c = batch.candidates
        return (torch.einsum("bh,bch->bc", final, self.item_context(c))
                + torch.einsum("bh,bch->bc", user, self.item_latent(c)))
