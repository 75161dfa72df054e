"""build / add: plan the work, stream-decode inputs, encode in batches, commit in atomic chunks.

Resumability comes from two facts: item ids are content hashes (+ page number), and the index on disk
is only ever replaced atomically. A rerun plans against what is already committed and encodes the rest.
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
from PIL import Image

from index_builder.captions import load_captions
from index_builder.discovery import Found, InputFile, Rejected, discover, examine
from index_builder.errors import GalleryError, InputSkipped
from index_builder.gallery import THUMBS_DIR, Gallery, thumb_name
from index_builder.items import IMAGE, PDF_PAGE, GalleryItem, candidate_instruction, candidate_item
from index_builder.pdf import DEFAULT_DPI, DEFAULT_MAX_PAGES, iter_pages
from index_builder.prefetch import prefetch
from index_builder.progress import Progress, ProgressTracker
from index_builder.storage import save_thumbnail
from metaembed.images import DEFAULT_MAX_SIDE, ImageError, load_image
from metaembed.models import MetaEmbedEncoder, load_encoder

logger = logging.getLogger(__name__)

DEFAULT_BATCH_SIZE = 16
#: Items per atomic commit: the most work a kill -9 can lose. Each commit rewrites the index
#: (a few MB for a demo gallery), so larger chunks trade resume granularity for less I/O.
DEFAULT_CHUNK_SIZE = 64


@dataclass(frozen=True)
class Unit:
    """One item to encode: an image file, or one page of a PDF."""

    item_id: str
    found: InputFile
    page: int | None = None
    caption: str | None = None


@dataclass
class BuildReport:
    """What one build/add run did; ``to_dict()`` (all but the open ``gallery``) is written to ``report.json``.

    ``gallery`` is the gallery as it is after the run, open and in memory: a caller searches it without
    reading it back from disk.
    """

    gallery: Gallery
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
    out_dir: str | Path | Gallery,
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
) -> BuildReport:
    """Index ``inputs`` into the gallery at ``out_dir``, creating it or resuming an interrupted build.

    ``inputs`` are files and folders to discover, or :class:`InputFile` records a caller has already
    examined (the app's upload admission). ``out_dir`` may be a gallery that is already open, which is
    then extended in place. The returned report holds the open gallery (``report.gallery``).
    """
    return _run(inputs, out_dir, encoder, create=True, batch_size=batch_size, dpi=dpi, max_pages=max_pages,
                captions=captions, progress=progress, progress_bar=progress_bar, chunk_size=chunk_size,
                dtype=dtype, max_pixels=max_pixels)


def add(
    out_dir: str | Path | Gallery,
    inputs: Sequence[str | Path | InputFile],
    encoder: MetaEmbedEncoder | str | Path | None = None,
    **kwargs: Any,
) -> BuildReport:
    """Add files to an existing gallery; without ``encoder`` the model recorded in its manifest is loaded."""
    gallery = out_dir if isinstance(out_dir, Gallery) else Gallery.open(out_dir)
    if encoder is None:
        encoder = gallery.manifest["model"].get("ref")
        if encoder is None:
            raise GalleryError(f"{gallery.dir} does not record where its model lives; pass the model explicitly")
    kwargs.setdefault("dtype", gallery.index_dtype)
    return _run(inputs, gallery, encoder, create=False, **kwargs)


def _run(
    inputs: Sequence[str | Path | InputFile], out_dir: str | Path | Gallery,
    encoder: MetaEmbedEncoder | str | Path | None, *,
    create: bool, batch_size: int = DEFAULT_BATCH_SIZE, dpi: int = DEFAULT_DPI, max_pages: int = DEFAULT_MAX_PAGES,
    captions: str | Path | None = None, progress: Callable[[Progress], None] | None = None,
    progress_bar: bool = False, chunk_size: int = DEFAULT_CHUNK_SIZE, dtype: torch.dtype = torch.bfloat16,
    max_pixels: int | None = None,
) -> BuildReport:
    if batch_size < 1 or chunk_size < 1 or dpi < 1 or max_pages < 1:
        raise GalleryError("batch size, chunk size, dpi and max pages must all be at least 1")
    caption_map = load_captions(captions) if captions is not None else {}
    model_ref = None if isinstance(encoder, MetaEmbedEncoder) else ("mini" if encoder is None else str(encoder))
    if not isinstance(encoder, MetaEmbedEncoder):
        encoder = load_encoder(encoder)
    start = time.perf_counter()  # after loading the model: seconds and items/s measure ingestion itself
    params = {"dpi": dpi, "max_pages": max_pages, "batch_size": batch_size}
    if isinstance(out_dir, Gallery) or not create:
        gallery = out_dir if isinstance(out_dir, Gallery) else Gallery.open(out_dir)
        gallery.check_model(encoder)
    else:
        gallery = Gallery.open_or_create(out_dir, encoder, model_ref, dtype, params)
    report = BuildReport(gallery=gallery)
    units = _plan(inputs, gallery, caption_map, max_pages, report)
    tracker = ProgressTracker(len(units), progress, progress_bar)
    writer = _ChunkWriter(gallery, encoder, batch_size, chunk_size, report)
    batches = prefetch(_batched(_load(units, gallery, dpi, max_pixels, tracker, report), batch_size))
    try:
        for batch in batches:
            writer.encode(batch)
            tracker.advance(len(batch), batch[-1][0].found.display)
        writer.commit()
    except BaseException:  # Ctrl-C, a UI cancel, or a bug: keep every finished batch, then re-raise
        report.interrupted = True
        writer.commit()
        raise
    finally:
        batches.close()
        tracker.close()
        report.seconds = time.perf_counter() - start
        report.items_per_s = report.indexed / report.seconds if report.seconds > 0 else 0.0
        report.total_items = len(gallery.index)
        gallery.write_report(report.to_dict())
        logger.info(report.summary)
    return report


def _plan(
    inputs: Sequence[str | Path | InputFile], gallery: Gallery, captions: dict[Path, str], max_pages: int,
    report: BuildReport,
) -> list[Unit]:
    """Decide what to encode: skip bad files, duplicates, and items already committed (resume)."""
    present = set(gallery.index.ids)
    known: dict[str, tuple[str, Path]] = {}  # sha256 -> (source, file) already in the gallery
    for item_id in present:
        record = gallery.item(item_id)
        known.setdefault(record.sha256, (record.source, (gallery.dir / (record.path or "")).resolve()))
    first_seen: dict[str, str] = {}
    units: list[Unit] = []
    for entry in discover(inputs, exclude=[gallery.dir]):
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
    units: list[Unit], gallery: Gallery, dpi: int, max_pixels: int | None, tracker: ProgressTracker,
    report: BuildReport,
) -> Iterator[tuple[Unit, Image.Image, str | None]]:
    """Decode lazily, one file (or one PDF page) at a time, so memory follows the batch size.

    Each item's thumbnail is written here too (off the encoder's thread, see :mod:`prefetch`).
    """
    for unit, image, text in _decode(units, dpi, max_pixels, tracker, report):
        save_thumbnail(image, gallery.dir / THUMBS_DIR / thumb_name(unit.item_id))
        yield unit, image, text


def _decode(
    units: list[Unit], dpi: int, max_pixels: int | None, tracker: ProgressTracker, report: BuildReport
) -> Iterator[tuple[Unit, Image.Image, str | None]]:
    for path, group in itertools.groupby(units, key=lambda u: u.found.path):
        todo = list(group)
        if todo[0].found.kind != "pdf":
            try:
                yield todo[0], load_image(path, max_pixels, DEFAULT_MAX_SIDE), todo[0].caption
            except ImageError as err:
                report.skip(todo[0].found.display, str(err))
                tracker.drop()
            continue
        by_page = {u.page: u for u in todo}
        try:
            for page in iter_pages(path, list(by_page), dpi):
                if isinstance(page, tuple):
                    number, err = page
                    report.skip(f"{todo[0].found.display}#page={number}", str(err))
                    tracker.drop()
                    del by_page[number]
                    continue
                unit = by_page.pop(page.number)
                text = "\n".join(t for t in (unit.caption, page.text) if t) or None
                yield unit, page.image, text
        except InputSkipped as err:  # the file changed or broke between planning and rendering
            report.skip(todo[0].found.display, str(err))
            tracker.drop(len(by_page))


class _ChunkWriter:
    """Encodes batches into the in-memory index and commits it to disk every ``chunk_size`` items."""

    def __init__(
        self, gallery: Gallery, encoder: MetaEmbedEncoder, batch_size: int, chunk_size: int, report: BuildReport
    ) -> None:
        self.gallery, self.encoder, self.batch_size, self.chunk_size = gallery, encoder, batch_size, chunk_size
        self.report = report
        self.uncommitted = 0

    def encode(self, batch: list[tuple[Unit, Image.Image, str | None]]) -> None:
        batch, vectors = self._encode_isolating_failures(batch)
        if not batch:
            return
        metas = [self._metadata(unit, image, text) for unit, image, text in batch]
        self.gallery.index.add([unit.item_id for unit, _, _ in batch], vectors, metas)
        self.report.indexed += len(batch)
        self.uncommitted += len(batch)
        if self.uncommitted >= self.chunk_size:
            self.commit()

    def commit(self) -> None:
        if self.uncommitted:
            self.gallery.commit()
            logger.debug("committed %d items (%d in gallery)", self.uncommitted, len(self.gallery.index))
            self.uncommitted = 0

    def _encode_isolating_failures(
        self, batch: list[tuple[Unit, Image.Image, str | None]]
    ) -> tuple[list[tuple[Unit, Image.Image, str | None]], torch.Tensor]:
        """Encode a batch; if the model chokes on it, retry item by item and skip only the culprit."""
        try:
            return batch, self._encode(batch)
        except GalleryError:
            raise
        except (RuntimeError, ValueError) as err:
            if len(batch) == 1:
                self.report.skip(_label(batch[0][0]), f"the model could not encode it: {err}")
                (self.gallery.dir / THUMBS_DIR / thumb_name(batch[0][0].item_id)).unlink(missing_ok=True)
                return [], torch.empty(0)
        kept, vectors = [], []
        for entry in batch:
            sub, vec = self._encode_isolating_failures([entry])
            kept += sub
            if sub:
                vectors.append(vec)
        return kept, (torch.cat(vectors) if vectors else torch.empty(0))

    def _encode(self, batch: list[tuple[Unit, Image.Image, str | None]]) -> torch.Tensor:
        items = [candidate_item(unit.page is not None, image, text, unit.item_id) for unit, image, text in batch]
        tic = time.perf_counter()
        vectors = self.encoder.encode_candidates(items, batch_size=self.batch_size)
        self.report.encode_seconds += time.perf_counter() - tic
        expected = (len(items), self.encoder.num_candidate_tokens, self.encoder.dim)
        if tuple(vectors.shape) != expected:
            raise GalleryError(f"encoder returned shape {tuple(vectors.shape)}, expected {expected}")
        return vectors

    def _metadata(self, unit: Unit, image: Image.Image, text: str | None) -> dict[str, Any]:
        is_page = unit.page is not None
        return GalleryItem(
            kind=PDF_PAGE if is_page else IMAGE,
            source=unit.found.display,
            path=self.gallery.relpath(unit.found.path),
            page=unit.page,
            pages=unit.found.pages,
            caption=unit.caption,
            text=text if is_page else None,
            instruction=candidate_instruction(is_page),
            sha256=unit.found.sha256,
            thumbnail=f"{THUMBS_DIR}/{thumb_name(unit.item_id)}",  # written by _load
            width=image.width,
            height=image.height,
        ).to_dict()


def _label(unit: Unit) -> str:
    return unit.found.display if unit.page is None else f"{unit.found.display}#page={unit.page}"


def _batched(iterable: Iterator[tuple[Unit, Image.Image, str | None]], n: int):
    """itertools.batched (3.12+) for Python 3.11, as lists."""
    iterator = iter(iterable)
    while batch := list(itertools.islice(iterator, n)):
        yield batch
