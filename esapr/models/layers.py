"""Transformer parts shared by BERT4Rec, SASRec, TiSASRec and MEANTIME (reference.md §4.2).

Conventions: sequences are left-padded with item 0, so window slot j of a length-T batch is row
``max_len - T + j`` of a positional table and the most recent item sits at slot T-1. Attention
masks are additive (0 or -1e9), shaped to broadcast to [B, heads, T, T].
"""
from __future__ import annotations

import math
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

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
    """Scaled dot-product attention [B, h, Tq, d]. Without dropout (evaluation) it runs torch's
    fused kernel; with dropout it is written out (the fused CPU kernel has no dropout)."""
    scale = 1.0 / math.sqrt(q.size(-1))
    if not (dropout.training and dropout.p > 0):
        return F.scaled_dot_product_attention(q, k, v, attn_mask=bias_as(bias, q.dtype), scale=scale)
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


# --- length groups: never compute long runs of padding ---------------------------------------------

# the [B, T] inputs that are windows (left-padded, right-aligned); other batch entries are per row
SEQUENCE_KEYS = ("tokens", "labels", "negative_labels", "timestamps", "days")


def length_groups(tokens: torch.Tensor, hidden: int, group_cost: float = 4e7) -> list[tuple[torch.Tensor, int]]:
    """Split a batch of left-padded windows into groups of rows of similar length, each to be
    run trimmed to its longest row: [(row indices, length)], rows in ascending length order.

    A transformer's output at real positions does not depend on how much padding precedes
    them (padding keys are masked; positions count from the right), so running each group on
    its last ``length`` slots gives the same numbers as the full batch at a fraction of the
    cost when lengths vary. The split minimises sum(rows * cost(length)) + group_cost * groups
    (dynamic programming over the sorted lengths), with cost(L) ~ L * (12 H^2 + L * 4 H) for
    the linear layers and the attention."""
    lengths, order = torch.sort((tokens > 0).sum(1))
    sizes = np.maximum(lengths.cpu().numpy(), 1).astype(np.float64)
    n = len(sizes)
    row_cost = sizes * (12.0 * hidden * hidden + sizes * 4.0 * hidden)
    best = np.zeros(n + 1)
    cut = np.zeros(n + 1, dtype=np.int64)
    counts = np.arange(n, 0, -1, dtype=np.float64)  # group (i, j] for i = 0..j-1 has j - i rows
    for j in range(1, n + 1):
        costs = best[:j] + counts[n - j:] * row_cost[j - 1] + group_cost
        cut[j] = int(np.argmin(costs))
        best[j] = costs[cut[j]]
    groups = []
    j = n
    while j > 0:
        i = cut[j]
        groups.append((order[i:j], int(sizes[j - 1])))
        j = i
    return groups[::-1]


def sub_batch(batch: dict, rows: torch.Tensor, length: int) -> dict:
    """Rows ``rows`` of every batch entry, windows trimmed to their last ``length`` slots."""
    out = {}
    for key, value in batch.items():
        value = value.index_select(0, rows)
        out[key] = value[:, -length:] if key in SEQUENCE_KEYS else value
    return out


def per_group(batch: dict, hidden: int, fn: Callable[[dict], torch.Tensor]) -> torch.Tensor:
    """fn(sub-batch) -> [b, ...] for each length group, reassembled in the batch's row order."""
    groups = length_groups(batch["tokens"], hidden)
    if len(groups) == 1 and groups[0][1] == batch["tokens"].size(1):
        return fn(batch)
    parts = [fn(sub_batch(batch, rows, length)) for rows, length in groups]
    order = torch.cat([rows for rows, _ in groups])
    out = torch.cat(parts)
    return torch.empty_like(out).index_copy_(0, order, out)


def grouped_loss(batch: dict, hidden: int, fn: Callable[[dict], tuple[torch.Tensor, int]]) -> torch.Tensor:
    """Sum of fn's (loss sum, count) over the length groups, divided by the total count (so the
    mean is over all positions of the batch, as without groups; 0 when there are none)."""
    groups = length_groups(batch["tokens"], hidden)
    if len(groups) == 1 and groups[0][1] == batch["tokens"].size(1):
        total, count = fn(batch)
    else:
        total, count = 0.0, 0
        for rows, length in groups:
            part, n = fn(sub_batch(batch, rows, length))
            total, count = total + part, count + n
    return total / max(1, count)


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


def make_head(headtype: str, hidden: int, embedding: nn.Embedding, n_classes: int, use_ln: bool) -> nn.Module:
    if headtype == "dot":
        return DotHead(hidden, embedding, n_classes, use_ln)
    if headtype == "linear":
        return LinearHead(hidden, n_classes, use_ln)
    raise ValueError(f"headtype must be dot or linear, got {headtype!r}")


