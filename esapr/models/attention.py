"""Transformer parts shared by BERT4Rec, SASRec, TiSASRec and MEANTIME (docs/original.md §4.2).

Conventions: sequences are left-padded with item 0, so window slot j of a length-T batch is row
``max_len - T + j`` of a positional table and the most recent item sits at slot T-1. Attention
masks are additive (0 or -1e9), shaped to broadcast to [B, heads, T, T].
"""
from __future__ import annotations

import math
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from esapr.models.dropout import Dropout, widened

# the original fills masked scores with -1e9
_MASKED = -1e9


def init_weights(module: nn.Module, std: float) -> None:
    """§4: Linear and Embedding weights ~ N(0, std) (padding rows included, as the original),
    Linear biases 0, LayerNorm weight 1 and bias 0. Uses the global torch RNG."""
    def apply(m: nn.Module) -> None:
        if isinstance(m, (nn.Linear, nn.Embedding)):
            nn.init.normal_(m.weight, 0.0, std)
        elif isinstance(m, nn.LayerNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        if isinstance(m, nn.Linear) and m.bias is not None:
            nn.init.zeros_(m.bias)
    module.apply(apply)


def attention_bias(tokens: torch.Tensor, causal: bool = False) -> torch.Tensor:
    """Additive attention mask: 0 where query i may attend key j (key j is not padding, and
    j <= i if causal), -1e9 elsewhere (the original fills masked scores with -1e9; adding it
    gives the same probabilities). [B, 1, 1, T] without causality, [B, 1, T, T] with it."""
    allowed = (tokens > 0)[:, None, None, :]
    if causal:
        length = tokens.size(1)
        allowed = allowed & torch.ones(length, length, dtype=torch.bool, device=tokens.device).tril_()
    return torch.zeros(allowed.shape, device=tokens.device).masked_fill_(~allowed, _MASKED)


class PositionalEmbedding(nn.Module):
    """One learned row per window slot; a batch shorter than max_len uses the last rows
    (left padding keeps the newest item at the last slot)."""

    def __init__(self, max_len: int, hidden: int):
        super().__init__()
        self.emb = nn.Embedding(max_len, hidden)

    def forward(self, length: int) -> torch.Tensor:
        return self.emb.weight[self.emb.num_embeddings - length:]  # [T, H]


class FeedForward(nn.Module):
    """Linear(H -> d_ff) -> activation -> [Dropout] -> Linear(d_ff -> H)."""

    def __init__(self, hidden: int, d_ff: int, dropout: float, activation: str, middle_dropout: bool):
        super().__init__()
        self.w_1 = nn.Linear(hidden, d_ff)
        self.w_2 = nn.Linear(d_ff, hidden)
        self.activation = nn.GELU(approximate="tanh") if activation == "gelu" else nn.ReLU()
        self.dropout = Dropout(dropout) if middle_dropout else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.w_2(self.dropout(self.activation(self.w_1(x))))


class Sublayer(nn.Module):
    """Residual connection: ``pre``: x + Dropout(f(LN(x))); ``post``: LN(x + Dropout(f(x)))."""

    def __init__(self, hidden: int, dropout: float, ln_type: str):
        super().__init__()
        if ln_type not in ("pre", "post"):
            raise ValueError(f"residual_ln_type must be pre or post, got {ln_type!r}")
        self.pre = ln_type == "pre"
        self.norm = nn.LayerNorm(hidden)
        self.dropout = Dropout(dropout)

    def forward(self, x: torch.Tensor, f: Callable[[torch.Tensor], torch.Tensor],
                residual: torch.Tensor | None = None) -> torch.Tensor:
        """``residual`` (default x) is what the output is added to; it lets the last block keep
        only the rows that are read (``f`` then returns those rows only)."""
        residual = x if residual is None else residual
        if self.pre:
            return residual + self.dropout(f(self.norm(x)))
        return self.norm(residual + self.dropout(f(x)))


def split_heads(x: torch.Tensor, heads: int) -> torch.Tensor:
    """[B, T, H] -> [B, heads, T, H / heads]."""
    b, t, h = x.shape
    return x.view(b, t, heads, h // heads).transpose(1, 2)


def merge_heads(x: torch.Tensor) -> torch.Tensor:
    """[B, heads, T, d] -> [B, T, heads * d]."""
    b, n, t, d = x.shape
    return x.transpose(1, 2).reshape(b, t, n * d)


def attention_probs(scores: torch.Tensor, bias: torch.Tensor, dropout: Dropout) -> torch.Tensor:
    """Softmax over keys of the (already scaled) scores plus the additive mask, then dropout on
    the probabilities (§4.2)."""
    return dropout(torch.softmax(widened(scores).add_(bias), dim=-1).to(scores.dtype))


def bias_as(bias: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """The additive mask in ``dtype``; float16 cannot hold -1e9, so it gets -3e4 (still 0 after exp)."""
    if dtype == torch.float16:
        bias = bias.clamp(min=-3e4)
    return bias.to(dtype)


def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: torch.Tensor, dropout: Dropout) -> torch.Tensor:
    """Scaled dot-product attention [B, h, Tq, d] with dropout on the probabilities. Torch's fused
    kernel runs it without dropout (evaluation), and on a GPU with dropout too: the same
    distribution (each probability dropped with p, the others scaled by 1 / (1 - p)). Training on a
    CPU writes it out, with the faster CPU mask of ``Dropout``."""
    scale = 1.0 / math.sqrt(q.size(-1))
    p = dropout.p if dropout.training else 0.0
    if p == 0 or q.device.type != "cpu":
        return F.scaled_dot_product_attention(q, k, v, attn_mask=bias_as(bias, q.dtype), dropout_p=p, scale=scale)
    return torch.matmul(attention_probs(torch.matmul(q * scale, k.transpose(-2, -1)), bias, dropout), v)


class MultiHeadAttention(nn.Module):
    """Q/K/V linears, scaled dot products, masked softmax, dropout on the probabilities,
    optional output linear (BERT4Rec has one, SASRec does not)."""

    def __init__(self, hidden: int, heads: int, dropout: float, output_linear: bool = True):
        super().__init__()
        if hidden % heads:
            raise ValueError(f"hidden_units ({hidden}) must be divisible by num_heads ({heads})")
        self.heads = heads
        self.query = nn.Linear(hidden, hidden)
        self.key = nn.Linear(hidden, hidden)
        self.value = nn.Linear(hidden, hidden)
        self.output = nn.Linear(hidden, hidden) if output_linear else nn.Identity()
        self.dropout = Dropout(dropout)

    def forward(self, query: torch.Tensor, key_value: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        """``query`` [B, Tq, H] may be fewer rows than ``key_value`` [B, T, H] (the last Tq);
        ``bias`` must broadcast to [B, heads, Tq, T]."""
        q = split_heads(self.query(query), self.heads)
        k = split_heads(self.key(key_value), self.heads)
        v = split_heads(self.value(key_value), self.heads)
        return self.output(merge_heads(attend(q, k, v, bias, self.dropout)))


def last_rows(bias: torch.Tensor, rows: int) -> torch.Tensor:
    """The mask of the last ``rows`` queries (a key-only mask [B,1,1,T] is returned as is)."""
    return bias if bias.size(-2) == 1 else bias[..., -rows:, :]
