import pytest

from metaembed.budget import Budget
from metaembed.costs import GIB, element_size, fits_in_memory, index_bytes, scoring_flops


@pytest.mark.parametrize(
    ("budget", "gflops", "gib"),
    [(Budget(1, 1), 0.71, 0.67), (Budget(8, 16), 91.75, 10.68), (Budget(16, 64), 733.89, 42.72)],
)
def test_reproduces_the_papers_efficiency_rows(budget, gflops, gib):
    n, dim = 100_000, 3584
    # 2 * r_q * r_c * D per pair gives 0.7168 / 91.7504 / 734.0032 GFLOPs; the paper prints 0.71 / 91.75 /
    # 733.89 (rounded down, and its largest row counts slightly fewer ops): agreement within 0.05%.
    assert scoring_flops(budget, n, dim) / 1e9 == pytest.approx(gflops, rel=5e-4, abs=0.01)
    assert round(index_bytes(n, budget.r_c, dim, element_size("bf16")) / GIB, 2) == gib


def test_element_size_and_fit():
    assert element_size("torch.float32") == 4 and element_size("bfloat16") == 2
    with pytest.raises(ValueError, match="unknown dtype"):
        element_size("int4")
    assert fits_in_memory(GIB, 2) and not fits_in_memory(2 * GIB, 2)
