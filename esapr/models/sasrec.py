"""SASRec as the original's "exact" SAS body (docs/original.md §4.4).

Embedding: token + positional, dropout (no sqrt(H) scale, no re-masking of padding between
blocks, as the original). Block: q = LN1(x); a = MHA(query=q, key=x, value=x) without output
linear; x = q + a; z = LN2(x); out = z + Dropout(FFN(z)) with an H -> H -> H ReLU FFN with middle
dropout. A final LayerNorm. Causal + key-padding attention. Loss (``--loss``): binary
cross-entropy of the next item against one sampled negative per position (bce, §5.2, the
original), or softmax cross-entropy against every item (ce) or against sampled items
(sampled_ce). ``residual_ln_type``, ``headtype`` and ``head_use_ln`` do not apply.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from esapr.data.batches.types import SequenceBatch
from esapr.models import DataInfo, SequentialModel
from esapr.models.attention import (FeedForward, MultiHeadAttention, PositionalEmbedding, attention_bias, init_weights,
                                    last_rows)
from esapr.models.dropout import Dropout
from esapr.models.length_groups import grouped_loss, per_group
from esapr.models.positions import labelled_rows


def next_item_bce_loss(hidden: torch.Tensor, labels: torch.Tensor, negatives: torch.Tensor,
                       embedding: nn.Embedding) -> tuple[torch.Tensor, int | torch.Tensor]:
    """§5.2 SAS/TiSAS: (sum, count) over the positions with label > 0 of
    -log(sigmoid(h.e_pos) + 1e-24) - log(1 - sigmoid(h.e_neg) + 1e-24)."""
    flat, h, negatives = labels.reshape(-1), hidden.reshape(-1, hidden.size(-1)), negatives.reshape(-1)
    rows = labelled_rows(labels, hidden.size(-1))
    if rows is not None:
        flat, h, negatives = flat.index_select(0, rows), h.index_select(0, rows), negatives.index_select(0, rows)
    h = h.float()
    pos = embedding(flat).float()
    neg = embedding(negatives).float()
    p_pos = torch.sigmoid((h * pos).sum(-1))
    p_neg = torch.sigmoid((h * neg).sum(-1))
    terms = torch.log(p_pos + 1e-24) + torch.log(1 - p_neg + 1e-24)
    if rows is None:           # every position; the unlabelled ones weigh 0
        labelled = flat > 0
        return -(terms * labelled).sum(), labelled.sum()
    return -terms.sum(), rows.numel()


def next_item_ce_loss(hidden: torch.Tensor, labels: torch.Tensor, table: torch.Tensor,
                      sampled: torch.Tensor | None = None) -> tuple[torch.Tensor, int | torch.Tensor]:
    """(sum, count) over the positions with label > 0 of the softmax cross-entropy of the label,
    the logits being hidden . table[item]. ``sampled`` None: over every item 1..n_items (``table``
    rows 1..; row 0, the padding, is no class). Else over the label (index 0) and the ``sampled``
    items [K], the same for every position; a sampled item equal to the label is left out of
    that position's softmax. Uniform sampling needs no logQ correction: it would shift every
    sampled logit by the same constant, and the label's by that constant too (Jean et al.)."""
    flat, h = labels.reshape(-1), hidden.reshape(-1, hidden.size(-1))
    rows = labelled_rows(labels, table.size(0) if sampled is None else sampled.numel() + 1)
    if rows is not None:
        flat, h = flat.index_select(0, rows), h.index_select(0, rows)
    h, table = h.float(), table.float()
    if sampled is None:
        logits, target = h @ table[1:].t(), (flat - 1).clamp(min=0)
    else:
        negative = (h @ table[sampled].t()).masked_fill(sampled == flat.unsqueeze(1), float("-inf"))
        logits = torch.cat([(h * table[flat]).sum(-1, keepdim=True), negative], dim=1)
        target = torch.zeros_like(flat)
    terms = F.cross_entropy(logits, target, reduction="none")
    if rows is None:           # every position; the unlabelled ones weigh 0
        labelled = flat > 0
        return (terms * labelled).sum(), labelled.sum()
    return terms.sum(), rows.numel()


