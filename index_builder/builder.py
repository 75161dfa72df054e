"""build / add: plan the work, stream-decode inputs, encode in batches, commit in atomic chunks.

Resumability comes from two facts: item ids are content hashes (+ page number), and the index on disk
is only ever replaced atomically. A rerun plans against what is already committed and encodes the rest.
The target is one gallery or a sharded one (:mod:`index_builder.sharded`: each item goes to the shard its
id hashes to); decoding and encoding run here (a prefetch thread ahead of the encoder) or, with ``ray=``,
on a Ray cluster (:mod:`index_builder.distributed`); planning, the report and the commits are the same.
"""

from __future__ import annotations

import copy
import itertools
import logging
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import torch

from index_builder.captions import load_captions
from index_builder.discovery import Found, InputFile, Rejected, discover, examine
from index_builder.errors import GalleryError
from index_builder.gallery import THUMBS_DIR, Gallery, thumb_name
from index_builder.items import IMAGE, PDF_PAGE, GalleryItem, candidate_instruction
from index_builder.pdf import DEFAULT_DPI, DEFAULT_MAX_PAGES
from index_builder.prefetch import prefetch
from index_builder.progress import Progress, ProgressTracker
from index_builder.sharded import ShardedGallery
from index_builder.stages import Decoded, Skipped, Unit, decode_file, encode_batch
from index_builder.storage import save_thumbnail
from metaembed import shards as shard_format
from metaembed.models import MetaEmbedEncoder, load_encoder

logger = logging.getLogger(__name__)

DEFAULT_BATCH_SIZE = 16
#: Items per atomic commit: the most work a kill -9 can lose. Each commit rewrites the index
#: (a few MB for a demo gallery), so larger chunks trade resume granularity for less I/O.
DEFAULT_CHUNK_SIZE = 64


@dataclass
class BuildReport:
    """What one build/add run did; ``to_dict()`` (all but the open ``gallery``) is written to ``report.json``.

    ``gallery`` is the gallery as it is after the run, open and in memory: a caller searches it without
    reading it back from disk. ``shards`` gives each shard's item count after the run (sharded galleries).
    """

    gallery: Gallery | ShardedGallery
    indexed: int = 0
    resumed: int = 0
    skipped: list[dict[str, str]] = field(default_factory=list)
    duplicates: list[dict[str, str]] = field(default_factory=list)
    files_seen: int = 0
    total_items: int = 0
    seconds: float = 0.0
    encode_seconds: float = 0.0
    items_per_s: float = 0.0
    interrupted: bool = False
    shards: dict[str, int] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        """False only when nothing at all could be indexed (the CLI's non-zero exit)."""
        return self.indexed + self.resumed + len(self.duplicates) > 0

    @property
    def summary(self) -> str:
        state = "INTERRUPTED (rerun the same command to resume): " if self.interrupted else ""
        return (
            f"{state}indexed {self.indexed} items ({self.resumed} already present) from {self.files_seen} files "
            f"in {self.seconds:.1f} s ({self.items_per_s:.1f} items/s); skipped {len(self.skipped)}, "
            f"duplicates {len(self.duplicates)}; gallery now holds {self.total_items} items"
        )

    def skip(self, path: str, reason: str) -> None:
        logger.warning("skipped %s: %s", path, reason)
        self.skipped.append({"path": path, "reason": reason})

    def to_dict(self) -> dict[str, Any]:
        counts = {f.name: copy.deepcopy(getattr(self, f.name)) for f in fields(self) if f.name != "gallery"}
        return {"gallery": str(self.gallery.dir), **counts, "ok": self.ok, "summary": self.summary}