def masked_positions_loss(hidden: torch.Tensor, labels: torch.Tensor, logits_of: Callable) -> tuple[torch.Tensor, int]:
    """§5.2 BERT/MEANTIME: (sum, count) of the cross-entropy over the positions with label > 0,
    classes 0..n_items. Without any such position the sum is 0 (with a gradient), not NaN."""
    flat = labels.reshape(-1)
    rows = torch.nonzero(flat, as_tuple=True)[0]
    selected = hidden.reshape(-1, hidden.size(-1)).index_select(0, rows)
    logits = logits_of(selected).float()
    total = F.cross_entropy(logits, flat.index_select(0, rows), reduction="sum")
    return total, rows.numel()


def next_item_bce_loss(hidden: torch.Tensor, labels: torch.Tensor, negatives: torch.Tensor,
                       embedding: nn.Embedding) -> tuple[torch.Tensor, int]:
    """§5.2 SAS/TiSAS: (sum, count) over the positions with label > 0 of
    -log(sigmoid(h.e_pos) + 1e-24) - log(1 - sigmoid(h.e_neg) + 1e-24)."""
    flat = labels.reshape(-1)
    rows = torch.nonzero(flat, as_tuple=True)[0]
    h = hidden.reshape(-1, hidden.size(-1)).index_select(0, rows).float()
    pos = embedding(flat.index_select(0, rows)).float()
    neg = embedding(negatives.reshape(-1).index_select(0, rows)).float()
    p_pos = torch.sigmoid((h * pos).sum(-1))
    p_neg = torch.sigmoid((h * neg).sum(-1))
    total = -(torch.log(p_pos + 1e-24) + torch.log(1 - p_neg + 1e-24)).sum()
    return total, rows.numel()


# --- dropout ----------------------------------------------------------------------------------------

# dropout draws 15 random bits per element on the CPU: p is rounded to a multiple of 2^-15
_BITS = 15


