"""Budgeted late-interaction (MaxSim) scoring over a token-major candidate store.

s(q, c) = sum_{i < r_q} max_{j < r_c} <q_i, c_j>  on L2-normalised vectors, with no division by r_q
(MetaEmbed paper, Sec. 3), so scores lie in [-r_q, r_q] and compare only within one budget.

Why token-major ``(R_c, N, D)``: MetaEmbed candidates always carry exactly R_c vectors, so a budget
prefix r_c is the contiguous slab ``store[:r_c]``, streamed once: by the fused kernels
(:mod:`metaembed.fused_maxsim`: dot products below 8 query vectors, an outer-product micro-kernel from
8) for one query or a small batch, or by one BLAS GEMM per candidate block for larger batches. The
common candidate-major layout with a 4-D einsum measured many times slower at middle budgets (see
benchmarks/bench_scoring.py). Nothing is padded, so a padded zero can never beat a real negative
similarity.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from metaembed.budget import Budget
from metaembed.fused_maxsim import SUPPORTED_DTYPES, fused_maxsim

#: How many query vectors (batch x r_q) must be scored at once before a BLAS GEMM per candidate block
#: beats the fused kernels: below it they read each byte once and (from 8 query vectors) compute with
#: an outer-product micro-kernel; above it, MKL's fp32 micro-kernel is faster. Half-precision storage
#: must be widened by a copy before BLAS sees it, which keeps the fused kernels ahead until about 256
#: query vectors, where the two meet. ``python benchmarks/bench_scoring.py --crossover`` on this CPU.
GEMM_MIN_ROWS = {torch.float32: 16, torch.bfloat16: 256, torch.float16: 256}
KERNELS = ("auto", "fused", "gemm")

#: Bytes of per-block intermediate results we aim to keep in a core's L2 cache.
_BLOCK_TARGET_BYTES = 1 << 20


def _as_batch(queries: torch.Tensor) -> torch.Tensor:
    if queries.dim() == 2:
        return queries.unsqueeze(0)
    if queries.dim() != 3:
        raise ValueError(f"queries must be (r_q, D) or (B, r_q, D), got shape {tuple(queries.shape)}")
    return queries


def choose_kernel(query_vectors: int, dtype: torch.dtype) -> str:
    """The kernel ``maxsim(kernel="auto")`` uses for this many query vectors (batch x r_q) and storage."""
    return "fused" if query_vectors < GEMM_MIN_ROWS[dtype] else "gemm"


def default_block_size(r_c: int, rows: int, dim: int, dtype: torch.dtype) -> int:
    """Candidates per block so that the block's ``(r_c, block, rows)`` similarities stay in cache.

    ``rows`` is the number of query vectors scored at once (batch x r_q). Half-precision blocks are
    also widened to fp32 (fp32 accumulation), and that copy must fit too.
    """
    per_candidate = r_c * rows * 4
    if dtype != torch.float32:
        per_candidate += r_c * dim * 4
    return max(16, _BLOCK_TARGET_BYTES // per_candidate)


def maxsim(
    queries: torch.Tensor,
    candidates: torch.Tensor,
    budget: Budget,
    block_size: int | None = None,
    kernel: str = "auto",
) -> torch.Tensor:
    """Score every query against every candidate at ``budget``.

    ``queries``: ``(B, R_q, D)`` or ``(R_q, D)``, any float dtype (only the first ``r_q`` rows are used).
    ``candidates``: token-major ``(R_c, N, D)`` in fp32, bf16 or fp16 (only ``[:r_c]`` is read).
    Returns ``(B, N)`` fp32 scores. Half-precision values are widened to fp32 before they are
    multiplied, so the result equals fp32 scoring of the stored (rounded) vectors.
    ``kernel``: ``"fused"`` (one query or a small batch), ``"gemm"`` (larger batches), or ``"auto"`` to
    pick by :data:`GEMM_MIN_ROWS`; ``block_size`` is the number of candidates per GEMM block or fused task.
    """
    if kernel not in KERNELS:
        raise ValueError(f"kernel must be one of {KERNELS}, got {kernel!r}")
    q = _as_batch(queries)
    if candidates.dim() != 3:
        raise ValueError(f"candidates must be token-major (R_c, N, D), got shape {tuple(candidates.shape)}")
    budget.validate(q.shape[1], candidates.shape[0])
    if q.shape[-1] != candidates.shape[-1]:
        raise ValueError(f"dimension mismatch: queries D={q.shape[-1]}, candidates D={candidates.shape[-1]}")
    n_queries, r_q, r_c = q.shape[0], budget.r_q, budget.r_c
    n_cand, dim = candidates.shape[1], candidates.shape[2]
    rows = n_queries * r_q
    slab = candidates[:r_c]
    if slab.dtype not in SUPPORTED_DTYPES:
        raise ValueError(f"candidates must be float32, bfloat16 or float16, got {slab.dtype}")
    if (choose_kernel(rows, slab.dtype) if kernel == "auto" else kernel) == "fused":
        return fused_maxsim(q, slab, r_q, block_size)
    # (D, B*r_q): one GEMM per candidate block scores every query vector of every query at once.
    q_t = q[:, :r_q].reshape(rows, dim).to(torch.float32).T.contiguous()
    widen = slab.dtype != torch.float32
    step = min(block_size or default_block_size(r_c, rows, dim, slab.dtype), max(n_cand, 1))
    out = torch.empty(n_queries, n_cand, dtype=torch.float32)
    # Buffers are allocated once: fresh large tensors per block cost page faults that dominated runtime.
    wide_buf = torch.empty(r_c, step, dim, dtype=torch.float32) if widen else None
    sims_buf = torch.empty(r_c, step, rows, dtype=torch.float32)
    best_buf = torch.empty(step, rows, dtype=torch.float32)
    for start in range(0, n_cand, step):
        width = min(step, n_cand - start)
        block = slab[:, start : start + width]
        sims = sims_buf[:, :width]  # (r_c, nb, B*r_q)
        if wide_buf is not None and width == step:
            # The widened copy is contiguous, so all r_c token slabs form one (r_c*nb, D) GEMM.
            torch.mm(wide_buf.copy_(block).view(-1, dim), q_t, out=sims_buf.view(-1, rows))
        elif wide_buf is not None:
            torch.matmul(wide_buf[:, :width].copy_(block), q_t, out=sims)
        else:
            torch.matmul(block, q_t, out=sims)
        best = torch.amax(sims, dim=0, out=best_buf[:width])  # MaxSim over candidate vectors
        out[:, start : start + width] = best.view(width, n_queries, r_q).sum(dim=2).T
    return out


def maxsim_pairs(queries: torch.Tensor, candidates: torch.Tensor, budget: Budget) -> torch.Tensor:
    """Score ``(B, R_q, D)`` queries against candidate-major ``(M, R_c, D)`` candidates -> ``(B, M)``.

    A convenience for small per-query candidate lists (MMEB-style evaluation, training-free checks).
    """
    if candidates.dim() != 3:
        raise ValueError(f"candidates must be (M, R_c, D), got shape {tuple(candidates.shape)}")
    budget.validate(_as_batch(queries).shape[1], candidates.shape[1])
    token_major = candidates[:, : budget.r_c].transpose(0, 1).contiguous()
    return maxsim(queries, token_major, budget)


def topk(scores: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact top-k per row with ties broken by lower position, so results are reproducible.

    ``torch.topk`` does not promise an order among equal values; we find the k-th value with it and
    then stable-sort only the (usually few) candidates at or above that value.
    """
    if scores.dim() == 1:
        values, indices = topk(scores.unsqueeze(0), k)
        return values[0], indices[0]
    k = min(k, scores.shape[1])
    if k <= 0:
        empty = torch.empty(scores.shape[0], 0)
        return empty, empty.long()
    kth = torch.topk(scores, k, dim=1).values[:, -1:]
    values_out, indices_out = [], []
    for row, threshold in zip(scores, kth, strict=True):
        positions = torch.nonzero(row >= threshold, as_tuple=True)[0]
        order = torch.sort(row[positions], descending=True, stable=True).indices[:k]
        indices_out.append(positions[order])
        values_out.append(row[positions[order]])
    return torch.stack(values_out), torch.stack(indices_out)


