"""The Ray Serve application: one deployment per shard, one query encoder, one router.

* ``ShardSearcher`` (one deployment per shard, ``num_replicas`` each): the shard's index memory-mapped,
  its scoring kernels compiled and (optionally) its FAISS first stage on vector 0 built at start.
* ``QueryEncoder``: the gallery's model, loaded once per replica; a query is encoded once per request.
  The router keeps the last ``QUERY_CACHE`` queries' vectors, so changing only the budget or k encodes
  nothing and skips the encoder's round trip.
* ``Router`` (the HTTP ingress): checks the request (:mod:`metaembed.serve.protocol`), encodes it, fans out
  to every shard at once, retries a shard whose replica died (Serve starts a new one) until
  ``SHARD_RETRY_S``, then answers 503 naming the shard; merges the per-shard top-k exactly.

Shards are checked in the starting process before anything is deployed, so a missing or corrupt shard is
one clear error at start, not a deployment that keeps failing.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import ray
import torch
from ray import serve
from starlette.requests import Request
from starlette.responses import JSONResponse

from metaembed import fused_maxsim
from metaembed.budget import Budget
from metaembed.index import MultiVectorIndex, SearchResult
from metaembed.models import Item, load_encoder, token_counts
from metaembed.serve.protocol import RequestError, SearchRequest, response
from metaembed.shards import ShardError, is_sharded, open_shards, read_manifest, search_shard
from metaembed.store import MANIFEST as INDEX_MANIFEST

logger = logging.getLogger(__name__)

APP_NAME = "metaembed"
#: How long the router keeps retrying a shard whose replica died before it answers 503.
SHARD_RETRY_S = 30.0
MAX_BODY_BYTES = 32 * 1024 * 1024
QUERY_CACHE = 256
ROUTER_CPUS = 0.1


@dataclass(frozen=True)
class ShardPlan:
    name: str
    index_dir: str


@dataclass(frozen=True)
class GalleryPlan:
    """What to deploy, read and checked in the starting process."""

    directory: str
    shards: list[ShardPlan]
    model_ref: str
    fingerprint: str | None
    r_q: int
    r_c: int
    dim: int
    count: int


def plan(directory: str | Path, model: str | None = None, verify: bool = False) -> GalleryPlan:
    """Open every shard (mapped: header and size checked; ``verify`` reads every byte for the SHA-256) and
    read the model: a missing or corrupt shard raises :class:`ShardError` here, before any deployment."""
    directory = Path(directory).resolve()
    if is_sharded(directory):
        manifest = read_manifest(directory)
        dirs = [str(directory / spec.index) for spec in manifest["shards"]]
        model_ref = model or (manifest.get("model") or {}).get("ref")
    elif (directory / INDEX_MANIFEST).is_file():
        dirs, model_ref = [str(directory)], model
    else:
        raise ShardError(f"{directory} is neither a sharded gallery nor an index directory (to serve an "
                         "ordinary gallery, pass its index/ folder and --model)")
    shards = open_shards(directory, verify=verify)
    if not model_ref:
        raise ShardError(f"{directory} records no model; pass --model")
    r_q, _ = token_counts(model_ref)
    return GalleryPlan(str(directory), [ShardPlan(s.name, d) for s, d in zip(shards, dirs, strict=True)],
                       str(model_ref), shards[0].index.model_fingerprint, int(r_q), shards[0].index.num_vectors,
                       shards[0].index.dim, sum(len(s.index) for s in shards))


@serve.deployment
class ShardSearcher:
    """One shard: a memory-mapped index searched on request."""

    def __init__(self, name: str, index_dir: str, first_stage: bool, threads: int) -> None:
        torch.set_num_threads(threads)
        self.name = name
        self.index = MultiVectorIndex.load(index_dir)
        fused_maxsim.warm_up()
        if first_stage and len(self.index):
            self.index.first_stage_index()

    def search(self, query: np.ndarray, r_q: int, r_c: int, k: int, first_stage: int | None) -> SearchResult:
        return search_shard(self.index, torch.from_numpy(query), Budget(r_q, r_c), k, first_stage)


@serve.deployment
class QueryEncoder:
    """The gallery's model, loaded once; refuses to start with a model other than the gallery's."""

    def __init__(self, model_ref: str, fingerprint: str | None, threads: int) -> None:
        torch.set_num_threads(threads)
        self.encoder = load_encoder(model_ref)
        if fingerprint is not None and self.encoder.fingerprint() != fingerprint:
            raise ShardError(f"model {model_ref!r} has fingerprint {self.encoder.fingerprint()}, the gallery was "
                             f"built with {fingerprint}")

    def encode(self, item: Item) -> tuple[np.ndarray, float]:
        """``(R_q, D)`` float32 query vectors and the encode ms."""
        tic = time.perf_counter()
        vectors = self.encoder.encode_queries([item])[0].float().numpy()
        return vectors, (time.perf_counter() - tic) * 1000


class ShardUnavailable(RuntimeError):
    """A shard that did not answer within SHARD_RETRY_S (its replicas died and none is back yet)."""


@serve.deployment
class Router:
    """``POST /search`` and ``GET /info``: encode once, fan out to every shard, merge."""

    def __init__(self, encoder: Any, shards: list[Any], gallery: GalleryPlan) -> None:
        self.encoder, self.shards, self.gallery = encoder, shards, gallery
        self.names = [s.name for s in gallery.shards]
        self.cache: OrderedDict[str, np.ndarray] = OrderedDict()

    async def __call__(self, request: Request) -> JSONResponse:
        path = request.url.path.rstrip("/") or "/"
        if path == "/info":
            return JSONResponse(self.info())
        if path != "/search":
            return _error(404, f"no route {path}: use POST /search or GET /info")
        if request.method != "POST":
            return _error(405, "use POST with a JSON body")
        body = await request.body()
        if len(body) > MAX_BODY_BYTES:
            return _error(413, f"request body over {MAX_BODY_BYTES // 2**20} MiB")
        try:
            parsed = json.loads(body or b"null")
            search = SearchRequest.from_json(parsed, self.gallery.r_q, self.gallery.r_c)
            item = search.item()
        except json.JSONDecodeError as err:
            return _error(400, f"the body is not valid JSON: {err}")
        except RequestError as err:
            return _error(400, str(err))
        try:
            return JSONResponse(await self.search(search, item))
        except ShardUnavailable as err:
            return _error(503, str(err))

    def info(self) -> dict[str, Any]:
        return {"directory": self.gallery.directory, "shards": self.names, "count": self.gallery.count,
                "r_q": self.gallery.r_q, "r_c": self.gallery.r_c, "dim": self.gallery.dim,
                "model": self.gallery.model_ref,
                "model_fingerprint": self.gallery.fingerprint}

    async def search(self, search: SearchRequest, item: Item) -> dict[str, Any]:
        started = time.perf_counter()
        key = search.query_key()
        if key in self.cache:
            self.cache.move_to_end(key)
            vectors, encode_ms = self.cache[key], 0.0
        else:
            vectors, encode_ms = await self.encoder.encode.remote(item)
            self.cache[key] = vectors
            while len(self.cache) > QUERY_CACHE:
                self.cache.popitem(last=False)
        calls = [self._shard(i, vectors, search) for i in range(len(self.shards))]
        answers = await asyncio.gather(*calls)
        results = [a[0] for a in answers]
        return response(self.names, results, search.k, encode_ms, [a[1] for a in answers], started)

    async def _shard(self, i: int, vectors: np.ndarray, search: SearchRequest) -> tuple[SearchResult, float]:
        """One shard's answer and its round-trip ms; a dead replica is retried until SHARD_RETRY_S."""
        deadline = time.monotonic() + SHARD_RETRY_S
        budget = search.budget
        while True:
            tic = time.perf_counter()
            try:
                result = await self.shards[i].search.remote(vectors, budget.r_q, budget.r_c, search.k,
                                                            search.first_stage)
                return result, (time.perf_counter() - tic) * 1000
            except (ray.exceptions.RayActorError, ray.exceptions.ActorUnavailableError,
                    serve.exceptions.BackPressureError) as err:
                if time.monotonic() > deadline:
                    raise ShardUnavailable(f"{self.names[i]} is unavailable ({type(err).__name__}); its replica "
                                           "is being restarted: retry shortly") from None
                logger.warning("%s: %s; retrying", self.names[i], type(err).__name__)
                await asyncio.sleep(0.2)


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


