"""Budget sweeps: encode a set once at full (R_q, R_c), then score every budget as a prefix.

MetaEmbed's promise is that a budget is picked at serving time without re-encoding, so the harness
encodes queries and candidates exactly once and every row of the report reuses those vectors.
BEIR sets go through the real serving index (:class:`metaembed.index.MultiVectorIndex`), so latency
and bytes read are what the app would see; MMEB rows are scored against their own candidate lists.
"""

from __future__ import annotations

import logging
import statistics
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from metaembed.budget import TRAINED_GROUPS, Budget
from metaembed.costs import index_bytes
from metaembed.index import MultiVectorIndex
from metaembed.metrics import evaluate as trec_evaluate
from metaembed.metrics import match_spread, mmeb_precision_at_1
from metaembed.models import MetaEmbedEncoder
from metaembed.scoring import match_counts, maxsim_pairs

from .loaders import BeirSet, MmebSet, Record, load_eval_set

logger = logging.getLogger(__name__)

#: Ranking depth kept per query; every reported metric has a cut-off at or below it.
RUN_DEPTH = 100
#: Results per query whose token matches feed the match-spread figures (the ones a user looks at).
SPREAD_DEPTH = 5
BEIR_K_VALUES = (1, 5, 10)
MAIN_METRIC = {"beir": "ndcg@5", "mmeb": "precision@1"}


@dataclass
class BudgetResult:
    """One report row: quality and cost of scoring at one budget."""

    r_q: int | None
    r_c: int | None
    metrics: dict[str, float]
    scoring_ms_per_query: float
    bytes_read: int | None
    encode_ms_per_item: float
    label: str = ""
    #: how the MaxSim maxima of each query against its top SPREAD_DEPTH results spread over candidate vectors
    match_spread: dict[str, float] | None = None


@dataclass
class EvalReport:
    """Everything one sweep measured; ``to_dict`` is the ``--json`` file."""

    model: str
    data: str
    format: str
    results: list[BudgetResult]
    encoding: dict[str, Any] = field(default_factory=dict)

    @property
    def main_metric(self) -> str:
        return MAIN_METRIC[self.format]

    def to_dict(self) -> dict[str, Any]:
        return {"model": self.model, "data": self.data, "format": self.format, "main_metric": self.main_metric,
                "encoding": self.encoding, "results": [asdict(r) for r in self.results]}


@dataclass
class EncodedRecords:
    """Embeddings of unique records plus, per input record, the row holding its vectors."""

    vectors: torch.Tensor
    rows: list[int]
    ms_per_item: float


def encode_records(encoder: MetaEmbedEncoder, records: Sequence[Record], side: str, batch_size: int = 16,
                   desc: str | None = None) -> EncodedRecords:
    """Encode each distinct record once (same text + same image + same instruction = same input)."""
    unique: dict[tuple, int] = {}
    rows = [unique.setdefault(r.identity(), len(unique)) for r in records]
    firsts: dict[int, Record] = {}
    for record, row in zip(records, rows, strict=True):
        firsts.setdefault(row, record)
    distinct = [firsts[i] for i in range(len(unique))]
    encode = encoder.encode_queries if side == "query" else encoder.encode_candidates
    chunks: list[torch.Tensor] = []
    start = time.perf_counter()
    with tqdm(total=len(distinct), desc=desc or f"encoding {side}s", unit="item") as bar:
        for lo in range(0, len(distinct), batch_size):
            batch = [r.to_item() for r in distinct[lo:lo + batch_size]]
            chunks.append(encode(batch, batch_size=batch_size).float())
            bar.update(len(batch))
    elapsed_ms = (time.perf_counter() - start) * 1000
    return EncodedRecords(vectors=torch.cat(chunks), rows=rows, ms_per_item=elapsed_ms / max(len(distinct), 1))


def _check_budgets(encoder: MetaEmbedEncoder, budgets: Sequence[Budget]) -> list[Budget]:
    if not budgets:
        raise ValueError("no budgets to evaluate")
    return [b.validate(encoder.num_query_tokens, encoder.num_candidate_tokens) for b in budgets]


def evaluate(encoder: MetaEmbedEncoder, data_path: str | Path | BeirSet | MmebSet,
             budgets: Sequence[Budget] = TRAINED_GROUPS, fmt: str | None = None, limit: int | None = None,
             first_stage: int | None = None, batch_size: int = 16, label: str | None = None) -> EvalReport:
    """Sweep ``budgets`` over one eval set; ``limit`` keeps the first N queries (full corpus for BEIR).

    ``label`` names the rows (default ``"RQxRC"``); baselines pass ``"single-vector"``.
    """
    budgets = _check_budgets(encoder, budgets)
    data = data_path if isinstance(data_path, (BeirSet, MmebSet)) else load_eval_set(data_path, fmt, limit)
    if isinstance(data, BeirSet):
        results, encoding = _evaluate_beir(encoder, data, budgets, first_stage, batch_size)
    else:
        if first_stage is not None:
            logger.warning("--first-stage is ignored for MMEB sets: each query has its own short candidate list")
        results, encoding = _evaluate_mmeb(encoder, data, budgets, batch_size)
    for row in results:
        row.label = label or f"{row.r_q}x{row.r_c}"
    return EvalReport(model=encoder.name, data=str(data.path), format=data.format, results=results, encoding=encoding)