@dataclass(frozen=True)
class TokenMatch:
    """Which candidate Meta Token each query Meta Token matched, for one (query, candidate) pair."""

    similarity: torch.Tensor  #: (r_q, r_c) cosine similarities
    best: torch.Tensor  #: (r_q,) index of the best candidate vector per query vector
    contributions: torch.Tensor  #: (r_q,) each query vector's max similarity (its share of the score)
    score: float  #: sum of contributions == MaxSim score at this budget


def token_matches(query: torch.Tensor, candidate: torch.Tensor, budget: Budget) -> TokenMatch:
    """The data behind the token-match heatmap: ``query (R_q, D)``, ``candidate (R_c, D)``."""
    if query.dim() != 2 or candidate.dim() != 2:
        raise ValueError("token_matches takes one query (R_q, D) and one candidate (R_c, D)")
    budget.validate(query.shape[0], candidate.shape[0])
    sim = query[: budget.r_q].to(torch.float32) @ candidate[: budget.r_c].to(torch.float32).T
    contributions, best = sim.max(dim=1)  # first maximal index on ties
    return TokenMatch(sim, best, contributions, float(contributions.sum()))


def match_counts(query: torch.Tensor, candidates: torch.Tensor, budget: Budget) -> torch.Tensor:
    """``(r_c,)`` how many of the query's ``r_q`` vectors have their MaxSim maximum on each candidate vector,
    summed over ``candidates`` ``(n, R_c, D)`` (ties to the lower index, as in :func:`token_matches`)."""
    sim = torch.einsum("id,njd->nij", query[: budget.r_q].float(), candidates[:, : budget.r_c].float())
    return torch.bincount(sim.argmax(-1).flatten(), minlength=budget.r_c)
