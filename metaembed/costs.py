"""Cost model: scoring FLOPs and index bytes for a budget, so the UI and README can show the trade-off.

With D = 3584 (Qwen2.5-VL 7B), bf16 and N = 100,000 these reproduce the paper's efficiency rows:
(1,1) 0.72 GFLOPs / 0.67 GiB, (8,16) 91.75 GFLOPs / 10.68 GiB, (16,64) 734.0 GFLOPs / 42.72 GiB
(the paper prints 0.71 and 733.89: it rounds down, and its largest row counts 0.015% fewer ops).
"""

from __future__ import annotations

from metaembed.budget import Budget
from metaembed.io import dtype_from_name

GIB = 1 << 30

#: Embedding widths users compare: ours and the paper's Qwen2.5-VL backbones (no projection, D = hidden).
MODEL_DIMS = {"MetaEmbed-Mini": 384, "Qwen2.5-VL 3B": 2048, "Qwen2.5-VL 7B": 3584, "Qwen2.5-VL 32B": 5120}


def scoring_flops(budget: Budget, n_candidates: int, dim: int) -> int:
    """Multiply-adds x 2 for one query against ``n_candidates``: 2 * r_q * r_c * D per pair."""
    return 2 * budget.r_q * budget.r_c * dim * n_candidates


def index_bytes(n_candidates: int, r_c: int, dim: int, bytes_per_element: int) -> int:
    """Bytes of candidate vectors kept (or read) at r_c vectors per candidate: N * r_c * D * bytes."""
    return n_candidates * r_c * dim * bytes_per_element


def element_size(dtype: str) -> int:
    """Bytes per element for a storage dtype name such as ``"bf16"`` or ``"float32"`` (ValueError otherwise)."""
    return dtype_from_name(dtype).itemsize


def fits_in_memory(n_bytes: int, memory_gib: float, headroom: float = 0.9) -> bool:
    """Whether an index of ``n_bytes`` fits ``memory_gib`` leaving 10% for the rest of the process."""
    return n_bytes <= memory_gib * GIB * headroom
