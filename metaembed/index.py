"""The gallery index: ids, per-item metadata and token-major ``(R_c, N, D)`` candidate vectors.

It owns add / remove / search / persist; scoring lives in :mod:`metaembed.scoring`, the on-disk format
in :mod:`metaembed.store`, and the optional FAISS first stage in :mod:`metaembed.first_stage`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from metaembed import store
from metaembed.budget import Budget
from metaembed.io import DTYPES, dtype_name
from metaembed.scoring import maxsim, topk
from metaembed.store import IndexLoadError

if TYPE_CHECKING:  # faiss is imported only when a first stage is first used
    from metaembed.first_stage import TokenZeroIndex

logger = logging.getLogger(__name__)

@dataclass
class SearchResult:
    """Ranked ids for one query, with the timings and bytes the UI shows next to them."""

    ids: list[str]
    scores: list[float]
    positions: list[int]
    budget: Budget
    maxsim_ms: float
    bytes_read: int
    first_stage_ms: float = 0.0
    first_stage_bytes: int = 0
    candidates_scored: int = 0
    metadata: list[dict[str, Any]] = field(default_factory=list)


class MultiVectorIndex:
    """Exact multi-vector index with an optional FAISS first stage; see the module docstring."""

    def __init__(
        self,
        dim: int,
        num_vectors: int,
        dtype: torch.dtype = torch.bfloat16,
        model_name: str | None = None,
        model_fingerprint: str | None = None,
    ) -> None:
        if dtype not in DTYPES.values():
            raise ValueError(f"unsupported storage dtype {dtype}; use one of {', '.join(DTYPES)}")
        self.dim, self.num_vectors, self.dtype = dim, num_vectors, dtype
        self.model_name, self.model_fingerprint = model_name, model_fingerprint
        self._store = torch.empty(num_vectors, 0, dim, dtype=dtype)
        self._count = 0
        self._ids: list[str] = []
        self._positions: dict[str, int] = {}
        self._metadata: list[dict[str, Any]] = []
        self._first_stage = None
        self._mapped = False

    # ----------------------------------------------------------------- contents
    def __len__(self) -> int:
        return self._count

    @property
    def ids(self) -> list[str]:
        return list(self._ids)

    @property
    def vectors(self) -> torch.Tensor:
        """Token-major ``(R_c, N, D)`` view of the stored vectors (no copy)."""
        return self._store[:, : self._count]

    def __contains__(self, item_id: object) -> bool:
        return item_id in self._positions

    def get_metadata(self, item_id: str) -> dict[str, Any]:
        return self._metadata[self._position(item_id)]

    def get_vectors(self, item_id: str) -> torch.Tensor:
        """The ``(R_c, D)`` fp32 vectors of one item (for token-match views)."""
        return self._store[:, self._position(item_id)].to(torch.float32)

    def _position(self, item_id: str) -> int:
        try:
            return self._positions[item_id]
        except KeyError:
            raise KeyError(f"no item with id {item_id!r} in the index") from None

    @property
    def element_size(self) -> int:
        return self._store.element_size()

    @property
    def stored_bytes(self) -> int:
        """Bytes of candidate vectors held: N * R_c * D * bytes per element."""
        return self._count * self.num_vectors * self.dim * self.element_size

    def bytes_read(self, budget: Budget) -> int:
        """Bytes an exhaustive search reads at ``budget``: N * r_c * D * bytes per element."""
        return self._count * budget.r_c * self.dim * self.element_size

    # ----------------------------------------------------------------- mutation
    def add(self, ids: Sequence[str], vectors: torch.Tensor, metadata: Sequence[dict[str, Any]] | None = None) -> None:
        """Append items; ``vectors`` is candidate-major ``(n, R_c, D)`` as encoders return it."""
        ids = [str(i) for i in ids]
        expected = (len(ids), self.num_vectors, self.dim)
        if tuple(vectors.shape) != expected:
            raise ValueError(f"vectors must have shape {expected} (n, R_c, D), got {tuple(vectors.shape)}")
        if metadata is not None and len(metadata) != len(ids):
            raise ValueError(f"{len(metadata)} metadata entries for {len(ids)} ids")
        clashes = sorted({i for i in ids if i in self._positions} | {i for i in ids if ids.count(i) > 1})
        if clashes:
            raise ValueError(f"duplicate ids: {', '.join(clashes[:5])}")
        if not torch.isfinite(vectors).all():
            raise ValueError("vectors contain NaN or infinite values")
        self._reserve(self._count + len(ids))
        self._store[:, self._count : self._count + len(ids)] = vectors.transpose(0, 1).to(self.dtype)
        for offset, item_id in enumerate(ids):
            self._positions[item_id] = self._count + offset
        self._ids.extend(ids)
        self._metadata.extend(dict(m) for m in (metadata or [{} for _ in ids]))
        self._count += len(ids)
        self._first_stage = None

    def _reserve(self, needed: int) -> None:
        """Grow capacity geometrically so repeated adds cost amortised O(1) per item."""
        capacity = self._store.shape[1]
        if needed <= capacity:
            return
        grown = torch.empty(self.num_vectors, max(needed, 2 * capacity, 16), self.dim, dtype=self.dtype)
        grown[:, : self._count] = self._store[:, : self._count]
        self._store, self._mapped = grown, False

    def remove(self, ids: Sequence[str]) -> int:
        """Delete items by id; unknown ids raise ``KeyError`` naming them, and nothing is removed."""
        unknown = [i for i in ids if i not in self._positions]
        if unknown:
            raise KeyError(f"unknown ids: {', '.join(map(str, unknown[:5]))}")
        drop = {self._positions[i] for i in ids}
        keep = [p for p in range(self._count) if p not in drop]
        self._store, self._mapped = self._store[:, keep].clone(), False
        self._ids = [self._ids[p] for p in keep]
        self._metadata = [self._metadata[p] for p in keep]
        self._positions = {item_id: p for p, item_id in enumerate(self._ids)}
        self._count = len(keep)
        self._first_stage = None
        return len(drop)

    # ------------------------------------------------------------------- search
    def search(
        self,
        query: torch.Tensor,
        budget: Budget,
        k: int = 10,
        first_stage: int | None = None,
    ) -> SearchResult | list[SearchResult]:
        """Top-``k`` items for a query ``(R_q, D)`` (-> one result) or a batch ``(B, R_q, D)`` (-> list).

        ``first_stage=k'`` shortlists k' candidates by FAISS on token 0, then scores only those.
        """
        batch = query.unsqueeze(0) if query.dim() == 2 else query
        if batch.dim() != 3 or batch.shape[-1] != self.dim:
            raise ValueError(f"query must be (R_q, {self.dim}) or (B, R_q, {self.dim}), got {tuple(query.shape)}")
        budget.validate(batch.shape[1], self.num_vectors)
        if k < 1:
            raise ValueError(f"k must be at least 1, got {k}")
        if first_stage is not None and first_stage < 1:
            raise ValueError(f"first-stage k' must be at least 1, got {first_stage}")
        if first_stage is not None and first_stage < self._count:
            results = [self._two_stage(q, budget, k, first_stage) for q in batch]
        else:
            results = self._exhaustive(batch, budget, k)
        return results[0] if query.dim() == 2 else results

    def _exhaustive(self, batch: torch.Tensor, budget: Budget, k: int) -> list[SearchResult]:
        start = time.perf_counter()
        scores = maxsim(batch, self.vectors, budget)
        values, positions = topk(scores, k)
        elapsed = (time.perf_counter() - start) * 1000 / len(batch)
        return [
            self._result(v.tolist(), p.tolist(), budget, elapsed, self.bytes_read(budget), self._count)
            for v, p in zip(values, positions, strict=True)
        ]

    def first_stage_index(self) -> TokenZeroIndex:
        """The FAISS token-0 index, built on first use after any change (not counted in query timings)."""
        if self._first_stage is None:
            from metaembed.first_stage import TokenZeroIndex  # faiss loads only when asked for

            self._first_stage = TokenZeroIndex(self._store[0, : self._count])
        return self._first_stage

    def _two_stage(self, query: torch.Tensor, budget: Budget, k: int, shortlist_size: int) -> SearchResult:
        first = self.first_stage_index()
        start = time.perf_counter()
        shortlist = first.shortlist(query[:1], shortlist_size)[0]
        shortlist = torch.from_numpy(shortlist[shortlist >= 0]).long()
        first_ms = (time.perf_counter() - start) * 1000
        start = time.perf_counter()
        candidates = self._store[: budget.r_c, shortlist]
        values, local = topk(maxsim(query, candidates, budget)[0], k)
        maxsim_ms = (time.perf_counter() - start) * 1000
        bytes_read = len(shortlist) * budget.r_c * self.dim * self.element_size
        result = self._result(values.tolist(), shortlist[local].tolist(), budget, maxsim_ms, bytes_read, len(shortlist))
        result.first_stage_ms, result.first_stage_bytes = first_ms, first.bytes_per_query
        return result

    def _result(self, scores: list[float], positions: list[int], budget: Budget, maxsim_ms: float,
                bytes_read: int, scored: int) -> SearchResult:
        return SearchResult(
            ids=[self._ids[p] for p in positions],
            scores=scores,
            positions=positions,
            budget=budget,
            maxsim_ms=maxsim_ms,
            bytes_read=bytes_read,
            candidates_scored=scored,
            metadata=[self._metadata[p] for p in positions],
        )

    # -------------------------------------------------------------- persistence
    @property
    def is_mapped(self) -> bool:
        """True while the vectors are the memory-mapped file they were opened from (no add/remove since)."""
        return self._mapped

    def save(self, directory: str | Path) -> None:
        """Write the index atomically, streaming it slab by slab (see :mod:`metaembed.store`)."""
        write_index(directory, (self.vectors[t] for t in range(self.num_vectors)), ids=self._ids,
                    metadata=self._metadata, dim=self.dim, num_vectors=self.num_vectors, dtype=self.dtype,
                    model_name=self.model_name, model_fingerprint=self.model_fingerprint)

    @classmethod
    def load(cls, directory: str | Path, verify: bool | None = None, mmap: bool = True) -> MultiVectorIndex:
        """Open an index written by :meth:`save`; any inconsistency raises :class:`IndexLoadError`.

        ``mmap`` (default) maps the vectors file instead of reading it, so opening costs the manifest, not
        N * R_c * D; the first add or remove copies the vectors into RAM (copy-on-write: the mapped file
        is never written) and the next save writes a new file. ``verify`` checks the whole file's SHA-256
        (default: only when ``mmap=False``; :func:`metaembed.store.verify_vectors` checks it later).
        """
        vectors, manifest = store.open_vectors(directory, mmap_file=mmap, verify=verify)
        try:
            dtype = DTYPES[manifest["dtype"]]
            shape = (int(manifest["num_vectors"]), int(manifest["count"]), int(manifest["dim"]))
            ids, metadata = list(manifest["ids"]), list(manifest["metadata"])
            model = manifest.get("model") or {}
        except (KeyError, TypeError, ValueError) as err:
            raise IndexLoadError(f"{directory}/{store.MANIFEST} is missing or has a bad field: {err}") from err
        if tuple(vectors.shape) != shape or vectors.dtype != dtype:
            raise IndexLoadError(
                f"{directory}: vectors are {tuple(vectors.shape)} {vectors.dtype}, manifest says {shape} {dtype}"
            )
        if len(ids) != shape[1] or len(set(ids)) != len(ids) or len(metadata) != shape[1]:
            raise IndexLoadError(f"{directory}: ids/metadata do not match the {shape[1]} stored items")
        index = cls(shape[2], shape[0], dtype, model.get("name"), model.get("fingerprint"))
        index._store, index._count, index._mapped = vectors, shape[1], mmap and shape[1] > 0
        index._ids, index._metadata = [str(i) for i in ids], metadata
        index._positions = {item_id: p for p, item_id in enumerate(index._ids)}
        return index


def write_index(directory: str | Path, slabs: Iterable[torch.Tensor], *, ids: Sequence[str],
                metadata: Sequence[dict[str, Any]] | None, dim: int, num_vectors: int, dtype: torch.dtype,
                model_name: str | None = None, model_fingerprint: str | None = None) -> None:
    """Write an index directory from its ``(N, D)`` token slabs, one at a time, never all of them in RAM.

    What :meth:`MultiVectorIndex.save` does with its own store; a producer of vectors that do not fit in
    memory (a synthetic benchmark gallery, a resharding job) calls it with a generator of slabs.
    """
    ids = [str(i) for i in ids]
    manifest = {
        "dim": dim,
        "num_vectors": num_vectors,
        "dtype": dtype_name(dtype),
        "count": len(ids),
        "model": {"name": model_name, "fingerprint": model_fingerprint},
        "ids": ids,
        "metadata": list(metadata) if metadata is not None else [{} for _ in ids],
    }
    store.write_index(directory, slabs, manifest, shape=(num_vectors, len(ids), dim), dtype=dtype)


__all__ = ["IndexLoadError", "MultiVectorIndex", "SearchResult", "write_index"]
