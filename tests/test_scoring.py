import pytest
import torch
from conftest import unit

from metaembed.budget import TRAINED_GROUPS, Budget, BudgetError
from metaembed.scoring import maxsim, maxsim_pairs, token_matches, topk


def brute_force(queries: torch.Tensor, candidates: torch.Tensor, budget: Budget) -> torch.Tensor:
    """Reference MaxSim in float64, one (query, candidate) pair at a time."""
    out = torch.zeros(queries.shape[0], candidates.shape[0], dtype=torch.float64)
    for b, q in enumerate(queries.double()):
        for n, c in enumerate(candidates.double()):
            out[b, n] = (q[: budget.r_q] @ c[: budget.r_c].T).max(dim=1).values.sum()
    return out


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("block_size", [None, 1, 7, 1000])
def test_maxsim_equals_brute_force_every_budget(dtype, block_size, rng):
    queries, cands = unit(3, 16, 24, generator=rng), unit(37, 64, 24, generator=rng)
    stored = cands.to(dtype)
    token_major = stored.transpose(0, 1).contiguous()
    for budget in [*TRAINED_GROUPS, Budget(3, 5), Budget(16, 1), Budget(1, 64)]:
        got = maxsim(queries, token_major, budget, block_size=block_size)
        want = brute_force(queries, stored.float(), budget)
        assert got.dtype == torch.float32 and got.shape == (3, 37)
        torch.testing.assert_close(got.double(), want, atol=1e-4, rtol=1e-5)


def test_all_negative_similarities_are_not_beaten_by_padding():
    """Every similarity is negative: a zero-padded implementation would return 0 for short candidates."""
    q = torch.zeros(1, 2, 4)
    q[0, :, 0] = 1.0
    cands = torch.zeros(3, 4, 4)
    cands[:, :, 0] = -1.0
    cands[:, :, 1] = 0.0
    cands = torch.nn.functional.normalize(cands - 0.1 * torch.arange(12.0).view(3, 4, 1) / 12, dim=-1)
    budget = Budget(2, 4)
    got = maxsim(q, cands.transpose(0, 1).contiguous(), budget)
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
