import pytest

from metaembed.budget import TRAINED_GROUPS, Budget, BudgetError, parse_budgets


def test_trained_groups_are_the_papers_five_nested_prefixes():
    assert [(b.r_q, b.r_c) for b in TRAINED_GROUPS] == [(1, 1), (2, 4), (4, 8), (8, 16), (16, 64)]
    assert all(a.r_q <= b.r_q and a.r_c <= b.r_c for a, b in zip(TRAINED_GROUPS, TRAINED_GROUPS[1:]))


@pytest.mark.parametrize(
    ("budget", "message"),
    [((17, 4), "r_q=17 exceeds"), ((4, 65), "r_c=65 exceeds"), ((0, 4), "r_q must be at least 1"),
     ((4, 0), "r_c must be at least 1")],
)
def test_validation_names_the_broken_bound(budget, message):
    with pytest.raises(BudgetError, match=message):
        Budget(*budget).validate(16, 64)


def test_bounds_inclusive_and_parse():
    assert Budget(16, 64).validate(16, 64) == Budget(16, 64)
    assert parse_budgets("1x1,2x4 16x64") == [Budget(1, 1), Budget(2, 4), Budget(16, 64)]
    with pytest.raises(BudgetError, match="RQxRC"):
        Budget.parse("8-16")
    with pytest.raises(BudgetError, match="integer"):
        Budget(1.5, 2)  # type: ignore[arg-type]
