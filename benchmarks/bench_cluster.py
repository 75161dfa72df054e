"""Scale-out figures, each beside its baseline from the same run (the last line of stdout is JSON):

* build: items/s of the distributed build with 1 and 2 encoder workers (``ray="local:W"``, bundled model)
  against the single-process build of the same items (both times exclude loading the model in this process;
  the Ray times include starting the actors and loading the model in each);
* search: p50 / p99 of a search given the query vectors at the five trained budgets, single process (the
  reference, ``index_builder search``'s code, over the same shard files) against the Ray Serve app with 2 shards
  (HTTP POST /search with a cached query, so the encode is excluded on both sides), on a synthetic N = 200,000,
  D = 384, bf16, R_c = 64 gallery (9.8 GB, written once into ``--workdir`` and reused), results compared;
* open: open time and resident memory (VmRSS, RssFile) of a memory-mapped index against today's loader
  (``mmap=False``: read into RAM, SHA-256 checked) on the same files, each in a fresh process;
* projection: shards needed for N = 10^6 .. 10^9 and D in {384, 2048, 3584} at ``--node-gib`` per node (bf16,
  R_c = 64, 90 % usable) and the latency expected from the measured per-shard scoring rate (bytes/s at each
  budget, shards in parallel) plus the measured fan-out overhead.

    .venv/bin/python benchmarks/bench_cluster.py [--items 96] [--n 200000] [--repeats 12] [--node-gib 128] \
        [--parts build,open,search]
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "benchmarks")]
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")  # one machine: every Ray node on loopback

import torch  # noqa: E402
from bench_ingest import GALLERY, prepare_inputs  # noqa: E402

import index_builder  # noqa: E402
from metaembed import shards as shard_format  # noqa: E402
from metaembed.budget import TRAINED_GROUPS  # noqa: E402
from metaembed.costs import GIB, index_bytes  # noqa: E402
from metaembed.index import write_index  # noqa: E402
from metaembed.models import load_encoder  # noqa: E402
from metaembed.serve import protocol  # noqa: E402

logger = logging.getLogger("bench_cluster")
DIM, R_C = 384, 64


def bench_build(model, n_items: int, repeats: int) -> dict:
    """Single-process build vs local:1 and local:2 on the same images, alternating, medians of ``repeats``.

    Each is run on ``n_items // 2`` and on ``n_items`` items: end-to-end items/s is the larger run's, and the
    marginal rate (items added / seconds added) cancels what a run pays once (for Ray: starting the actors
    and loading the model in each), i.e. the steady-state throughput.
    """
    import ray

    work = Path(tempfile.mkdtemp(prefix="bench-build-"))
    sizes = (n_items // 2, n_items)
    for n in sizes:
        (work / str(n)).mkdir()
    inputs = {n: prepare_inputs(work / str(n), GALLERY / "images", n, GALLERY / "docs" / "reportlab-userguide.pdf",
                                0) for n in sizes}
    ray.init(num_cpus=os.cpu_count(), include_dashboard=False, object_store_memory=256 * 2**20, log_to_driver=False)
    sides = (("single_process", None), ("ray_1_worker", "local:1"), ("ray_2_workers", "local:2"))
    seconds: dict[tuple[str, int], list[float]] = {}
    try:
        for r in range(repeats):
            for n in sizes:
                for name, spec in sides:
                    out = work / f"{name}-{n}-{r}"
                    report = index_builder.build([inputs[n]], out, model, ray=spec, shards=2 if spec else None)
                    assert report.indexed == n, report.summary
                    seconds.setdefault((name, n), []).append(report.seconds)
                    logger.info("build %s, %d items: %.1f s", name, n, report.seconds)
                    shutil.rmtree(out)
    finally:
        ray.shutdown()
        shutil.rmtree(work, ignore_errors=True)
    best = {key: statistics.median(v) for key, v in seconds.items()}
    end_to_end = {name: round(n_items / best[(name, n_items)], 2) for name, _ in sides}
    # A larger run that took no longer than the smaller one (noise over a fixed cost) has no marginal rate: None.
    added = {name: best[(name, sizes[1])] - best[(name, sizes[0])] for name, _ in sides}
    marginal = {name: round((sizes[1] - sizes[0]) / dt, 2) if dt > 0 else None for name, dt in added.items()}
    base = marginal["single_process"]
    return {"items": list(sizes), "repeats": repeats, "items_per_s": end_to_end, "marginal_items_per_s": marginal,
            "seconds": {f"{name}@{n}": [round(x, 1) for x in v] for (name, n), v in seconds.items()},
            "overhead_end_to_end": {k: round(end_to_end["single_process"] / v - 1, 3) for k, v in end_to_end.items()},
            "overhead_marginal": {k: round(base / v - 1, 3) if base and v else None for k, v in marginal.items()}}


def synthetic_gallery(root: Path, n: int, shards: int = 2) -> Path:
    """A sharded gallery of ``n`` random unit vectors per token (bf16), written slab by slab (never in RAM)."""
    directory = root / f"synthetic-{n}"
    if shard_format.is_sharded(directory):
        return directory
    tmp = root / f".synthetic-{n}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    generator = torch.Generator().manual_seed(0)
    specs = []
    for s in range(shards):
        count = n // shards + (s < n % shards)
        name = shard_format.shard_name(s)
        slabs = (torch.nn.functional.normalize(torch.randn(count, DIM, generator=generator), dim=-1).to(torch.bfloat16)
                 for _ in range(R_C))
        write_index(tmp / name / "index", slabs, ids=[f"s{s}-{i}" for i in range(count)], metadata=None, dim=DIM,
                    num_vectors=R_C, dtype=torch.bfloat16)
        specs.append(shard_format.ShardSpec(name, f"{name}/index", count))
    shard_format.write_manifest(tmp, specs, {"model": {"name": "synthetic", "fingerprint": None, "ref": "mini"},
                                             "dim": DIM, "r_c": R_C, "dtype": "bfloat16"})
    os.replace(tmp, directory)
    return directory


def _percentiles(values: list[float]) -> dict[str, float]:
    ordered = sorted(values)
    return {"p50": round(statistics.median(ordered), 3),
            "p99": round(ordered[min(len(ordered) - 1, math.ceil(0.99 * len(ordered)) - 1)], 3)}


def bench_search(gallery: Path, encoder, repeats: int) -> dict:
    """Single-process reference vs the served 2-shard app, same query, same gallery files, alternating."""
    import ray
    from ray import serve

    from metaembed import fused_maxsim
    from metaembed.serve import app

    shards = shard_format.open_shards(gallery)
    fused_maxsim.warm_up()
    texts = ["a penguin on the ice", "a red bicycle", "the table of contents"]
    vectors = {t: encoder.encode_queries([protocol.SearchRequest(t, None, None, TRAINED_GROUPS[0], 10, None).item()])[0]
               for t in texts}
    ray.init(num_cpus=os.cpu_count(), include_dashboard=False, object_store_memory=256 * 2**20, log_to_driver=False)
    rows = []
    try:
        tic = time.perf_counter()
        cpus = float(os.cpu_count())  # the same cores as the single-process side: the shards split them
        url = app.start(app.plan(gallery), port=8799, replicas=1, first_stage=False,
                        shard_cpus=(cpus - 0.5) / len(shards), encoder_cpus=0.4)
        start_s = time.perf_counter() - tic
        for budget in TRAINED_GROUPS:
            local_ms, served_ms, identical = [], [], True
            for r in range(repeats):
                text = texts[r % len(texts)]
                body = {"text": text, "r_q": budget.r_q, "r_c": budget.r_c, "k": 10}
                request = protocol.SearchRequest.from_json(body, 16, R_C)
                tic = time.perf_counter()
                local = protocol.search_local(shards, request, lambda _r, v=vectors[text]: (v, 0.0))
                local_ms.append((time.perf_counter() - tic) * 1000)
                data = json.dumps(body).encode()
                post = urllib.request.Request(url + "/search", data=data, headers={"Content-Type": "application/json"})
                tic = time.perf_counter()
                with urllib.request.urlopen(post, timeout=600) as answer:
                    served = json.loads(answer.read())
                elapsed = (time.perf_counter() - tic) * 1000
                if r >= len(texts):  # the first pass over the texts encodes them on the server: not timed
                    served_ms.append(elapsed - served["timings"]["encode_ms"])
                else:
                    local_ms.pop()
                identical &= [(h["id"], round(h["score"], 5)) for h in served["hits"]] == [
                    (h["id"], round(h["score"], 5)) for h in local["hits"]]
            read = sum(s.index.bytes_read(budget) for s in shards)
            row = {"budget": str(budget), "local_ms": _percentiles(local_ms), "sharded_ms": _percentiles(served_ms),
                   "identical": identical, "bytes_read": read,
                   "local_gb_per_s": round(read / statistics.median(local_ms) / 1e6, 2)}
            row["target_ms"] = round(1.5 * row["local_ms"]["p50"] + 5, 3)
            row["target_met"] = row["sharded_ms"]["p50"] <= row["target_ms"] and identical
            rows.append(row)
            logger.info("search %s", row)
    finally:
        serve.shutdown()
        ray.shutdown()
    return {"n": sum(len(s.index) for s in shards), "dim": DIM, "r_c": R_C, "dtype": "bfloat16", "shards": len(shards),
            "repeats": repeats - len(texts), "serve_start_s": round(start_s, 1), "budgets": rows}


_OPEN_CHILD = r"""
import json, sys, time, torch
from metaembed.budget import Budget
from metaembed.index import MultiVectorIndex
from metaembed import fused_maxsim

