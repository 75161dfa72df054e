"""Harness: metric values on hand-computed fixtures, budget sweeps, encode-once, tie handling."""

from __future__ import annotations

import json
import math

import pytest
import torch
from eval_fixtures import text_beir, write_beir, write_jsonl
from toy_encoder import ConstantEncoder, ToyEncoder

from metaembed.budget import TRAINED_GROUPS, Budget, BudgetError
from metaembed.eval.harness import evaluate
from metaembed.eval.report import format_table

LOOKUP = {
    # candidates (R_c = 2, D = 4): the second vector only matters at r_c = 2
    "d1": [[1, 0, 0, 0], [0, 0, 0, 1]],
    "d2": [[0.6, 0.8, 0, 0], [0, 0, 0, 1]],
    "d3": [[0, 0, 1, 0], [0, 0, 0, 1]],
    # queries (R_q = 2)
    "q1": [[1, 0, 0, 0], [0, 0, 0, 1]],
    "q2": [[0, 0, 1, 0], [0, 0, 0, 1]],
}


class LookupEncoder(ToyEncoder):
    """Vectors looked up by item text: exact, hand-checkable scores (all values exact in bf16 order)."""

    def __init__(self):
        super().__init__(num_query_tokens=2, num_candidate_tokens=2, dim=4)
        self.calls = {"query": 0, "candidate": 0}

    def embed(self, items, side):
        self.calls[side] += len(items)
        return torch.nn.functional.normalize(torch.tensor([LOOKUP[i.text] for i in items], dtype=torch.float32), dim=-1)


def hand_beir(folder):
    return write_beir(folder, [{"_id": d, "text": d} for d in ("d1", "d2", "d3")],
                      [{"_id": "q1", "text": "q1"}, {"_id": "q2", "text": "q2"}], [("q1", "d2", 1), ("q2", "d3", 1)])


def test_beir_metrics_match_hand_computation(tmp_path):
    report = evaluate(LookupEncoder(), hand_beir(tmp_path / "b"), budgets=[Budget(1, 1)])
    (row,) = report.results
    # q1 ranks d1 (1.0) > d2 (0.6) > d3 (0): its relevant d2 is at rank 2. q2 finds d3 at rank 1.
    m = row.metrics
    assert m["ndcg@5"] == pytest.approx((1 / math.log2(3) + 1) / 2, abs=1e-4)
    assert m["ndcg@10"] == pytest.approx(m["ndcg@5"], abs=1e-6)
    assert m["recall@1"] == pytest.approx(0.5) and m["recall@5"] == pytest.approx(1.0)
    assert m["mrr@10"] == pytest.approx(0.75)
    assert report.format == "beir" and report.main_metric == "ndcg@5"


def test_beir_maxsim_budget_adds_vectors(tmp_path):
    # At (2,2) every pair gains exactly +1 from the shared 4th axis: the ranking (and metrics) are unchanged,
    # but the index reads twice the candidate bytes.
    report = evaluate(LookupEncoder(), hand_beir(tmp_path / "b"), budgets=[Budget(1, 1), Budget(2, 2)])
    low, high = report.results
    assert low.metrics == pytest.approx(high.metrics)
    assert high.bytes_read == 2 * low.bytes_read


def test_sweep_one_row_per_budget_encodes_once(tmp_path):
    encoder = ToyEncoder()
    calls = {"candidate": 0, "query": 0}
    original = encoder.embed

    def counting(items, side):
        calls[side] += len(items)
        return original(items, side)

    encoder.embed = counting
    report = evaluate(encoder, text_beir(tmp_path / "b"))
    assert [(r.r_q, r.r_c) for r in report.results] == [(b.r_q, b.r_c) for b in TRAINED_GROUPS]
    assert calls == {"candidate": 5, "query": 3}  # never re-encoded per budget
    read = [r.bytes_read for r in report.results]
    assert all(a < b for a, b in zip(read, read[1:], strict=False))
    assert all(r.scoring_ms_per_query >= 0 and r.encode_ms_per_item > 0 for r in report.results)
    data = report.to_dict()
    assert json.loads(json.dumps(data))["results"][0]["label"] == "1x1"
    assert set(data["results"][0]) >= {"r_q", "r_c", "metrics", "scoring_ms_per_query", "bytes_read",
                                       "encode_ms_per_item"}
    table = format_table(report).splitlines()
    assert len(table) == 3 + len(TRAINED_GROUPS) and table[-1].startswith("16x64")


def test_budget_beyond_model_is_refused_before_encoding(tmp_path):
    encoder = LookupEncoder()
    with pytest.raises(BudgetError, match="r_c=4"):
        evaluate(encoder, hand_beir(tmp_path / "b"), budgets=[Budget(1, 4)])
    assert encoder.calls == {"query": 0, "candidate": 0}


def mmeb_file(tmp_path):
    return write_jsonl(tmp_path / "m.jsonl", [
        {"qry_text": "q1", "tgt_text": ["d1", "d2", "d3"]},   # gold d1 scores 1.0 vs 0.6, 0: hit
        {"qry_text": "q1", "tgt_text": ["d2", "d1", "d3"]},   # gold d2 loses to d1: miss
        {"qry_text": "q2", "tgt_text": ["d3", "d1", "d3"]},   # gold ties with an identical candidate: miss
    ])


def test_mmeb_precision_ties_count_as_misses_and_dedupe(tmp_path):
    encoder = LookupEncoder()
    report = evaluate(encoder, mmeb_file(tmp_path), budgets=[Budget(1, 1), Budget(2, 2)])
    assert [r.metrics["precision@1"] for r in report.results] == pytest.approx([1 / 3, 1 / 3])
    assert encoder.calls == {"candidate": 3, "query": 2}  # 9 candidates, 3 distinct; 3 queries, 2 distinct
    assert report.results[1].bytes_read == 2 * report.results[0].bytes_read


def test_constant_encoder_scores_zero_not_hundred(tmp_path):
    report = evaluate(ConstantEncoder(), mmeb_file(tmp_path))
    assert all(r.metrics["precision@1"] == 0.0 for r in report.results)
    beir = evaluate(ConstantEncoder(), text_beir(tmp_path / "b"), budgets=[Budget(1, 1)])
    # every document ties: relevant ones are ranked last (5th of 5), never first
    assert beir.results[0].metrics["recall@1"] == 0.0 and beir.results[0].metrics["mrr@10"] == pytest.approx(0.2)


def test_limit_evaluates_first_queries(tmp_path):
    report = evaluate(LookupEncoder(), hand_beir(tmp_path / "b"), budgets=[Budget(1, 1)], limit=1)
    assert report.encoding["queries"] == 1 and report.encoding["candidates"] == 3
    assert report.results[0].metrics["mrr@10"] == pytest.approx(0.5)


def test_first_stage_reads_fewer_bytes(tmp_path):
    data = text_beir(tmp_path / "b")
    full = evaluate(ToyEncoder(), data, budgets=[Budget(4, 8)])
    staged = evaluate(ToyEncoder(), data, budgets=[Budget(4, 8)], first_stage=2)
    assert staged.results[0].bytes_read < full.results[0].bytes_read
    assert 0.0 <= staged.results[0].metrics["recall@10"] <= full.results[0].metrics["recall@10"]
