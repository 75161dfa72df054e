"""Caption sidecars: ``path,text`` rows (CSV or JSONL) that make an image an image + text candidate."""

from __future__ import annotations

import csv
from pathlib import Path

from index_builder.errors import GalleryError
from metaembed.io import JsonlError, read_jsonl


def load_captions(sidecar: str | Path) -> dict[Path, str]:
    """Map resolved file paths to captions; relative paths are taken relative to the sidecar's folder.

    JSONL rows are objects with "path" and "text"; CSV rows are ``path,text`` with an optional header.
    A malformed file raises :class:`GalleryError` naming the file and line.
    """
    sidecar = Path(sidecar)
    try:
        raw = sidecar.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as err:
        raise GalleryError(f"captions file {sidecar}: cannot read ({err})") from None
    rows = _jsonl_rows(sidecar) if _looks_like_jsonl(sidecar, raw) else _csv_rows(sidecar, raw)
    base = sidecar.resolve().parent
    captions: dict[Path, str] = {}
    for line, (path, text) in rows:
        if not path or not text.strip():
            raise GalleryError(f"captions file {sidecar} line {line}: needs a non-empty path and text")
        captions[(base / path).resolve()] = text.strip()
    return captions


def _looks_like_jsonl(sidecar: Path, raw: str) -> bool:
    return sidecar.suffix.lower() in (".jsonl", ".ndjson", ".json") or raw.lstrip().startswith("{")


def _jsonl_rows(sidecar: Path) -> list[tuple[int, tuple[str, str]]]:
    rows = []
    try:
        for line, obj in read_jsonl(sidecar, encoding="utf-8-sig"):
            if not isinstance(obj, dict):
                raise GalleryError(f"captions file {sidecar} line {line}: expected an object with path and text")
            rows.append((line, (str(obj.get("path") or ""), str(obj.get("text") or ""))))
    except JsonlError as err:
        raise GalleryError(f"captions file {sidecar} line {err.line}: invalid JSON ({err.msg})") from None
    return rows


def _csv_rows(sidecar: Path, raw: str) -> list[tuple[int, tuple[str, str]]]:
    rows = []
    for line, row in enumerate(csv.reader(raw.splitlines()), start=1):
        if not row or not any(cell.strip() for cell in row):
            continue
        if len(row) < 2:
            raise GalleryError(f"captions file {sidecar} line {line}: expected 2 columns path,text, got {len(row)}")
        if line == 1 and [c.strip().lower() for c in row[:2]] == ["path", "text"]:
            continue
        rows.append((line, (row[0].strip(), ",".join(row[1:]))))
    return rows
