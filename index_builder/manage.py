"""remove / info / verify / load_gallery: everything done to a gallery after it is built."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from index_builder.builder import open_target
from index_builder.errors import GalleryError, InputSkipped
from index_builder.gallery import INDEX_DIR, MANIFEST, THUMBS_DIR, Gallery
from index_builder.sharded import ShardedGallery
from metaembed.budget import TRAINED_GROUPS
from metaembed.models import MetaEmbedEncoder, ModelLoadError, load_encoder
from metaembed.store import MANIFEST as STORE_MANIFEST
from metaembed.store import IndexLoadError, verify_vectors

logger = logging.getLogger(__name__)

#: Stored vectors are L2-normalised; bf16 rounding moves a norm by well under this.
NORM_TOLERANCE = 0.02
#: bf16 storage keeps a vector's cosine with its fp32 original above ~0.999; a different model or
#: preprocessing falls far below.
REENCODE_MIN_COSINE = 0.99


def load_gallery(out_dir: str | Path) -> Gallery:
    """Open a gallery for searching (the app's entry point): index + thumbnails + sources."""
    return Gallery.open(out_dir)


def remove(out_dir: str | Path, ids_or_sources: Sequence[str]) -> int:
    """Remove items by id, or every item of a source path (all pages of a PDF); returns the number removed.

    Nothing is removed when any argument matches no item (in any shard), so a typo cannot half-apply.
    """
    target = open_target(out_dir)
    galleries = target.shards if isinstance(target, ShardedGallery) else [target]
    matches = [_matches(gallery, ids_or_sources) for gallery in galleries]
    unknown = [arg for arg in ids_or_sources if not any(arg in found for _, found in matches)]
    if unknown:
        raise GalleryError(f"no item in {out_dir} has id or source {', '.join(map(repr, unknown))}; nothing removed")
    removed = 0
    for gallery, (chosen, _) in zip(galleries, matches, strict=True):
        if not chosen:
            continue
        thumbs = [gallery.item(i).thumbnail for i in chosen]
        removed += gallery.index.remove(chosen)
        gallery.commit()
        for rel in thumbs:  # after the commit: a crash in between leaves orphans, never dangling references
            if rel:
                (gallery.dir / rel).unlink(missing_ok=True)
    if isinstance(target, ShardedGallery):
        target.commit_manifest()
    return int(removed)


def _matches(gallery: Gallery, ids_or_sources: Sequence[str]) -> tuple[list[str], set[str]]:
    """The item ids in ``gallery`` the arguments name (ids, source paths, files), and which arguments matched."""
    ids = list(gallery.index.ids)
    records = {item_id: gallery.item(item_id) for item_id in ids}
    by_source: dict[str, list[str]] = {}
    for item_id, record in records.items():
        for key in (record.source, record.path):
            if key:
                by_source.setdefault(key, []).append(item_id)
    present, chosen, found = set(ids), [], set()
    for arg in ids_or_sources:
        matched = [arg] if arg in present else by_source.get(arg) or by_source.get(Path(arg).as_posix(), [])
        if not matched:
            resolved = Path(arg).resolve()
            matched = [i for i in ids if (gallery.dir / (records[i].path or "")).resolve() == resolved]
        if matched:
            chosen.extend(matched)
            found.add(arg)
    return list(dict.fromkeys(chosen)), found


@dataclass
class GalleryInfo:
    """What `info` prints; ``bytes_per_budget`` is what one query reads at each trained budget."""

    path: str
    items: int
    images: int
    pages: int
    documents: int
    dim: int
    r_c: int
    dtype: str
    stored_bytes: int
    bytes_per_budget: dict[str, int]
    model_name: str
    model_fingerprint: str
    model_ref: str | None
    shards: dict[str, int] | None = None  #: items per shard (sharded galleries)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def info(gallery: Gallery | ShardedGallery | str | Path) -> GalleryInfo:
    """Counts, shapes, bytes and model of a gallery (sharded or not): an open one (read from memory) or a
    directory."""
    if not isinstance(gallery, Gallery | ShardedGallery):
        gallery = open_target(gallery)
    galleries = gallery.shards if isinstance(gallery, ShardedGallery) else [gallery]
    records = [g.item(i) for g in galleries for i in g.index.ids]
    pdf_pages = [r for r in records if r.is_page]
    first = galleries[0]
    return GalleryInfo(
        path=str(gallery.dir),
        items=len(records),
        images=len(records) - len(pdf_pages),
        pages=len(pdf_pages),
        documents=len({r.sha256 for r in pdf_pages}),
        dim=int(first.manifest["dim"]),
        r_c=int(first.manifest["r_c"]),
        dtype=str(first.manifest["dtype"]),
        stored_bytes=sum(int(g.index.stored_bytes) for g in galleries),
        bytes_per_budget={str(b): sum(int(g.index.bytes_read(b)) for g in galleries) for b in TRAINED_GROUPS},
        model_name=str(first.manifest["model"]["name"]),
        model_fingerprint=first.fingerprint,
        model_ref=first.manifest["model"].get("ref"),
        shards={g.dir.name: len(g.index) for g in galleries} if isinstance(gallery, ShardedGallery) else None,
    )


@dataclass
class VerifyReport:
    """``ok`` is False when any problem was found; warnings (moved sources, orphan thumbnails) do not fail."""

    problems: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    checked_items: int = 0
    model_checked: bool = False
    reencoded: int = 0

    @property
    def ok(self) -> bool:
        return not self.problems

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "ok": self.ok}


