"""MEANTIME (docs/original.md §4.6): mixed attention whose heads each use one temporal kernel.

Absolute kernels (``absolute_kernel_types``, '-'-separated): ``p`` positional embedding, ``d``
day embedding, ``c`` one constant vector; each gives [B, T, H]. Head l (absolute):
score = (Q_l + Pq_l(a_l)) . (K_l + Pk_l(a_l)).

Relative kernels (``relative_kernel_types``) of dt_ij = (t_i - t_j) / time_unit_divide, with
F = ``freq``: ``s`` [sin(dt w), cos(dt w)], w_k = F^(-2k/H); ``e`` exp(-|dt| w), w_k = F^(-k/H);
``l`` log(1 + |dt| w). Head r (relative): score_ij = Q_i . K_j + (Q_i + b_r) . R_ij with
R_ij = Linear_r(drop(kernel_ij)) (H -> d_k).

**Heads** (a fix): the original ignores ``num_heads`` and gives each kernel one head (La + Lr heads,
d_k = hidden / (La + Lr)). Here ``num_heads`` is the number of heads per kernel: La + Lr kernels
give num_heads * (La + Lr) heads with d_k = hidden / that; head g of kernel l has its own query and
key projections of the absolute kernel (or its own projection of the relative kernel and bias b),
and all heads of a relative kernel share one dropped kernel tensor. ``num_heads: 1`` (set in
``train_meantime``) is exactly the original's architecture.

Blocks: Sublayer(mixed attention), Sublayer(FFN 4H, GELU, middle dropout), then a dropout on the
block output; no final LayerNorm. The token embedding and every kernel go through dropout; no
embedding LayerNorm. Head, loss and evaluation as BERT4Rec.

Memory: the original materialises every relative kernel as [B, T, T, H] and its projection as
[B, T, T, d_k] (gigabytes at B=256, T=200). Here the projection is moved onto the query side:
(Q_i + b) . (W k_ij + c) = (W^T (Q_i + b)) . k_ij + (Q_i + b) . c, which is the same number;
the dropped kernels are evaluated a few examples at a time and rebuilt in the backward pass
(``relative.KernelTerm``), with masks that repeat exactly, so all blocks see the same dropped
kernels, as in the original.
"""
from __future__ import annotations

import math

import torch
from torch import nn

from esapr.data.batches.types import SequenceBatch
from esapr.models import DataInfo
from esapr.models.attention import (FeedForward, PositionalEmbedding, Sublayer, attention_bias, attention_probs,
                                    init_weights, last_rows, merge_heads, split_heads)
from esapr.models.bert4rec import MaskedItemModel
from esapr.models.dropout import Dropout
from esapr.models.relative import KernelTerm, PairDropout
from esapr.errors import UserError
from esapr.families.meantime import kernel_kinds

# 300 years of days: more means timestamps in another unit, or outliers
MAX_DAYS = 300 * 366


class RelativeKernels:
    """The relative kernels of one forward pass, evaluated per chunk of examples, with one
    dropout stream per kernel kept for all blocks.

    The sinusoid uses sin(w(t_i - t_j)) = sin(w t_i) cos(w t_j) - cos(w t_i) sin(w t_j) (and
    the cosine likewise) from per-slot phases computed once in float64: four multiply-adds per
    entry instead of two transcendental functions of arguments up to ~1e8 rad, and exact values
    where the original's float32 product dt * w has lost the phase of the fast frequencies
    (dt of months, in seconds). ``e`` and ``l`` are computed as the original, in float32."""

    def __init__(self, kinds: list[str], times: torch.Tensor, hidden: int, freq: float, unit: float, p: float,
                 training: bool):
        self.kinds = kinds
        self.times = times
        self.unit = unit
        self.drop = PairDropout(p, training, streams=len(kinds))
        device = times.device
        self.freqs = 1.0 / torch.pow(float(freq), torch.arange(0, hidden, 1.0, device=device) / hidden)
        if "s" in kinds:
            half = 1.0 / torch.pow(float(freq), torch.arange(0, hidden, 2.0, device=device, dtype=torch.float64) / hidden)
            # relative to each row's last (always real) slot: only differences matter
            phase = ((times - times[:, -1:]).double() / unit).unsqueeze(-1) * half      # B T H/2
            self.sin, self.cos = torch.sin(phase).float(), torch.cos(phase).float()

    def kernel(self, index: int, start: int, stop: int, rows: int) -> torch.Tensor:
        """Kernel ``index`` (before dropout) between the last ``rows`` slots (queries) and all
        slots (keys) of examples start:stop: [b, rows, T, H], float32."""
        kind = self.kinds[index]
        if kind == "s":
            sin_q, cos_q = self.sin[start:stop, -rows:].unsqueeze(2), self.cos[start:stop, -rows:].unsqueeze(2)
            sin_k, cos_k = self.sin[start:stop].unsqueeze(1), self.cos[start:stop].unsqueeze(1)
            h2 = sin_q.size(-1)
            out = sin_q.new_empty(stop - start, rows, sin_k.size(2), 2 * h2)
            torch.mul(sin_q, cos_k, out=out[..., :h2]).addcmul_(cos_q, sin_k, value=-1.0)
            torch.mul(cos_q, cos_k, out=out[..., h2:]).addcmul_(sin_q, sin_k)
            return out
        times = self.times[start:stop]
        dt = (times[:, -rows:].unsqueeze(2) - times.unsqueeze(1)).float().abs_()
        if self.unit != 1:
            dt = dt / self.unit
        if kind == "e":
            return torch.exp_(dt.unsqueeze(-1) * -self.freqs)
        return torch.log1p_(dt.unsqueeze(-1) * self.freqs)


