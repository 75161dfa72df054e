"""A sharded gallery: K ordinary galleries under one folder plus a top-level manifest.

Layout::

    OUT/manifest.json     metaembed.shards format: shards (name, index dir, count), model, D, R_c, dtype
    OUT/shard-000/        an ordinary gallery (manifest.json, index/, thumbs/, report.json)
    OUT/shard-001/ ...
    OUT/report.json       the last build/add run's report

Every item lives in the shard its id hashes to (:meth:`ShardedGallery.shard_of`), so a rerun, an ``add`` or a
``remove`` finds it in the same place whichever machine built it. Each shard commits atomically on its own
(a killed build resumes shard by shard); the top-level manifest's counts are rewritten after each run.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from index_builder.errors import GalleryError
from index_builder.gallery import INDEX_DIR, REPORT, Gallery
from metaembed import shards as shard_format
from metaembed.io import atomic_write_json, dtype_name
from metaembed.models import MetaEmbedEncoder


@dataclass(eq=False)
class ShardedGallery:
    dir: Path
    manifest: dict[str, Any]
    shards: list[Gallery]

    @classmethod
    def open(cls, directory: str | Path) -> ShardedGallery:
        """Open the top-level manifest and every shard (each memory-mapped); a missing one is a GalleryError."""
        directory = Path(directory)
        try:
            manifest = shard_format.read_manifest(directory)
        except shard_format.ShardError as err:
            raise GalleryError(str(err)) from None
        shards = []
        for spec in manifest["shards"]:
            if not (directory / spec.name).is_dir():
                raise GalleryError(f"shard {spec.name} of {directory} is missing ({directory / spec.name})")
            shards.append(Gallery.open(directory / spec.name))
        return cls(directory, manifest, shards)

    @classmethod
    def open_or_create(cls, directory: str | Path, count: int, encoder: MetaEmbedEncoder, model_ref: str | None,
                       dtype: torch.dtype, params: dict[str, Any]) -> ShardedGallery:
        """Resume the sharded gallery in ``directory`` (same model and shard count) or create one there."""
        directory = Path(directory)
        if count < 1:
            raise GalleryError(f"--shards must be at least 1, got {count}")
        if shard_format.is_sharded(directory):
            gallery = cls.open(directory)
            if len(gallery.shards) != count:
                raise GalleryError(f"{directory} has {len(gallery.shards)} shards, not {count}: resume with "
                                   f"--shards {len(gallery.shards)} or build into a new folder")
            gallery.check_model(encoder)
            return gallery
        if directory.exists() and any(directory.iterdir()):
            raise GalleryError(f"{directory} exists, is not empty and is not a sharded gallery; refusing to write")
        shards = [Gallery.open_or_create(directory / shard_format.shard_name(i), encoder, model_ref, dtype, params)
                  for i in range(count)]
        manifest = {"model": shards[0].manifest["model"], "dim": int(encoder.dim),
                    "r_c": int(encoder.num_candidate_tokens), "dtype": dtype_name(dtype), "params": params,
                    "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
        gallery = cls(directory, manifest, shards)
        gallery.commit_manifest()
        return gallery

    def shard_of(self, item_id: str) -> Gallery:
        """The shard an item belongs to: a stable hash of its id, modulo the shard count."""
        digest = hashlib.sha256(item_id.encode()).digest()
        return self.shards[int.from_bytes(digest[:8], "little") % len(self.shards)]

    def check_model(self, encoder: MetaEmbedEncoder, fingerprint: str | None = None, name: str | None = None) -> None:
        for shard in self.shards:
            shard.check_model(encoder, fingerprint, name or str(self.dir))

    def __len__(self) -> int:
        return sum(len(s.index) for s in self.shards)

    def commit_manifest(self) -> None:
        """Rewrite the top-level manifest with every shard's current count (atomically)."""
        specs = [shard_format.ShardSpec(s.dir.name, f"{s.dir.name}/{INDEX_DIR}", len(s.index)) for s in self.shards]
        fields = {k: v for k, v in self.manifest.items() if k not in ("format", "version", "shards", "count")}
        shard_format.write_manifest(self.dir, specs, fields)
        self.manifest = shard_format.read_manifest(self.dir)

    def write_report(self, report: dict[str, Any]) -> None:
        atomic_write_json(self.dir / REPORT, report)
