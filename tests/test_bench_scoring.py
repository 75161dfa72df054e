"""The scoring benchmark is a script, not a timed test: this checks that it runs and reports what it must."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from metaembed.scoring import choose_kernel

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_quick_benchmark_ends_with_one_json_summary():
    proc = subprocess.run(
        [sys.executable, "benchmarks/bench_scoring.py", "--quick"],
        cwd=ROOT, capture_output=True, text=True, timeout=600, check=True,
    )
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    budgets = {"1x1", "2x4", "4x8", "8x16", "16x64"}
    for key in ("roofline_fraction", "attainable_fraction", "speedup_vs_einsum"):
        assert set(summary[key]) == budgets
        assert all(value > 0 for value in summary[key].values())
    assert summary["dram_gb_per_s"] > 0 and summary["gemm_peak_gflop_per_s"] > 0
    rows = summary["rows"]
    assert {(r["dim"], r["dtype"]) for r in rows} == {
        (384, "float32"), (384, "bfloat16"), (2048, "float32"), (2048, "bfloat16")
    }
    assert len(rows) == 4 * len(budgets)
    for row in rows:
        assert row["kernel"] == choose_kernel(row["r_q"], getattr(torch, row["dtype"]))
        assert row["attainable_fraction"] >= row["roofline_fraction"] - 1e-9
        assert row["speedup_vs_einsum_at_roofline"] > 0
