"""The precision an encoder computes in at serving time: a speed choice, not a property of the model.

bfloat16 matmuls run about twice as fast as float32 on CPUs with native bfloat16 instructions
(AVX512-BF16 or AMX) and on recent GPUs, and the vectors they give are within cosine 0.999 of the
float32 ones (indexes store bfloat16 vectors anyway). On a CPU without those instructions bfloat16 is
emulated and slower than float32, so ``"auto"`` picks it only where the hardware has it.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch

COMPUTE_DTYPES = ("auto", "float32", "bfloat16")


def native_bfloat16(device: torch.device) -> bool:
    """Whether ``device`` runs bfloat16 matmuls natively."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if device.type != "cpu":
        return False
    # torch 2.13 has no public query for these CPU features; its own checks are private, so a torch that
    # drops them makes "auto" fall back to float32 rather than fail.
    checks = [getattr(torch.cpu, name, None) for name in ("_is_avx512_bf16_supported", "_is_amx_tile_supported")]
    return any(check() for check in checks if check is not None)


def resolve_compute_dtype(name: str, device: torch.device) -> torch.dtype:
    """``"auto"`` -> bfloat16 where ``device`` has it natively, else float32; the other names as they say."""
    if name not in COMPUTE_DTYPES:
        raise ValueError(f"compute dtype must be one of {', '.join(COMPUTE_DTYPES)}, got {name!r}")
    if name == "auto":
        return torch.bfloat16 if native_bfloat16(device) else torch.float32
    return torch.bfloat16 if name == "bfloat16" else torch.float32


def active_dtype(device: torch.device) -> torch.dtype:
    """The dtype matmuls on ``device`` run in here (what :func:`compute_in` set, else float32): frozen features
    cached at one precision must not be served as the other's."""
    return torch.get_autocast_dtype(device.type) if torch.is_autocast_enabled(device.type) else torch.float32


@contextlib.contextmanager
def compute_in(dtype: torch.dtype, device: torch.device) -> Iterator[None]:
    """Autocast matmuls, attention and convolutions to ``dtype`` (torch.autocast's policy); no-op for float32."""
    with torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32):
        yield
