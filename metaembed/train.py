"""Command line: ``python -m metaembed.train --config configs/NAME.yaml [--resume] [--steps N] [--output DIR]``."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence

from metaembed.datasets.training import SOURCES
from metaembed.training.config import ConfigError, load_config
from metaembed.training.trainer import Trainer

logger = logging.getLogger("metaembed.train")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m metaembed.train", description="Train a MetaEmbed encoder (MMR).")
    parser.add_argument("--config", required=True, help="YAML training config (see configs/)")
    parser.add_argument("--resume", action="store_true", help="continue from the newest checkpoint in checkpoint_dir")
    parser.add_argument("--steps", type=int, help="override the config's total number of steps")
    parser.add_argument("--output", help="override the config's output_dir (final model)")
    parser.add_argument("--device", help="cpu / cuda / cuda:1 (default: CUDA when present)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    try:
        cfg = load_config(args.config)
    except ConfigError as err:
        parser.exit(2, f"error: {err}\n")
    if args.steps is not None:
        if args.steps < 1:
            parser.exit(2, f"error: --steps must be >= 1, got {args.steps}\n")
        cfg.steps = args.steps
    if args.output:
        cfg.output_dir = args.output
    Trainer(cfg, SOURCES, device=args.device).train(resume=args.resume)
    print(cfg.output_dir)
    return 0


if __name__ == "__main__":
    sys.exit(main())
