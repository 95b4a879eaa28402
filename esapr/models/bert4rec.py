"""BERT4Rec (docs/original.md §4.3): token + positional embedding, LayerNorm, dropout, bidirectional
Transformer blocks (output linear, FFN 4H with GELU and no middle dropout), a tied dot-product
(or linear) head; cross-entropy over the masked positions (§5.2).

``MaskedItemModel`` is what BERT4Rec and MEANTIME share: the head, the masked-item loss and
scoring from the last (mask) slot.
"""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from esapr.data.batches.types import SequenceBatch
from esapr.models import DataInfo, SequentialModel
from esapr.models.attention import (FeedForward, MultiHeadAttention, PositionalEmbedding, Sublayer, attention_bias,
                                    init_weights, last_rows)
from esapr.models.dropout import Dropout
from esapr.models.length_groups import grouped_loss, per_group
from esapr.models.positions import labelled_rows


class DotHead(nn.Module):
    """BERT's dot-product head: GELU(Linear(x)) [-> LayerNorm], then dot products with the token
    embedding rows 0..n_items (tied) plus a learned per-item bias (initialised to 0)."""

    def __init__(self, hidden: int, embedding: nn.Embedding, n_classes: int, use_ln: bool):
        super().__init__()
        self.embedding = embedding
        self.n_classes = n_classes
        self.transform = nn.Sequential(nn.Linear(hidden, hidden), nn.GELU(approximate="tanh"),
                                       *([nn.LayerNorm(hidden)] if use_ln else []))
        self.bias = nn.Parameter(torch.zeros(n_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits of every class 0..n_items: [M, n_items + 1]."""
        return torch.addmm(self.bias.to(x.dtype), self.transform(x), self.embedding.weight[:self.n_classes].t())

    def candidates(self, x: torch.Tensor, candidates: torch.Tensor) -> torch.Tensor:
        """x [B, H], candidates [B, C] -> [B, C]."""
        h = self.transform(x)
        return torch.einsum("bh,bch->bc", h, self.embedding(candidates)) + self.bias[candidates]


class LinearHead(nn.Module):
    """Linear(H -> H) -> GELU [-> LayerNorm] -> Linear(H -> n_items + 1)."""

    def __init__(self, hidden: int, n_classes: int, use_ln: bool):
        super().__init__()
        self.out = nn.Sequential(nn.Linear(hidden, hidden), nn.GELU(approximate="tanh"),
                                 *([nn.LayerNorm(hidden)] if use_ln else []), nn.Linear(hidden, n_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(x)

    def candidates(self, x: torch.Tensor, candidates: torch.Tensor) -> torch.Tensor:
        return self(x).gather(1, candidates)


def masked_positions_loss(hidden: torch.Tensor, labels: torch.Tensor, logits_of: Callable,
                          n_classes: int) -> tuple[torch.Tensor, int | torch.Tensor]:
    """§5.2 BERT/MEANTIME: (sum, count) of the cross-entropy over the positions with label > 0,
    classes 0..n_items. Without any such position the sum is 0 (with a gradient), not NaN."""
    flat = labels.reshape(-1)
    hidden = hidden.reshape(-1, hidden.size(-1))
    rows = labelled_rows(labels, n_classes)
    if rows is None:           # every position; label 0 (unlabelled) is ignored
        total = F.cross_entropy(logits_of(hidden).float(), flat, ignore_index=0, reduction="sum")
        return total, (flat > 0).sum()
    logits = logits_of(hidden.index_select(0, rows)).float()
    total = F.cross_entropy(logits, flat.index_select(0, rows), reduction="sum")
    return total, rows.numel()


class MaskedItemModel(SequentialModel):
    """A token table, an ``encode`` of the window and a head over the items; trained to recover
    masked items, scored from the last slot (the mask token at evaluation)."""

    def __init__(self, options, info: DataInfo):
        super().__init__()
        self.hidden = options.hidden_units
        self.n_classes = info.n_items + 1              # pad + items; the mask token is not a class
        self.token = nn.Embedding(info.n_items + 2, self.hidden, padding_idx=0)

    def make_head(self, options) -> nn.Module:
        if options.headtype == "linear":
            return LinearHead(self.hidden, self.n_classes, options.head_use_ln)
        return DotHead(self.hidden, self.token, self.n_classes, options.head_use_ln)

    def encode(self, batch: SequenceBatch, last_only: bool = False) -> torch.Tensor:
        """Hidden states [B, T, H]; ``last_only``: only the last slot [B, H]."""
        raise NotImplementedError

    def forward(self, batch: SequenceBatch) -> torch.Tensor:
        return grouped_loss(batch, self.hidden, lambda b: masked_positions_loss(self.encode(b), b.labels, self.head,
                                                                                self.n_classes))

    def scores(self, batch: SequenceBatch) -> torch.Tensor:
        return per_group(batch, self.hidden, lambda b: self.head(self.encode(b, last_only=True)))

    def direct_candidate_scores(self, batch: SequenceBatch) -> torch.Tensor:
        return per_group(batch, self.hidden, lambda b: self.head.candidates(self.encode(b, last_only=True),
                                                                            b.candidates))


class TransformerBlock(nn.Module):
    """Sublayer(attention) then Sublayer(FFN) (§4.2), pre- or post-LN."""

    def __init__(self, hidden: int, heads: int, dropout: float, ln_type: str):
        super().__init__()
        self.attention = MultiHeadAttention(hidden, heads, dropout, output_linear=True)
        self.feed_forward = FeedForward(hidden, 4 * hidden, dropout, "gelu", middle_dropout=False)
        self.attention_sublayer = Sublayer(hidden, dropout, ln_type)
        self.feed_forward_sublayer = Sublayer(hidden, dropout, ln_type)

    def forward(self, x: torch.Tensor, mask: torch.Tensor, rows: int | None = None) -> torch.Tensor:
        """``rows``: compute only the last ``rows`` positions (all keys are still used)."""
        if rows is None:
            x = self.attention_sublayer(x, lambda h: self.attention(h, h, mask))
        else:
            x = self.attention_sublayer(x, lambda h: self.attention(h[:, -rows:], h, last_rows(mask, rows)),
                                        residual=x[:, -rows:])
        return self.feed_forward_sublayer(x, self.feed_forward)


class BERT4Rec(MaskedItemModel):
    def __init__(self, options, info: DataInfo):
        super().__init__(options, info)
        hidden = self.hidden
        self.position = PositionalEmbedding(options.max_len, hidden)
        self.norm = nn.LayerNorm(hidden)
        self.dropout = Dropout(options.dropout)
        self.blocks = nn.ModuleList(TransformerBlock(hidden, options.num_heads, options.dropout, options.residual_ln_type)
                                    for _ in range(options.num_blocks))
        self.head = self.make_head(options)
        init_weights(self, options.model_init_range)

    def encode(self, batch: SequenceBatch, last_only: bool = False) -> torch.Tensor:
        """The last block computes the last row alone when ``last_only``."""
        tokens = batch.tokens
        x = self.dropout(self.norm(self.token(tokens) + self.position(tokens.size(1))))
        mask = attention_bias(tokens)
        for i, block in enumerate(self.blocks):
            x = block(x, mask, 1 if last_only and i == len(self.blocks) - 1 else None)
        return x[:, -1] if last_only else x
