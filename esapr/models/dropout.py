"""Dropout with a faster CPU mask, and the dtype helper shared by the half-precision paths."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

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


def widened(x: torch.Tensor) -> torch.Tensor:
    """float32 for half-precision inputs (mixed precision), the tensor itself otherwise."""
    return x.float() if x.dtype in (torch.float16, torch.bfloat16) else x
