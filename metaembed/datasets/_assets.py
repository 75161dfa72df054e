"""Shared helpers for the Debian-packaged data: locating it, failing clearly, encoding images reproducibly."""

from __future__ import annotations

import hashlib
import io
from pathlib import Path

from PIL import Image


class MissingDataError(FileNotFoundError):
    """A data file that a Debian package provides is absent; the message names the package."""


def require(path: Path, apt_package: str) -> Path:
    """Return ``path`` if it exists, else raise naming the apt package that provides it.

    The library never installs anything: the user (or the project's setup script) does.
    """
    if not path.exists():
        raise MissingDataError(
            f"{path} not found: install the Debian package {apt_package!r} "
            f"(sudo apt-get install -y {apt_package})"
        )
    return path


def stable_hash(text: str) -> int:
    """A hash that is the same in every process and Python version (unlike ``hash``)."""
    return int.from_bytes(hashlib.sha1(text.encode("utf-8")).digest()[:8], "big")


def on_white(image: Image.Image) -> Image.Image:
    """Composite any mode (RGBA, LA, P with transparency) on a white background -> RGB."""
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA"):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")


def png_bytes(image: Image.Image) -> bytes:
    """Encode as PNG with fixed settings and no metadata, so the same pixels give the same bytes."""
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", optimize=False, compress_level=6)
    return buffer.getvalue()

