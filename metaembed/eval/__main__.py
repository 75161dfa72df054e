"""``python -m metaembed.eval``: sweep budgets of one model over one eval set."""

from __future__ import annotations

import argparse
import logging
import os
import sys

from metaembed.budget import TRAINED_GROUPS, BudgetError, parse_budgets
from metaembed.eval.harness import evaluate
from metaembed.eval.loaders import FORMATS, EvalDataError
from metaembed.eval.report import publish, save_figure
from metaembed.models import ModelLoadError, load_encoder

logger = logging.getLogger("metaembed.eval")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m metaembed.eval", description=__doc__)
    parser.add_argument("--data", required=True, help="BEIR folder or MMEB .jsonl file")
    parser.add_argument("--format", choices=FORMATS, default=None, help="default: folder = beir, .jsonl = mmeb")
    parser.add_argument("--model", default=None, help="'mini' (default, bundled) or a checkpoint directory")
    parser.add_argument("--budgets", default=",".join(f"{b.r_q}x{b.r_c}" for b in TRAINED_GROUPS),
                        help="comma-separated RQxRC budgets (default: the five trained groups)")
    parser.add_argument("--limit", type=int, default=None,
                        help="evaluate only the first N queries (BEIR keeps the whole corpus)")
    parser.add_argument("--first-stage", type=int, default=None, metavar="K",
                        help="BEIR: ANN on candidate token 0, then exact MaxSim over the top K")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--json", default=None, metavar="OUT", help="write the report dict to this file")
    parser.add_argument("--plot", default=None, metavar="OUT_PREFIX", help="write OUT_PREFIX.html and .png")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if args.limit is not None and args.limit < 1:
        logger.error("--limit must be at least 1, got %d", args.limit)
        return 2
    try:
        budgets = parse_budgets(args.budgets)
        encoder = load_encoder(args.model)
        report = evaluate(encoder, args.data, budgets=budgets, fmt=args.format, limit=args.limit,
                          first_stage=args.first_stage, batch_size=args.batch_size)
    except (BudgetError, EvalDataError, ModelLoadError) as err:
        logger.error("%s", err)
        return 2
    publish(report, args.json)
    if args.plot:
        for path in save_figure(report, args.plot):
            logger.info("wrote %s", path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