def _encoding_summary(queries: EncodedRecords, candidates: EncodedRecords) -> dict[str, Any]:
    n_q, n_c = len(queries.vectors), len(candidates.vectors)
    total_ms = queries.ms_per_item * n_q + candidates.ms_per_item * n_c
    return {"queries": n_q, "candidates": n_c, "query_ms_per_item": queries.ms_per_item,
            "candidate_ms_per_item": candidates.ms_per_item, "ms_per_item": total_ms / max(n_q + n_c, 1)}


def _evaluate_beir(encoder: MetaEmbedEncoder, data: BeirSet, budgets: list[Budget], first_stage: int | None,
                   batch_size: int) -> tuple[list[BudgetResult], dict[str, Any]]:
    corpus = encode_records(encoder, data.corpus, "candidate", batch_size, desc="encoding corpus")
    queries = encode_records(encoder, data.queries, "query", batch_size, desc="encoding queries")
    index = MultiVectorIndex(dim=encoder.dim, num_vectors=encoder.num_candidate_tokens, model_name=encoder.name)
    index.add([c.id for c in data.corpus], corpus.vectors[corpus.rows])
    encoding = _encoding_summary(queries, corpus)
    vectors = [(record.id, queries.vectors[row]) for record, row in zip(data.queries, queries.rows, strict=True)]
    return evaluate_index(index, vectors, data.qrels, budgets, first_stage, encoding["ms_per_item"]), encoding


def evaluate_index(index: MultiVectorIndex, queries: Sequence[tuple[str, torch.Tensor]],
                   qrels: dict[str, dict[str, int]], budgets: Sequence[Budget], first_stage: int | None = None,
                   encode_ms_per_item: float = 0.0) -> list[BudgetResult]:
    """Search ``index`` with every ``(query id, (R_q, D) vectors)`` at every budget and score the runs.

    The one BEIR loop: the CLI and the trainer's eval (through :func:`evaluate`) and the explorer's
    gallery sweep all report from it. Metrics by trec_eval against ``qrels``; scoring ms per query (first
    stage included) and bytes read per query (the first stage's bytes included).
    """
    if not queries:
        raise ValueError("no queries to evaluate")
    r_q = int(queries[0][1].shape[0])
    budgets = [b.validate(r_q, index.num_vectors) for b in budgets]
    depth = min(len(index), RUN_DEPTH, first_stage or RUN_DEPTH)
    results = []
    for budget in budgets:
        run: dict[str, dict[str, float]] = {}
        ms, read = [], []
        wins = torch.zeros(budget.r_c, dtype=torch.long)
        index.search(queries[0][1], budget, k=depth, first_stage=first_stage)  # warm-up, not timed
        for query_id, vectors in queries:
            hit = index.search(vectors, budget, k=depth, first_stage=first_stage)
            run[query_id] = {str(i): float(s) for i, s in zip(hit.ids, hit.scores, strict=True)}
            ms.append(float(hit.first_stage_ms or 0.0) + float(hit.maxsim_ms))
            read.append(int(hit.bytes_read) + int(hit.first_stage_bytes))
            top = index.vectors[:, hit.positions[:SPREAD_DEPTH]].transpose(0, 1)
            wins += match_counts(vectors, top, budget)
        metrics = trec_evaluate(run, qrels, BEIR_K_VALUES)
        results.append(BudgetResult(r_q=budget.r_q, r_c=budget.r_c, metrics=dict(metrics),
                                    scoring_ms_per_query=statistics.fmean(ms), bytes_read=round(statistics.fmean(read)),
                                    encode_ms_per_item=encode_ms_per_item, label=f"{budget.r_q}x{budget.r_c}",
                                    match_spread=match_spread(wins)))
        logger.info("%s: %s", budget, metrics)
    return results


def _evaluate_mmeb(encoder: MetaEmbedEncoder, data: MmebSet, budgets: list[Budget],
                   batch_size: int) -> tuple[list[BudgetResult], dict[str, Any]]:
    candidate_records = [c for row in data.rows for c in row.candidates]
    candidates = encode_records(encoder, candidate_records, "candidate", batch_size, desc="encoding candidates")
    queries = encode_records(encoder, [row.query for row in data.rows], "query", batch_size, desc="encoding queries")
    # Row i's candidate vectors, gathered once (the gather is data layout, not scoring cost).
    offsets, per_row = 0, []
    for row in data.rows:
        per_row.append(candidates.vectors[candidates.rows[offsets:offsets + len(row.candidates)]])
        offsets += len(row.candidates)
    encoding = _encoding_summary(queries, candidates)
    results = []
    for budget in budgets:
        hits, ms, read = [], [], []
        wins = torch.zeros(budget.r_c, dtype=torch.long)
        maxsim_pairs(queries.vectors[:1], per_row[0], budget)  # warm-up, not timed
        for i, cands in enumerate(per_row):
            query = queries.vectors[queries.rows[i]].unsqueeze(0)
            start = time.perf_counter()
            scores = maxsim_pairs(query, cands, budget)[0]
            ms.append((time.perf_counter() - start) * 1000)
            hits.append(float(mmeb_precision_at_1(scores)))
            read.append(index_bytes(len(cands), budget.r_c, encoder.dim, 4))
            top = scores.topk(min(SPREAD_DEPTH, len(cands))).indices
            wins += match_counts(query[0], cands[top], budget)
        results.append(BudgetResult(r_q=budget.r_q, r_c=budget.r_c, metrics={"precision@1": statistics.fmean(hits)},
                                    scoring_ms_per_query=statistics.fmean(ms), bytes_read=round(statistics.fmean(read)),
                                    encode_ms_per_item=encoding["ms_per_item"], match_spread=match_spread(wins)))
        logger.info("%s: precision@1 %.4f", budget, results[-1].metrics["precision@1"])
    return results, encoding
