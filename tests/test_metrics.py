import random

import pytest
import pytrec_eval
import torch

from metaembed.metrics import evaluate, mmeb_precision_at_1, pessimistic_ranking


def test_relevant_at_rank_two_gives_ndcg_0_6309():
    m = evaluate({"q": {"a": 3.0, "b": 2.0, "c": 1.0}}, {"q": {"b": 1}})
    assert m["ndcg@5"] == pytest.approx(0.6309, abs=1e-4)
    assert m["mrr@10"] == pytest.approx(0.5)
    assert m["recall@1"] == 0.0 and m["recall@5"] == 1.0 and m["hit@1"] == 0.0


def test_ties_count_against_the_model():
    # The relevant doc ties with two others: it must be ranked last among them.
    assert pessimistic_ranking({"a": 1.0, "b": 1.0, "c": 1.0}, {"a": 1}) == ["b", "c", "a"]
    m = evaluate({"q": {"a": 1.0, "b": 1.0, "c": 1.0}}, {"q": {"a": 1}})
    assert m["hit@1"] == 0.0 and m["mrr@10"] == pytest.approx(1 / 3)
    constant = evaluate({f"q{i}": {d: 0.0 for d in "abcd"} for i in range(4)},
                        {f"q{i}": {"abcd"[i]: 1} for i in range(4)})
    assert constant["hit@1"] == 0.0


def test_missing_query_scores_zero_and_empty_qrels_error():
    m = evaluate({"q1": {"a": 1.0}}, {"q1": {"a": 1}, "q2": {"b": 1}})
    assert m["hit@1"] == 0.5
    with pytest.raises(ValueError, match="empty"):
        evaluate({}, {})


def test_agrees_with_trec_eval_on_tie_free_runs():
    rnd = random.Random(7)
    run, qrels = {}, {}
    for q in range(30):
        docs = [f"d{i}" for i in range(40)]
        run[f"q{q}"] = {d: rnd.random() for d in docs}
        qrels[f"q{q}"] = {d: rnd.choice([1, 2]) for d in rnd.sample(docs, rnd.randint(1, 4))}
    ours = evaluate(run, qrels)
    oracle = pytrec_eval.RelevanceEvaluator(qrels, {"ndcg_cut.5,10", "recall.1,5,10"}).evaluate(run)
    for k in (5, 10):
        assert ours[f"ndcg@{k}"] == pytest.approx(sum(v[f"ndcg_cut_{k}"] for v in oracle.values()) / 30)
    for k in (1, 5, 10):
        assert ours[f"recall@{k}"] == pytest.approx(sum(v[f"recall_{k}"] for v in oracle.values()) / 30)


def test_mmeb_precision_at_1_counts_ties_as_misses():
    assert mmeb_precision_at_1(torch.tensor([0.9, 0.1, 0.5])) == 1.0
    assert mmeb_precision_at_1(torch.tensor([0.5, 0.5, 0.1])) == 0.0
    assert mmeb_precision_at_1(torch.tensor([0.2, 0.5])) == 0.0
    assert mmeb_precision_at_1(torch.zeros(5)) == 0.0
    with pytest.raises(ValueError):
        mmeb_precision_at_1(torch.tensor([]))
