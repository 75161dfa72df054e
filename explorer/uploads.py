"""Per-session upload galleries: admit a visitor's files into their private folder within the caps
(files, pages, bytes), then build or extend their gallery with index_builder.

Each file is sniffed, hashed and page-counted once, here (:func:`index_builder.inspect_file`), before
anything is decoded or encoded, so one visitor cannot exhaust a shared Space; ``build`` is handed those
records and returns the open gallery, so nothing is examined twice or read back from disk.
"""

from __future__ import annotations

import dataclasses
import logging
import shutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from explorer.config import UploadCaps
from explorer.errors import ExplorerError
from explorer.search import format_bytes
from explorer.session import Session
from index_builder import Gallery, GalleryError, InputFile, Rejected, build, inspect_file
from metaembed.models import MetaEmbedEncoder

logger = logging.getLogger(__name__)

#: A session's uploads live in ``<workdir>/uploads`` and show as ``uploads/<name>`` (the item's source).
UPLOADS = "uploads"
#: Pages are only counted at admission; the session's own page cap (with its web wording) decides.
NO_PAGE_LIMIT = 10**9


@dataclass
class UploadReport:
    """What happened to one upload batch (shown in the Gallery tab and returned by the API).

    ``gallery`` holds the session gallery's counts after the upload (:func:`explorer.gallery.gallery_stats`).
    """

    accepted: list[str] = field(default_factory=list)
    # {"file", "reason"}: not "path", which gradio_client would try to download as a file
    skipped: list[dict[str, str]] = field(default_factory=list)
    indexed: int = 0
    gallery: dict[str, Any] = field(default_factory=dict)
    #: What the session may still upload under its caps: {"files", "pages", "mb"}.
    left: dict[str, float] = field(default_factory=dict)

    @property
    def summary(self) -> str:
        g = self.gallery
        skipped = f", {len(self.skipped)} skipped (reasons in the table)" if self.skipped else ""
        return (f"{len(self.accepted)} file(s) accepted, {self.indexed} item(s) indexed{skipped}. Your gallery holds "
                f"{g.get('items', 0)} item(s): {g.get('images', 0)} images and {g.get('pages', 0)} PDF pages "
                f"({format_bytes(g.get('stored_bytes', 0))}). You can still add {self.left.get('files', 0):g} "
                f"file(s), {self.left.get('pages', 0):g} images/pages and {self.left.get('mb', 0):.0f} MB.")

    def rows(self) -> list[list[str]]:
        """One table row per file of this upload: file, what happened, why."""
        skipped = {s["file"]: s["reason"] for s in self.skipped}
        return [*([name, "indexed", ""] for name in self.accepted if name not in skipped),
                *([s["file"], "skipped", s["reason"]] for s in self.skipped)]

    def to_dict(self) -> dict[str, Any]:
        g = self.gallery
        return {"accepted": self.accepted, "skipped": self.skipped, "indexed": self.indexed,
                "total_items": g.get("items", 0), "pages": g.get("pages", 0), "images": g.get("images", 0),
                "stored_bytes": g.get("stored_bytes", 0), "left": self.left, "files": self.rows(),
                "summary": self.summary}


def caps_left(session: Session, caps: UploadCaps) -> dict[str, float]:
    """Files, images/pages and MB this session may still upload."""
    kept = session.uploads.values()
    return {"files": caps.max_files - len(kept), "pages": caps.max_pages - sum(f.items for f in kept),
            "mb": round((caps.max_bytes - sum(f.size for f in kept)) / 2**20, 1)}


def _unique_name(folder: Path, name: str) -> Path:
    """Keep the visitor's file name (results show it) without overwriting an earlier upload."""
    safe = Path(name).name or "upload"
    target = folder / safe
    stem, suffix, n = target.stem, target.suffix, 1
    while target.exists():
        target = folder / f"{stem}-{n}{suffix}"
        n += 1
    return target