def verify(
    out_dir: str | Path, encoder: MetaEmbedEncoder | str | Path | None = None, *, load_model: bool = True,
    reencode: int = 0,
) -> VerifyReport:
    """Check the gallery reads, every vector is finite and unit-norm, files exist, and the model matches.

    The model is ``encoder`` if given, else the one recorded in the manifest (when ``load_model``).
    ``reencode`` > 0 also re-encodes that many items (spread over the gallery) from their source files
    and compares them with the stored vectors: the fingerprint proves the weights match, this proves
    the whole pipeline (preprocessing, instructions) still produces the stored vectors. A sharded gallery
    is checked shard by shard (each problem names its shard), the model loaded once, and the top-level
    manifest against the shards.
    """
    report = VerifyReport()
    try:
        target = open_target(out_dir)
    except GalleryError as err:
        report.problems.append(str(err))
        return report
    if not isinstance(target, ShardedGallery):
        _verify_one(target, encoder, load_model, reencode, report)
        return report
    for spec, shard in zip(target.manifest["shards"], target.shards, strict=True):
        part = VerifyReport()
        encoder = _verify_one(shard, encoder, load_model, reencode, part) or encoder
        report.problems += [f"{spec.name}: {p}" for p in part.problems]
        report.warnings += [f"{spec.name}: {w}" for w in part.warnings]
        report.checked_items += part.checked_items
        report.model_checked |= part.model_checked
        report.reencoded += part.reencoded
        if spec.count != len(shard.index):
            report.warnings.append(f"{spec.name}: the top-level {MANIFEST} counts {spec.count} items, the shard holds "
                                   f"{len(shard.index)} (an interrupted run; the next build or add rewrites it)")
        if shard.fingerprint != target.manifest["model"]["fingerprint"]:
            report.problems.append(f"{spec.name}: built by model {shard.fingerprint}, the gallery's is "
                                   f"{target.manifest['model']['fingerprint']}")
    return report


def _verify_one(gallery: Gallery, encoder: MetaEmbedEncoder | str | Path | None, load_model: bool, reencode: int,
                report: VerifyReport) -> MetaEmbedEncoder | None:
    _check_vectors_file(gallery, report)
    _check_items(gallery, report)
    model = _check_model(gallery, encoder, load_model, report)
    if model is not None and reencode > 0 and report.ok:
        _check_reencode(gallery, model, reencode, report)
    return model


def _check_vectors_file(gallery: Gallery, report: VerifyReport) -> None:
    """The whole vectors file against its SHA-256: opening a gallery maps the file and checks only its
    header and size, so this is where a changed byte is found."""
    index_dir = gallery.dir / INDEX_DIR
    if (index_dir / STORE_MANIFEST).is_file():
        try:
            verify_vectors(index_dir)
        except IndexLoadError as err:
            report.problems.append(str(err))


