"""Fused MaxSim kernels for one query or a small batch: read each stored element once, widen it on chip.

Why hand-written (numba) rather than a library: at small budgets one query has 1-8 vectors, so scoring
is a skinny GEMM that should run at DRAM speed, and BLAS reaches about half of it; bf16/fp16 storage
is worse, because torch has no CPU GEMM that reads half precision and accumulates in fp32 with fp32
outputs, so every block had to be widened by a separate copy first (measured at 0.1-0.2 of the DRAM
roofline). No maintained package scores MaxSim from token-major half-precision storage (maxsim-cpu
reads fp32 candidate-major only). This kernel computes a 4 candidate-vector x 4 query-vector tile of dot
products per pass over D (4 x 2 and 4 x 1 for the last query vectors, so r_q = 1 or 2 computes nothing
padded), widening bf16/fp16 to fp32 as it loads, and keeps the running max per
(candidate, query vector) in a small array that stays in L1, so nothing but the scores is written.

From 8 query vectors on (r_q >= 8, or batches), scoring is bound by arithmetic and a second kernel
takes over: the outer-product micro-kernel of :mod:`metaembed.outer_maxsim` (one broadcast per candidate
element feeds 8 query vectors), fed tile by tile with widened candidate vectors and streaming each
token's slab in order.

Work is split into chunks of candidates run on a thread pool (the kernel releases the GIL). A pool
rather than numba's own ``prange``: numba's default threading layer is not safe when two server
threads score at once, which a Gradio app does.
"""

from __future__ import annotations

import math
import os
from concurrent.futures import ThreadPoolExecutor
from functools import cache

import numpy as np
import torch
from llvmlite import ir
from numba import njit, types
from numba.core import cgutils
from numba.extending import intrinsic

from metaembed.outer_maxsim import outer_kernel, pack_queries
from metaembed.widening import BITS_AS, widen

#: Float reassociation lets LLVM vectorise the dot products; no-NaN/no-inf flags are left off because
#: the running maxima start at -inf.
_FASTMATH = {"reassoc", "contract"}

#: Software prefetch, for short vectors only. With rows of up to 2 KiB (D=384) fetching the vectors 16
#: candidates ahead measured 0.58-0.65 -> 0.72-0.87 of the DRAM roofline at (1,1) in fp32; with longer
#: rows (D=2048) the extra instructions cost more than they bring (0.90 -> 0.59 at (4,8)), so the
#: hardware prefetcher is left alone there. A step of 16 elements touches every 64-byte line of fp32.
_PREFETCH_MAX_ROW_BYTES = 2048
_PREFETCH_AHEAD = 16
_PREFETCH_STEP = 16


@intrinsic
def _prefetch(typingctx, arr, row, col):
    """Ask for the cache line holding arr[row, col] (no fault, no result)."""

    def codegen(context, builder, sig, args):
        aryty = sig.args[0]
        ary = context.make_array(aryty)(context, builder, args[0])
        ptr = cgutils.get_item_pointer(context, builder, aryty, ary, [args[1], args[2]], wraparound=False)
        i8p = ir.IntType(8).as_pointer()
        fnty = ir.FunctionType(ir.VoidType(), [i8p, ir.IntType(32), ir.IntType(32), ir.IntType(32)])
        fn = cgutils.get_or_insert_function(builder.module, fnty, "llvm.prefetch.p0")
        i32 = ir.IntType(32)
        builder.call(fn, [builder.bitcast(ptr, i8p), ir.Constant(i32, 0), ir.Constant(i32, 3), ir.Constant(i32, 1)])
        return context.get_dummy_value()

    return types.none(arr, row, col), codegen


@njit(inline="always")
def _keep_max(best, k, i, s0, s1, s2, s3):
    """Raise candidate k's running maxima for query vectors i..i+3 (inlined: scalars stay in registers)."""
    best[k, i] = max(best[k, i], s0)
    best[k, i + 1] = max(best[k, i + 1], s1)
    best[k, i + 2] = max(best[k, i + 2], s2)
    best[k, i + 3] = max(best[k, i + 3], s3)