class SasBlock(nn.Module):
    """The exact-SAS block around any attention ``attend(query_rows, keys_values, mask, **kw)``."""

    def __init__(self, attention: nn.Module, hidden: int, dropout: float):
        super().__init__()
        self.attention = attention
        self.norm1 = nn.LayerNorm(hidden)
        self.norm2 = nn.LayerNorm(hidden)
        self.feed_forward = FeedForward(hidden, hidden, dropout, "relu", middle_dropout=True)
        self.dropout = Dropout(dropout)

    def forward(self, x: torch.Tensor, mask: torch.Tensor, rows: int | None = None, **kw) -> torch.Tensor:
        q = self.norm1(x if rows is None else x[:, -rows:])
        x = q + self.attention(q, x, mask if rows is None else last_rows(mask, rows), **kw)
        z = self.norm2(x)
        return z + self.dropout(self.feed_forward(z))


class SasModelBase(SequentialModel):
    """Shared by SASRec and TiSASRec: the token table, the loss and scoring against the token
    embedding (no head, no bias)."""

    def __init__(self, options, info: DataInfo):
        super().__init__()
        self.hidden = options.hidden_units
        self.n_classes = info.n_items + 1
        self.token = nn.Embedding(info.n_items + 2, self.hidden, padding_idx=0)
        self.loss = options.loss
        self.num_negatives = options.num_negatives

    def encode(self, batch: SequenceBatch, last_only: bool = False) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, batch: SequenceBatch) -> torch.Tensor:
        if self.loss == "bce":
            return grouped_loss(batch, self.hidden, lambda b: next_item_bce_loss(self.encode(b), b.labels,
                                                                                b.negatives, self.token))
        # drawn from the global generator, which the trainer seeds per epoch (as dropout)
        sampled = (torch.randint(1, self.n_classes, (self.num_negatives,), device=batch.tokens.device)
                   if self.loss == "sampled_ce" else None)
        table = self.token.weight[:self.n_classes]
        return grouped_loss(batch, self.hidden, lambda b: next_item_ce_loss(self.encode(b), b.labels, table, sampled))

    def scores(self, batch: SequenceBatch) -> torch.Tensor:
        return per_group(batch, self.hidden,
                         lambda b: self.encode(b, last_only=True) @ self.token.weight[:self.n_classes].t())

    def direct_candidate_scores(self, batch: SequenceBatch) -> torch.Tensor:
        return per_group(batch, self.hidden, lambda b: torch.einsum("bh,bch->bc", self.encode(b, last_only=True),
                                                                    self.token(b.candidates)))


class SASRec(SasModelBase):
    def __init__(self, options, info: DataInfo):
        super().__init__(options, info)
        hidden = self.hidden
        self.position = PositionalEmbedding(options.max_len, hidden)
        self.dropout = Dropout(options.dropout)
        self.blocks = nn.ModuleList(
            SasBlock(MultiHeadAttention(hidden, options.num_heads, options.dropout, output_linear=False),
                     hidden, options.dropout)
            for _ in range(options.num_blocks))
        self.norm = nn.LayerNorm(hidden)
        init_weights(self, options.model_init_range)

    def encode(self, batch: SequenceBatch, last_only: bool = False) -> torch.Tensor:
        tokens = batch.tokens
        x = self.dropout(self.token(tokens) + self.position(tokens.size(1)))
        mask = attention_bias(tokens, causal=True)
        for i, block in enumerate(self.blocks):
            x = block(x, mask, 1 if last_only and i == len(self.blocks) - 1 else None)
        x = self.norm(x)
        return x[:, -1] if last_only else x