def keep_mask(shape: tuple, p: float, device: torch.device, dtype: torch.dtype,
              generator: torch.Generator | None = None) -> tuple[torch.Tensor, float]:
    """A 0/1 mask in ``dtype`` (1 = kept, each element dropped with probability p) and the
    scale 1 / (1 - p') for the kept ones, p' being the drop probability actually used.

    On the CPU, torch's dropout (one Bernoulli draw per element) costs about as much as a
    matrix product here, so the mask is cut from 64-bit random words, four 15-bit uniforms per
    word; p' = round(p * 2^15) / 2^15 (0.2 -> 0.20001). Elsewhere it is one uniform per element.
    (A float mask and a multiplication are faster on the CPU than a boolean mask and
    ``masked_fill``.)"""
    n = math.prod(shape)
    if device.type == "cpu":
        threshold = int(round(p * (1 << _BITS)))
        words = torch.empty((n + 3) // 4, dtype=torch.int64, device=device).random_(generator=generator)
        uniform = words.view(torch.int16)[:n].view(shape) & ((1 << _BITS) - 1)
        keep = uniform >= threshold
        return keep.to(dtype) if dtype != torch.bool else keep, 1.0 / (1.0 - threshold / (1 << _BITS))
    keep = torch.rand(shape, device=device, generator=generator) >= p
    return keep.to(dtype) if dtype != torch.bool else keep, 1.0 / (1.0 - p)


class _MaskedScale(torch.autograd.Function):
    """x * mask, where mask = keep * scale; the mask is what the backward pass needs."""

    @staticmethod
    def forward(ctx, x, mask):
        ctx.save_for_backward(mask)
        return x * mask

    @staticmethod
    def backward(ctx, grad):
        (mask,) = ctx.saved_tensors
        return grad * mask, None


def dropout(x: torch.Tensor, p: float, training: bool) -> torch.Tensor:
    """Inverted dropout from the global torch RNG (torch's own off the CPU)."""
    if not training or p <= 0:
        return x
    if x.device.type != "cpu":
        return F.dropout(x, p, True)
    keep, scale = keep_mask(tuple(x.shape), p, x.device, x.dtype)
    return _MaskedScale.apply(x, keep.mul_(scale))


class Dropout(nn.Module):
    """nn.Dropout with the faster CPU mask of ``keep_mask``."""

    def __init__(self, p: float):
        super().__init__()
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return dropout(x, self.p, self.training)

    def extra_repr(self) -> str:
        return f"p={self.p}"


# --- relative [B, Tq, T, H] terms, computed in chunks ----------------------------------------------
#
# TiSASRec and MEANTIME attend through per-pair embeddings of the time interval, each dropped out
# elementwise. Materialised for a whole batch these are [B, T, T, H] tensors (2.6 GB per tensor
# at B=256, T=200, H=64). Here they are built a few examples at a time, used, and discarded; the
# backward pass rebuilds them. Their dropout masks come from generators seeded by
# (a seed drawn once per forward pass, the chunk, the head or kernel), so the rebuilt masks are
# the same, and every block sees the same dropped embeddings, as in the original where one
# dropped tensor feeds all blocks. The scale of the kept elements is applied to the (small)
# results instead of the embeddings.

# elements of one chunk tensor (16 MB in float32)
CHUNK_ELEMENTS = 1 << 22
# boolean dropout masks kept per forward pass (shared by the blocks and the backward pass); a
# bigger budget saves a little more time (about 15% of TiSASRec at 1 GB) for much more memory
MASK_CACHE_BYTES = 1 << 28


def chunk_starts(batch: int, per_example: int) -> list[tuple[int, int]]:
    size = max(1, CHUNK_ELEMENTS // max(1, per_example))
    return [(start, min(batch, start + size)) for start in range(0, batch, size)]


class PairDropout:
    """Seeded dropout for the per-pair tensors of one forward pass. The boolean masks are kept
    (up to MASK_CACHE_BYTES) for the other blocks and the backward pass, which saves most of
    the random draws; past the budget they are drawn again (the same, from their seeds)."""

    def __init__(self, p: float, training: bool, streams: int):
        self.p = p if training else 0.0
        self.seeds = [int(torch.randint(0, 2 ** 62, (1,)).item()) if self.p > 0 else 0 for _ in range(streams)]
        self.scale = keep_mask((1,), self.p, torch.device("cpu"), torch.float32)[1] if self.p > 0 else 1.0
        self.cache: dict = {}
        self.cached_bytes = 0

    def keep(self, like: torch.Tensor, stream: int, start: int, part: int = 0) -> torch.Tensor | None:
        """The 0/1 keep mask for a tensor shaped like ``like`` of examples start.. of the batch:
        a function of (stream, start, part) within this forward pass; None without dropout."""
        if self.p <= 0:
            return None
        key = (stream, start, part, tuple(like.shape))
        mask = self.cache.get(key)
        if mask is None:
            g = torch.Generator(device=like.device)
            g.manual_seed((self.seeds[stream] + 1_000_003 * start + part) % (2 ** 63))
            mask = keep_mask(tuple(like.shape), self.p, like.device, torch.bool, g)[0]
            if self.cached_bytes + mask.numel() <= MASK_CACHE_BYTES:
                self.cache[key] = mask
                self.cached_bytes += mask.numel()
        return mask.to(like.dtype)


def masked(x: torch.Tensor, keep: torch.Tensor | None) -> torch.Tensor:
    """x * keep in place (x itself without dropout)."""
    return x if keep is None else x.mul_(keep)


def widened(x: torch.Tensor) -> torch.Tensor:
    """float32 for half-precision inputs (mixed precision), the tensor itself otherwise."""
    return x.float() if x.dtype in (torch.float16, torch.bfloat16) else x


def clipped_intervals(times_q: torch.Tensor, times_k: torch.Tensor, clip: int) -> torch.Tensor:
    return (times_q.unsqueeze(2) - times_k.unsqueeze(1)).abs_().clamp_(max=clip)


def dropped_relations(times_q, times_k, clip: int, drop: PairDropout, stream: int, tables, per_example: int):
    """TiSASRec's relation embeddings, a chunk of examples and one head at a time:
    (start, stop, head, flat intervals, dropped R [b, Tq, T, d], keep mask). The masks are a
    function of (stream, start, head), so forward and backward see the same ones."""
    for start, stop in chunk_starts(times_q.size(0), per_example):
        iv = clipped_intervals(times_q[start:stop], times_k[start:stop], clip)
        for h, table in enumerate(tables):
            r = F.embedding(iv, table)
            keep = drop.keep(r, stream, start, h)
            yield start, stop, h, iv.reshape(-1), masked(r, keep), keep


def scaled_(tensors, scale: float) -> None:
    if scale != 1.0:
        for t in tensors:
            t.mul_(scale)


class IntervalKeyTerm(torch.autograd.Function):
    """TiSASRec's q_i . R^K_ij per head: q [B, n, Tq, d], one contiguous [V, d] table per head
    -> [B, n, Tq, T]."""

    @staticmethod
    def forward(ctx, q, times_q, times_k, clip, drop, stream, *tables):
        b, n, rows, d = q.shape
        length = times_k.size(1)
        out = q.new_empty(b, n, rows, length)
        for start, stop, h, _, r, _ in dropped_relations(times_q, times_k, clip, drop, stream, tables,
                                                          rows * length * d):
            out[start:stop, h] = torch.matmul(r, q[start:stop, h].unsqueeze(-1)).squeeze(-1)
        ctx.save_for_backward(q, times_q, times_k, *tables)
        ctx.config = (clip, drop, stream)
        scaled_([out], drop.scale)
        return out

    @staticmethod
    def backward(ctx, grad):
        q, times_q, times_k, *tables = ctx.saved_tensors
        clip, drop, stream = ctx.config
        b, n, rows, d = q.shape
        grad_q = torch.empty_like(q)
        grad_tables = [torch.zeros_like(t) for t in tables]
        for start, stop, h, flat, r, keep in dropped_relations(times_q, times_k, clip, drop, stream, tables,
                                                                rows * times_k.size(1) * d):
            g = grad[start:stop, h]                                              # b Tq T
            grad_q[start:stop, h] = torch.matmul(g.unsqueeze(-2), r).squeeze(-2)
            # d/dE[v] = sum over the pairs with interval v of g_ij q_i (where not dropped)
            contrib = masked(g.unsqueeze(-1) * q[start:stop, h].unsqueeze(2), keep)
            grad_tables[h].index_put_((flat,), contrib.reshape(-1, d), accumulate=True)
        scaled_([grad_q, *grad_tables], drop.scale)
        return (grad_q, None, None, None, None, None, *grad_tables)


class IntervalValueTerm(torch.autograd.Function):
    """TiSASRec's sum_j p_ij R^V_ij per head: probs [B, n, Tq, T] -> [B, n, Tq, d]."""

    @staticmethod
    def forward(ctx, probs, times_q, times_k, clip, drop, stream, *tables):
        b, n, rows, length = probs.shape
        d = tables[0].size(1)
        out = probs.new_empty(b, n, rows, d)
        for start, stop, h, _, r, _ in dropped_relations(times_q, times_k, clip, drop, stream, tables,
                                                          rows * length * d):
            out[start:stop, h] = torch.matmul(probs[start:stop, h].unsqueeze(-2), r).squeeze(-2)
        ctx.save_for_backward(probs, times_q, times_k, *tables)
        ctx.config = (clip, drop, stream)
        scaled_([out], drop.scale)
        return out

    @staticmethod
    def backward(ctx, grad):
        probs, times_q, times_k, *tables = ctx.saved_tensors
        clip, drop, stream = ctx.config
        b, n, rows, length = probs.shape
        d = tables[0].size(1)
        grad_probs = torch.empty_like(probs)
        grad_tables = [torch.zeros_like(t) for t in tables]
        for start, stop, h, flat, r, keep in dropped_relations(times_q, times_k, clip, drop, stream, tables,
                                                                rows * length * d):
            g = grad[start:stop, h]                                              # b Tq d
            grad_probs[start:stop, h] = torch.matmul(r, g.unsqueeze(-1)).squeeze(-1)
            contrib = masked(probs[start:stop, h].unsqueeze(-1) * g.unsqueeze(2), keep)
            grad_tables[h].index_put_((flat,), contrib.reshape(-1, d), accumulate=True)
        scaled_([grad_probs, *grad_tables], drop.scale)
        return (grad_probs, None, None, None, None, None, *grad_tables)


class KernelTerm(torch.autograd.Function):
    """MEANTIME's relative-kernel scores sum_h u_ih k_ij,h for each head of each relative kernel:
    u [B, Lr, heads, Tq, H] -> [B, Lr, heads, Tq, T], the kernels from
    ``kernels.kernel(r, start, stop, Tq)`` (one dropped kernel serves all heads of kernel r)."""

    @staticmethod
    def forward(ctx, u, kernels, drop):
        b, lr, heads, rows, hidden = u.shape
        length = kernels.times.size(1)
        out = u.new_empty(b, lr, heads, rows, length)
        for start, stop in chunk_starts(b, rows * length * hidden):
            for r in range(lr):
                k = kernels.kernel(r, start, stop, rows).to(u.dtype)
                k = masked(k, drop.keep(k, r, start))                             # b Tq T H
                scores = torch.matmul(k, u[start:stop, r].permute(0, 2, 3, 1))    # b Tq T heads
                out[start:stop, r] = scores.permute(0, 3, 1, 2)
        ctx.config = (kernels, drop, u.shape)
        scaled_([out], drop.scale)
        return out

    @staticmethod
    def backward(ctx, grad):
        kernels, drop, shape = ctx.config
        b, lr, heads, rows, hidden = shape
        grad_u = grad.new_empty(shape)
        for start, stop in chunk_starts(b, rows * kernels.times.size(1) * hidden):
            for r in range(lr):
                k = kernels.kernel(r, start, stop, rows).to(grad.dtype)
                k = masked(k, drop.keep(k, r, start))                             # b Tq T H
                g = torch.matmul(grad[start:stop, r].permute(0, 2, 1, 3), k)      # b Tq heads H
                grad_u[start:stop, r] = g.permute(0, 2, 1, 3)
        scaled_([grad_u], drop.scale)
        return grad_u, None, None