def build(
    inputs: Sequence[str | Path | InputFile],
    out_dir: str | Path | Gallery | ShardedGallery,
    encoder: MetaEmbedEncoder | str | Path | None = None,
    *,
    batch_size: int = DEFAULT_BATCH_SIZE,
    dpi: int = DEFAULT_DPI,
    max_pages: int = DEFAULT_MAX_PAGES,
    captions: str | Path | None = None,
    progress: Callable[[Progress], None] | None = None,
    progress_bar: bool = False,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    dtype: torch.dtype = torch.bfloat16,
    max_pixels: int | None = None,
    shards: int | None = None,
    ray: str | None = None,
    workers: int | None = None,
    gpus_per_worker: float = 0.0,
) -> BuildReport:
    """Index ``inputs`` into the gallery at ``out_dir``, creating it or resuming an interrupted build.

    ``inputs`` are files and folders to discover, or :class:`InputFile` records a caller has already
    examined (the app's upload admission). ``out_dir`` may be a gallery that is already open, which is
    then extended in place. The returned report holds the open gallery (``report.gallery``).
    ``shards=K`` builds (or resumes) a sharded gallery; ``ray`` (``"local"``, ``"local:W"`` or a cluster
    address) decodes and encodes on Ray with ``workers`` encoder actors of ``gpus_per_worker`` GPUs each
    (:func:`index_builder.distributed.run`).
    """
    return _run(inputs, out_dir, encoder, create=True, batch_size=batch_size, dpi=dpi, max_pages=max_pages,
                captions=captions, progress=progress, progress_bar=progress_bar, chunk_size=chunk_size,
                dtype=dtype, max_pixels=max_pixels, shards=shards, ray=ray, workers=workers,
                gpus_per_worker=gpus_per_worker)


def add(
    out_dir: str | Path | Gallery | ShardedGallery,
    inputs: Sequence[str | Path | InputFile],
    encoder: MetaEmbedEncoder | str | Path | None = None,
    **kwargs: Any,
) -> BuildReport:
    """Add files to an existing gallery (sharded or not); without ``encoder`` the model recorded in its
    manifest is loaded."""
    gallery = out_dir if isinstance(out_dir, Gallery | ShardedGallery) else open_target(out_dir)
    if encoder is None:
        encoder = gallery.manifest["model"].get("ref")
        if encoder is None:
            raise GalleryError(f"{gallery.dir} does not record where its model lives; pass the model explicitly")
    kwargs.setdefault("dtype", _galleries(gallery)[0].index_dtype)
    return _run(inputs, gallery, encoder, create=False, **kwargs)


def open_target(directory: str | Path) -> Gallery | ShardedGallery:
    """Open a gallery folder as what it is: a sharded gallery or an ordinary one."""
    return ShardedGallery.open(directory) if shard_format.is_sharded(directory) else Gallery.open(directory)


def _galleries(target: Gallery | ShardedGallery) -> list[Gallery]:
    return target.shards if isinstance(target, ShardedGallery) else [target]


def _route(target: Gallery | ShardedGallery, item_id: str) -> Gallery:
    return target.shard_of(item_id) if isinstance(target, ShardedGallery) else target


def _open_or_create(out_dir: str | Path | Gallery | ShardedGallery, encoder: MetaEmbedEncoder, model_ref: str | None,
                    create: bool, shards: int | None, dtype: torch.dtype, params: dict[str, Any]
                    ) -> Gallery | ShardedGallery:
    if isinstance(out_dir, Gallery | ShardedGallery) or not create:
        target = out_dir if isinstance(out_dir, Gallery | ShardedGallery) else open_target(out_dir)
        target.check_model(encoder)
    elif shards is not None or shard_format.is_sharded(out_dir):
        count = shards if shards is not None else len(shard_format.read_manifest(out_dir)["shards"])
        target = ShardedGallery.open_or_create(out_dir, count, encoder, model_ref, dtype, params)
    else:
        target = Gallery.open_or_create(out_dir, encoder, model_ref, dtype, params)
    if shards is not None and not isinstance(target, ShardedGallery):
        raise GalleryError(f"{target.dir} is an unsharded gallery; --shards applies to new or sharded galleries")
    return target


