"""Thumbnails for the UI; like every file the builder writes they go through :func:`metaembed.io.atomic_write`."""

from __future__ import annotations

import io
from pathlib import Path

from PIL import Image

from metaembed.io import atomic_write

THUMB_SIDE = 256


def save_thumbnail(image: Image.Image, path: Path, side: int = THUMB_SIDE) -> None:
    """A small WebP for the UI's result grid (a few KB each, so galleries stay small)."""
    thumb = image.copy()
    thumb.thumbnail((side, side), Image.Resampling.BICUBIC, reducing_gap=2.0)
    buf = io.BytesIO()
    thumb.save(buf, format="WEBP", quality=80, method=2)
    atomic_write(path, buf.getvalue(), durable=False)
