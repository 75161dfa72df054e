"""Training speed: seconds per optimiser step of a training config on this machine.

Builds the config's Trainer (its real data mix and feature cache), fills the cache once, then times the
first ``--steps`` steps: the same batches every run (the sampler is seeded), so two checkouts of the code
compare step for step, and the losses show whether a speed change also changed the numbers. The frozen
text states are cached while training, so early steps are slower than a long run's average; compare
medians of the same steps, not these with a log's. The last printed line is one JSON object.

    python benchmarks/bench_train_step.py [--config configs/mini.yaml] [--steps 12] [--threads 2]
"""

from __future__ import annotations

import argparse
import datetime
import json
import logging
import os
import statistics
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # run as a script from a checkout

logger = logging.getLogger("bench_train_step")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default=str(REPO / "configs" / "mini.yaml"))
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    torch.set_num_threads(args.threads)
    from metaembed.datasets.training import SOURCES
    from metaembed.training.config import load_config
    from metaembed.training.trainer import Trainer

    cfg = load_config(args.config)
    # Nothing of the timed run is kept: no log, no checkpoints (the final save is never reached).
    cfg.steps, cfg.log_file, cfg.checkpoint_dir, cfg.checkpoint_every, cfg.eval = args.steps, None, None, 0, None
    trainer = Trainer(cfg, SOURCES, device="cpu")
    trainer.prepare()
    seconds, losses = [], []
    for step in range(args.steps):
        start = time.perf_counter()
        stats = trainer.train_step()
        seconds.append(time.perf_counter() - start)
        losses.append(round(stats["loss"], 4))
        logger.info("step %d: %.2f s, loss %.4f", step + 1, seconds[-1], stats["loss"])
    result = {
        "config": args.config, "steps": args.steps, "threads": args.threads,
        "median_s": round(statistics.median(seconds), 3), "mean_s": round(statistics.mean(seconds), 3),
        "seconds": [round(s, 3) for s in seconds], "losses": losses,
        "date": datetime.date.today().isoformat(), "cpus": os.cpu_count(),
    }
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