def _run(
    inputs: Sequence[str | Path | InputFile], out_dir: str | Path | Gallery | ShardedGallery,
    encoder: MetaEmbedEncoder | str | Path | None, *,
    create: bool, batch_size: int = DEFAULT_BATCH_SIZE, dpi: int = DEFAULT_DPI, max_pages: int = DEFAULT_MAX_PAGES,
    captions: str | Path | None = None, progress: Callable[[Progress], None] | None = None,
    progress_bar: bool = False, chunk_size: int = DEFAULT_CHUNK_SIZE, dtype: torch.dtype = torch.bfloat16,
    max_pixels: int | None = None, shards: int | None = None, ray: str | None = None, workers: int | None = None,
    gpus_per_worker: float = 0.0,
) -> BuildReport:
    if batch_size < 1 or chunk_size < 1 or dpi < 1 or max_pages < 1:
        raise GalleryError("batch size, chunk size, dpi and max pages must all be at least 1")
    caption_map = load_captions(captions) if captions is not None else {}
    model_ref = None if isinstance(encoder, MetaEmbedEncoder) else ("mini" if encoder is None else str(encoder))
    model = encoder if isinstance(encoder, MetaEmbedEncoder) else load_encoder(encoder)
    start = time.perf_counter()  # after loading the model: seconds and items/s measure ingestion itself
    params = {"dpi": dpi, "max_pages": max_pages, "batch_size": batch_size}
    target = _open_or_create(out_dir, model, model_ref, create, shards, dtype, params)
    report = BuildReport(gallery=target)
    units = _plan(inputs, target, caption_map, max_pages, report)
    tracker = ProgressTracker(len(units), progress, progress_bar)
    writers = _Writers(target, chunk_size, report)
    try:
        if ray is None:
            _encode_here(units, target, model, batch_size, dpi, max_pixels, tracker, writers)
        else:
            from index_builder import distributed  # Ray is imported only for a distributed build

            work = distributed.Work(units, dpi, max_pixels, batch_size,
                                    {u.item_id: str(_route(target, u.item_id).dir) for u in units})
            for batch in distributed.run(work, model if model_ref is None else model_ref, ray, workers,
                                         gpus_per_worker):
                writers.skip_all(batch.skipped, tracker)
                writers.add(batch.decoded, batch.vectors, batch.failed, batch.seconds)
                tracker.advance(len(batch.decoded) + len(batch.failed), batch.current)
        writers.commit()
    except BaseException:  # Ctrl-C, a UI cancel, or a bug: keep every finished batch, then re-raise
        report.interrupted = True
        writers.commit()
        raise
    finally:
        tracker.close()
        report.seconds = time.perf_counter() - start
        report.items_per_s = report.indexed / report.seconds if report.seconds > 0 else 0.0
        report.total_items = sum(len(g.index) for g in _galleries(target))
        if isinstance(target, ShardedGallery):
            target.commit_manifest()
            report.shards = {g.dir.name: len(g.index) for g in target.shards}
        target.write_report(report.to_dict())
        logger.info(report.summary)
    return report


def _encode_here(units: list[Unit], target: Gallery | ShardedGallery, encoder: MetaEmbedEncoder, batch_size: int,
                 dpi: int, max_pixels: int | None, tracker: ProgressTracker, writers: _Writers) -> None:
    """Decode in a prefetch thread ahead of the encoder, encode in this process."""
    batches = prefetch(_batched(_load(units, target, dpi, max_pixels, tracker, writers), batch_size))
    try:
        for batch in batches:
            encoded = encode_batch(encoder, batch, batch_size)
            kept = [batch[i] for i in encoded.kept]
            failed = [(batch[i].unit, reason) for i, reason in encoded.failed]
            writers.add([(d.unit, d.image.width, d.image.height, d.text) for d in kept], encoded.vectors, failed,
                        encoded.seconds)
            tracker.advance(len(batch), batch[-1].unit.found.display)
    finally:
        batches.close()


def _plan(
    inputs: Sequence[str | Path | InputFile], target: Gallery | ShardedGallery, captions: dict[Path, str],
    max_pages: int, report: BuildReport,
) -> list[Unit]:
    """Decide what to encode: skip bad files, duplicates, and items already committed (resume)."""
    present: set[str] = set()
    known: dict[str, tuple[str, Path]] = {}  # sha256 -> (source, file) already in the gallery
    for gallery in _galleries(target):
        present.update(gallery.index.ids)
        for item_id in gallery.index.ids:
            record = gallery.item(item_id)
            known.setdefault(record.sha256, (record.source, (gallery.dir / (record.path or "")).resolve()))
    first_seen: dict[str, str] = {}
    units: list[Unit] = []
    for entry in discover(inputs, exclude=[target.dir]):
        report.files_seen += 1
        if isinstance(entry, Found):
            entry = examine(entry, max_pages)
        if isinstance(entry, Rejected):
            report.skip(entry.path, entry.reason)
            continue
        sha = entry.sha256
        owner = first_seen.get(sha)
        if owner is None and sha in known and known[sha][1] != entry.path.resolve():
            owner = known[sha][0]  # same content committed from another file
        if owner is not None:
            report.duplicates.append({"path": entry.display, "duplicate_of": owner})
            continue
        first_seen[sha] = entry.display
        caption = captions.get(entry.path.resolve())
        numbers: list[int | None] = list(range(1, entry.pages + 1)) if entry.pages else [None]
        for number in numbers:
            item_id = sha[:16] if number is None else f"{sha[:16]}-p{number:04d}"
            if item_id in present:
                report.resumed += 1
            else:
                units.append(Unit(item_id, entry, number, caption))
    return units


