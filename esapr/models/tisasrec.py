"""TiSASRec (docs/original.md §4.5): SASRec whose attention also sees absolute positions (separate
key and value tables) and relative time intervals |ts'_i - ts'_j| clipped at
``tisas_max_time_intervals`` (separate key and value tables), the intervals computed on the
device from the [B, T] rescaled timestamps (§3.4).

score_ij = (q_i.k_j + q_i.P^K_j + q_i.R^K_ij) / sqrt(d_k); out_i = sum_j p_ij (v_j + P^V_j + R^V_ij).

Every embedding has its own dropout, the [B, T, T, H] relative embeddings included; those are
built a few examples at a time and never for the whole batch (``relative.IntervalTerm``).
"""
from __future__ import annotations

import math

import torch
from torch import nn

from esapr.data.batches.types import SequenceBatch
from esapr.models import DataInfo
from esapr.models.attention import (PositionalEmbedding, attention_bias, attention_probs, init_weights, merge_heads,
                                    split_heads)
from esapr.models.dropout import Dropout
from esapr.models.relative import KEYS, VALUES, IntervalTerm, PairDropout
from esapr.models.sasrec import SasBlock, SasModelBase


class TimeIntervals:
    """The relative-time inputs of one forward pass (timestamps, tables, the dropout seeds)."""

    def __init__(self, times: torch.Tensor, key_table: nn.Embedding, value_table: nn.Embedding, clip: int,
                 p: float, training: bool):
        self.times = times
        self.key_table = key_table.weight
        self.value_table = value_table.weight
        self.clip = clip
        self.drop = PairDropout(p, training, streams=2)


class TimeIntervalAttention(nn.Module):
    def __init__(self, hidden: int, heads: int, dropout: float):
        super().__init__()
        if hidden % heads:
            raise ValueError(f"hidden_units ({hidden}) must be divisible by num_heads ({heads})")
        self.heads = heads
        self.d_k = hidden // heads
        self.scale = 1.0 / math.sqrt(self.d_k)
        self.query = nn.Linear(hidden, hidden)
        self.key = nn.Linear(hidden, hidden)
        self.value = nn.Linear(hidden, hidden)
        self.dropout = Dropout(dropout)

    def _columns(self, table: torch.Tensor) -> list:
        return [table[:, h * self.d_k:(h + 1) * self.d_k].contiguous() for h in range(self.heads)]

    def forward(self, query: torch.Tensor, key_value: torch.Tensor, mask: torch.Tensor, pos_key: torch.Tensor,
                pos_value: torch.Tensor, rel: TimeIntervals) -> torch.Tensor:
        rows = query.size(1)
        q = split_heads(self.query(query) * self.scale, self.heads)          # B n Tq d, scaled
        k = split_heads(self.key(key_value) + pos_key, self.heads)           # B n T d
        v = split_heads(self.value(key_value) + pos_value, self.heads)
        times_q = rel.times[:, -rows:]
        rel_scores = IntervalTerm.apply(q, times_q, rel.times, rel.clip, rel.drop, KEYS,
                                        *self._columns(rel.key_table))
        scores = torch.matmul(q, k.transpose(-2, -1)) + rel_scores.to(q.dtype)
        probs = attention_probs(scores, mask, self.dropout)
        rel_values = IntervalTerm.apply(probs, times_q, rel.times, rel.clip, rel.drop, VALUES,
                                        *self._columns(rel.value_table))
        return merge_heads(torch.matmul(probs, v) + rel_values.to(probs.dtype))


class TiSASRec(SasModelBase):
    def __init__(self, options, info: DataInfo):
        super().__init__(options, info)
        hidden = self.hidden
        self.clip = options.tisas_max_time_intervals
        self.position_key = PositionalEmbedding(options.max_len, hidden)
        self.position_value = PositionalEmbedding(options.max_len, hidden)
        self.time_key = nn.Embedding(self.clip + 1, hidden)
        self.time_value = nn.Embedding(self.clip + 1, hidden)
        self.dropout = Dropout(options.dropout)
        self.blocks = nn.ModuleList(
            SasBlock(TimeIntervalAttention(hidden, options.num_heads, options.dropout), hidden, options.dropout)
            for _ in range(options.num_blocks))
        self.norm = nn.LayerNorm(hidden)
        init_weights(self, options.model_init_range)

    def encode(self, batch: SequenceBatch, last_only: bool = False) -> torch.Tensor:
        tokens = batch.tokens
        b, length = tokens.shape
        x = self.dropout(self.token(tokens))
        pos_key = self.dropout(self.position_key(length).expand(b, -1, -1))
        pos_value = self.dropout(self.position_value(length).expand(b, -1, -1))
        rel = TimeIntervals(batch.timestamps, self.time_key, self.time_value, self.clip, self.dropout.p,
                            self.training)
        mask = attention_bias(tokens, causal=True)
        for i, block in enumerate(self.blocks):
            rows = 1 if last_only and i == len(self.blocks) - 1 else None
            x = block(x, mask, rows, pos_key=pos_key, pos_value=pos_value, rel=rel)
        x = self.norm(x)
        return x[:, -1] if last_only else x