def build(gallery: GalleryPlan, replicas: int = 1, first_stage: bool = True, shard_cpus: float = 1.0,
          encoder_cpus: float = 1.0, encoder_replicas: int | None = None) -> Any:
    """The Serve application for a checked gallery: deployments named after the shards, ``replicas`` of each
    shard and (unless ``encoder_replicas`` says otherwise) of the encoder; one router."""
    shards = [ShardSearcher.options(name=s.name, num_replicas=replicas, ray_actor_options={"num_cpus": shard_cpus})
              .bind(s.name, s.index_dir, first_stage, max(1, round(shard_cpus))) for s in gallery.shards]
    encoder = QueryEncoder.options(num_replicas=encoder_replicas or replicas,
                                   ray_actor_options={"num_cpus": encoder_cpus}).bind(
        gallery.model_ref, gallery.fingerprint, max(1, round(encoder_cpus)))
    return Router.options(ray_actor_options={"num_cpus": ROUTER_CPUS}).bind(encoder, shards, gallery)


def check_resources(gallery: GalleryPlan, replicas: int = 1, shard_cpus: float = 1.0, encoder_cpus: float = 1.0,
                    encoder_replicas: int | None = None, **_: Any) -> None:
    """Refuse plainly when the cluster cannot place every replica (Serve would wait for CPUs for ever)."""
    need = len(gallery.shards) * replicas * shard_cpus + (encoder_replicas or replicas) * encoder_cpus + ROUTER_CPUS
    have = float(ray.cluster_resources().get("CPU", 0))
    largest = max((float(n["Resources"].get("CPU", 0)) for n in ray.nodes() if n["Alive"]), default=0.0)
    if need > have + 1e-9 or max(shard_cpus, encoder_cpus) > largest + 1e-9:
        raise ShardError(f"{len(gallery.shards)} shards x {replicas} replicas x {shard_cpus} CPUs + the encoder "
                         f"({encoder_cpus} CPUs each) + the router need {need:g} CPUs, and a replica must fit on one "
                         f"node; the cluster has {have:g} CPUs, at most {largest:g} per node. Lower --shard-cpus or "
                         "--replicas, or add nodes")


def start(gallery: GalleryPlan, host: str = "127.0.0.1", port: int = 8000, **options: Any) -> str:
    """Deploy on the Ray this process is connected to; returns the base URL once every replica is up."""
    check_resources(gallery, **options)
    serve.start(proxy_location="HeadOnly", http_options={"host": host, "port": port})
    serve.run(build(gallery, **options), name=APP_NAME, route_prefix="/")
    return f"http://{host}:{port}"


def replica_actor_names(shard: str) -> Sequence[str]:
    """Ray actor names of a shard's replicas (Serve's naming), for operators and the fault tests."""
    return [a["name"] for a in ray.util.list_named_actors(all_namespaces=True)
            if a["name"].startswith("SERVE_REPLICA::") and f"#{shard}#" in a["name"]]
