"""A gallery directory: manifest + MultiVectorIndex + thumbnails + last report, and how to open one.

Layout::

    OUT/manifest.json   model name/fingerprint/ref, vector layout, build parameters
    OUT/index/          metaembed.index.MultiVectorIndex.save() output, committed atomically per chunk
    OUT/thumbs/         <id>.webp for the UI
    OUT/report.json     the last build/add run's BuildReport

The index lives in a sub-folder so that its atomic whole-folder save can never clobber thumbnails or reports.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from index_builder.errors import GalleryError, InputSkipped
from index_builder.items import GalleryItem, candidate_item
from index_builder.pdf import iter_pages
from metaembed.images import ImageError, load_image
from metaembed.index import MultiVectorIndex
from metaembed.io import DTYPES, atomic_write_json, dtype_name, remove_partial_writes
from metaembed.models import Item, MetaEmbedEncoder

logger = logging.getLogger(__name__)

FORMAT = "metaembed-gallery"
VERSION = 1
MANIFEST = "manifest.json"
INDEX_DIR = "index"
THUMBS_DIR = "thumbs"
REPORT = "report.json"


def thumb_name(item_id: str) -> str:
    """Thumbnail file name for an item id (ids are hex + "-p0003", already file-name safe)."""
    return f"{item_id}.webp"


@dataclass(eq=False)
class Gallery:
    """An opened gallery: ``index`` is the live MultiVectorIndex, ``manifest`` the parsed manifest.json."""

    dir: Path
    manifest: dict[str, Any]
    index: MultiVectorIndex

    # -- opening -------------------------------------------------------------------------------------
    @classmethod
    def open(cls, directory: str | Path) -> Gallery:
        """Open an existing gallery; a missing or foreign directory raises :class:`GalleryError`."""
        directory = Path(directory)
        manifest = read_manifest(directory)
        index_dir = directory / INDEX_DIR
        if index_dir.exists():
            index = _load_index(index_dir)
        else:  # created, but interrupted before the first chunk was committed
            index = _new_index(manifest)
        return cls(directory, manifest, index)

    @classmethod
    def open_or_create(
        cls, directory: str | Path, encoder: MetaEmbedEncoder, model_ref: str | None, dtype: torch.dtype,
        params: dict[str, Any],
    ) -> Gallery:
        """Resume the gallery in ``directory`` (same model required) or start a new one there."""
        directory = Path(directory)
        if dtype not in DTYPES.values():
            raise GalleryError(f"unsupported vector dtype {dtype}; use one of {', '.join(DTYPES)}")
        if (directory / MANIFEST).exists():
            gallery = cls.open(directory)
            gallery.check_model(encoder)
            for leftovers in (directory / THUMBS_DIR, directory / INDEX_DIR):  # a killed build's partial files
                remove_partial_writes(leftovers)
            return gallery
        if directory.exists() and any(directory.iterdir()):
            raise GalleryError(
                f"{directory} exists, is not empty and is not a gallery (no {MANIFEST}); refusing to write"
            )
        manifest = {
            "format": FORMAT,
            "version": VERSION,
            "model": {"name": encoder.name, "fingerprint": encoder.fingerprint(), "ref": model_ref},
            "dim": int(encoder.dim),
            "r_c": int(encoder.num_candidate_tokens),
            "dtype": dtype_name(dtype),
            "params": params,
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
        directory.mkdir(parents=True, exist_ok=True)
        atomic_write_json(directory / MANIFEST, manifest)
        return cls(directory, manifest, _new_index(manifest))

    # -- model ---------------------------------------------------------------------------------------
    @property
    def index_dtype(self) -> torch.dtype:
        return DTYPES[self.manifest["dtype"]]

    @property
    def fingerprint(self) -> str:
        return str(self.manifest["model"]["fingerprint"])

    def model_problems(self, encoder: MetaEmbedEncoder, fingerprint: str | None = None) -> list[str]:
        """Why ``encoder`` cannot add to or search this gallery (empty when it can): vectors of two models
        mean nothing to each other. ``fingerprint`` is ``encoder.fingerprint()`` when the caller has it."""
        got = fingerprint or encoder.fingerprint()
        problems = []
        if got != self.fingerprint:
            problems.append(f"was built with another model, {self.manifest['model']['name']!r} (fingerprint "
                            f"{self.fingerprint}); the given model {encoder.name!r} has fingerprint {got}")
        if (int(encoder.dim), int(encoder.num_candidate_tokens)) != (self.index.dim, self.index.num_vectors):
            problems.append(f"holds D={self.index.dim}, R_c={self.index.num_vectors} vectors but the model makes "
                            f"D={encoder.dim}, R_c={encoder.num_candidate_tokens}")
        return problems

    def check_model(self, encoder: MetaEmbedEncoder, fingerprint: str | None = None, name: str | None = None) -> None:
        """Raise :class:`GalleryError` naming the gallery (``name``, default its folder) when ``encoder`` does
        not match it."""
        problems = self.model_problems(encoder, fingerprint)
        if problems:
            raise GalleryError(f"{name or self.dir} {'; it '.join(problems)}. Use the model that built it, or "
                               "build a new gallery with this one.")

    # -- items ---------------------------------------------------------------------------------------
    def item(self, item_id: str) -> GalleryItem:
        """The metadata record of one item (KeyError naming the id when there is none)."""
        return GalleryItem.from_dict(self.index.get_metadata(item_id))

    def thumbnail(self, item_id: str) -> Path | None:
        """Absolute path of an item's thumbnail, or None when it is missing."""
        rel = self.item(item_id).thumbnail
        path = self.dir / rel if rel else None
        return path if path is not None and path.is_file() else None

    def source(self, item_id: str) -> Path | None:
        """The original file (image or PDF) of an item, or None when it has moved."""
        rel = self.item(item_id).path
        path = (self.dir / rel) if rel else None
        return path if path is not None and path.is_file() else None

    def encoded_item(self, item_id: str) -> Item:
        """The Item the builder encoded for ``item_id``, decoded again from its source (a PDF page rendered at
        the gallery's dpi): what a re-encode check or an attention overlay must give the model. A source that
        has moved or no longer decodes raises :class:`InputSkipped`."""
        record, source = self.item(item_id), self.source(item_id)
        if source is None:
            raise InputSkipped(f"source file {record.path} not found (moved?)")
        if record.is_page:
            dpi = int(self.manifest["params"]["dpi"])
            with contextlib.closing(iter_pages(source, [int(record.page)], dpi)) as pages:
                page = next(pages)
            if isinstance(page, tuple):
                raise page[1]
            image = page.image
        else:
            try:
                image = load_image(source)
            except ImageError as err:
                raise InputSkipped(str(err)) from None
        return candidate_item(record.is_page, image, record.encoded_text, item_id)

    def commit(self) -> None:
        """Persist the index atomically (:meth:`metaembed.index.MultiVectorIndex.save`: vectors first, then the
        manifest that names them)."""
        self.index.save(self.dir / INDEX_DIR)

    def write_report(self, report: dict[str, Any]) -> None:
        atomic_write_json(self.dir / REPORT, report)

    def relpath(self, path: Path) -> str:
        """``path`` relative to the gallery folder (posix), so a gallery can be moved with its sources."""
        return Path(os.path.relpath(path.resolve(), self.dir.resolve())).as_posix()


def read_manifest(directory: Path) -> dict[str, Any]:
    path = directory / MANIFEST
    if not path.is_file():
        raise GalleryError(f"{directory} is not a gallery: {MANIFEST} not found (create one with `build`)")
    try:
        manifest = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise GalleryError(f"{path} is unreadable: {err}") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise GalleryError(f"{path} is not a {FORMAT} manifest")
    if manifest.get("version") != VERSION:
        raise GalleryError(f"{path} has format version {manifest.get('version')}; this code reads {VERSION}")
    return manifest


def _new_index(manifest: dict[str, Any]) -> MultiVectorIndex:
    return MultiVectorIndex(
        dim=int(manifest["dim"]),
        num_vectors=int(manifest["r_c"]),
        dtype=DTYPES[manifest["dtype"]],
        model_name=manifest["model"]["name"],
        model_fingerprint=manifest["model"]["fingerprint"],
    )


def _load_index(index_dir: Path) -> MultiVectorIndex:
    try:
        return MultiVectorIndex.load(index_dir)
    except (OSError, ValueError, RuntimeError, KeyError) as err:  # the index's own errors subclass these
        raise GalleryError(f"index in {index_dir} cannot be loaded: {err}") from None
