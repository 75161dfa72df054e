"""``python -m metaembed.serve DIR``: serve a sharded gallery (or one index directory) over HTTP on Ray Serve.

Exit status: 2 when the gallery or a shard is missing or corrupt (one message, at start), 130 on Ctrl-C.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
from collections.abc import Sequence

from metaembed.serve import RAY_REQUIREMENT

logger = logging.getLogger("metaembed.serve")


def main(argv: Sequence[str] | None = None) -> int:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    parser = argparse.ArgumentParser(prog="python -m metaembed.serve", description=__doc__.splitlines()[0])
    parser.add_argument("dir", help="sharded gallery (index_builder build --shards K) or an index directory")
    parser.add_argument("--ray", default="local", help="'local' (start Ray here) or a cluster address")
    parser.add_argument("--replicas", type=int, default=1, help="replicas per deployment")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--model", default=None, help="default: the model recorded in the gallery")
    parser.add_argument("--no-first-stage", action="store_true", help="do not build FAISS on vector 0 at start")
    parser.add_argument("--verify", action="store_true", help="check every shard's SHA-256 at start (reads all)")
    parser.add_argument("--shard-cpus", type=float, default=1.0, help="CPUs (and scoring threads) per shard replica")
    parser.add_argument("--encoder-cpus", type=float, default=1.0, help="CPUs (and torch threads) per encoder replica")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    try:
        import ray

        from metaembed.serve import app
    except ImportError:
        logger.error("serving needs Ray, which is not installed: pip install '%s'", RAY_REQUIREMENT)
        return 2
    from metaembed.models import ModelLoadError
    from metaembed.shards import ShardError

    if args.replicas < 1:
        logger.error("--replicas must be at least 1")
        return 2
    try:
        gallery = app.plan(args.dir, args.model, verify=args.verify)
    except (ShardError, ModelLoadError) as err:
        logger.error("%s", err)
        return 2
    if args.ray == "local":
        os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")  # a one-machine Ray: loopback only
        ray.init(include_dashboard=False)
    else:
        ray.init(address=args.ray)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    try:
        url = app.start(gallery, args.host, args.port, replicas=args.replicas, first_stage=not args.no_first_stage,
                        shard_cpus=args.shard_cpus, encoder_cpus=args.encoder_cpus)
        logger.info("serving %d items in %d shard(s) at %s/search", gallery.count, len(gallery.shards), url)
        stop.wait()
    except ShardError as err:
        logger.error("%s", err)
        return 2
    except KeyboardInterrupt:
        return 130
    finally:
        from ray import serve

        serve.shutdown()
        ray.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
