import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch
from conftest import unit

from metaembed import fused_maxsim, outer_maxsim
from metaembed.budget import TRAINED_GROUPS, Budget, BudgetError
from metaembed.scoring import GEMM_MIN_ROWS, KERNELS, choose_kernel, maxsim, maxsim_pairs, token_matches, topk


def brute_force(queries: torch.Tensor, candidates: torch.Tensor, budget: Budget) -> torch.Tensor:
    """Reference MaxSim in float64, one (query, candidate) pair at a time."""
    out = torch.zeros(queries.shape[0], candidates.shape[0], dtype=torch.float64)
    for b, q in enumerate(queries.double()):
        for n, c in enumerate(candidates.double()):
            out[b, n] = (q[: budget.r_q] @ c[: budget.r_c].T).max(dim=1).values.sum()
    return out


@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("block_size", [None, 1, 7, 1000])
def test_maxsim_equals_brute_force_every_budget(kernel, dtype, block_size, rng):
    # D = 37 is not a multiple of any SIMD width, so the kernels' remainder loops are exercised too.
    queries, cands = unit(3, 16, 37, generator=rng), unit(37, 64, 37, generator=rng)
    stored = cands.to(dtype)
    token_major = stored.transpose(0, 1).contiguous()
    for budget in [*TRAINED_GROUPS, Budget(3, 5), Budget(16, 1), Budget(1, 64)]:
        got = maxsim(queries, token_major, budget, block_size=block_size, kernel=kernel)
        want = brute_force(queries, stored.float(), budget)
        assert got.dtype == torch.float32 and got.shape == (3, 37)
        torch.testing.assert_close(got.double(), want, atol=1e-4, rtol=1e-5)


