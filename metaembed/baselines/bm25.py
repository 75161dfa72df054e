"""BM25 over corpus text (bm25s): the lexical floor for text-bearing BEIR sets such as ``rdocs``."""

from __future__ import annotations

import time

import bm25s

from metaembed.eval.harness import BEIR_K_VALUES, RUN_DEPTH, BudgetResult, EvalReport
from metaembed.eval.loaders import BeirSet, EvalDataError
from metaembed.metrics import evaluate as trec_evaluate


def evaluate_bm25(data: BeirSet) -> EvalReport:
    """Index every corpus text, retrieve for every query text, score with the shared metrics code."""
    missing = [c.id for c in data.corpus if not c.text]
    if missing:
        raise EvalDataError(f"{data.path}: BM25 needs text on every corpus item; {len(missing)} have none "
                            f"(first: {missing[0]!r})")
    if any(not q.text for q in data.queries):
        raise EvalDataError(f"{data.path}: BM25 needs text queries; some queries are image-only")
    start = time.perf_counter()
    retriever = bm25s.BM25()
    retriever.index(bm25s.tokenize([c.text for c in data.corpus], stopwords="en", show_progress=False),
                    show_progress=False)
    index_ms = (time.perf_counter() - start) * 1000
    depth = min(RUN_DEPTH, len(data.corpus))
    start = time.perf_counter()
    tokens = bm25s.tokenize([q.text for q in data.queries], stopwords="en", show_progress=False)
    docs, scores = retriever.retrieve(tokens, k=depth, show_progress=False, n_threads=1)
    scoring_ms = (time.perf_counter() - start) * 1000 / len(data.queries)
    run = {q.id: {data.corpus[int(d)].id: float(s) for d, s in zip(docs[i], scores[i], strict=True)}
           for i, q in enumerate(data.queries)}
    row = BudgetResult(r_q=None, r_c=None, metrics=dict(trec_evaluate(run, data.qrels, BEIR_K_VALUES)),
                       scoring_ms_per_query=scoring_ms, bytes_read=None,
                       encode_ms_per_item=index_ms / len(data.corpus), label="bm25")
    encoding = {"queries": len(data.queries), "candidates": len(data.corpus),
                "candidate_ms_per_item": index_ms / len(data.corpus)}
    return EvalReport(model="BM25 (bm25s, English stopwords)", data=str(data.path), format="beir",
                      results=[row], encoding=encoding)