@njit(fastmath=_FASTMATH, nogil=True, cache=True)
def _kernel(queries, store, token_stride, r_c, r_q, start, stop, out):
    # queries (B * r_q, D) fp32; candidate c's vector j is store[j * token_stride + c];
    # out[b, c] receives query b's score for every candidate c in [start, stop).
    rows, dim = queries.shape
    best = np.empty((4, rows), np.float32)
    prefetch = dim * store.itemsize <= _PREFETCH_MAX_ROW_BYTES and stop - start >= 4
    for c0 in range(start, stop, 4):
        c1, c2, c3 = min(c0 + 1, stop - 1), min(c0 + 2, stop - 1), min(c0 + 3, stop - 1)
        best[:] = -np.inf
        for j in range(r_c):
            base = j * token_stride
            v0, v1, v2, v3 = store[base + c0], store[base + c1], store[base + c2], store[base + c3]
            if prefetch:
                ahead = base + min(c0 + _PREFETCH_AHEAD, stop - 4)
                for r in range(ahead, ahead + 4):
                    for d in range(0, dim, _PREFETCH_STEP):
                        _prefetch(store, r, d)
            i = 0
            while i + 4 <= rows:  # 4 candidate vectors x 4 query vectors per pass over D
                q0, q1, q2, q3 = queries[i], queries[i + 1], queries[i + 2], queries[i + 3]
                a00 = a01 = a02 = a03 = a10 = a11 = a12 = a13 = np.float32(0)
                a20 = a21 = a22 = a23 = a30 = a31 = a32 = a33 = np.float32(0)
                for d in range(dim):
                    x0, x1, x2, x3 = widen(v0[d]), widen(v1[d]), widen(v2[d]), widen(v3[d])
                    y0, y1, y2, y3 = q0[d], q1[d], q2[d], q3[d]
                    a00 += x0 * y0
                    a01 += x0 * y1
                    a02 += x0 * y2
                    a03 += x0 * y3
                    a10 += x1 * y0
                    a11 += x1 * y1
                    a12 += x1 * y2
                    a13 += x1 * y3
                    a20 += x2 * y0
                    a21 += x2 * y1
                    a22 += x2 * y2
                    a23 += x2 * y3
                    a30 += x3 * y0
                    a31 += x3 * y1
                    a32 += x3 * y2
                    a33 += x3 * y3
                _keep_max(best, 0, i, a00, a01, a02, a03)
                _keep_max(best, 1, i, a10, a11, a12, a13)
                _keep_max(best, 2, i, a20, a21, a22, a23)
                _keep_max(best, 3, i, a30, a31, a32, a33)
                i += 4
            if i + 2 <= rows:  # two of the last rows % 4 query vectors
                a00 = a01 = a10 = a11 = a20 = a21 = a30 = a31 = np.float32(0)
                for d in range(dim):
                    x0, x1, x2, x3 = widen(v0[d]), widen(v1[d]), widen(v2[d]), widen(v3[d])
                    y0, y1 = queries[i, d], queries[i + 1, d]
                    a00 += x0 * y0
                    a01 += x0 * y1
                    a10 += x1 * y0
                    a11 += x1 * y1
                    a20 += x2 * y0
                    a21 += x2 * y1
                    a30 += x3 * y0
                    a31 += x3 * y1
                best[0, i] = max(best[0, i], a00)
                best[0, i + 1] = max(best[0, i + 1], a01)
                best[1, i] = max(best[1, i], a10)
                best[1, i + 1] = max(best[1, i + 1], a11)
                best[2, i] = max(best[2, i], a20)
                best[2, i + 1] = max(best[2, i + 1], a21)
                best[3, i] = max(best[3, i], a30)
                best[3, i + 1] = max(best[3, i + 1], a31)
                i += 2
            while i < rows:  # the last query vector, if any: no padded rows to compute
                q0 = queries[i]
                a0 = a1 = a2 = a3 = np.float32(0)
                for d in range(dim):
                    y0 = q0[d]
                    a0 += widen(v0[d]) * y0
                    a1 += widen(v1[d]) * y0
                    a2 += widen(v2[d]) * y0
                    a3 += widen(v3[d]) * y0
                best[0, i] = max(best[0, i], a0)
                best[1, i] = max(best[1, i], a1)
                best[2, i] = max(best[2, i], a2)
                best[3, i] = max(best[3, i], a3)
                i += 1
        for k in range(min(4, stop - c0)):
            for b in range(out.shape[0]):
                total = np.float32(0)
                for i in range(b * r_q, (b + 1) * r_q):
                    total += best[k, i]
                out[b, c0 + k] = total


