"""Scoring throughput per budget against the DRAM roofline and the peers' candidate-major patterns.

For each D in {384, 2048} and storage dtype in {fp32, bf16}, N is chosen so that the (16,64) slab
exceeds the CPU caches (>= 1 GiB; --quick: 96 MiB). One query is scored against all N candidates.
Printed per row: the kernel ``auto`` picked, candidates/s, effective GB/s (bytes of the budget's slab /
time), fraction of the DRAM read bandwidth measured in this same run (``roofline_fraction``), fraction
of the attainable roofline min(DRAM bandwidth, GEMM peak / FLOPs per byte) where the GEMM peak is a
2048^3 fp32 matmul timed in the same run (``attainable_fraction``: at (16,64) one query does 8 (fp32)
or 16 (bf16) FLOPs per byte read, more than this CPU can compute at DRAM speed), and the speed-up over
  * the candidate-major slice + einsum pattern of colpali-engine / PyLate (blocks of 128 candidates),
  * maxsim-cpu (fp32 only; it needs a contiguous (N, r_c, D) copy per budget, made outside the timer).
The last line is one JSON object (roofline_fraction and speedup_vs_einsum per budget, worst case over
D and dtype, plus every row).

``--crossover`` instead times both kernels at (4,16) for batches of 1 to 32 queries (4 to 128 query
vectors), the measurement behind ``metaembed.scoring.GEMM_MIN_ROWS``.

    python benchmarks/bench_scoring.py [--quick | --crossover]
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import sys
import time
from collections.abc import Callable

import numpy as np
import torch

from metaembed.budget import TRAINED_GROUPS, Budget
from metaembed.scoring import GEMM_MIN_ROWS, maxsim

logger = logging.getLogger("bench_scoring")


def best_time(fn: Callable[[], object], repeats: int) -> float:
    """Minimum wall time of ``repeats`` runs after one warm-up (min is the least noisy estimator)."""
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def dram_read_bandwidth(n_bytes: int, repeats: int) -> float:
    """Bytes/s of a streaming reduction over a buffer far larger than the caches."""
    buffer = torch.ones(n_bytes // 4, dtype=torch.float32)
    return n_bytes / best_time(buffer.sum, repeats)


def gemm_peak_flops(repeats: int) -> float:
    """FLOP/s of a large fp32 GEMM: the compute ceiling of the roofline on this machine."""
    a, b = torch.randn(2048, 2048), torch.randn(2048, 2048)
    return 2 * 2048**3 / best_time(lambda: a @ b, repeats)


def einsum_pattern(query: torch.Tensor, cand_major: torch.Tensor, budget: Budget, batch: int = 128) -> torch.Tensor:
    """colpali-engine ``score_multi_vector`` style: slice each candidate batch, 4-D einsum, max, sum."""
    q = query[None, : budget.r_q].float()
    out = []
    for start in range(0, cand_major.shape[0], batch):
        c = cand_major[start : start + batch, : budget.r_c].float()
        out.append(torch.einsum("bnd,csd->bcns", q, c).max(dim=3)[0].sum(dim=2))
    return torch.cat(out, dim=1)


def run(quick: bool) -> dict:
    target = (96 << 20) if quick else (1 << 30) + (64 << 20)
    repeats = 2 if quick else 3
    bandwidth = dram_read_bandwidth(max(target, 512 << 20), repeats)
    peak = gemm_peak_flops(repeats)
    logger.info("DRAM read bandwidth %.1f GB/s, fp32 GEMM peak %.1f GFLOP/s (torch %s, %d threads)",
                bandwidth / 1e9, peak / 1e9, torch.__version__, torch.get_num_threads())
    try:
        import maxsim_cpu
    except ImportError:  # optional peer
        maxsim_cpu = None
    rows = []
    for dim in (384, 2048):
        for dtype in (torch.float32, torch.bfloat16):
            elem = torch.empty(0, dtype=dtype).element_size()
            n = math.ceil(target / (64 * dim * elem))
            gen = torch.Generator().manual_seed(0)
            cand_major = torch.nn.functional.normalize(torch.randn(n, 64, dim, generator=gen), dim=-1).to(dtype)
            token_major = cand_major.transpose(0, 1).contiguous()
            query = torch.nn.functional.normalize(torch.randn(16, dim, generator=gen), dim=-1)
            for budget in TRAINED_GROUPS:
                slab_bytes = n * budget.r_c * dim * elem
                ours = best_time(lambda b=budget, q=query, t=token_major: maxsim(q, t, b), repeats)
                theirs = best_time(lambda b=budget, q=query, c=cand_major: einsum_pattern(q, c, b), 1)
                flops_per_byte = 2 * budget.r_q / elem
                row = {
                    "dim": dim, "dtype": str(dtype).removeprefix("torch."), "n": n, "r_q": budget.r_q,
                    "r_c": budget.r_c, "kernel": "fused" if budget.r_q < GEMM_MIN_ROWS[dtype] else "gemm",
                    "ms": ours * 1e3, "candidates_per_s": n / ours, "gb_per_s": slab_bytes / ours / 1e9,
                    "roofline_fraction": slab_bytes / ours / bandwidth,
                    "attainable_fraction": slab_bytes / ours / min(bandwidth, peak / flops_per_byte),
                    "einsum_ms": theirs * 1e3, "speedup_vs_einsum": theirs / ours,
                }
                if maxsim_cpu is not None and dtype == torch.float32:
                    docs = np.ascontiguousarray(cand_major[:, : budget.r_c].numpy())
                    q = np.ascontiguousarray(query[: budget.r_q].numpy())
                    peer = best_time(lambda q=q, d=docs: maxsim_cpu.maxsim_scores(q, d), repeats)
                    row["maxsim_cpu_ms"], row["speedup_vs_maxsim_cpu"] = peer * 1e3, peer / ours
                    del docs
                rows.append(row)
                logger.info(
                    "D=%-4d %-8s N=%-6d (%2d,%2d) %-5s %9.2f ms %12.0f cand/s %6.1f GB/s roofline %.2f "
                    "attainable %.2f einsum x%.1f%s", dim, row["dtype"], n, budget.r_q, budget.r_c, row["kernel"],
                    row["ms"], row["candidates_per_s"], row["gb_per_s"], row["roofline_fraction"],
                    row["attainable_fraction"], row["speedup_vs_einsum"],
                    f" maxsim-cpu x{row['speedup_vs_maxsim_cpu']:.2f}" if "speedup_vs_maxsim_cpu" in row else "",
                )
    summary = {"dram_gb_per_s": bandwidth / 1e9, "gemm_peak_gflop_per_s": peak / 1e9, "quick": quick,
               "threads": torch.get_num_threads()}
    for key in ("roofline_fraction", "attainable_fraction", "speedup_vs_einsum"):
        summary[key] = {
            f"{b.r_q}x{b.r_c}": min(r[key] for r in rows if (r["r_q"], r["r_c"]) == (b.r_q, b.r_c))
            for b in TRAINED_GROUPS
        }
    summary["rows"] = rows
    return summary


def crossover() -> dict:
    """Both kernels at (4,16) on a 256 MiB slab for growing batches: where does BLAS start to win?"""
    budget, rows = Budget(4, 16), []
    for dim in (384, 2048):
        for dtype in (torch.float32, torch.bfloat16):
            n = (256 << 20) // (budget.r_c * dim * torch.empty(0, dtype=dtype).element_size())
            slab = torch.nn.functional.normalize(torch.randn(budget.r_c, n, dim), dim=-1).to(dtype)
            for batch in (1, 2, 4, 8, 16, 32):
                query = torch.nn.functional.normalize(torch.randn(batch, budget.r_q, dim), dim=-1)
                times = {kernel: best_time(lambda k=kernel, q=query, s=slab: maxsim(q, s, budget, kernel=k), 3)
                         for kernel in ("fused", "gemm")}
                rows.append({"dim": dim, "dtype": str(dtype).removeprefix("torch."), "query_vectors": batch * 4,
                             "fused_ms": times["fused"] * 1e3, "gemm_ms": times["gemm"] * 1e3})
                logger.info("D=%-4d %-8s %3d query vectors: fused %8.1f ms  gemm %8.1f ms", dim, rows[-1]["dtype"],
                            batch * 4, rows[-1]["fused_ms"], rows[-1]["gemm_ms"])
    return {"budget": [budget.r_q, budget.r_c], "rows": rows}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--quick", action="store_true", help="small slabs, runs in under a minute")
    mode.add_argument("--crossover", action="store_true", help="time both kernels for growing query batches")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    sys.stdout.write(json.dumps(crossover() if args.crossover else run(args.quick)) + "\n")


if __name__ == "__main__":
    main()
