"""The precision an encoder computes in at serving time: a speed choice, not a property of the model.

bfloat16 matmuls run about twice as fast as float32 on CPUs with native bfloat16 instructions
(AVX512-BF16 or AMX-BF16) and on Ampere or newer GPUs; the shipped MetaEmbed-Mini's vectors then stay
within cosine 0.999 of the float32 ones (measured minimum 0.9991; indexes store bfloat16 vectors anyway).
Where bfloat16 is only emulated it is slower than float32, so ``"auto"`` picks it only where it is native.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from typing import Any

import torch

from metaembed.io import dtype_from_name

logger = logging.getLogger(__name__)

COMPUTE_DTYPES = ("auto", "float32", "bfloat16")
#: CPU features (``torch.cpu.get_capabilities()``) that mean native bfloat16 matmuls.
CPU_BF16_FEATURES = ("avx512_bf16", "amx_bf16")


def native_bfloat16(device: torch.device) -> bool:
    """Whether ``device`` runs bfloat16 matmuls natively (not emulated)."""
    if device.type == "cuda":
        return torch.cuda.get_device_capability(device)[0] >= 8  # Ampere on; older GPUs emulate it
    if device.type != "cpu":
        return False
    try:
        capabilities = torch.cpu.get_capabilities()
    except (AttributeError, RuntimeError) as err:  # a torch without the query: float32 is always safe
        logger.info("cannot read the CPU's features (%s): computing in float32", err)
        return False
    return any(capabilities.get(feature) for feature in CPU_BF16_FEATURES)


def resolve_compute_dtype(name: str, device: torch.device) -> torch.dtype:
    """``"auto"`` -> bfloat16 where ``device`` has it natively, else float32; the other names as they say."""
    if name not in COMPUTE_DTYPES:
        raise ValueError(f"compute dtype must be one of {', '.join(COMPUTE_DTYPES)}, got {name!r}")
    if name == "auto":
        return torch.bfloat16 if native_bfloat16(device) else torch.float32
    return dtype_from_name(name)


def set_compute_dtype(encoder: Any, name: str) -> None:
    """Set an encoder's serving precision; backends that choose their own (no ``compute_dtype``) accept only
    "auto", so a script never reports a precision it did not use."""
    if hasattr(encoder, "compute_dtype"):
        encoder.compute_dtype = name
    elif name != "auto":
        raise ValueError(f"the {encoder.backend} backend picks its own precision ({encoder.precision}); "
                         f"--compute-dtype {name} is for MetaEmbed-Mini")


@contextlib.contextmanager
def compute_in(dtype: torch.dtype, device: torch.device) -> Iterator[None]:
    """Matmuls, attention and convolutions in ``dtype`` (torch.autocast's policy). float32 switches autocast
    off, so it is float32 even inside a caller's autocast (the CUDA trainer's)."""
    with torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32):
        yield
