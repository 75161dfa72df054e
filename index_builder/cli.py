"""Command line: build / add / remove / info / verify / search. Results go to stdout, logs to stderr.

Exit status: 0 success; 1 nothing could be indexed, or verify found problems; 2 usage or gallery error
(message, no traceback); 130 interrupted (rerun the same command to resume).
"""

from __future__ import annotations

import argparse
import base64
import json
import logging
import os
import signal
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from index_builder.builder import DEFAULT_BATCH_SIZE, DEFAULT_CHUNK_SIZE, BuildReport, add, build
from index_builder.errors import GalleryError
from index_builder.manage import info, remove, verify
from index_builder.pdf import DEFAULT_DPI, DEFAULT_MAX_PAGES
from index_builder.search import search
from metaembed.budget import Budget, BudgetError
from metaembed.models import ModelLoadError
from metaembed.serve import RAY_REQUIREMENT
from metaembed.serve.protocol import RequestError

logger = logging.getLogger("index_builder")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m index_builder", description=__doc__.splitlines()[0])
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)

    def ingest_options(p: argparse.ArgumentParser) -> None:
        p.add_argument("--model", default=None, help="model name or checkpoint dir (default: bundled MetaEmbed-Mini)")
        p.add_argument("--batch-size", type=int, default=DEFAULT_BATCH_SIZE)
        p.add_argument("--dpi", type=int, default=DEFAULT_DPI, help="PDF render resolution")
        p.add_argument("--max-pages", type=int, default=DEFAULT_MAX_PAGES, help="skip PDFs with more pages")
        p.add_argument("--captions", default=None, help="CSV or JSONL sidecar of path,text")
        p.add_argument("--chunk-size", type=int, default=DEFAULT_CHUNK_SIZE, help="items per atomic commit")
        p.add_argument("--no-progress", action="store_true", help="no progress bar")
        p.add_argument("--ray", default=None, metavar="local[:W]|ADDRESS",
                       help="decode and encode on Ray: a local Ray with W encoder workers, or a cluster address "
                            "(needs pip install '" + RAY_REQUIREMENT + "')")
        p.add_argument("--workers", type=int, default=None,
                       help="encoder actors on a cluster address (default: one per GPU slot, else one per node)")
        p.add_argument("--gpus-per-worker", type=float, default=0.0, metavar="G", help="GPUs per encoder actor")

    p = sub.add_parser("build", help="index files/folders into a gallery (resumes an interrupted build)")
    p.add_argument("inputs", nargs="+")
    p.add_argument("--out", required=True, help="gallery directory")
    p.add_argument("--shards", type=int, default=None, metavar="K", help="build a sharded gallery of K shards")
    ingest_options(p)
    p = sub.add_parser("add", help="add files/folders to an existing gallery")
    p.add_argument("dir")
    p.add_argument("inputs", nargs="+")
    ingest_options(p)
    p = sub.add_parser("remove", help="remove items by id or by source path")
    p.add_argument("dir")
    p.add_argument("ids", nargs="+")
    p = sub.add_parser("info", help="summarise a gallery")
    p.add_argument("dir")
    p.add_argument("--json", action="store_true")
    p = sub.add_parser("verify", help="check integrity and that the model matches")
    p.add_argument("dir")
    p.add_argument("--model", default=None, help="model to check against (default: the one in the manifest)")
    p.add_argument("--no-model", action="store_true", help="skip loading the model")
    p.add_argument("--reencode", type=int, default=0, metavar="N",
                   help="also re-encode N items from their files and compare with the stored vectors")
    p = sub.add_parser("search", help="search a gallery (sharded or not) in this process; prints the hits")
    p.add_argument("dir")
    p.add_argument("--text", default=None)
    p.add_argument("--image", default=None, metavar="PATH")
    p.add_argument("--instruction", default=None)
    p.add_argument("--budget", default=None, metavar="RQxRC", help="default: the full budget (R_q, R_c)")
    p.add_argument("--k", type=int, default=10)
    p.add_argument("--first-stage", type=int, default=None, metavar="K'",
                   help="FAISS on token 0 per shard, then MaxSim")
    p.add_argument("--model", default=None, help="default: the model recorded in the gallery")
    p.add_argument("--json", action="store_true", help="print the POST /search response JSON")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # an entry point: this process never contacts a model hub
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format="%(levelname)s %(message)s")
    signal.signal(signal.SIGTERM, _raise_interrupt)  # a polite kill commits the finished chunk first
    try:
        return _dispatch(args)
    except (GalleryError, ModelLoadError, RequestError, BudgetError) as err:
        logger.error("%s", err)
        return 2
    except KeyboardInterrupt:
        logger.error("interrupted; finished items are saved. Rerun the same command to resume.")
        return 130


