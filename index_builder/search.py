"""``python -m index_builder search``: one search of a gallery, sharded or not, in this process.

The reference the Ray Serve app (:mod:`metaembed.serve`) is tested against: the same request checks, the
same per-shard searches and merge (:mod:`metaembed.shards`), the same JSON.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from index_builder.builder import open_target
from index_builder.errors import GalleryError
from index_builder.gallery import INDEX_DIR
from index_builder.sharded import ShardedGallery
from metaembed.models import MetaEmbedEncoder, load_encoder
from metaembed.serve import protocol
from metaembed.shards import Shard


def search(directory: str | Path, body: dict[str, Any], encoder: MetaEmbedEncoder | str | Path | None = None
           ) -> dict[str, Any]:
    """Answer a ``POST /search`` body against the gallery in ``directory`` (raises RequestError, GalleryError).

    ``encoder`` defaults to the model recorded in the gallery's manifest; another model is refused.
    """
    target = open_target(directory)
    galleries = target.shards if isinstance(target, ShardedGallery) else [target]
    if encoder is None:
        encoder = target.manifest["model"].get("ref")
        if encoder is None:
            raise GalleryError(f"{directory} does not record where its model lives; pass --model")
    if not isinstance(encoder, MetaEmbedEncoder):
        encoder = load_encoder(encoder)
    target.check_model(encoder)
    names = [g.dir.name for g in galleries] if isinstance(target, ShardedGallery) else [INDEX_DIR]
    shards = [Shard(name, g.index) for name, g in zip(names, galleries, strict=True)]
    request = protocol.SearchRequest.from_json(body, encoder.num_query_tokens, galleries[0].index.num_vectors)
    return protocol.search_local(shards, request, lambda r: protocol.encode(encoder, r))
