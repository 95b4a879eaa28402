"""Which precision a run trains in, and the settings that make a GPU run reproducible.

Mixed precision (``amp``, default on for CUDA) trains under autocast in bf16 or fp16. bf16 needs
no loss scaling but is native only on GPUs of compute capability 8.0 and newer (A100, L4, H100);
``torch.cuda.is_bf16_supported()`` also answers yes on a T4 (7.5), where bf16 is emulated and
slow, so the capability decides: ``amp_dtype auto`` takes bf16 there and fp16 with a GradScaler
on older GPUs. A CPU runs autocast in bf16. Evaluation never runs under autocast (see
``Trainer.evaluate``).
"""
from __future__ import annotations

import os
import warnings
from dataclasses import dataclass

import torch

NAMES = {None: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16 + GradScaler"}


@dataclass(frozen=True)
class Precision:
    dtype: torch.dtype | None          # the autocast type; None: float32 throughout

    @property
    def scaled(self) -> bool:
        """fp16 gradients underflow without loss scaling (a GradScaler)."""
        return self.dtype == torch.float16

    @property
    def name(self) -> str:
        return NAMES[self.dtype]


def native_bf16(device: torch.device) -> bool:
    return device.type == "cuda" and torch.cuda.get_device_capability(device) >= (8, 0)


def choose_precision(amp: bool | None, amp_dtype: str, device: torch.device) -> Precision:
    """``amp`` None means on for CUDA; ``amp_dtype`` auto|bf16|fp16 (see the module docstring)."""
    if not (amp if amp is not None else device.type == "cuda"):
        return Precision(None)
    if amp_dtype == "auto":
        return Precision(torch.bfloat16 if device.type != "cuda" or native_bf16(device) else torch.float16)
    dtype = torch.bfloat16 if amp_dtype == "bf16" else torch.float16
    if dtype == torch.bfloat16 and device.type == "cuda" and not native_bf16(device):
        major, minor = torch.cuda.get_device_capability(device)
        warnings.warn(f"amp_dtype bf16 is emulated on this GPU (compute capability {major}.{minor}) and slow; "
                      f"amp_dtype auto takes fp16 with a GradScaler", stacklevel=2)
    return Precision(dtype)


def make_deterministic() -> None:
    """Deterministic kernels for the whole process (warn-only where an op has none) and the cuBLAS
    workspace setting they need; the variable must be set before cuBLAS starts, so a process
    that has already used the GPU gets a warning."""
    if os.environ.get("CUBLAS_WORKSPACE_CONFIG") is None:
        if torch.cuda.is_initialized():
            warnings.warn("deterministic: CUDA was started before CUBLAS_WORKSPACE_CONFIG could be set; set it "
                          "to :4096:8 before the first use of the GPU (restart the runtime)", stacklevel=2)
        os.environ["CUBLAS_WORKSPACE_CONFIG"] = ":4096:8"
    torch.use_deterministic_algorithms(True, warn_only=True)
    torch.backends.cudnn.benchmark = False