SUPPORTED_DTYPES = frozenset(BITS_AS)


#: From this many query vectors (batch x r_q) on, the outer-product micro-kernel (metaembed.outer_maxsim)
#: replaces the dot-product tile: below it, its 8-vector groups would be partly padding.
OUTER_MIN_ROWS = 8

#: Fewest candidates per pool task by default: below it, handing work to a thread costs more than it saves.
_MIN_TASK = 256


@cache
def _pool() -> ThreadPoolExecutor:
    return ThreadPoolExecutor(max_workers=os.cpu_count() or 1, thread_name_prefix="maxsim")


def _flat_store(slab: torch.Tensor) -> tuple[np.ndarray, int]:
    """A C-contiguous ``(rows, D)`` numpy view covering ``slab`` and the stride between its tokens.

    An index's live vectors are a prefix view of a larger buffer, so tokens are not adjacent; the span
    between them is real memory of the same buffer, so one 2-D view covers all tokens without a copy.
    """
    n_tokens, n_cand, dim = slab.shape
    if slab.stride(2) != 1 or slab.stride(1) != dim or slab.stride(0) % dim:
        slab = slab.contiguous()
    token_stride = slab.stride(0) // dim if n_tokens > 1 else n_cand
    span = torch.as_strided(slab, ((n_tokens - 1) * token_stride + n_cand, dim), (dim, 1))
    return span.view(BITS_AS[slab.dtype]).numpy(), token_stride


def fused_maxsim(queries: torch.Tensor, slab: torch.Tensor, r_q: int, block_size: int | None = None) -> torch.Tensor:
    """``queries (B, r_q, D)`` against the token-major ``slab (r_c, N, D)`` -> ``(B, N)`` fp32 scores.

    ``block_size`` is the number of candidates per task on the thread pool (default: one task per
    torch thread, at least ``_MIN_TASK`` candidates each). Inputs are already validated by
    :func:`metaembed.scoring.maxsim`.
    """
    n_queries, dim = queries.shape[0], queries.shape[-1]
    r_c, n_cand = slab.shape[0], slab.shape[1]
    rows = n_queries * r_q
    flat_queries = queries[:, :r_q].reshape(rows, dim).to(torch.float32).contiguous()
    out = torch.empty(n_queries, n_cand, dtype=torch.float32)
    if n_cand == 0:
        return out
    store, token_stride = _flat_store(slab)
    step = block_size or max(_MIN_TASK, math.ceil(n_cand / torch.get_num_threads()))
    if rows >= OUTER_MIN_ROWS:
        kernel, q_np = outer_kernel, pack_queries(flat_queries).numpy()
    else:
        kernel, q_np = _kernel, flat_queries.numpy()
    out_np = out.numpy()
    tasks = [(q_np, store, token_stride, r_c, r_q, start, min(start + step, n_cand), out_np)
             for start in range(0, n_cand, step)]
    # The caller's thread takes the first task itself: a small gallery then never waits on the pool.
    jobs = [_pool().submit(kernel, *task) for task in tasks[1:]]
    kernel(*tasks[0])
    for job in jobs:
        job.result()
    return out


def warm_up() -> None:
    """Compile (or load from numba's on-disk cache) both kernels for every storage dtype.

    The first compilation takes seconds per kernel and dtype; a server calls this at start-up so that no
    visitor's first search pays it (and shows it as MaxSim latency).
    """
    for dtype in SUPPORTED_DTYPES:
        for r_q in (1, OUTER_MIN_ROWS):  # the dot-product and the outer-product kernel
            fused_maxsim(torch.zeros(1, r_q, 8), torch.zeros(1, 4, 8, dtype=dtype), r_q)
