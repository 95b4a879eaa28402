"""TiSASRec's and MEANTIME's relative [B, Tq, T, H] terms, computed in chunks.

TiSASRec and MEANTIME attend through per-pair embeddings of the time interval, each dropped out
elementwise. Materialised for a whole batch these are [B, T, T, H] tensors (2.6 GB per tensor
at B=256, T=200, H=64). Here they are built a few examples at a time, used, and discarded; the
backward pass rebuilds them. Their dropout masks come from generators seeded by
(a seed drawn once per forward pass, the chunk, the head or kernel), so the rebuilt masks are
the same, and every block sees the same dropped embeddings, as in the original where one
dropped tensor feeds all blocks. The scale of the kept elements is applied to the (small)
results instead of the embeddings.

Chunks are sized by device: on a CPU to stay in the cache, on a GPU from the free memory (a large
GPU runs a batch in one or a few chunks instead of ~1,200 per step). Under mixed precision the
terms are computed in float32, forward and backward alike (the custom functions cast their inputs
and turn autocast off inside), as a backward pass outside autocast would otherwise differ in
precision from its forward pass.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from esapr.models.dropout import keep_mask

# elements of one chunk tensor on a CPU (16 MB in float32)
CHUNK_ELEMENTS = 1 << 22
# on a GPU: a chunk keeps about CHUNK_TENSORS float32 tensors of its size alive (the relations or
# kernel, its dropout mask, a product, a gradient) and may take GPU_MEMORY_SHARE of the free memory
CHUNK_TENSORS = 4
GPU_MEMORY_SHARE = 0.25
MAX_CHUNK_ELEMENTS = 1 << 30
# boolean dropout masks kept per forward pass (shared by the blocks and the backward pass); a
# bigger budget saves a little more time (about 15% of TiSASRec at 1 GB) for much more memory
MASK_CACHE_BYTES = 1 << 28


def chunk_elements(device: torch.device) -> int:
    """Elements of one chunk tensor on ``device``: CHUNK_ELEMENTS on a CPU; on CUDA a share of the
    free memory (memory the allocator holds unused counts as free), at least CHUNK_ELEMENTS."""
    if device.type != "cuda":
        return CHUNK_ELEMENTS
    free, _ = torch.cuda.mem_get_info(device)
    free += torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
    share = int(free * GPU_MEMORY_SHARE) // (4 * CHUNK_TENSORS)
    return min(MAX_CHUNK_ELEMENTS, max(CHUNK_ELEMENTS, share))


def chunk_starts(batch: int, per_example: int, elements: int) -> list[tuple[int, int]]:
    size = max(1, elements // max(1, per_example))
    return [(start, min(batch, start + size)) for start in range(0, batch, size)]


def _float32_forward(forward):
    """``forward`` in float32 under CPU or CUDA autocast (inputs cast, autocast off inside)."""
    for device_type in ("cpu", "cuda"):
        forward = torch.amp.custom_fwd(forward, device_type=device_type, cast_inputs=torch.float32)
    return forward


def _as_forward(backward):
    """``backward`` with the autocast state its forward pass had."""
    for device_type in ("cpu", "cuda"):
        backward = torch.amp.custom_bwd(backward, device_type=device_type)
    return backward


class PairDropout:
    """Seeded dropout for the per-pair tensors of one forward pass, and their chunk size. The
    boolean masks are kept (up to MASK_CACHE_BYTES) for the other blocks and the backward pass,
    which saves most of the random draws; past the budget they are drawn again (the same, from
    their seeds)."""

    def __init__(self, p: float, training: bool, streams: int):
        self.p = p if training else 0.0
        self.seeds = [int(torch.randint(0, 2 ** 62, (1,)).item()) if self.p > 0 else 0 for _ in range(streams)]
        self.scale = keep_mask((1,), self.p, torch.device("cpu"), torch.float32)[1] if self.p > 0 else 1.0
        self.cache: dict = {}
        self.cached_bytes = 0
        self.elements: int | None = None

    def chunk_size(self, device: torch.device) -> int:
        """Elements per chunk, fixed at first use for the whole forward pass: the masks are keyed
        by chunk start, so the backward pass must cut the same chunks."""
        if self.elements is None:
            self.elements = chunk_elements(device)
        return self.elements

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


def clipped_intervals(times_q: torch.Tensor, times_k: torch.Tensor, clip: int) -> torch.Tensor:
    return (times_q.unsqueeze(2) - times_k.unsqueeze(1)).abs_().clamp_(max=clip)


def dropped_relations(times_q, times_k, clip: int, drop: PairDropout, stream: int, tables, per_example: int):
    """TiSASRec's relation embeddings, a chunk of examples and one head at a time:
    (start, stop, head, flat intervals, dropped R [b, Tq, T, d], keep mask). The masks are a
    function of (stream, start, head), so forward and backward see the same ones."""
    for start, stop in chunk_starts(times_q.size(0), per_example, drop.chunk_size(times_q.device)):
        iv = clipped_intervals(times_q[start:stop], times_k[start:stop], clip)
        for h, table in enumerate(tables):
            r = F.embedding(iv, table)
            keep = drop.keep(r, stream, start, h)
            yield start, stop, h, iv.reshape(-1), masked(r, keep), keep


def scaled_(tensors, scale: float) -> None:
    if scale != 1.0:
        for t in tensors:
            t.mul_(scale)


# the two uses of TiSASRec's relation embeddings, also their dropout streams
KEYS, VALUES = 0, 1


class IntervalTerm(torch.autograd.Function):
    """TiSASRec's relation terms per head, R [b, Tq, T, d] being the dropped interval embeddings
    of one head's contiguous [V, d] table:
    KEYS:   x = q [B, n, Tq, d]     -> q_i . R_ij          [B, n, Tq, T];
    VALUES: x = probs [B, n, Tq, T] -> sum_j p_ij R_ij     [B, n, Tq, d]."""

    @staticmethod
    @_float32_forward
    def forward(ctx, x, times_q, times_k, clip, drop, use, *tables):
        b, n, rows = x.shape[:3]
        length, d = times_k.size(1), tables[0].size(1)
        out = x.new_empty(b, n, rows, length if use == KEYS else d)
        for start, stop, h, _, r, _ in dropped_relations(times_q, times_k, clip, drop, use, tables,
                                                          rows * length * d):
            part = x[start:stop, h]
            if use == KEYS:
                out[start:stop, h] = torch.matmul(r, part.unsqueeze(-1)).squeeze(-1)
            else:
                out[start:stop, h] = torch.matmul(part.unsqueeze(-2), r).squeeze(-2)
        ctx.save_for_backward(x, times_q, times_k, *tables)
        ctx.config = (clip, drop, use)
        scaled_([out], drop.scale)
        return out

    @staticmethod
    @_as_forward
    def backward(ctx, grad):
        x, times_q, times_k, *tables = ctx.saved_tensors
        clip, drop, use = ctx.config
        rows, length, d = x.size(2), times_k.size(1), tables[0].size(1)
        grad_x = torch.empty_like(x)
        grad_tables = [torch.zeros_like(t) for t in tables]
        for start, stop, h, flat, r, keep in dropped_relations(times_q, times_k, clip, drop, use, tables,
                                                                rows * length * d):
            g, part = grad[start:stop, h], x[start:stop, h]
            # d/dE[v] = sum over the pairs with interval v of the pair's gradient (where not dropped)
            if use == KEYS:
                grad_x[start:stop, h] = torch.matmul(g.unsqueeze(-2), r).squeeze(-2)
                contrib = masked(g.unsqueeze(-1) * part.unsqueeze(2), keep)
            else:
                grad_x[start:stop, h] = torch.matmul(r, g.unsqueeze(-1)).squeeze(-1)
                contrib = masked(part.unsqueeze(-1) * g.unsqueeze(2), keep)
            grad_tables[h].index_put_((flat,), contrib.reshape(-1, d), accumulate=True)
        scaled_([grad_x, *grad_tables], drop.scale)
        return (grad_x, None, None, None, None, None, *grad_tables)


class KernelTerm(torch.autograd.Function):
    """MEANTIME's relative-kernel scores sum_h u_ih k_ij,h for each head of each relative kernel:
    u [B, Lr, heads, Tq, H] -> [B, Lr, heads, Tq, T], the kernels from
    ``kernels.kernel(r, start, stop, Tq)`` (one dropped kernel serves all heads of kernel r)."""

    @staticmethod
    @_float32_forward
    def forward(ctx, u, kernels, drop):
        b, lr, heads, rows, hidden = u.shape
        length = kernels.times.size(1)
        out = u.new_empty(b, lr, heads, rows, length)
        for start, stop in chunk_starts(b, rows * length * hidden, drop.chunk_size(u.device)):
            for r in range(lr):
                k = kernels.kernel(r, start, stop, rows).to(u.dtype)
                k = masked(k, drop.keep(k, r, start))                             # b Tq T H
                scores = torch.matmul(k, u[start:stop, r].permute(0, 2, 3, 1))    # b Tq T heads
                out[start:stop, r] = scores.permute(0, 3, 1, 2)
        ctx.config = (kernels, drop, u.shape)
        scaled_([out], drop.scale)
        return out

    @staticmethod
    @_as_forward
    def backward(ctx, grad):
        kernels, drop, shape = ctx.config
        b, lr, heads, rows, hidden = shape
        grad_u = grad.new_empty(shape)
        for start, stop in chunk_starts(b, rows * kernels.times.size(1) * hidden, drop.chunk_size(grad.device)):
            for r in range(lr):
                k = kernels.kernel(r, start, stop, rows).to(grad.dtype)
                k = masked(k, drop.keep(k, r, start))                             # b Tq T H
                g = torch.matmul(grad[start:stop, r].permute(0, 2, 1, 3), k)      # b Tq heads H
                grad_u[start:stop, r] = g.permute(0, 2, 1, 3)
        scaled_([grad_u], drop.scale)
        return grad_u, None, None
