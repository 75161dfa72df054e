"""CLI: ``python -m metaembed.datasets build --out DIR [--only NAME [NAME ...]] [--limit N]``."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from metaembed.datasets._assets import MissingDataError
from metaembed.datasets.build import BUILDERS, build


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m metaembed.datasets",
                                     description="Build the public eval sets from Debian-packaged data.")
    sub = parser.add_subparsers(dest="command", required=True)
    build_parser = sub.add_parser("build", help="write the eval sets (BEIR / MMEB layouts) under --out")
    build_parser.add_argument("--out", type=Path, required=True, help="output folder (one sub-folder per set)")
    build_parser.add_argument("--only", action="extend", nargs="+", choices=list(BUILDERS),
                              help="build only these sets (several names, or the option repeated)")
    build_parser.add_argument("--limit", type=int, default=None,
                              help="small sample: first N items per set (rdocs, docs-dev: first N pages per manual; "
                                   "*-scenes: first N canvases)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        counts = build(args.out, args.only, args.limit)
    except (MissingDataError, ValueError) as error:
        logging.getLogger("metaembed.datasets").error("%s", error)
        return 2
    print(json.dumps(counts, sort_keys=True, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
