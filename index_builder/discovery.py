"""Find the files to index and tell images from PDFs by their magic bytes, not their extension.

Extensions lie (a ``.png`` that is really a JPEG, a ``.jpg`` that is HTML); the first bytes do not.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

logger = logging.getLogger(__name__)

#: (prefix, offset, kind) — formats Pillow decodes that the issue names, plus PDF.
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


def discover(inputs: Sequence[str | Path], exclude: Sequence[Path] = ()) -> Iterator[Found | Rejected]:
    """Yield every file under ``inputs`` (recursive, sorted, symlinked dirs not followed), sniffed.

    ``exclude`` holds directories never to descend into (the gallery being written, so a build over a
    parent folder does not index its own thumbnails). ``display`` is relative to the input's parent folder.
    """
    excluded = {p.resolve() for p in exclude}
    seen: set[Path] = set()
    for raw in inputs:
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
