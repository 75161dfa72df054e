"""Find the files to index, tell images from PDFs by their magic bytes, and examine each once.

Extensions lie (a ``.png`` that is really a JPEG, a ``.jpg`` that is HTML); the first bytes do not.
:func:`examine` then hashes the file and counts a PDF's pages, giving an :class:`InputFile`: what
``build`` indexes. The app's upload admission makes InputFiles as files arrive (:func:`inspect_file`)
and hands them to ``build``, so nothing is sniffed, hashed or counted twice.
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from index_builder.errors import InputSkipped
from index_builder.pdf import DEFAULT_MAX_PAGES, count_pages

logger = logging.getLogger(__name__)

#: (prefix, offset, kind): the image formats the README lists (all decoded by Pillow), plus PDF.
_MAGIC: tuple[tuple[bytes, int, str], ...] = (
    (b"\x89PNG\r\n\x1a\n", 0, "png"),
    (b"\xff\xd8\xff", 0, "jpeg"),
    (b"GIF87a", 0, "gif"),
    (b"GIF89a", 0, "gif"),
    (b"BM", 0, "bmp"),
    (b"II*\x00", 0, "tiff"),
    (b"MM\x00*", 0, "tiff"),
    (b"WEBP", 8, "webp"),  # after b"RIFF" + 4-byte size
)
IMAGE_KINDS = frozenset(kind for _, _, kind in _MAGIC)
#: PDF readers accept the header anywhere in the first 1,024 bytes (PDF 1.7, annex H.3).
_PDF_WINDOW = 1024


@dataclass(frozen=True)
class Found:
    """A file to index: ``kind`` is an image format name or "pdf"; ``display`` is the path shown to users."""

    path: Path
    display: str
    kind: str


@dataclass(frozen=True)
class InputFile:
    """A file ready to index: sniffed, hashed and (a PDF) page-counted, each exactly once."""

    path: Path
    display: str
    kind: str
    sha256: str
    size: int
    pages: int | None = None  # PDFs only

    @property
    def items(self) -> int:
        """How many gallery items it becomes: one per PDF page, one for an image."""
        return self.pages or 1


@dataclass(frozen=True)
class Rejected:
    """A path that will not be indexed, with the reason for the report."""

    path: str
    reason: str


def sniff(head: bytes) -> str | None:
    """Return "pdf", an image format name, or None for the first bytes of a file."""
    if b"%PDF-" in head[:_PDF_WINDOW]:
        return "pdf"
    for prefix, offset, kind in _MAGIC:
        if head[offset : offset + len(prefix)] == prefix:
            if kind == "webp" and not head.startswith(b"RIFF"):
                continue
            return kind
    return None


def classify(path: Path, display: str) -> Found | Rejected:
    """Sniff one file; unreadable, empty and unknown files become :class:`Rejected`."""
    if not path.exists():
        return Rejected(display, "no such file (a dangling link?)")
    if not path.is_file():  # a FIFO or device would block or never end
        return Rejected(display, "not a regular file")
    try:
        with path.open("rb") as fh:
            head = fh.read(_PDF_WINDOW)
    except OSError as err:
        return Rejected(display, f"unreadable: {err.strerror or err}")
    if not head:
        return Rejected(display, "empty file")
    kind = sniff(head)
    if kind is None:
        return Rejected(display, f"unsupported file type (first bytes {head[:8]!r}); expected an image or a PDF")
    return Found(path, display, kind)


def examine(found: Found, max_pages: int = DEFAULT_MAX_PAGES) -> InputFile | Rejected:
    """Hash a sniffed file and count a PDF's pages; an unreadable file, or an encrypted, broken, empty or
    over-``max_pages`` PDF, is :class:`Rejected` with the reason."""
    try:
        size = found.path.stat().st_size
        sha = sha256_file(found.path)
        pages = count_pages(found.path, max_pages) if found.kind == "pdf" else None
    except InputSkipped as err:
        return Rejected(found.display, str(err))
    except OSError as err:
        return Rejected(found.display, f"unreadable: {err.strerror or err}")
    return InputFile(found.path, found.display, found.kind, sha, size, pages)


def inspect_file(path: Path, display: str, max_pages: int = DEFAULT_MAX_PAGES) -> InputFile | Rejected:
    """Sniff and examine one file (an upload): everything ``build`` needs to know about it, read once."""
    found = classify(path, display)
    return examine(found, max_pages) if isinstance(found, Found) else found


def sha256_file(path: Path) -> str:
    """SHA-256 of a file's content (an item's id derives from it); unreadable -> InputSkipped."""
    digest = hashlib.sha256()
    try:
        with path.open("rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                digest.update(block)
    except OSError as err:
        raise InputSkipped(f"unreadable: {err.strerror or err}") from None
    return digest.hexdigest()


def discover(inputs: Sequence[str | Path | InputFile], exclude: Sequence[Path] = ()
             ) -> Iterator[Found | InputFile | Rejected]:
    """Yield every file under ``inputs`` (recursive, sorted, symlinked dirs not followed), sniffed.

    An :class:`InputFile` among ``inputs`` is already examined and is passed through as it is. ``exclude``
    holds directories never to descend into (the gallery being written, so a build over a parent folder
    does not index its own thumbnails). ``display`` is relative to the input's parent folder.
    """
    excluded = {p.resolve() for p in exclude}
    seen: set[Path] = set()
    for raw in inputs:
        if isinstance(raw, InputFile):
            if raw.path.resolve() not in seen:
                seen.add(raw.path.resolve())
                yield raw
            continue
        root = Path(raw)
        if not root.exists():
            yield Rejected(str(raw), "no such file or directory")
            continue
        base = Path(os.path.abspath(root)).parent
        for path in _walk(root, excluded):
            if isinstance(path, Rejected):
                yield path
                continue
            real = path.resolve()
            if real in seen:
                continue
            seen.add(real)
            yield classify(path, _display(path, base))


def _walk(root: Path, excluded: set[Path]) -> Iterator[Path | Rejected]:
    """Files under ``root`` in a stable order; hidden files and excluded folders are left out."""
    if not root.is_dir():
        yield root
        return
    if root.resolve() in excluded:
        return
    errors: list[OSError] = []
    for dirpath, dirnames, filenames in os.walk(root, onerror=errors.append):
        dirnames[:] = sorted(
            d for d in dirnames if not d.startswith(".") and (Path(dirpath) / d).resolve() not in excluded
        )
        for name in sorted(filenames):
            if not name.startswith("."):
                yield Path(dirpath) / name
    for err in errors:
        yield Rejected(str(err.filename), f"unreadable folder: {err.strerror or err}")


def _display(path: Path, base: Path) -> str:
    try:
        return Path(os.path.abspath(path)).relative_to(base).as_posix()
    except ValueError:
        return path.as_posix()
