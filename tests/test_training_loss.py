"""MMR loss against a loop-by-loop reference (no einsum), for every group and every mode."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from metaembed.budget import TRAINED_GROUPS, Budget
from metaembed.training.loss import MMRLoss


def reference_infonce(q, cands, r_q, r_c, tau):
    """Budgeted MaxSim InfoNCE written with python loops; positive of query i is candidate i."""
    total = 0.0
    for i in range(q.shape[0]):
        logits = []
        for n in range(cands.shape[0]):
            s = 0.0
            for a in range(r_q):
                s += max(float(q[i, a] @ cands[n, b]) for b in range(r_c))
            logits.append(s / tau)
        log_z = math.log(sum(math.exp(x - max(logits)) for x in logits)) + max(logits)
        total += log_z - logits[i]
    return total / q.shape[0]


def _batch(b=3, m=None, r_q=16, r_c=64, d=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    q = F.normalize(torch.randn(b, r_q, d, generator=g, dtype=torch.float64), dim=-1)
    pos = F.normalize(torch.randn(b, r_c, d, generator=g, dtype=torch.float64), dim=-1)
    neg = None if m is None else F.normalize(torch.randn(m, r_c, d, generator=g, dtype=torch.float64), dim=-1)
    return q, pos, neg


@pytest.mark.parametrize("m", [None, 3, 1])
@pytest.mark.parametrize("mode", ["mmr", "no-mmr", "single-vector"])
def test_loss_matches_loop_reference(mode, m):
    q, pos, neg = _batch(m=m)
    tau = 0.05
    out = MMRLoss(tau=tau, mode=mode)(q, pos, neg)
    cands = pos if neg is None else torch.cat([pos, neg])
    expected_groups = {"mmr": list(TRAINED_GROUPS), "no-mmr": [Budget(16, 64)], "single-vector": [Budget(1, 1)]}[mode]
    assert list(out.per_group) == [f"{g.r_q}x{g.r_c}" for g in expected_groups]
    total = 0.0
    for g in expected_groups:
        ref = reference_infonce(q, cands, g.r_q, g.r_c, tau)
        assert out.per_group[f"{g.r_q}x{g.r_c}"] == pytest.approx(ref, rel=1e-5, abs=1e-6)
        total += ref
    assert float(out.total) == pytest.approx(total, rel=1e-5)


def test_normalized_scores_equal_a_per_group_temperature():
    """normalize_scores divides each group's MaxSim by r_q, i.e. temperature tau * r_q for that group."""
    q, pos, neg = _batch(m=2)
    tau = 0.03
    out = MMRLoss(tau=tau, normalize_scores=True)(q, pos, neg)
    cands = torch.cat([pos, neg])
    for g in TRAINED_GROUPS:
        ref = reference_infonce(q, cands, g.r_q, g.r_c, tau * g.r_q)
        assert out.per_group[f"{g.r_q}x{g.r_c}"] == pytest.approx(ref, rel=1e-5, abs=1e-6)
    assert float(out.total) != pytest.approx(float(MMRLoss(tau=tau)(q, pos, neg).total), rel=1e-3)


def test_weights_and_hard_negatives_change_the_loss():
    q, pos, neg = _batch(m=3)
    plain = MMRLoss(tau=0.03)(q, pos, None)
    with_neg = MMRLoss(tau=0.03)(q, pos, neg)
    # more negatives can only raise each InfoNCE term
    for key in plain.per_group:
        assert with_neg.per_group[key] > plain.per_group[key]
    weights = [0.0, 0.0, 0.0, 0.0, 2.0]
    weighted = MMRLoss(tau=0.03, weights=weights)(q, pos, neg)
    assert float(weighted.total) == pytest.approx(2 * with_neg.per_group["16x64"], rel=1e-5)


def test_single_vector_model_shapes_and_learnable_tau():
    q, pos, neg = _batch(r_q=1, r_c=1, m=2)
    loss = MMRLoss(mode="single-vector", learnable_tau=True)
    out = loss(q.float(), pos.float(), neg.float())
    out.total.backward()
    assert loss.log_tau.grad is not None and loss.log_tau.grad.abs() > 0
    with pytest.raises(ValueError, match="16 query / 64 candidate"):
        MMRLoss()(q, pos, neg)


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match="mode"):
        MMRLoss(mode="bogus")
    with pytest.raises(ValueError, match="weights"):
        MMRLoss(weights=[1.0])