def _check_items(gallery: Gallery, report: VerifyReport) -> None:
    index, expected = gallery.index, (int(gallery.manifest["r_c"]), int(gallery.manifest["dim"]))
    if getattr(index, "model_fingerprint", gallery.fingerprint) != gallery.fingerprint:
        report.problems.append(f"index fingerprint {index.model_fingerprint} != {MANIFEST} {gallery.fingerprint}")
    referenced = set()
    for item_id in index.ids:
        report.checked_items += 1
        record = gallery.item(item_id)
        vectors = index.get_vectors(item_id)
        if tuple(vectors.shape) != expected:
            report.problems.append(f"{item_id}: vectors of shape {tuple(vectors.shape)}, expected {expected}")
            continue
        norms = vectors.float().norm(dim=-1)
        if not bool(vectors.isfinite().all()) or float((norms - 1).abs().max()) > NORM_TOLERANCE:
            report.problems.append(f"{item_id}: vectors are not finite unit vectors (norms {norms.min():.3f}"
                                   f"..{norms.max():.3f})")
        for key in ("kind", "source", "sha256", "thumbnail"):
            if not getattr(record, key):
                report.problems.append(f"{item_id}: metadata lacks {key!r}")
        thumb = record.thumbnail
        if thumb:
            referenced.add(Path(thumb).name)
            if not (gallery.dir / thumb).is_file():
                report.problems.append(f"{item_id}: thumbnail {thumb} missing")
        if gallery.source(item_id) is None:
            report.warnings.append(f"{item_id}: source file {record.path} not found (moved?)")
    thumbs_dir = gallery.dir / THUMBS_DIR
    if thumbs_dir.is_dir():
        orphans = sorted(p.name for p in thumbs_dir.iterdir() if p.name not in referenced)
        if orphans:
            report.warnings.append(f"{len(orphans)} thumbnails belong to no item (an interrupted build): {orphans[:3]}")


def _check_model(
    gallery: Gallery, encoder: MetaEmbedEncoder | str | Path | None, load_model: bool, report: VerifyReport
) -> MetaEmbedEncoder | None:
    """Compare the model's fingerprint and shape with the gallery's; returns the model when loaded."""
    if encoder is None and load_model:
        encoder = gallery.manifest["model"].get("ref")
        if encoder is None:
            report.warnings.append("the manifest records no model location; model not checked")
            return None
    if encoder is None:
        return None
    if not isinstance(encoder, MetaEmbedEncoder):
        try:
            encoder = load_encoder(encoder)
        except ModelLoadError as err:
            report.problems.append(f"model {encoder!r} cannot be loaded: {err}")
            return None
    report.model_checked = True
    report.problems.extend(f"the gallery {problem}" for problem in gallery.model_problems(encoder))
    return encoder


def _check_reencode(gallery: Gallery, encoder: MetaEmbedEncoder, n: int, report: VerifyReport) -> None:
    ids = gallery.index.ids
    picks = ids[:: max(1, len(ids) // n)][:n]
    items, kept = [], []
    for item_id in picks:
        if gallery.source(item_id) is None:
            continue  # already a warning
        try:
            items.append(gallery.encoded_item(item_id))
        except InputSkipped as err:
            report.problems.append(f"{item_id}: source {gallery.item(item_id).path} no longer decodes: {err}")
            continue
        kept.append(item_id)
    if not items:
        return
    batch_size = int(gallery.manifest["params"].get("batch_size", 16))
    fresh = encoder.encode_candidates(items, batch_size=batch_size)
    for item_id, vectors in zip(kept, fresh, strict=True):
        cosine = torch.nn.functional.cosine_similarity(gallery.index.get_vectors(item_id), vectors, dim=-1)
        if float(cosine.min()) < REENCODE_MIN_COSINE:
            report.problems.append(f"{item_id}: re-encoded vectors differ from the stored ones "
                                   f"(min cosine {float(cosine.min()):.3f} < {REENCODE_MIN_COSINE})")
    report.reencoded = len(kept)
