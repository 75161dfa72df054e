"""Scoring throughput per budget against the DRAM roofline and the peers' candidate-major patterns.

For each D in {384, 2048} and storage dtype in {fp32, bf16}, N is chosen so that the (16,64) slab
exceeds the CPU caches (>= 1 GiB; --quick: 96 MiB). One query is scored against all N candidates.
Printed per row: the kernel ``auto`` picked, candidates/s, effective GB/s (bytes of the budget's slab /
time), fraction of the DRAM read bandwidth measured in this same run (``roofline_fraction``), fraction
of the attainable roofline min(DRAM bandwidth, GEMM peak / FLOPs per byte) where the GEMM peak is a
2048^3 fp32 matmul timed in the same run (``attainable_fraction``: at (16,64) one query does 8 (fp32)
or 16 (bf16) FLOPs per byte read, more than this CPU can compute at DRAM speed), and the speed-up over
  * the candidate-major slice + einsum pattern of colpali-engine / PyLate (blocks of 128 candidates);
    ``speedup_vs_einsum_at_roofline`` is the most any scorer could reach: einsum time / DRAM time,
  * maxsim-cpu (fp32, first sweep only, not with --quick, each budget in a child process;
    ``pip install maxsim-cpu``).
The last line is one JSON object (roofline_fraction and speedup_vs_einsum per budget, worst case over
D and dtype, plus every row). ``--sweeps K`` repeats everything K times and reports per-row medians with
the range of the roofline fraction: on a shared machine one sweep can be off by tens of percent.

``--crossover`` instead times both kernels at (4,16) for batches of 1 to 64 queries (4 to 256 query
vectors), the measurement behind ``metaembed.scoring.GEMM_MIN_ROWS``.

    python benchmarks/bench_scoring.py [--quick | --crossover] [--sweeps K]
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import logging
import math
import multiprocessing
import statistics
import sys
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool

import numpy as np
import torch

from metaembed.budget import TRAINED_GROUPS, Budget
from metaembed.scoring import choose_kernel, maxsim

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


def make_data(n: int, dim: int, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """Seeded candidates ``(n, 64, dim)`` and one query ``(16, dim)``: the same arrays in any process."""
    gen = torch.Generator().manual_seed(0)
    cand_major = torch.nn.functional.normalize(torch.randn(n, 64, dim, generator=gen), dim=-1).to(dtype)
    return cand_major, torch.nn.functional.normalize(torch.randn(16, dim, generator=gen), dim=-1)


def maxsim_cpu_seconds(n: int, dim: int, budget: Budget, repeats: int) -> float:
    """maxsim-cpu's time at one budget on the fp32 arrays (run in a child process, see :func:`peer_seconds`)."""
    import maxsim_cpu

    cand_major, query = make_data(n, dim, torch.float32)
    docs = np.ascontiguousarray(cand_major[:, : budget.r_c].numpy())  # its layout, copied outside the timer
    del cand_major
    q = np.ascontiguousarray(query[: budget.r_q].numpy())
    return best_time(lambda: maxsim_cpu.maxsim_scores(q, docs), repeats)


def peer_seconds(n: int, dim: int, repeats: int) -> dict[tuple[int, int], float]:
    """maxsim-cpu timings per budget, each from its own child process; none where it is not installed.

    Children because maxsim-cpu's LIBXSMM backend segfaults here on some shapes (always at (1,1) in a
    fresh process, sometimes at D=2048 (16,64)), which would otherwise end the whole benchmark.
    """
    if importlib.util.find_spec("maxsim_cpu") is None:
        return {}
    out = {}
    for budget in TRAINED_GROUPS:
        with ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn")) as pool:
            try:
                out[(budget.r_q, budget.r_c)] = pool.submit(maxsim_cpu_seconds, n, dim, budget, repeats).result()
            except BrokenProcessPool:
                logger.warning("maxsim-cpu crashed at D=%d (%d,%d): no comparison there", dim, budget.r_q, budget.r_c)
    return out


