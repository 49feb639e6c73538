"""Where tensors live and in which precision: choices shared by training, inference and reports.

Kept apart from model.train.loop so that loading a model to generate text never imports the training
stack.
"""

from __future__ import annotations

import contextlib
import platform
from pathlib import Path
from typing import Literal

import torch

Device = Literal["auto", "cpu", "cuda", "mps"]
DType = Literal["auto", "fp32", "bf16", "fp16"]
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def resolve_device(device: Device) -> torch.device:
    """``auto``: CUDA, else MPS, else the CPU; an explicit device that is missing is an error."""
    if device == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda: no CUDA GPU is visible to PyTorch; use --device cpu")
    if device == "mps" and not torch.backends.mps.is_available():
        raise ValueError("--device mps: MPS is not available here; use --device cpu")
    return torch.device(device)


def cpu_has_bf16() -> bool:
    """Whether this CPU does bf16 matmuls natively (AVX-512 BF16); elsewhere bf16 is emulated, slowly."""
    check = getattr(torch.cpu, "_is_avx512_bf16_supported", None)  # a private API: may disappear
    return bool(check and check())


def resolve_dtype(dtype: DType, device: torch.device) -> torch.dtype:
    """The autocast dtype: bf16 where the hardware does it natively, else fp32 (fp16 on old GPUs)."""
    if dtype == "auto":
        if device.type == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        if device.type == "cpu" and cpu_has_bf16():
            return torch.bfloat16
        return torch.float32
    return DTYPES[dtype]


def machine(device: torch.device) -> dict[str, object]:
    """What a run's speed depends on, for its checkpoint and log: the processor (or GPU), its
    threads, native bf16, and torch's version."""
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
    else:
        name = platform.processor() or platform.machine()
        try:  # Linux names the model; platform.processor() often says only "x86_64"
            for line in Path("/proc/cpuinfo").read_text(errors="replace").splitlines():
                if line.startswith("model name"):
                    name = line.split(":", 1)[1].strip()
                    break
        except OSError:
            pass
    bf16 = cpu_has_bf16() if device.type == "cpu" else None
    # str(): torch's version is a str subclass, which a weights_only load refuses to rebuild
    return {"device": name[:100], "threads": torch.get_num_threads(), "bf16_native": bf16,
            "torch": str(torch.__version__)}


def autocast(device: torch.device, dtype: torch.dtype):
    """Mixed precision for the block's matmuls; a no-op context for fp32."""
    if dtype == torch.float32:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)
