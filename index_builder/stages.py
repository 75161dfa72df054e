"""The two stages of every build, run in the builder's process or on Ray workers alike: decode one file's
planned items (an image, or the wanted pages of one PDF), and encode a batch isolating failures.

They take and return plain data (no gallery, no report), so a Ray Data task or actor runs exactly the code
a local build runs and a distributed build reports the same skips with the same reasons.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch
from PIL import Image

from index_builder.discovery import InputFile
from index_builder.errors import GalleryError, InputSkipped
from index_builder.items import candidate_item
from index_builder.pdf import iter_pages
from metaembed.images import DEFAULT_MAX_SIDE, ImageError, load_image
from metaembed.models import MetaEmbedEncoder


@dataclass(frozen=True)
class Unit:
    """One item to encode: an image file, or one page of a PDF."""

    item_id: str
    found: InputFile
    page: int | None = None
    caption: str | None = None

    @property
    def label(self) -> str:
        """How the report names it: the file, plus ``#page=N`` for a PDF page."""
        return self.found.display if self.page is None else f"{self.found.display}#page={self.page}"


@dataclass(frozen=True)
class Decoded:
    unit: Unit
    image: Image.Image
    text: str | None


@dataclass(frozen=True)
class Skipped:
    """Items that will not be encoded: ``units`` (one, or the rest of a PDF that broke) and why."""

    label: str
    reason: str
    units: tuple[Unit, ...]


def decode_file(units: Sequence[Unit], dpi: int, max_pixels: int | None) -> Iterator[Decoded | Skipped]:
    """Decode the planned items of one file lazily (one image, or one PDF page at a time)."""
    first = units[0]
    if first.found.kind != "pdf":
        try:
            yield Decoded(first, load_image(first.found.path, max_pixels, DEFAULT_MAX_SIDE), first.caption)
        except ImageError as err:
            yield Skipped(first.found.display, str(err), (first,))
        return
    by_page = {u.page: u for u in units}
    try:
        for page in iter_pages(first.found.path, list(by_page), dpi):
            if isinstance(page, tuple):
                number, err = page
                yield Skipped(f"{first.found.display}#page={number}", str(err), (by_page.pop(number),))
                continue
            unit = by_page.pop(page.number)
            yield Decoded(unit, page.image, "\n".join(t for t in (unit.caption, page.text) if t) or None)
    except InputSkipped as err:  # the file changed or broke between planning and rendering
        yield Skipped(first.found.display, str(err), tuple(by_page.values()))


@dataclass
class Encoded:
    """The result of :func:`encode_batch`: vectors of the ``kept`` positions, reasons for the others."""

    kept: list[int]
    vectors: torch.Tensor
    failed: list[tuple[int, str]]
    seconds: float


def encode_batch(encoder: MetaEmbedEncoder, batch: Sequence[Decoded], batch_size: int) -> Encoded:
    """Encode a batch; if the model chokes on it, retry item by item and fail only the culprit."""
    result = Encoded([], torch.empty(0), [], 0.0)
    _encode_into(encoder, list(enumerate(batch)), batch_size, result)
    return result


def _encode_into(encoder: MetaEmbedEncoder, batch: list[tuple[int, Decoded]], batch_size: int,
                 result: Encoded) -> None:
    items = [candidate_item(d.unit.page is not None, d.image, d.text, d.unit.item_id) for _, d in batch]
    tic = time.perf_counter()
    try:
        vectors = encoder.encode_candidates(items, batch_size=batch_size)
    except GalleryError:
        raise
    except (RuntimeError, ValueError) as err:
        result.seconds += time.perf_counter() - tic
        if len(batch) == 1:
            result.failed.append((batch[0][0], f"the model could not encode it: {err}"))
            return
        for entry in batch:
            _encode_into(encoder, [entry], batch_size, result)
        return
    result.seconds += time.perf_counter() - tic
    expected = (len(items), encoder.num_candidate_tokens, encoder.dim)
    if tuple(vectors.shape) != expected:
        raise GalleryError(f"encoder returned shape {tuple(vectors.shape)}, expected {expected}")
    result.kept += [i for i, _ in batch]
    result.vectors = vectors if result.vectors.numel() == 0 else torch.cat([result.vectors, vectors])
