"""The ``POST /search`` format, shared by the Ray Serve router and the single-process reference.

Request JSON: ``{"text" | "image" (base64), "instruction", "r_q", "r_c", "k", "first_stage"}``.
Response JSON: ``{"hits": [{"id", "score", "shard", ...metadata}], "timings": {"encode_ms",
"per_shard_ms": {shard: ms}, "merge_ms", "total_ms"}, "bytes_read"}``. Validation lives here once, so a
bad request gets the same message from the server (HTTP 400) and from the command line (exit 2).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from metaembed.budget import Budget, BudgetError
from metaembed.images import ImageError, load_image
from metaembed.models import Item, MetaEmbedEncoder
from metaembed.shards import Shard, bytes_read, hits_json, merge, search_shard

MAX_K = 1000
MAX_FIRST_STAGE = 100_000
MAX_TEXT_CHARS = 20_000
MAX_IMAGE_BYTES = 20 * 1024 * 1024
FIELDS = ("text", "image", "instruction", "r_q", "r_c", "k", "first_stage")


class RequestError(ValueError):
    """A request that cannot be answered as sent; ``str(err)`` says what to change (HTTP 400)."""


@dataclass(frozen=True)
class SearchRequest:
    """A validated search: the query (text and/or image bytes, optional instruction), budget, k, k'."""

    text: str | None
    image: bytes | None
    instruction: str | None
    budget: Budget
    k: int
    first_stage: int | None

    @classmethod
    def from_json(cls, body: Any, max_r_q: int, max_r_c: int) -> SearchRequest:
        """Check a decoded JSON body against the gallery's bounds (R_q of the model, R_c of the shards).

        ``r_q`` / ``r_c`` default to the full budget, ``k`` to 10, ``first_stage`` to none (exhaustive).
        """
        if not isinstance(body, dict):
            raise RequestError("the request body must be a JSON object")
        unknown = sorted(set(body) - set(FIELDS))
        if unknown:
            raise RequestError(f"unknown field(s) {', '.join(unknown)}; known: {', '.join(FIELDS)}")
        text = _optional_str(body, "text", MAX_TEXT_CHARS)
        instruction = _optional_str(body, "instruction", MAX_TEXT_CHARS)
        image = _image_bytes(body.get("image"))
        if image is None and not (text and text.strip()):
            raise RequestError("empty query: give a non-empty 'text', an 'image' (base64), or both")
        r_q, r_c = _whole(body, "r_q", max_r_q, 1, max_r_q), _whole(body, "r_c", max_r_c, 1, max_r_c)
        try:
            budget = Budget(r_q, r_c).validate(max_r_q, max_r_c)
        except BudgetError as err:  # the range checks above already name the bounds; belt and braces
            raise RequestError(f"budget out of range: {err}") from None
        k = _whole(body, "k", 10, 1, MAX_K)
        first_stage = None if body.get("first_stage") is None else _whole(body, "first_stage", None, 1,
                                                                           MAX_FIRST_STAGE)
        if first_stage is not None and first_stage < k:
            raise RequestError(f"first_stage ({first_stage}) must be at least k ({k}): the first stage keeps "
                               "first_stage candidates per shard for MaxSim to rank")
        return cls(text.strip() if text and text.strip() else None, image,
                   instruction.strip() if instruction and instruction.strip() else None, budget, k, first_stage)

    def item(self) -> Item:
        """The query as the encoder takes it; an image that does not decode is a :class:`RequestError`."""
        picture = None
        if self.image is not None:
            try:
                picture = load_image(self.image)
            except ImageError as err:
                raise RequestError(f"the image cannot be used: {err}") from None
        return Item(text=self.text, image=picture, instruction=self.instruction)

    def query_key(self) -> str:
        """Same text, image and instruction -> same key: the encoder's cache key (budget and k excluded)."""
        digest = hashlib.sha256()
        for part in (self.text or "", self.instruction or ""):
            digest.update(part.encode("utf-8") + b"\x00")
        digest.update(self.image or b"")
        return digest.hexdigest()


def _optional_str(body: dict[str, Any], name: str, limit: int) -> str | None:
    value = body.get(name)
    if value is None:
        return None
    if not isinstance(value, str):
        raise RequestError(f"'{name}' must be a string, got {type(value).__name__}")
    if len(value) > limit:
        raise RequestError(f"'{name}' is {len(value):,} characters; at most {limit:,}")
    return value


def _image_bytes(value: Any) -> bytes | None:
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise RequestError("'image' must be a base64 string")
    if len(value) > MAX_IMAGE_BYTES * 4 // 3 + 4:
        raise RequestError(f"'image' is over {MAX_IMAGE_BYTES // 2**20} MiB")
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise RequestError("'image' is not valid base64") from None


def _whole(body: dict[str, Any], name: str, default: int | None, low: int, high: int) -> int:
    value = body.get(name, default)
    if isinstance(value, bool) or not isinstance(value, int):
        raise RequestError(f"'{name}' must be a whole number in {low}..{high}, got {value!r}")
    if not low <= value <= high:
        raise RequestError(f"'{name}' must be in {low}..{high}, got {value}")
    return value


def response(names: Sequence[str], results: Sequence[Any], k: int, encode_ms: float,
             per_shard_ms: Sequence[float], started: float) -> dict[str, Any]:
    """Merge per-shard results and time the merge; ``started`` is the request's ``perf_counter`` start."""
    tic = time.perf_counter()
    merged = merge(results, k)
    hits = hits_json(names, results, merged)
    merge_ms = (time.perf_counter() - tic) * 1000
    return {
        "hits": hits,
        "timings": {"encode_ms": round(encode_ms, 3),
                    "per_shard_ms": {name: round(ms, 3) for name, ms in zip(names, per_shard_ms, strict=True)},
                    "merge_ms": round(merge_ms, 3),
                    "total_ms": round((time.perf_counter() - started) * 1000, 3)},
        "bytes_read": bytes_read(results),
    }


def encode(encoder: MetaEmbedEncoder, request: SearchRequest) -> tuple[torch.Tensor, float]:
    """The query's ``(R_q, D)`` vectors, encoded once, and the ms it took."""
    item = request.item()
    tic = time.perf_counter()
    vectors = encoder.encode_queries([item])[0]
    return vectors, (time.perf_counter() - tic) * 1000


def search_local(shards: Sequence[Shard], request: SearchRequest,
                 encode_query: Callable[[SearchRequest], tuple[torch.Tensor, float]]) -> dict[str, Any]:
    """The single-process reference: encode once, search every shard in turn, merge as the router does."""
    started = time.perf_counter()
    vectors, encode_ms = encode_query(request)
    results, per_shard = [], []
    for shard in shards:
        tic = time.perf_counter()
        results.append(search_shard(shard.index, vectors, request.budget, request.k, request.first_stage))
        per_shard.append((time.perf_counter() - tic) * 1000)
    return response([s.name for s in shards], results, request.k, encode_ms, per_shard, started)
