"""Small file helpers: every file the builder writes goes through a temp file + ``os.replace``."""

from __future__ import annotations

import io
import json
import os
import tempfile
from pathlib import Path
from typing import Any

from PIL import Image

THUMB_SIDE = 256


def write_bytes_atomic(path: Path, data: bytes, durable: bool = True) -> None:
    """Write ``data`` so that ``path`` is either the old file or the complete new one, never partial.

    ``durable=False`` skips the fsync: fine for files that can be regenerated (thumbnails), where the
    fsync would cost more than the file itself.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            if durable:
                os.fsync(fh.fileno())
        os.chmod(tmp, 0o644)  # mkstemp makes 0600; galleries are shared read-only data
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_json_atomic(path: Path, obj: Any) -> None:
    write_bytes_atomic(path, (json.dumps(obj, indent=2, ensure_ascii=False) + "\n").encode())


def save_thumbnail(image: Image.Image, path: Path, side: int = THUMB_SIDE) -> None:
    """A small WebP for the UI's result grid (a few KB each, so galleries stay small)."""
    thumb = image.copy()
    thumb.thumbnail((side, side), Image.Resampling.BICUBIC, reducing_gap=2.0)
    buf = io.BytesIO()
    thumb.save(buf, format="WEBP", quality=80, method=2)
    write_bytes_atomic(path, buf.getvalue(), durable=False)
