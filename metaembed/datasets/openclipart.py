"""Open Clip Art (Debian ``openclipart-png`` + ``openclipart-svg``): clip art with RDF metadata, training only.

Each PNG has an SVG twin whose RDF block gives ``dc:title``, keywords (``dc:subject`` bag) and
``dc:description``; the folder path is a category. ``computer/``, ``shapes/`` and ``special/`` are
dropped (icons and geometric shapes carry little image-text signal), and so is any PNG over
``MAX_PIXELS``: some reach 623 Mpx, so the size is read from the header before any pixel is decoded.
"""

from __future__ import annotations

import html
import io
import logging
import re
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from metaembed.datasets._assets import on_white, png_bytes, require, stable_hash
from metaembed.io import atomic_write

logger = logging.getLogger(__name__)

PNG_ROOT = Path("/usr/share/openclipart/png")
SVG_ROOT = Path("/usr/share/openclipart/svg")
PNG_PACKAGE, SVG_PACKAGE = "openclipart-png", "openclipart-svg"
DROPPED_CATEGORIES = ("computer", "shapes", "special")
MAX_PIXELS = 16_000_000
MAX_KEYWORDS = 10
#: Held-out dev split for model selection: the last DEV_SIZE usable clips in stable-hash order of their
#: key. Never trained on, and not a public eval set, so choices made on it do not tune for the tests.
DEV_SIZE = 400
#: Keywords that tools stamped on thousands of files and that say nothing about the picture.
NOISE_KEYWORDS = frozenset({"", "unsorted", "hash", "magick", "clip art", "clipart", "image", "media", "public domain"})

# The RDF block is tiny and fixed-shape while the SVGs are up to megabytes and not always well-formed
# XML, so a few regexes over the <metadata> block are both faster and more forgiving than a parser.
_METADATA = re.compile(rb"<metadata.*?</metadata>", re.DOTALL)
_AGENT = re.compile(r"<cc:Agent\b.*?</cc:Agent>", re.DOTALL)
_TITLE = re.compile(r"<dc:title>(.*?)</dc:title>", re.DOTALL)
_DESCRIPTION = re.compile(r"<dc:description>(.*?)</dc:description>", re.DOTALL)
_SUBJECT = re.compile(r"<dc:subject>(.*?)</dc:subject>", re.DOTALL)
_LI = re.compile(r"<rdf:li>(.*?)</rdf:li>", re.DOTALL)
_TAG = re.compile(r"<[^>]+>")


class ImageTooLargeError(ValueError):
    """A PNG whose header declares more than ``MAX_PIXELS`` pixels; it is never decoded."""


@dataclass(frozen=True)
class Clip:
    """One clip: ``rel`` = PNG path relative to the png folder; ``category`` = its folder path."""

    rel: str
    title: str
    keywords: tuple[str, ...]
    description: str

    @property
    def category(self) -> str:
        return self.rel.rsplit("/", 1)[0] if "/" in self.rel else ""

    @property
    def key(self) -> str:
        return f"oca:{self.rel}"

    @property
    def text(self) -> str:
        """Caption used for training: the title, then the keywords ("Cat. Keywords: animal, pet")."""
        parts = [self.title.rstrip(".") + "." if self.title else ""]
        if self.keywords:
            parts.append("Keywords: " + ", ".join(self.keywords[:MAX_KEYWORDS]))
        return " ".join(p for p in parts if p).strip()


def _clean(fragment: str) -> str:
    return " ".join(html.unescape(_TAG.sub(" ", fragment)).split())


def parse_metadata(svg: Path) -> tuple[str, tuple[str, ...], str]:
    """``(title, keywords, description)`` from an SVG's RDF block; empty values when absent."""
    match = _METADATA.search(svg.read_bytes())
    if match is None:
        return "", (), ""
    block = _AGENT.sub("", match.group(0).decode("utf-8", errors="replace"))
    title = _TITLE.search(block)
    description = _DESCRIPTION.search(block)
    subject = _SUBJECT.search(block)
    keywords: list[str] = []
    for raw in _LI.findall(subject.group(1)) if subject else []:
        word = _clean(raw).replace("_", " ")
        if word.lower() not in NOISE_KEYWORDS and word.lower() not in (k.lower() for k in keywords):
            keywords.append(word)
    title_text = _clean(title.group(1)) if title else ""
    return title_text, tuple(keywords), _clean(description.group(1)) if description else ""


