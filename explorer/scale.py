"""Scale calculator: index memory and scoring FLOPs for N candidates at a budget, and whether the
index fits a device. With D=3584, bf16, N=100,000 it reproduces the MetaEmbed paper's efficiency rows."""

from __future__ import annotations

from dataclasses import dataclass

from metaembed.budget import Budget
from metaembed.costs import (
    GIB,
    MODEL_DIMS,
    element_size,
    fits_in_memory,
    index_bytes,
    scoring_flops,
)

DTYPES = ("bf16", "fp32")
#: Device memory in GiB as the UI offers it (a custom value can be typed instead).
DEVICES_GIB: dict[str, float] = {
    "T4 (16 GiB)": 16.0,
    "L4 (24 GiB)": 24.0,
    "A100 (40 GiB)": 40.0,
    "A100 / H100 (80 GiB)": 80.0,
    "H200 (141 GiB)": 141.0,
    "CPU: Spaces free tier (16 GiB)": 16.0,
}


@dataclass(frozen=True)
class ScaleEstimate:
    """What serving N candidates at one budget costs (one query, exhaustive MaxSim)."""

    budget: Budget
    n: int
    dim: int
    dtype: str
    index_bytes: int
    flops: int
    device: str
    device_gib: float
    #: The memory the verdict names: the device, or the size the user typed.
    memory: str = ""

    @property
    def index_gib(self) -> float:
        return self.index_bytes / GIB

    @property
    def gflops(self) -> float:
        return self.flops / 1e9

    @property
    def fits(self) -> bool:
        return fits_in_memory(self.index_bytes, self.device_gib)

    def verdict(self) -> str:
        """One plain sentence for the UI, naming the memory the user chose; advice only for what is not chosen."""
        share = 100 * self.index_gib / self.device_gib
        head = (f"Budget {self.budget}, N={self.n:,}, D={self.dim}, {self.dtype}: index {self.index_gib:.2f} GiB "
                f"({share:.0f}% of {self.memory or self.device}), {self.gflops:,.2f} GFLOPs per query.")
        if self.fits:
            return f"{head} Fits (keeping 10% headroom)."
        advice = [*([f"lower r_c (now {self.budget.r_c})"] if self.budget.r_c > 1 else []),
                  *(["use bf16"] if self.dtype != "bf16" else []), "shard the index / keep it in CPU RAM"]
        return f"{head} Does not fit: {', '.join(advice[:-1])}{' or ' if len(advice) > 1 else ''}{advice[-1]}."


def estimate(budget: Budget, n: int, dim: int, dtype: str = "bf16", device: str = "A100 / H100 (80 GiB)",
             device_gib: float | None = None) -> ScaleEstimate:
    """Index bytes ``N·r_c·D·bytes`` and scoring FLOPs ``2·r_q·r_c·D·N`` via :mod:`metaembed.costs`."""
    if n < 1:
        raise ValueError(f"N must be at least 1, got {n}")
    if dim < 1:
        raise ValueError(f"D must be at least 1, got {dim}")
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
    gib = device_gib if device_gib is not None else DEVICES_GIB.get(device)
    if gib is None or gib <= 0:
        raise ValueError(f"unknown device {device!r}; give its memory in GiB")
    memory = device if device_gib is None else f"your {gib:g} GiB"
    return ScaleEstimate(budget=budget, n=n, dim=dim, dtype=dtype,
                         index_bytes=index_bytes(n, budget.r_c, dim, element_size(dtype)),
                         flops=scoring_flops(budget, n, dim), device=device, device_gib=float(gib), memory=memory)


def table(budgets: list[Budget], n: int, dim: int, dtype: str, device: str,
          device_gib: float | None = None, chosen: Budget | None = None) -> list[list[object]]:
    """Rows ``[budget, GFLOPs, index GiB, fits]`` for the calculator's table; ``chosen`` (the user's budget)
    is always the first row, labelled as theirs, even when it is also one of ``budgets``."""
    rows: list[list[object]] = []
    for budget, label in [*([(chosen, f"{chosen} (yours)")] if chosen else []), *((b, str(b)) for b in budgets)]:
        est = estimate(budget, n, dim, dtype, device, device_gib)
        rows.append([label, round(est.gflops, 3), round(est.index_gib, 2), "yes" if est.fits else "no"])
    return rows


__all__ = ["DEVICES_GIB", "DTYPES", "MODEL_DIMS", "ScaleEstimate", "estimate", "table"]
