"""BERT4Rec (reference.md §4.3): token + positional embedding, LayerNorm, dropout, bidirectional
Transformer blocks (output linear, FFN 4H with GELU and no middle dropout), a tied dot-product
(or linear) head; cross-entropy over the masked positions (§5.2)."""
from __future__ import annotations

import torch
from torch import nn

from esapr.data.batches.bert import BertBatches
from esapr.models import DataInfo, SequentialModel
from esapr.models.layers import (Dropout, FeedForward, MultiHeadAttention, PositionalEmbedding, Sublayer, attention_bias,
                                 grouped_loss, init_weights, last_rows, make_head, masked_positions_loss, per_group)


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


class BERT4Rec(SequentialModel):
    batch_builder = BertBatches

    @staticmethod
    def batch_inputs(config) -> tuple:
        return ()

    def __init__(self, config, info: DataInfo):
        super().__init__()
        hidden = self.hidden = config.hidden_units
        self.n_classes = info.n_items + 1              # pad + items; the mask token is not a class
        self.token = nn.Embedding(info.n_items + 2, hidden, padding_idx=0)
        self.position = PositionalEmbedding(config.max_len, hidden)
        self.norm = nn.LayerNorm(hidden)
        self.dropout = Dropout(config.dropout)
        self.blocks = nn.ModuleList(TransformerBlock(hidden, config.num_heads, config.dropout, config.residual_ln_type)
                                    for _ in range(config.num_blocks))
        self.head = make_head(config.headtype, hidden, self.token, self.n_classes, config.head_use_ln)
        init_weights(self, config.model_init_range)

    def encode(self, tokens: torch.Tensor, last_only: bool = False) -> torch.Tensor:
        """Hidden states [B, T, H]; ``last_only``: only the last slot [B, H] (the last block then
        computes that row alone)."""
        x = self.dropout(self.norm(self.token(tokens) + self.position(tokens.size(1))))
        mask = attention_bias(tokens)
        for i, block in enumerate(self.blocks):
            x = block(x, mask, 1 if last_only and i == len(self.blocks) - 1 else None)
        return x[:, -1] if last_only else x

    def loss(self, batch: dict) -> torch.Tensor:
        return grouped_loss(batch, self.hidden, lambda b: masked_positions_loss(self.encode(b["tokens"]), b["labels"],
                                                                               self.head))

    def scores(self, batch: dict) -> torch.Tensor:
        return per_group(batch, self.hidden, lambda b: self.head(self.encode(b["tokens"], last_only=True)))

    def candidate_scores(self, batch: dict, scores: torch.Tensor | None = None) -> torch.Tensor:
        if scores is not None:
            return scores.gather(1, batch["candidates"])
        return per_group(batch, self.hidden, lambda b: self.head.candidates(self.encode(b["tokens"], last_only=True),
                                                                            b["candidates"]))
