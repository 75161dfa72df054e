"""``python -m metaembed.baselines {bm25,minilm,chunked-minilm,lit} --data PATH``: README baseline rows."""

from __future__ import annotations

import argparse
import logging
import os
import sys

from metaembed.budget import Budget
from metaembed.eval.harness import EvalReport, evaluate
from metaembed.eval.loaders import FORMATS, BeirSet, EvalDataError, MmebSet, load_eval_set
from metaembed.eval.report import publish

logger = logging.getLogger("metaembed.baselines")

SINGLE = (Budget(1, 1),)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m metaembed.baselines", description=__doc__)
    parser.add_argument("baseline", choices=("bm25", "minilm", "chunked-minilm", "lit"))
    parser.add_argument("--data", required=True, help="BEIR folder or MMEB .jsonl file")
    parser.add_argument("--format", choices=FORMATS, default=None)
    parser.add_argument("--limit", type=int, default=None, help="first N queries only")
    parser.add_argument("--json", default=None, metavar="OUT")
    parser.add_argument("--cache", default=os.environ.get("METAEMBED_CACHE", "data/cache"),
                        help="LiT: where cached features and trained heads live (default: data/cache)")
    parser.add_argument("--config", default=None, help="LiT: training settings (default configs/baselines/lit.yaml)")
    parser.add_argument("--retrain", action="store_true", help="LiT: train the heads even if cached")
    return parser


def run(args: argparse.Namespace):
    data = load_eval_set(args.data, args.format, args.limit)
    if args.baseline == "bm25":
        if not isinstance(data, BeirSet):
            raise EvalDataError(f"{args.data}: BM25 applies to BEIR text corpora only")
        from metaembed.baselines.bm25 import evaluate_bm25

        return evaluate_bm25(data)
    if args.baseline == "chunked-minilm":
        return evaluate_chunked(data)
    if args.baseline == "minilm":
        from metaembed.baselines.single_vector import MiniLMEncoder

        encoder = MiniLMEncoder()
    else:
        from metaembed.baselines.lit import load_or_train_lit

        encoder = load_or_train_lit(args.cache, args.config, retrain=args.retrain)
    return evaluate(encoder, data, budgets=SINGLE, label="single-vector", batch_size=32)


def evaluate_chunked(data: BeirSet | MmebSet) -> EvalReport:
    """One row per chunk count r (``CHUNK_COUNTS``): each r is its own encoder, scored at budget (1, r)."""
    from metaembed.baselines.chunked import CHUNK_COUNTS, ChunkedMiniLMEncoder

    reports = [evaluate(ChunkedMiniLMEncoder(r), data, budgets=(Budget(1, r),), label=f"r={r}", batch_size=32)
               for r in CHUNK_COUNTS]
    first = reports[0]
    return EvalReport(model="chunked all-MiniLM-L6-v2", data=first.data, format=first.format,
                      results=[row for report in reports for row in report.results], encoding=first.encoding)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    try:
        report = run(args)
    except (EvalDataError, ValueError, FileNotFoundError) as err:
        logger.error("%s", err)
        return 2
    publish(report, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