def _refusal(session: Session, entry: InputFile, caps: UploadCaps, name: str) -> str | None:
    """Why ``entry`` is not admitted (already uploaded, or over one of the session's caps), or None; worded
    for a web visitor (what is left and what to do, never a command-line flag)."""
    same = next((display for display, f in session.uploads.items() if f.sha256 == entry.sha256), None)
    if same is not None:
        earlier = session.upload_names.get(same, Path(same).name)
        return f"same content as {earlier}, already in your gallery" if earlier != name else "already in your gallery"
    left = caps_left(session, caps)
    if left["files"] < 1:
        return f"file cap reached: {caps.max_files} files per session"
    if entry.items > left["pages"]:
        what = f"this PDF has {entry.items} pages" if entry.kind == "pdf" else "one more image"
        return (f"page cap: {what} and your session has {left['pages']:g} of {caps.max_pages} images/pages left; "
                "split the PDF or upload fewer pages")
    if entry.size > left["mb"] * 2**20:
        return (f"size cap: {entry.size / 2**20:.1f} MB and your session has {left['mb']:.1f} of "
                f"{caps.max_bytes / 2**20:.0f} MB left")
    return None


def admit(session: Session, files: Sequence[str | Path], caps: UploadCaps) -> tuple[UploadReport, list[InputFile]]:
    """Copy files into the session folder while the caps allow; the rest are skipped with a reason.

    Returns the report and the admitted files (as they now lie in the session folder), which are also
    counted in ``session.uploads`` against the caps.
    """
    if not files:
        raise ExplorerError("no files given: choose one or more images or PDFs")
    folder = session.uploads_dir()
    report, admitted = UploadReport(), []
    for raw in files:
        src = Path(raw)
        entry = inspect_file(src, src.name, NO_PAGE_LIMIT)
        if isinstance(entry, Rejected):
            report.skipped.append({"file": src.name, "reason": entry.reason})
            continue
        reason = _refusal(session, entry, caps, src.name)
        if reason:
            report.skipped.append({"file": src.name, "reason": reason})
            continue
        target = _unique_name(folder, src.name)
        shutil.copyfile(src, target)
        kept = dataclasses.replace(entry, path=target, display=f"{UPLOADS}/{target.name}")
        session.uploads[kept.display] = kept
        session.upload_names[kept.display] = src.name
        admitted.append(kept)
        report.accepted.append(src.name)
    return report, admitted


def build_session_gallery(session: Session, encoder: MetaEmbedEncoder, admitted: list[InputFile],
                          report: UploadReport, progress: Callable[[float, str], None] | None = None) -> Gallery:
    """Build the session gallery from ``admitted``, or extend the open one in place; returns it."""

    def on_progress(p: Any) -> None:
        if progress is not None and p.total:
            progress(p.done / p.total, f"encoded {p.done}/{p.total} · {Path(str(p.current or '')).name}")

    try:
        target = session.own_gallery if session.own_gallery is not None else session.workdir / "gallery"
        built = build(admitted, target, encoder=encoder, progress=on_progress)
    except GalleryError as err:
        for entry in admitted:
            _drop(session, entry.display)
        raise ExplorerError(f"cannot build your gallery: {err}") from err
    for skip in built.skipped:  # files that looked fine but fail to decode (duplicates never get this far)
        display = str(skip["path"])  # "uploads/doc.pdf#page=3" when only one page failed
        report.skipped.append({"file": Path(display).name, "reason": str(skip["reason"])})
        _drop(session, display)  # a whole file that failed: no-op for a "#page=" label
    report.indexed = int(built.indexed)
    return built.gallery


def _drop(session: Session, display: str) -> None:
    """Forget and delete an upload that added nothing, so it neither counts against the caps nor re-reports."""
    entry = session.uploads.pop(display, None)
    session.upload_names.pop(display, None)
    if entry is not None:
        entry.path.unlink(missing_ok=True)
