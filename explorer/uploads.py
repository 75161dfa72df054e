"""Per-session upload galleries: copy a visitor's files into their private folder within the caps
(files, pages, bytes), then build or extend their gallery with index_builder.

Caps are checked here, before any decoding or encoding, so one visitor cannot exhaust a shared Space.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from explorer.config import UploadCaps
from explorer.errors import ExplorerError
from explorer.session import Session
from index_builder import GalleryError, InputSkipped, build
from index_builder.discovery import Found, classify
from index_builder.pdf import count_pages
from metaembed.models import MetaEmbedEncoder


@dataclass
class UploadReport:
    """What happened to one upload batch (shown in the Gallery tab and returned by the API)."""

    accepted: list[str] = field(default_factory=list)
    # {"file", "reason"}: not "path", which gradio_client would try to download as a file
    skipped: list[dict[str, str]] = field(default_factory=list)
    indexed: int = 0
    total_items: int = 0
    pages: int = 0
    images: int = 0
    stored_bytes: int = 0
    summary: str = ""

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def _usage(folder: Path) -> tuple[int, int, int]:
    """(files, pages-or-images, bytes) already in a session's uploads folder."""
    files = pages = size = 0
    for path in sorted(folder.iterdir()):
        if not path.is_file():
            continue
        found = classify(path, path.name)
        files += 1
        size += path.stat().st_size
        if isinstance(found, Found):
            try:
                pages += count_pages(path) if found.kind == "pdf" else 1
            except InputSkipped:
                continue
    return files, pages, size


def _unique_name(folder: Path, name: str) -> Path:
    """Keep the visitor's file name (results show it) without overwriting an earlier upload."""
    safe = Path(name).name or "upload"
    target = folder / safe
    stem, suffix, n = target.stem, target.suffix, 1
    while target.exists():
        target = folder / f"{stem}-{n}{suffix}"
        n += 1
    return target


def admit(session: Session, files: Sequence[str | Path], caps: UploadCaps) -> UploadReport:
    """Copy files into the session folder while the caps allow; the rest are skipped with a reason."""
    if not files:
        raise ExplorerError("no files given: choose one or more images or PDFs")
    folder = session.uploads_dir()
    n_files, n_pages, n_bytes = _usage(folder)
    report = UploadReport()
    for raw in files:
        src = Path(raw)
        name = src.name
        found = classify(src, name)
        if not isinstance(found, Found):
            report.skipped.append({"file": name, "reason": found.reason})
            continue
        size = src.stat().st_size
        try:
            pages = count_pages(src, caps.max_pages) if found.kind == "pdf" else 1
        except InputSkipped as err:
            report.skipped.append({"file": name, "reason": str(err)})
            continue
        reason = None
        if n_files + 1 > caps.max_files:
            reason = f"file cap reached ({caps.max_files} files per session)"
        elif n_pages + pages > caps.max_pages:
            reason = f"page cap: {pages} page(s) would exceed {caps.max_pages} images/pages per session"
        elif n_bytes + size > caps.max_bytes:
            reason = f"size cap: {size / 2**20:.1f} MB would exceed {caps.max_bytes / 2**20:.0f} MB per session"
        if reason:
            report.skipped.append({"file": name, "reason": reason})
            continue
        shutil.copyfile(src, _unique_name(folder, name))
        n_files, n_pages, n_bytes = n_files + 1, n_pages + pages, n_bytes + size
        report.accepted.append(name)
    return report


def build_session_gallery(session: Session, encoder: MetaEmbedEncoder, report: UploadReport,
                          progress: Callable[[float, str], None] | None = None) -> Any:
    """Build (or extend: index_builder resumes) the session gallery from its uploads folder."""
    out_dir = session.workdir / "gallery"

    def on_progress(p: Any) -> None:
        if progress is not None and p.total:
            progress(p.done / p.total, f"encoded {p.done}/{p.total} · {Path(str(p.current or '')).name}")

    try:
        built = build([session.uploads_dir()], out_dir, encoder=encoder, progress=on_progress)
    except GalleryError as err:
        raise ExplorerError(f"cannot build your gallery: {err}") from err
    for skip in built.skipped:
        name = Path(str(skip["path"])).name  # "doc.pdf#page=3" when only one page failed
        report.skipped.append({"file": name, "reason": str(skip["reason"])})
        _drop(session.uploads_dir() / name)  # a whole file that failed: no-op for a "#page=" label
    for dup in built.duplicates:
        name = Path(str(dup["path"])).name
        report.skipped.append({"file": name, "reason": f"same content as {Path(str(dup['duplicate_of'])).name}"})
        _drop(session.uploads_dir() / name)
    report.indexed = int(built.indexed)
    report.total_items = int(built.total_items)
    return out_dir


def _drop(path: Path) -> None:
    """Remove a file that added nothing to the gallery, so it neither counts against the caps nor re-reports."""
    if path.is_file():
        path.unlink()