def image_size(path: Path) -> tuple[int, int]:
    """Width and height from the file header only (``Image.open`` is lazy), bomb warnings silenced."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        try:
            with Image.open(path) as image:
                return image.size
        except Image.DecompressionBombError:
            # Pillow refuses headers over 2x its own limit before we can read the size: certainly too big.
            return (MAX_PIXELS + 1, 1)


def list_clips(png_root: Path | None = None, svg_root: Path | None = None, limit: int | None = None) -> list[Clip]:
    """Usable clips in sorted path order: kept category, SVG metadata with some text, size within bounds.

    The same drawing is often filed under two folders (``animals/x.png`` and ``animals/frog/x.png``);
    only the first path of each (file name, byte size) is kept, so a training batch rarely holds a clip
    twice (same-named files of different sizes are different drawings and are all kept).

    ``limit`` stops after that many usable clips (deterministic: the first ones in path order).
    """
    png_root = require(png_root or PNG_ROOT, PNG_PACKAGE)
    svg_root = require(svg_root or SVG_ROOT, SVG_PACKAGE)
    clips: list[Clip] = []
    skipped_large = 0
    seen: set[tuple[str, int]] = set()
    for png in sorted(png_root.rglob("*.png")):
        rel = png.relative_to(png_root).as_posix()
        identity = (png.name, png.stat().st_size)
        if rel.split("/", 1)[0] in DROPPED_CATEGORIES or identity in seen:
            continue
        svg = svg_root / Path(rel).with_suffix(".svg")
        if not svg.is_file():
            continue
        title, keywords, description = parse_metadata(svg)
        if not title and not keywords:
            continue
        width, height = image_size(png)
        if width * height > MAX_PIXELS:
            skipped_large += 1
            continue
        seen.add(identity)
        clips.append(Clip(rel, title, keywords, description))
        if limit is not None and len(clips) >= limit:
            break
    logger.info("Open Clip Art: %d usable clips (%d skipped as > %d px)", len(clips), skipped_large, MAX_PIXELS)
    return clips


def split(clips: Sequence[Clip], name: str) -> list[Clip]:
    """``train`` or ``dev`` part of ``clips``, both in stable-hash order of the key.

    The order does not depend on the folder walk, so the dev split stays the same clips when other
    clips come or go (only the boundary can move by the number of clips added).
    """
    if name not in ("train", "dev"):
        raise ValueError(f"unknown Open Clip Art split {name!r}; known: train, dev")
    ordered = sorted(clips, key=lambda clip: stable_hash(clip.key))
    cut = max(len(ordered) - DEV_SIZE, 0)
    return ordered[:cut] if name == "train" else ordered[cut:]


def load_image(clip: Clip | Path, max_side: int = 256, png_root: Path | None = None) -> Image.Image:
    """RGB on white, longer side <= ``max_side``; raises ``ImageTooLargeError`` before decoding a huge PNG.

    ``Image.draft`` does not apply to PNG, so the size check is the only guard against decoding a
    600 Mpx image; ``reduce`` then shrinks by an integer factor first to keep the peak memory low.
    """
    path = clip if isinstance(clip, Path) else (png_root or PNG_ROOT) / clip.rel
    width, height = image_size(path)
    if width * height > MAX_PIXELS:
        raise ImageTooLargeError(f"{path}: {width}x{height} px exceeds the {MAX_PIXELS} px limit")
    with Image.open(path) as raw:
        image = on_white(raw)
    if max(image.size) > max_side:
        image.thumbnail((max_side, max_side), Image.Resampling.BICUBIC, reducing_gap=2.0)
    return image


def load_thumbnail(clip: Clip, max_side: int = 256, cache_dir: Path | None = None) -> Image.Image:
    """``load_image`` through an optional on-disk cache of the downscaled PNGs.

    Decoding the full-size clip art dominates loading (about a minute for all clips on 2 cores); the
    cached thumbnail is returned *lazily* (``Image.open`` on its bytes): a trainer whose frozen image
    features are already cached under ``Item.key`` never decodes it. The cache file name carries the
    source's size and mtime, so an updated Debian package is not served stale thumbnails.
    """
    if cache_dir is None:
        return load_image(clip, max_side)
    source = PNG_ROOT / clip.rel
    stat = source.stat()
    cached = Path(cache_dir) / f"openclipart-{max_side}" / f"{clip.rel[:-4]}-{stat.st_size}-{stat.st_mtime_ns}.png"
    if not cached.is_file():
        atomic_write(cached, png_bytes(load_image(clip, max_side)), durable=False)
    return Image.open(io.BytesIO(cached.read_bytes()))