def _dispatch(args: argparse.Namespace) -> int:
    if args.command in ("build", "add"):
        kwargs: dict[str, Any] = dict(batch_size=args.batch_size, dpi=args.dpi, max_pages=args.max_pages,
                                      captions=args.captions, chunk_size=args.chunk_size,
                                      progress_bar=not args.no_progress, ray=args.ray, workers=args.workers,
                                      gpus_per_worker=args.gpus_per_worker)
        if args.command == "build":
            report = build(args.inputs, args.out, args.model, shards=args.shards, **kwargs)
        else:
            report = add(args.dir, args.inputs, args.model, **kwargs)
        return _print_report(report)
    if args.command == "remove":
        print(f"removed {remove(args.dir, args.ids)} items")
        return 0
    if args.command == "search":
        return _search(args)
    if args.command == "info":
        summary = info(args.dir).to_dict()
        if args.json:
            print(json.dumps(summary, indent=2))
        else:
            for key, value in summary.items():
                print(f"{key:18} {value}")
        return 0
    result = verify(args.dir, args.model, load_model=not args.no_model, reencode=args.reencode)
    for warning in result.warnings:
        print(f"warning: {warning}")
    for problem in result.problems:
        print(f"PROBLEM: {problem}")
    model = "model checked" if result.model_checked else "model not checked"
    reencoded = f", {result.reencoded} re-encoded" if result.reencoded else ""
    print(f"{'OK' if result.ok else 'FAILED'}: {result.checked_items} items checked, {model}{reencoded}")
    return 0 if result.ok else 1


def _search(args: argparse.Namespace) -> int:
    body: dict[str, Any] = {"text": args.text, "instruction": args.instruction, "k": args.k,
                            "first_stage": args.first_stage}
    if args.budget is not None:
        budget = Budget.parse(args.budget)
        body.update(r_q=budget.r_q, r_c=budget.r_c)
    if args.image is not None:
        try:
            body["image"] = base64.b64encode(Path(args.image).read_bytes()).decode()
        except OSError as err:
            raise GalleryError(f"--image {args.image}: {err.strerror or err}") from None
    result = search(args.dir, body, args.model)
    if args.json:
        print(json.dumps(result))
        return 0
    for rank, hit in enumerate(result["hits"], start=1):
        title = f"{hit.get('source', '')} p. {hit['page']}" if hit.get("page") else hit.get("source", "")
        print(f"{rank:3} {hit['score']:8.4f}  {hit['shard']}  {hit['id']}  {title}")
    print(f"timings (ms): {result['timings']}; bytes read {result['bytes_read']:,}")
    return 0


def _print_report(report: BuildReport) -> int:
    for entry in report.skipped:
        print(f"skipped  {entry['path']}: {entry['reason']}")
    for entry in report.duplicates:
        print(f"duplicate {entry['path']} (same content as {entry['duplicate_of']})")
    print(report.summary + " (details in report.json)")
    return 0 if report.ok else 1


def _raise_interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


if __name__ == "__main__":
    sys.exit(main())
