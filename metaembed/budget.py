"""Serving-time budgets: how many query / candidate Meta-Token vectors to score with.

A budget is a pair of prefix lengths (r_q, r_c). Because MMR training makes every prefix a usable
embedding, the operator picks a budget at query time without re-encoding anything.
"""

from __future__ import annotations

from dataclasses import dataclass

#: Meta Tokens per side in the paper's layout.
DEFAULT_R_Q = 16
DEFAULT_R_C = 64


class BudgetError(ValueError):
    """A budget outside what the model or index provides."""


@dataclass(frozen=True, order=True)
class Budget:
    """Number of query vectors ``r_q`` and candidate vectors ``r_c`` used for scoring."""

    r_q: int
    r_c: int

    def __post_init__(self) -> None:
        for name in ("r_q", "r_c"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int):
                raise BudgetError(f"{name} must be an integer, got {value!r}")
            if value < 1:
                raise BudgetError(f"{name} must be at least 1, got {value}")

    def validate(self, max_r_q: int, max_r_c: int) -> Budget:
        """Return self if it fits a model with ``max_r_q`` / ``max_r_c`` Meta Tokens, else raise."""
        if self.r_q > max_r_q:
            raise BudgetError(f"r_q={self.r_q} exceeds the model's {max_r_q} query vectors (1 <= r_q <= {max_r_q})")
        if self.r_c > max_r_c:
            raise BudgetError(
                f"r_c={self.r_c} exceeds the {max_r_c} candidate vectors available (1 <= r_c <= {max_r_c})"
            )
        return self

    @classmethod
    def parse(cls, text: str) -> Budget:
        """Parse ``"8x16"`` as used on command lines."""
        parts = text.strip().lower().split("x")
        if len(parts) != 2:
            raise BudgetError(f"budget {text!r} is not of the form RQxRC, e.g. 8x16")
        try:
            return cls(int(parts[0]), int(parts[1]))
        except ValueError as err:
            raise BudgetError(f"budget {text!r} is not of the form RQxRC, e.g. 8x16") from err

    def __str__(self) -> str:
        return f"({self.r_q},{self.r_c})"


#: The five nested groups MMR trains (MetaEmbed paper, Sec. 4).
TRAINED_GROUPS: tuple[Budget, ...] = (
    Budget(1, 1),
    Budget(2, 4),
    Budget(4, 8),
    Budget(8, 16),
    Budget(16, 64),
)


def parse_budgets(text: str) -> list[Budget]:
    """Parse ``"1x1,2x4,16x64"`` (commas or spaces between budgets, ``x`` inside one)."""
    tokens = [t for t in text.replace(" ", ",").split(",") if t]
    return [Budget.parse(t) for t in tokens]
