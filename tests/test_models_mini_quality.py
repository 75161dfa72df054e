"""The shipped MetaEmbed-Mini still measures what was recorded for it (README figures cannot silently rot).

Rebuilds a fixed small subset of the four eval sets from the Debian packages (the datasets builders with
``--limit``), re-runs the budget sweep on the SHIPPED checkpoint and compares every figure to
``assets/metaembed-mini/eval_subset.json`` (written by ``python scripts/measure_mini.py subset``).
Both serving precisions are recorded; the test runs the one the default ``"auto"`` picks on this machine
(bfloat16 where the CPU has it natively, else float32). Tolerance: one query's worth of the metric
(100 / number of queries, in points) — float rounding on another CPU may flip at most a near-tie, never a
real regression.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from metaembed.models import load_encoder

REPO = Path(__file__).resolve().parents[1]


def _measure_module():
    spec = importlib.util.spec_from_file_location("measure_mini", REPO / "scripts" / "measure_mini.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_shipped_model_reproduces_recorded_subset_figures(tmp_path: Path) -> None:
    measure = _measure_module()
    recorded = json.loads(measure.SUBSET_FILE.read_text())
    assert recorded["builder_limit"] == measure.SUBSET_LIMIT
    model = load_encoder()  # at the precision "auto" serves on this machine: both are recorded
    assert model.precision in recorded["points"], model.precision
    assert model.fingerprint() == recorded["model_fingerprint"], (
        "the shipped weights changed: re-run `python scripts/measure_mini.py subset` and update the README")
    root = measure.build_subset(tmp_path / "eval")
    counts = json.loads((root / "counts.json").read_text())
    measured = measure.measure_subset(model, root)
    expected_points = recorded["points"][model.precision]
    assert set(measured) == set(expected_points)
    for name, per_budget in expected_points.items():
        tolerance = 100.0 / counts[name]["queries"] + 1e-6
        for budget, expected in per_budget.items():
            assert measured[name][budget] == pytest.approx(expected, abs=tolerance), (name, budget)
    # The shipped model learned the image side at all: Fashion-MNIST far above the 10-class chance level.
    assert measured["fmnist-cls"]["16x64"] > 30.0