def _load(
    units: list[Unit], target: Gallery | ShardedGallery, dpi: int, max_pixels: int | None,
    tracker: ProgressTracker, writers: _Writers,
) -> Iterator[Decoded]:
    """Decode lazily, one file (or one PDF page) at a time, so memory follows the batch size.

    Each item's thumbnail is written here too (off the encoder's thread, see :mod:`prefetch`).
    """
    for _, group in itertools.groupby(units, key=lambda u: u.found.path):
        for entry in decode_file(list(group), dpi, max_pixels):
            if isinstance(entry, Skipped):
                writers.skip_all([entry], tracker)
                continue
            save_thumbnail(entry.image, thumb_path(_route(target, entry.unit.item_id), entry.unit.item_id))
            yield entry


def thumb_path(gallery: Gallery, item_id: str) -> Path:
    """Where an item's thumbnail goes in the gallery (or shard) that holds it."""
    return gallery.dir / THUMBS_DIR / thumb_name(item_id)


class _Writers:
    """Adds encoded items to the gallery (or the shard each belongs to) and commits every ``chunk_size``."""

    def __init__(self, target: Gallery | ShardedGallery, chunk_size: int, report: BuildReport) -> None:
        self.target, self.chunk_size, self.report = target, chunk_size, report
        self.uncommitted: dict[Path, int] = {}

    def skip_all(self, skipped: Sequence[Skipped], tracker: ProgressTracker) -> None:
        for entry in skipped:
            self.report.skip(entry.label, entry.reason)
            tracker.drop(len(entry.units))

    def add(self, decoded: Sequence[tuple[Unit, int, int, str | None]], vectors: torch.Tensor,
            failed: Sequence[tuple[Unit, str]], seconds: float) -> None:
        """``decoded``: (unit, width, height, encoded text) of each row of ``vectors`` (n, R_c, D)."""
        self.report.encode_seconds += seconds
        for unit, reason in failed:
            self.report.skip(unit.label, reason)
            thumb_path(_route(self.target, unit.item_id), unit.item_id).unlink(missing_ok=True)
        by_gallery: dict[Path, list[int]] = {}
        for row, (unit, _, _, _) in enumerate(decoded):
            by_gallery.setdefault(_route(self.target, unit.item_id).dir, []).append(row)
        for rows in by_gallery.values():
            gallery = _route(self.target, decoded[rows[0]][0].item_id)
            metas = [_metadata(gallery, *decoded[r]) for r in rows]
            gallery.index.add([decoded[r][0].item_id for r in rows], vectors[rows], metas)
            self.report.indexed += len(rows)
            self.uncommitted[gallery.dir] = self.uncommitted.get(gallery.dir, 0) + len(rows)
            if self.uncommitted[gallery.dir] >= self.chunk_size:
                self._commit(gallery)

    def commit(self) -> None:
        for gallery in _galleries(self.target):
            self._commit(gallery)

    def _commit(self, gallery: Gallery) -> None:
        if self.uncommitted.get(gallery.dir):
            gallery.commit()
            logger.debug("committed %d items (%d in %s)", self.uncommitted[gallery.dir], len(gallery.index),
                         gallery.dir)
            self.uncommitted[gallery.dir] = 0


def _metadata(gallery: Gallery, unit: Unit, width: int, height: int, text: str | None) -> dict[str, Any]:
    is_page = unit.page is not None
    return GalleryItem(
        kind=PDF_PAGE if is_page else IMAGE,
        source=unit.found.display,
        path=gallery.relpath(unit.found.path),
        page=unit.page,
        pages=unit.found.pages,
        caption=unit.caption,
        text=text if is_page else None,
        instruction=candidate_instruction(is_page),
        sha256=unit.found.sha256,
        thumbnail=f"{THUMBS_DIR}/{thumb_name(unit.item_id)}",  # written by _load
        width=width,
        height=height,
    ).to_dict()


def _batched(iterable: Iterator[Decoded], n: int) -> Iterator[list[Decoded]]:
    """itertools.batched (3.12+) for Python 3.11, as lists."""
    iterator = iter(iterable)
    while batch := list(itertools.islice(iterator, n)):
        yield batch
