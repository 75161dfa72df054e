"""Retrieval metrics with ties counted against the model.

Rankings are made pessimistic first (among equal scores, relevant documents go last), then scored
with trec_eval through pytrec-eval-terrier, so nDCG@k is trec_eval's ``ndcg_cut`` exactly. Why the
first step: trec_eval breaks ties by document id and MMEB's reference scorer by list position (the
gold candidate first), both of which can reward a constant scorer.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import pytrec_eval
import torch

Run = Mapping[str, Mapping[str, float]]
Qrels = Mapping[str, Mapping[str, int]]

DEFAULT_CUTOFFS = (1, 5, 10)


def pessimistic_ranking(scores: Mapping[str, float], relevant: Mapping[str, int]) -> list[str]:
    """Documents by descending score; on equal scores non-relevant first, then by id for determinism."""
    return sorted(scores, key=lambda doc: (-scores[doc], relevant.get(doc, 0) > 0, doc))


def _as_run(orders: Mapping[str, list[str]], depth: int | None = None) -> dict[str, dict[str, float]]:
    """Rank-derived, tie-free scores so trec_eval sees our pessimistic order (cut at ``depth``)."""
    return {
        qid: {doc: float(len(order[:depth]) - rank) for rank, doc in enumerate(order[:depth])}
        for qid, order in orders.items()
    }


def evaluate(run: Run, qrels: Qrels, cutoffs: Sequence[int] = DEFAULT_CUTOFFS, ndcg_cutoffs: Sequence[int] = (5, 10)
             ) -> dict[str, float]:
    """Mean nDCG@k, Recall@k, Hit@k and MRR@10 over the queries in ``qrels``.

    Every query in ``qrels`` counts; one missing from ``run`` scores 0 (never silently dropped).
    """
    if not qrels:
        raise ValueError("qrels is empty: nothing to evaluate")
    orders = {qid: pessimistic_ranking(run.get(qid, {}), qrels[qid]) for qid in qrels}
    measures = {
        "ndcg_cut." + ",".join(map(str, ndcg_cutoffs)),
        "recall." + ",".join(map(str, cutoffs)),
        "success." + ",".join(map(str, cutoffs)),
    }
    per_query = pytrec_eval.RelevanceEvaluator(dict(qrels), measures).evaluate(_as_run(orders))
    mrr = pytrec_eval.RelevanceEvaluator(dict(qrels), {"recip_rank"}).evaluate(_as_run(orders, 10))
    out: dict[str, float] = {}
    names = [(f"ndcg@{k}", f"ndcg_cut_{k}") for k in ndcg_cutoffs]
    names += [(f"recall@{k}", f"recall_{k}") for k in cutoffs] + [(f"hit@{k}", f"success_{k}") for k in cutoffs]
    n = len(qrels)
    for ours, theirs in names:
        out[ours] = sum(per_query.get(qid, {}).get(theirs, 0.0) for qid in qrels) / n
    out["mrr@10"] = sum(mrr.get(qid, {}).get("recip_rank", 0.0) for qid in qrels) / n
    return out


def mmeb_precision_at_1(scores: torch.Tensor) -> float:
    """MMEB Precision@1 for one query: gold is candidate 0 and must strictly beat every other.

    MMEB's reference ``argmax`` gives ties to the gold candidate, so a constant scorer gets 100%;
    we count a tie as a miss.
    """
    if scores.dim() != 1 or scores.numel() == 0:
        raise ValueError("scores must be a non-empty 1-D tensor with the gold candidate first")
    if scores.numel() == 1:
        return 1.0
    return float(bool(scores[0] > scores[1:].max()))


#: A candidate vector "wins" when it takes at least this share of the MaxSim matches.
MATCH_SHARE_FLOOR = 0.01


def match_spread(counts: torch.Tensor) -> dict[str, float]:
    """How MaxSim maxima spread over candidate vectors, from per-vector win counts (``scoring.match_counts``).

    A model whose matches all land on one vector has a budget that buys nothing; these figures show it
    without looking at heatmaps: the number of vectors winning >= 1 % of the matches, the entropy of the
    win distribution in bits (log2(r_c) when uniform, 0 when one vector wins all) and the largest share.
    """
    total = float(counts.sum())
    if total == 0:
        return {"vectors_over_1pct": 0, "entropy_bits": 0.0, "top_share": 0.0, "matches": 0}
    shares = counts.double() / total
    nonzero = shares[shares > 0]
    return {"vectors_over_1pct": int((shares >= MATCH_SHARE_FLOOR).sum()),
            "entropy_bits": float(-(nonzero * nonzero.log2()).sum()), "top_share": float(shares.max()),
            "matches": int(total)}