def status():
    fields = {}
    for line in open("/proc/self/status"):
        key, _, value = line.partition(":")
        if key in ("VmRSS", "RssFile", "RssAnon"):
            fields[key] = int(value.split()[0]) / 1024
    return fields

fused_maxsim.warm_up()
before = status()
tic = time.perf_counter()
index = MultiVectorIndex.load(sys.argv[1], mmap=sys.argv[2] == "mmap")
opened = time.perf_counter() - tic
after_open = status()
query = torch.nn.functional.normalize(torch.randn(16, index.dim), dim=-1)
grown = {}
for budget in (Budget(1, 1), Budget(8, 16)):
    index.search(query, budget, k=10)
    grown[str(budget)] = {k: round(v - before[k], 1) for k, v in status().items()}
opened_mib = {k: round(v - before[k], 1) for k, v in after_open.items()}
print(json.dumps({"open_s": round(opened, 3), "after_open_mib": opened_mib, "after_search_mib": grown,
                  "items": len(index)}))
"""


def _drop_cache(path: Path) -> None:
    for file in path.glob("vectors-*.safetensors"):
        fd = os.open(file, os.O_RDONLY)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        os.close(fd)


def bench_open(gallery: Path, small_n: int) -> dict:
    """Mapped vs read-into-RAM on a small index; mapped only on the big shard (the old loader would need its
    size in RAM twice over)."""
    small = gallery.parent / f"synthetic-open-{small_n}"
    if not (small / "index.json").is_file():
        generator = torch.Generator().manual_seed(1)
        slabs = (torch.nn.functional.normalize(torch.randn(small_n, DIM, generator=generator), dim=-1)
                 .to(torch.bfloat16) for _ in range(R_C))
        write_index(small, slabs, ids=[str(i) for i in range(small_n)], metadata=None, dim=DIM, num_vectors=R_C,
                    dtype=torch.bfloat16)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    out = {}
    for name, path, mode in (("small_mapped", small, "mmap"), ("small_read_into_ram", small, "ram"),
                             ("shard_mapped", gallery / "shard-000" / "index", "mmap")):
        _drop_cache(path)
        run = subprocess.run([sys.executable, "-c", _OPEN_CHILD, str(path), mode], capture_output=True, text=True,
                             env=env, check=True, timeout=1800)
        out[name] = {**json.loads(run.stdout.splitlines()[-1]),
                     "file_gib": round(sum(f.stat().st_size for f in path.glob("vectors-*")) / GIB, 2)}
        logger.info("open %s: %s", name, out[name])
    return out


def projection(search: dict, node_gib: float) -> list[dict]:
    """Shards for N x D at ``node_gib`` per node and the expected latency from the measured scoring rate."""
    rate = {row["budget"]: row["local_gb_per_s"] * 1e9 for row in search["budgets"]}  # bytes/s, one process
    fanout = statistics.median(max(0.0, row["sharded_ms"]["p50"] - row["local_ms"]["p50"] / search["shards"])
                               for row in search["budgets"])
    rows = []
    for dim in (384, 2048, 3584):
        for n in (10**6, 10**7, 10**8, 10**9):
            total = index_bytes(n, R_C, dim, 2)
            shards = max(1, math.ceil(total / (node_gib * GIB * 0.9)))
            latency = {b: round(index_bytes(math.ceil(n / shards), int(b.strip("()").split(",")[1]), dim, 2)
                                / rate[b] * 1000 + fanout, 1) for b in ("(1,1)", "(8,16)", "(16,64)")}
            rows.append({"n": n, "dim": dim, "index_gib": round(total / GIB, 1), "shards": shards,
                         "expected_ms": latency})
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=96, help="images per build")
    parser.add_argument("--build-repeats", type=int, default=2)
    parser.add_argument("--n", type=int, default=200_000, help="synthetic gallery size")
    parser.add_argument("--repeats", type=int, default=12, help="timed searches per budget and side")
    parser.add_argument("--open-n", type=int, default=20_000, help="items of the index both loaders open")
    parser.add_argument("--node-gib", type=float, default=128.0)
    parser.add_argument("--workdir", default=str(Path(tempfile.gettempdir()) / "metaembed-bench-cluster"))
    parser.add_argument("--parts", default="build,open,search", help="which figures: build, open, search")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    workdir = Path(args.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    encoder = load_encoder()
    result = {"date": time.strftime("%Y-%m-%d"), "model": encoder.name, "model_fingerprint": encoder.fingerprint(),
              "precision": encoder.precision, "load_average_start": list(os.getloadavg()), "cpus": os.cpu_count()}
    parts = set(args.parts.split(","))
    if "build" in parts:
        result["build"] = bench_build(encoder, args.items, args.build_repeats)
    if parts & {"open", "search"}:
        tic = time.perf_counter()
        gallery = synthetic_gallery(workdir, args.n)
        result["synthetic_write_s"] = round(time.perf_counter() - tic, 1)
    if "open" in parts:
        result["open"] = bench_open(gallery, args.open_n)
    if "search" in parts:
        result["search"] = bench_search(gallery, encoder, args.repeats + 3)
        result["projection"] = {"node_gib": args.node_gib, "rows": projection(result["search"], args.node_gib)}
    result["load_average_end"] = list(os.getloadavg())
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
