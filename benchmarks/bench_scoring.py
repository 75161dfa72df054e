"""Scoring throughput per budget against the DRAM roofline and the peers' candidate-major patterns.

For each D in {384, 2048} and storage dtype in {fp32, bf16}, N is chosen so that the (16,64) slab
exceeds the CPU caches (>= 1 GiB; --quick: 96 MiB). One query is scored against all N candidates.
Printed per row: candidates/s, effective GB/s (bytes of the budget's slab / time), fraction of the
DRAM read bandwidth measured in this same run, and the speed-up over
  * the candidate-major slice + einsum pattern of colpali-engine / PyLate (blocks of 128 candidates),
  * maxsim-cpu (fp32 only; it needs a contiguous (N, r_c, D) copy per budget, made outside the timer).
The last line is one JSON object (roofline_fraction and speedup_vs_einsum per budget, worst case over
D and dtype, plus every row).

    python benchmarks/bench_scoring.py [--quick]
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
from metaembed.scoring import maxsim

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
    logger.info("DRAM read bandwidth %.1f GB/s (torch %s, %d threads)", bandwidth / 1e9, torch.__version__,
                torch.get_num_threads())
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
                row = {
                    "dim": dim, "dtype": str(dtype).removeprefix("torch."), "n": n, "r_q": budget.r_q,
                    "r_c": budget.r_c, "ms": ours * 1e3, "candidates_per_s": n / ours,
                    "gb_per_s": slab_bytes / ours / 1e9, "roofline_fraction": slab_bytes / ours / bandwidth,
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
                    "D=%-4d %-8s N=%-6d (%2d,%2d) %9.2f ms %12.0f cand/s %6.1f GB/s roofline %.2f "
                    "einsum x%.1f%s", dim, row["dtype"], n, budget.r_q, budget.r_c, row["ms"],
                    row["candidates_per_s"], row["gb_per_s"], row["roofline_fraction"], row["speedup_vs_einsum"],
                    f" maxsim-cpu x{row['speedup_vs_maxsim_cpu']:.2f}" if "speedup_vs_maxsim_cpu" in row else "",
                )
    summary = {"dram_gb_per_s": bandwidth / 1e9, "quick": quick, "threads": torch.get_num_threads()}
    for key in ("roofline_fraction", "speedup_vs_einsum"):
        summary[key] = {
            f"{b.r_q}x{b.r_c}": min(r[key] for r in rows if (r["r_q"], r["r_c"]) == (b.r_q, b.r_c))
            for b in TRAINED_GROUPS
        }
    summary["rows"] = rows
    return summary


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="small slabs, runs in under a minute")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    sys.stdout.write(json.dumps(run(args.quick)) + "\n")


if __name__ == "__main__":
    main()