class MixedAttention(nn.Module):
    def __init__(self, hidden: int, n_absolute: int, n_relative: int, dropout: float, heads_per_kernel: int = 1):
        super().__init__()
        self.per_kernel = heads_per_kernel
        heads = heads_per_kernel * (n_absolute + n_relative)
        self.La, self.Lr, self.heads = n_absolute, n_relative, heads
        self.d_k = hidden // heads
        self.scale = 1.0 / math.sqrt(self.d_k)
        self.query = nn.Linear(hidden, hidden)
        self.key = nn.Linear(hidden, hidden)
        self.value = nn.Linear(hidden, hidden)
        width = heads_per_kernel * self.d_k  # one kernel's heads
        self.abs_query = nn.ModuleList(nn.Linear(hidden, width) for _ in range(n_absolute))
        self.abs_key = nn.ModuleList(nn.Linear(hidden, width) for _ in range(n_absolute))
        self.rel_key = nn.ModuleList(nn.Linear(hidden, width) for _ in range(n_relative))
        self.rel_bias = nn.Parameter(torch.zeros(n_relative * heads_per_kernel, self.d_k))
        self.output = nn.Linear(hidden, hidden)
        self.dropout = Dropout(dropout)

    def forward(self, query: torch.Tensor, key_value: torch.Tensor, mask: torch.Tensor, absolute: list,
                relative: RelativeKernels | None) -> torch.Tensor:
        rows = query.size(1)
        q = split_heads(self.query(query), self.heads)          # B h Tq d
        k = split_heads(self.key(key_value), self.heads)        # B h T d
        v = split_heads(self.value(key_value), self.heads)
        parts = []
        n_abs, per = self.La * self.per_kernel, self.per_kernel   # heads of the absolute kernels come first
        if self.La:
            pq = torch.cat([split_heads(lin(a[:, -rows:]), per) for lin, a in zip(self.abs_query, absolute)], 1)
            pk = torch.cat([split_heads(lin(a), per) for lin, a in zip(self.abs_key, absolute)], 1)
            parts.append(torch.matmul(q[:, :n_abs] + pq, (k[:, :n_abs] + pk).transpose(-2, -1)))
        if self.Lr:
            b = q.size(0)
            qr = q[:, n_abs:] + self.rel_bias.unsqueeze(1).to(q.dtype)            # B Lr*per Tq d
            content = torch.matmul(q[:, n_abs:], k[:, n_abs:].transpose(-2, -1))
            qr = qr.view(b, self.Lr, per, rows, self.d_k)
            weight = torch.stack([lin.weight.view(per, self.d_k, -1) for lin in self.rel_key])  # Lr per d H
            bias = torch.stack([lin.bias.view(per, self.d_k) for lin in self.rel_key])          # Lr per d
            u = torch.einsum("brkid,rkdh->brkih", qr, weight.to(qr.dtype))        # B Lr per Tq H
            constant = torch.einsum("brkid,rkd->brki", qr, bias.to(qr.dtype)).unsqueeze(-1)
            kernel_scores = KernelTerm.apply(u, relative, relative.drop)
            relative_scores = constant + kernel_scores.to(content.dtype)           # B Lr per Tq T
            parts.append(content + relative_scores.reshape(b, self.Lr * per, rows, -1))
        scores = torch.cat(parts, 1) if len(parts) > 1 else parts[0]
        probs = attention_probs(scores * self.scale, mask, self.dropout)
        return self.output(merge_heads(torch.matmul(probs, v)))