def run(quick: bool, with_peer: bool) -> dict:
    target = (96 << 20) if quick else (1 << 30) + (64 << 20)
    repeats = 2 if quick else 3
    bandwidth = dram_read_bandwidth(max(target, 512 << 20), repeats)
    peak = gemm_peak_flops(repeats)
    logger.info("DRAM read bandwidth %.1f GB/s, fp32 GEMM peak %.1f GFLOP/s (torch %s, %d threads)",
                bandwidth / 1e9, peak / 1e9, torch.__version__, torch.get_num_threads())
    rows = []
    for dim in (384, 2048):
        for dtype in (torch.float32, torch.bfloat16):
            elem = torch.empty(0, dtype=dtype).element_size()
            n = math.ceil(target / (64 * dim * elem))
            peer = peer_seconds(n, dim, repeats) if with_peer and dtype == torch.float32 else {}
            cand_major, query = make_data(n, dim, dtype)
            token_major = cand_major.transpose(0, 1).contiguous()
            for budget in TRAINED_GROUPS:
                row = {
                    "dim": dim, "dtype": str(dtype).removeprefix("torch."), "n": n, "r_q": budget.r_q,
                    "r_c": budget.r_c, "kernel": choose_kernel(budget.r_q, dtype),
                    "slab_bytes": n * budget.r_c * dim * elem, "flops_per_byte": 2 * budget.r_q / elem,
                    "seconds": best_time(lambda b=budget, q=query, t=token_major: maxsim(q, t, b), repeats),
                    "einsum_seconds": best_time(
                        lambda b=budget, q=query, c=cand_major: einsum_pattern(q, c, b), repeats
                    ),
                }
                if (budget.r_q, budget.r_c) in peer:
                    row["maxsim_cpu_seconds"] = peer[(budget.r_q, budget.r_c)]
                rows.append(row)
                shown = derive(row, bandwidth, peak)
                logger.info(
                    "D=%-4d %-8s N=%-6d (%2d,%2d) %-5s %9.2f ms %12.0f cand/s %6.1f GB/s roofline %.2f "
                    "attainable %.2f einsum x%.1f (x%.1f at roofline)%s", dim, row["dtype"], n, budget.r_q,
                    budget.r_c, row["kernel"], shown["ms"], shown["candidates_per_s"], shown["gb_per_s"],
                    shown["roofline_fraction"], shown["attainable_fraction"], shown["speedup_vs_einsum"],
                    shown["speedup_vs_einsum_at_roofline"],
                    f" maxsim-cpu x{shown['speedup_vs_maxsim_cpu']:.2f}" if "speedup_vs_maxsim_cpu" in shown else "",
                )
    return {"dram_gb_per_s": bandwidth / 1e9, "gemm_peak_gflop_per_s": peak / 1e9, "rows": rows}


def derive(row: dict, bandwidth: float, peak: float) -> dict:
    """The reported figures of one measured row against a DRAM bandwidth (B/s) and GEMM peak (FLOP/s)."""
    seconds, slab = row["seconds"], row["slab_bytes"]
    out = {key: row[key] for key in ("dim", "dtype", "n", "r_q", "r_c", "kernel")}
    out.update({
        "ms": seconds * 1e3, "candidates_per_s": row["n"] / seconds, "gb_per_s": slab / seconds / 1e9,
        "roofline_fraction": slab / seconds / bandwidth,
        "attainable_fraction": slab / seconds / min(bandwidth, peak / row["flops_per_byte"]),
        "einsum_ms": row["einsum_seconds"] * 1e3, "speedup_vs_einsum": row["einsum_seconds"] / seconds,
        # The most any scorer could gain over einsum here: reading the slab once at DRAM speed.
        "speedup_vs_einsum_at_roofline": row["einsum_seconds"] / (slab / bandwidth),
    })
    if "maxsim_cpu_seconds" in row:
        out["maxsim_cpu_ms"] = row["maxsim_cpu_seconds"] * 1e3
        out["speedup_vs_maxsim_cpu"] = row["maxsim_cpu_seconds"] / seconds
    return out


def summarise(sweeps: list[dict], quick: bool) -> dict:
    """Per-row median times over the sweeps, against the best DRAM bandwidth and GEMM peak of any sweep.

    This machine's speed drifts by tens of percent between minutes (one sweep measured 12 GB/s of DRAM
    bandwidth after another measured 19.6); dividing by the best figure seen never flatters a row.
    Also the range of each row's roofline fraction and the worst case over D and dtype per budget.
    """
    bandwidth = max(s["dram_gb_per_s"] for s in sweeps) * 1e9
    peak = max(s["gemm_peak_gflop_per_s"] for s in sweeps) * 1e9
    rows = []
    for same_rows in zip(*(sweep["rows"] for sweep in sweeps), strict=True):
        median = dict(same_rows[0])
        for key in ("seconds", "einsum_seconds", "maxsim_cpu_seconds"):
            values = [r[key] for r in same_rows if key in r]
            if values:
                median[key] = statistics.median(values)
        row = derive(median, bandwidth, peak)
        fractions = [derive(r, bandwidth, peak)["roofline_fraction"] for r in same_rows]
        row["roofline_fraction_range"] = [min(fractions), max(fractions)]
        rows.append(row)
    summary = {
        "dram_gb_per_s": bandwidth / 1e9, "gemm_peak_gflop_per_s": peak / 1e9,
        "quick": quick, "threads": torch.get_num_threads(), "sweeps": len(sweeps),
    }
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
            for batch in (1, 2, 4, 8, 16, 32, 64):
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
    parser.add_argument("--sweeps", type=int, default=1, help="repeat the whole sweep; rows report medians")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    if args.crossover:
        result = crossover()
    else:
        # The peer runs once, and not in --quick: a child process per budget would break its one-minute budget.
        sweeps = [run(args.quick, with_peer=i == 0 and not args.quick) for i in range(max(1, args.sweeps))]
        result = summarise(sweeps, args.quick)
    sys.stdout.write(json.dumps(result) + "\n")


if __name__ == "__main__":
    main()
