"""Sharded galleries as the library reads them: a top-level manifest naming K index directories, opened
together (each memory-mapped) and searched as one.

Each shard ranks its own items with :meth:`MultiVectorIndex.search`; :func:`merge` then takes the best
``k`` of the per-shard top-k by score, ties to the lower shard and then the lower rank, which is exact:
the global top-k of an exhaustive search is always within the union of the per-shard top-k. A two-stage
search shortlists ``k'`` candidates *per shard* (K * k' scored), a superset of what one unsharded flat
first stage would keep. The single-process reference (``python -m index_builder search``) and the Ray
Serve router (:mod:`metaembed.serve`) both go through these functions, so they answer alike.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from metaembed.budget import Budget
from metaembed.index import MultiVectorIndex, SearchResult
from metaembed.io import atomic_write_json
from metaembed.store import MANIFEST as INDEX_MANIFEST

FORMAT = "metaembed-sharded-gallery"
VERSION = 1
MANIFEST = "manifest.json"


class ShardError(RuntimeError):
    """A sharded gallery whose manifest, or one of whose shards, is missing, corrupt or inconsistent."""


@dataclass(frozen=True)
class ShardSpec:
    """One shard: its name, its index directory relative to the gallery root, its item count when written."""

    name: str
    index: str
    count: int = 0


@dataclass
class Shard:
    name: str
    index: MultiVectorIndex


def shard_name(number: int) -> str:
    return f"shard-{number:03d}"


def is_sharded(directory: str | Path) -> bool:
    """Whether ``directory`` holds a sharded gallery's manifest (any other folder: False)."""
    path = Path(directory) / MANIFEST
    try:
        return json.loads(path.read_text(encoding="utf-8")).get("format") == FORMAT
    except (OSError, ValueError, AttributeError):
        return False


def read_manifest(directory: str | Path) -> dict[str, Any]:
    """The top-level manifest, checked: format, version, and a non-empty list of shard entries."""
    path = Path(directory) / MANIFEST
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ShardError(f"{path} not found: {directory} is not a sharded gallery") from None
    except (OSError, ValueError) as err:
        raise ShardError(f"{path} is unreadable or not valid JSON: {err}") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise ShardError(f"{path} is not a {FORMAT} manifest")
    if manifest.get("version") != VERSION:
        raise ShardError(f"{path} has format version {manifest.get('version')!r}; this code reads {VERSION}")
    try:
        specs = [ShardSpec(**entry) for entry in manifest["shards"]]
    except (KeyError, TypeError) as err:
        raise ShardError(f"{path}: bad 'shards' list ({err})") from None
    if not specs:
        raise ShardError(f"{path} lists no shards")
    manifest["shards"] = specs
    return manifest


def write_manifest(directory: str | Path, shards: Sequence[ShardSpec], fields: dict[str, Any]) -> None:
    """Write the top-level manifest atomically: ``fields`` (model, dim, r_c, dtype and whatever the writer
    records) plus the shard list, the total count and the format."""
    body = {**fields, "format": FORMAT, "version": VERSION, "shards": [asdict(s) for s in shards],
            "count": sum(s.count for s in shards)}
    atomic_write_json(Path(directory) / MANIFEST, body)


def open_shards(directory: str | Path, verify: bool = False) -> list[Shard]:
    """Open every shard of a sharded gallery (memory-mapped), or a plain index directory as one shard.

    A missing, corrupt or inconsistent shard (other model, shape or dtype than the manifest says) raises
    :class:`ShardError` naming it. ``verify`` also checks each vectors file's SHA-256 (reads every byte).
    """
    directory = Path(directory)
    if (directory / INDEX_MANIFEST).is_file() and not is_sharded(directory):
        return [Shard(directory.name, _load(directory, directory.name, verify))]
    manifest = read_manifest(directory)
    model = manifest.get("model") or {}
    expected = (manifest.get("dim"), manifest.get("r_c"), manifest.get("dtype"), model.get("fingerprint"))
    shards = []
    for spec in manifest["shards"]:
        index = _load(directory / spec.index, spec.name, verify)
        got = (index.dim, index.num_vectors, str(index.dtype).removeprefix("torch."), index.model_fingerprint)
        if got != expected:
            raise ShardError(f"shard {spec.name} ({directory / spec.index}) holds D, R_c, dtype, model = {got}; "
                             f"the gallery's manifest says {expected}")
        shards.append(Shard(spec.name, index))
    return shards


def _load(path: Path, name: str, verify: bool) -> MultiVectorIndex:
    try:
        return MultiVectorIndex.load(path, verify=verify)
    except (OSError, ValueError, RuntimeError, KeyError) as err:
        raise ShardError(f"shard {name} cannot be opened: {err}") from None


def search_shard(index: MultiVectorIndex, query: torch.Tensor, budget: Budget, k: int,
                 first_stage: int | None) -> SearchResult:
    """One shard's part of a search: its own top-``k`` (an empty shard answers with no hits)."""
    if len(index) == 0:
        return SearchResult(ids=[], scores=[], positions=[], budget=budget, maxsim_ms=0.0, bytes_read=0)
    return index.search(query, budget, k=k, first_stage=first_stage)


def merge(results: Sequence[SearchResult], k: int) -> list[tuple[int, int]]:
    """The global top-``k`` as ``(shard number, rank within that shard)``: score descending, then the lower
    shard, then the lower rank (each shard's own ties already went to its lower position)."""
    entries = [(-score, shard, rank)
               for shard, result in enumerate(results) for rank, score in enumerate(result.scores)]
    entries.sort()
    return [(shard, rank) for _, shard, rank in entries[:k]]


def hits_json(names: Sequence[str], results: Sequence[SearchResult], merged: Sequence[tuple[int, int]]
              ) -> list[dict[str, Any]]:
    """The merged hits as JSON rows: ``id``, ``score``, ``shard`` (its name), then the item's metadata."""
    rows = []
    for shard, rank in merged:
        result = results[shard]
        meta = result.metadata[rank] if rank < len(result.metadata) else {}
        rows.append({**meta, "id": result.ids[rank], "score": float(result.scores[rank]), "shard": names[shard]})
    return rows


def bytes_read(results: Sequence[SearchResult]) -> int:
    """Bytes every shard read for one query, first stages included."""
    return int(sum(int(r.bytes_read) + int(r.first_stage_bytes) for r in results))