class MeantimeBlock(nn.Module):
    def __init__(self, hidden: int, n_absolute: int, n_relative: int, dropout: float, ln_type: str,
                 heads_per_kernel: int):
        super().__init__()
        self.attention = MixedAttention(hidden, n_absolute, n_relative, dropout, heads_per_kernel)
        self.feed_forward = FeedForward(hidden, 4 * hidden, dropout, "gelu", middle_dropout=True)
        self.attention_sublayer = Sublayer(hidden, dropout, ln_type)
        self.feed_forward_sublayer = Sublayer(hidden, dropout, ln_type)
        self.dropout = Dropout(dropout)

    def forward(self, x, mask, absolute, relative, rows: int | None = None) -> torch.Tensor:
        if rows is None:
            x = self.attention_sublayer(x, lambda h: self.attention(h, h, mask, absolute, relative))
        else:
            x = self.attention_sublayer(
                x, lambda h: self.attention(h[:, -rows:], h, last_rows(mask, rows), absolute, relative),
                residual=x[:, -rows:])
        return self.dropout(self.feed_forward_sublayer(x, self.feed_forward))


class MEANTIME(MaskedItemModel):
    """MEANTIME with ``num_heads`` attention heads per kernel (see the module docstring)."""

    def __init__(self, options, info: DataInfo):
        super().__init__(options, info)
        hidden = self.hidden
        self.absolute_kinds = kernel_kinds(options.absolute_kernel_types)
        self.relative_kinds = kernel_kinds(options.relative_kernel_types)
        self.freq = options.freq
        self.time_unit = options.time_unit_divide
        self.absolute = nn.ModuleDict()
        for kind in self.absolute_kinds:
            if kind == "p":
                self.absolute[kind] = PositionalEmbedding(options.max_len, hidden)
            elif kind == "d":
                if info.n_days > MAX_DAYS:
                    raise UserError(f"the timestamps span {info.n_days:,} days, and MEANTIME's day kernel (d) has a "
                                    f"row per day: check the timestamp column (--timestamp_unit) or drop the kernel "
                                    f"(--absolute_kernel_types p)")
                self.absolute[kind] = nn.Embedding(info.n_days, hidden)
            else:
                self.absolute[kind] = nn.Embedding(1, hidden)
        self.dropout = Dropout(options.dropout)
        self.blocks = nn.ModuleList(
            MeantimeBlock(hidden, len(self.absolute_kinds), len(self.relative_kinds), options.dropout,
                          options.residual_ln_type, options.num_heads)
            for _ in range(options.num_blocks))
        self.head = self.make_head(options)
        init_weights(self, options.model_init_range)
        for block in self.blocks:
            nn.init.normal_(block.attention.rel_bias, 0.0, options.model_init_range)

    def _absolute(self, batch: SequenceBatch, b: int, length: int) -> list:
        kernels = []
        for kind in self.absolute_kinds:
            if kind == "p":
                a = self.absolute[kind](length).expand(b, -1, -1)
            elif kind == "d":
                a = self.absolute[kind](batch.days)
            else:
                a = self.absolute[kind].weight.expand(b, length, -1)
            kernels.append(self.dropout(a))
        return kernels

    def encode(self, batch: SequenceBatch, last_only: bool = False) -> torch.Tensor:
        tokens = batch.tokens
        b, length = tokens.shape
        x = self.dropout(self.token(tokens))
        absolute = self._absolute(batch, b, length)
        relative = None
        if self.relative_kinds:
            relative = RelativeKernels(self.relative_kinds, batch.timestamps, x.size(-1), self.freq,
                                       self.time_unit, self.dropout.p, self.training)
        mask = attention_bias(tokens)
        for i, block in enumerate(self.blocks):
            rows = 1 if last_only and i == len(self.blocks) - 1 else None
            x = block(x, mask, absolute, relative, rows)
        return x[:, -1] if last_only else x
