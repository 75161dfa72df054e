"""Matryoshka Multi-Vector Retrieval (MMR) loss: one InfoNCE per nested budget group.

The paper (MetaEmbed, Sec. 4) trains prefix-nested groups so that the first r vectors alone already
retrieve well. All query-vector x candidate-vector dot products come from ONE einsum; each group reads
a prefix slice of it, so adding groups costs a max/sum, not another matmul.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from metaembed.budget import TRAINED_GROUPS, Budget

MODES = ("mmr", "no-mmr", "single-vector")


@dataclass
class LossOutput:
    """The weighted total (for backward) and each group's InfoNCE value (for logs and the progress bar)."""

    total: torch.Tensor
    per_group: dict[str, float]


def group_key(budget: Budget) -> str:
    """Log key of a group, e.g. ``"16x64"`` (same spelling as ``Budget.parse`` accepts)."""
    return f"{budget.r_q}x{budget.r_c}"


def groups_for_mode(groups: Sequence[Budget | tuple[int, int]], mode: str) -> list[Budget]:
    """The groups a mode trains: all (mmr), only the largest (no-mmr), or (1,1) (single-vector)."""
    if mode not in MODES:
        raise ValueError(f"mode must be one of {', '.join(MODES)}, got {mode!r}")
    budgets = [g if isinstance(g, Budget) else Budget(*g) for g in groups]
    if not budgets:
        raise ValueError("groups must list at least one budget")
    if mode == "no-mmr":
        return [max(budgets, key=lambda b: (b.r_q * b.r_c, b))]
    if mode == "single-vector":
        return [Budget(1, 1)]
    return budgets


class MMRLoss(nn.Module):
    """Sum over groups g of w_g * InfoNCE(budgeted MaxSim / tau); the positive of query i is candidate i.

    Candidates are the batch's positives followed by every hard negative (each hard negative is scored
    against every query, like in-batch negatives).
    """

    def __init__(
        self,
        groups: Sequence[Budget | tuple[int, int]] = TRAINED_GROUPS,
        tau: float = 0.03,
        weights: Sequence[float] | None = None,
        mode: str = "mmr",
        learnable_tau: bool = False,
        normalize_scores: bool = False,
    ) -> None:
        super().__init__()
        self.mode = mode
        # Divide each group's MaxSim by its r_q (a per-group temperature tau * r_q): with the paper's
        # plain sum, the (16,64) logits are 16x sharper than (1,1)'s, which small CPU runs cannot train.
        self.normalize_scores = bool(normalize_scores)
        self.groups = groups_for_mode(groups, mode)
        if weights is None:
            weights = [1.0] * len(self.groups)
        if len(weights) != len(self.groups):
            raise ValueError(f"weights has {len(weights)} entries but mode {mode!r} trains {len(self.groups)} groups")
        if tau <= 0:
            raise ValueError(f"tau must be > 0, got {tau}")
        self.weights = [float(w) for w in weights]
        log_tau = torch.tensor(math.log(tau), dtype=torch.float32)
        if learnable_tau:
            self.log_tau = nn.Parameter(log_tau)
        else:
            self.register_buffer("log_tau", log_tau, persistent=False)
        self.max_r_q = max(g.r_q for g in self.groups)
        self.max_r_c = max(g.r_c for g in self.groups)

    @property
    def tau(self) -> float:
        return float(self.log_tau.detach().exp())

    def forward(self, q: torch.Tensor, pos: torch.Tensor, neg: torch.Tensor | None = None) -> LossOutput:
        """``q`` (B, R_q, D), ``pos`` (B, R_c, D), ``neg`` (M, R_c, D) or None; vectors already L2-normalised."""
        if q.dim() != 3 or pos.dim() != 3 or q.shape[0] != pos.shape[0]:
            raise ValueError(f"expected q (B, R_q, D) and pos (B, R_c, D), got {tuple(q.shape)} and {tuple(pos.shape)}")
        if q.shape[1] < self.max_r_q or pos.shape[1] < self.max_r_c:
            raise ValueError(
                f"groups need {self.max_r_q} query / {self.max_r_c} candidate vectors, "
                f"model gives {q.shape[1]} / {pos.shape[1]}"
            )
        cands = pos if neg is None or neg.shape[0] == 0 else torch.cat([pos, neg], dim=0)
        # (B, N, r_q, r_c): every query vector against every candidate vector, computed once in fp32.
        sim = torch.einsum("bid,njd->bnij", q[:, : self.max_r_q].float(), cands[:, : self.max_r_c].float())
        target = torch.arange(q.shape[0], device=q.device)
        inv_tau = torch.exp(-self.log_tau)
        total = q.new_zeros((), dtype=torch.float32)
        per_group: dict[str, float] = {}
        for weight, group in zip(self.weights, self.groups, strict=True):
            scores = sim[:, :, : group.r_q, : group.r_c].amax(dim=-1).sum(dim=-1)
            if self.normalize_scores:
                scores = scores / group.r_q
            loss = F.cross_entropy(scores * inv_tau, target)
            per_group[group_key(group)] = float(loss.detach())
            total = total + weight * loss
        return LossOutput(total=total, per_group=per_group)