def test_auto_kernel_switches_at_the_measured_crossover(rng, monkeypatch):
    """``auto`` must give the same scores on both sides of the crossover, and really use both kernels."""
    import metaembed.scoring as scoring

    used = []
    real_fused = scoring.fused_maxsim
    monkeypatch.setattr(scoring, "fused_maxsim", lambda *a: used.append("fused") or real_fused(*a))
    assert choose_kernel(1, torch.float32) == choose_kernel(8, torch.bfloat16) == "fused"
    assert choose_kernel(GEMM_MIN_ROWS[torch.float32], torch.float32) == "gemm"
    assert choose_kernel(GEMM_MIN_ROWS[torch.float32], torch.bfloat16) == "fused"  # widening moves the crossover
    cands = unit(16, 50, 24, generator=rng)
    for n_queries in (1, GEMM_MIN_ROWS[torch.float32] // 4, GEMM_MIN_ROWS[torch.float32]):
        q = unit(n_queries, 4, 24, generator=rng)
        used.clear()
        torch.testing.assert_close(maxsim(q, cands, Budget(4, 16)), maxsim(q, cands, Budget(4, 16), kernel="gemm"))
        assert used == (["fused"] if n_queries * 4 < GEMM_MIN_ROWS[torch.float32] else [])


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_fused_kernel_reads_prefix_views_and_strided_inputs(dtype, rng):
    """An index's live vectors are a prefix view of a larger buffer; any other layout is copied first."""
    q, buffer = unit(2, 8, 40, generator=rng), unit(16, 30, 40, generator=rng).to(dtype)
    live = buffer[:, :23]  # tokens are 30 rows apart, only 23 are scored
    want = brute_force(q, live.transpose(0, 1).float(), Budget(8, 16))
    for view in (live, live.transpose(1, 2).contiguous().transpose(1, 2)):
        got = maxsim(q, view, Budget(8, 16), kernel="fused")
        torch.testing.assert_close(got.double(), want, atol=1e-4, rtol=1e-5)


def test_concurrent_callers_get_their_own_scores(rng):
    """Gradio serves visitors on threads; each caller must get the scores of its own query."""
    cands = unit(64, 300, 32, generator=rng).to(torch.bfloat16)
    queries = [unit(16, 32, generator=rng) for _ in range(8)]
    want = [maxsim(q, cands, Budget(8, 64)) for q in queries]
    with ThreadPoolExecutor(max_workers=4) as pool:
        got = list(pool.map(lambda q: maxsim(q, cands, Budget(8, 64), block_size=16), queries * 3))
    for i, scores in enumerate(got):
        torch.testing.assert_close(scores, want[i % 8])


@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("budget", [Budget(2, 64), Budget(16, 64)], ids=str)  # 4 and 32 query vectors
def test_exact_ties_score_identically_whatever_the_position(kernel, budget, rng):
    """Identical candidates anywhere in the store (tile, task or tail) get bit-identical scores."""
    base = unit(1, 64, 33, generator=rng)
    others = unit(40, 64, 33, generator=rng)
    cands = torch.cat([others[:5], base, others[5:22], base, others[22:], base])  # positions 5, 23, 42
    scores = maxsim(unit(2, 16, 33, generator=rng), cands.transpose(0, 1).contiguous(), budget,
                    block_size=9, kernel=kernel)
    assert torch.equal(scores[:, 5], scores[:, 23]) and torch.equal(scores[:, 5], scores[:, 42])


@pytest.mark.parametrize("kernel", KERNELS)
def test_all_negative_similarities_are_not_beaten_by_padding(kernel):
    """Every similarity is negative: a zero-padded implementation would return 0 for short candidates."""
    q = torch.zeros(1, 2, 4)
    q[0, :, 0] = 1.0
    cands = torch.zeros(3, 4, 4)
    cands[:, :, 0] = -1.0
    cands[:, :, 1] = 0.0
    cands = torch.nn.functional.normalize(cands - 0.1 * torch.arange(12.0).view(3, 4, 1) / 12, dim=-1)
    budget = Budget(2, 4)
    got = maxsim(q, cands.transpose(0, 1).contiguous(), budget, kernel=kernel)
    assert (got < 0).all()
    torch.testing.assert_close(got.double(), brute_force(q, cands, budget), atol=1e-6, rtol=0)


def test_prefix_property(rng):
    """Budget (r_q, r_c) on full vectors equals the full budget on truncated vectors."""
    q, c = unit(2, 16, 32, generator=rng), unit(20, 64, 32, generator=rng)
    for budget in TRAINED_GROUPS:
        full = maxsim(q, c.transpose(0, 1).contiguous(), budget)
        trunc_q, trunc_c = q[:, : budget.r_q].clone(), c[:, : budget.r_c].transpose(0, 1).contiguous()
        torch.testing.assert_close(full, maxsim(trunc_q, trunc_c, Budget(budget.r_q, budget.r_c)))
        torch.testing.assert_close(full, maxsim_pairs(q, c, budget))


def test_single_query_and_batch_agree_and_scores_unnormalised(rng):
    q, c = unit(4, 16, 16, generator=rng), unit(9, 64, 16, generator=rng).transpose(0, 1).contiguous()
    batch = maxsim(q, c, Budget(8, 16))
    for i in range(4):
        torch.testing.assert_close(maxsim(q[i], c, Budget(8, 16))[0], batch[i])
    assert batch.abs().max() <= 8.0 + 1e-5
    identical = maxsim(q[:1], q[:1].expand(1, 16, 16).transpose(0, 1).contiguous(), Budget(16, 16))
    assert identical.item() == pytest.approx(16.0, abs=1e-4)  # sum, not mean, over r_q


def test_budget_checked_against_inputs(rng):
    q, c = unit(1, 4, 8, generator=rng), unit(8, 5, 8, generator=rng)
    with pytest.raises(BudgetError, match="r_q=8"):
        maxsim(q, c, Budget(8, 2))
    with pytest.raises(BudgetError, match="r_c=16"):
        maxsim(q, c, Budget(2, 16))
    with pytest.raises(ValueError, match="dimension mismatch"):
        maxsim(unit(1, 4, 7, generator=rng), c, Budget(1, 1))
    with pytest.raises(ValueError, match="kernel must be one of"):
        maxsim(q, c, Budget(1, 1), kernel="fast")
    with pytest.raises(ValueError, match="float32, bfloat16 or float16"):
        maxsim(q, c.double(), Budget(1, 1))


def test_topk_breaks_ties_by_position():
    scores = torch.tensor([[0.5, 0.9, 0.9, 0.1, 0.9, 0.5], [1.0, 1.0, 1.0, 1.0, 1.0, 1.0]])
    values, indices = topk(scores, 4)
    assert indices.tolist() == [[1, 2, 4, 0], [0, 1, 2, 3]]
    assert values[0].tolist() == pytest.approx([0.9, 0.9, 0.9, 0.5])
    for _ in range(5):  # stable across calls
        assert topk(scores, 4)[1].tolist() == indices.tolist()
    assert topk(scores[0], 10)[1].tolist() == [1, 2, 4, 0, 5, 3]


def test_token_matches_decompose_the_score(rng):
    q, c = unit(16, 32, generator=rng), unit(64, 32, generator=rng)
    for budget in TRAINED_GROUPS:
        m = token_matches(q, c, budget)
        assert m.similarity.shape == (budget.r_q, budget.r_c)
        assert m.best.shape == (budget.r_q,)
        for i in range(budget.r_q):
            assert m.contributions[i] == m.similarity[i].max()
            assert m.similarity[i, m.best[i]] == m.contributions[i]
        total = maxsim(q, c.unsqueeze(1), budget).item()
        assert m.score == pytest.approx(total, abs=1e-5)


def test_warm_up_compiles_both_kernels_for_every_storage_dtype():
    """In a fresh interpreter, so kernels compiled by other tests cannot make it pass."""
    code = ("from metaembed import fused_maxsim; fused_maxsim.warm_up(); "
            "print([sorted(str(sig[1].dtype) for sig in k.signatures) "
            "for k in (fused_maxsim._kernel, fused_maxsim.outer_kernel)])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == str([["float32", "int16", "uint16"]] * 2)  # fp32, fp16 bits, bf16 bits


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_outer_product_kernel_across_spans_tiles_and_pieces(dtype, rng, monkeypatch):
    """From 8 query vectors on: more candidates than one span, a partial last tile, D below, on, across and
    off the micro-kernel's pieces (odd D leaves one unpaired element; the micro-kernel copies the next
    tile's full pieces, the loop a partial last one), one task or several."""
    calls = []
    real = fused_maxsim.outer_kernel
    monkeypatch.setattr(fused_maxsim, "outer_kernel", lambda *args: calls.append(args[5:7]) or real(*args))
    n = outer_maxsim.SPAN + outer_maxsim.TILE_ROWS + 3
    for dim in (37, outer_maxsim.CHUNK + 2, 2 * outer_maxsim.CHUNK, 2 * outer_maxsim.CHUNK + 1):
        cands = unit(n, 16, dim, generator=rng).to(dtype)
        token_major = cands.transpose(0, 1).contiguous()
        for n_queries, budget in ((1, Budget(8, 16)), (3, Budget(16, 5))):
            q = unit(n_queries, 16, dim, generator=rng)
            want = brute_force(q, cands.float(), budget)
            for block_size in (n, 500):
                calls.clear()
                got = maxsim(q, token_major, budget, block_size=block_size, kernel="fused")
                assert max(stop for _, stop in calls) == n
                torch.testing.assert_close(got.double(), want, atol=1e-4, rtol=1e-5)


def test_avx2_tiling_when_numba_targets_avx2(tmp_path):
    """Machines without AVX-512 get the 6-row, two-register tile: forced here through numba's own
    target settings, in a fresh interpreter with its own kernel cache."""
    code = """
import torch
from metaembed import outer_maxsim
from metaembed.budget import Budget
from metaembed.scoring import maxsim
g = torch.Generator().manual_seed(0)
q = torch.nn.functional.normalize(torch.randn(2, 16, 45, generator=g), dim=-1)
c = torch.nn.functional.normalize(torch.randn(16, 23, 45, generator=g), dim=-1).to(torch.bfloat16)
got = maxsim(q, c, Budget(16, 16), kernel="fused").double()
sims = torch.einsum("bqd,jnd->bnqj", q.double(), c.double())
want = sims.max(dim=3).values.sum(dim=2)
print(outer_maxsim.LANES, outer_maxsim.TILE_ROWS, float((got - want).abs().max()))
"""
    env = {**os.environ, "NUMBA_CPU_NAME": "haswell", "NUMBA_CACHE_DIR": str(tmp_path),
           "NUMBA_CPU_FEATURES": "+64bit,+avx,+avx2,+bmi,+bmi2,+cmov,+cx16,+f16c,+fma,+fxsr,+lzcnt,+mmx,+movbe,"
                                 "+popcnt,+sse,+sse2,+sse3,+sse4.1,+sse4.2,+ssse3,+xsave,-avx512f"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env).stdout
    lanes, tile_rows, error = out.split()
    assert (lanes, tile_rows) == ("8", "6")
    assert float(error) < 1e-4
