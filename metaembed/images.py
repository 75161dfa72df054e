"""Decode user images safely: size checked from the header before any pixel is decoded.

Everything that takes a picture from a user decodes it here: the gallery builder (files), the explorer
(query uploads) and the search server (base64 in a request body).

Pillow only raises ``DecompressionBombError`` at twice ``Image.MAX_IMAGE_PIXELS``; we refuse at the
limit itself, and bound memory further by downscaling everything to ``max_side`` (the encoder
works at a few hundred pixels, so nothing is lost).
"""

from __future__ import annotations

import io
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

#: Longest side kept after decoding; bounds a batch's memory whatever the inputs are.
DEFAULT_MAX_SIDE = 1024


class ImageError(ValueError):
    """A picture that cannot or must not be decoded; ``str(err)`` is the reason to show the user."""


def default_max_pixels() -> int:
    """Pillow's own decompression-bomb limit (about 89 Mpx unless the host application changed it)."""
    return int(Image.MAX_IMAGE_PIXELS or 89_478_485)


def load_image(source: Path | bytes, max_pixels: int | None = None, max_side: int = DEFAULT_MAX_SIDE) -> Image.Image:
    """Return the first frame of ``source`` (a file, or its bytes) as RGB (transparency composited on white),
    at most ``max_side`` px.

    Raises :class:`ImageError` with a reason for anything Pillow cannot or must not decode.
    """
    if isinstance(source, bytes | bytearray):
        source = io.BytesIO(source)
    limit = default_max_pixels() if max_pixels is None else max_pixels
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(source) as im:
                width, height = im.size
                if width * height > limit:
                    raise ImageError(
                        f"image too large: {width}x{height} = {width * height:,} px exceeds the {limit:,} px limit"
                    )
                im.seek(0)  # GIF / WebP / TIFF: first frame
                im.draft("RGB", (max_side, max_side))  # JPEG: decode at reduced scale, saves memory
                im.load()
                return _to_rgb(ImageOps.exif_transpose(im), max_side)
    except ImageError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as err:
        raise ImageError(f"image too large (decompression bomb refused): {err}") from None
    except Image.UnidentifiedImageError:
        raise ImageError("not a decodable image (corrupt or mislabelled)") from None
    except (OSError, SyntaxError, ValueError, EOFError, MemoryError) as err:  # Pillow's decode failures
        raise ImageError(f"corrupt or truncated image: {err}") from None
    except Exception as err:  # noqa: BLE001 -- crafted files reach odd corners of Pillow's plugins
        raise ImageError(f"could not be decoded ({type(err).__name__}: {err})") from None


def _to_rgb(im: Image.Image, max_side: int) -> Image.Image:
    """Composite any transparency on white (clip art is drawn for white pages) and downscale."""
    if im.mode in _WIDE_GREY_MODES:
        im = _stretch_to_8bit(im)
    if im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info):
        rgba = im.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        im = Image.alpha_composite(background, rgba)
    rgb = im.convert("RGB")
    if max(rgb.size) > max_side:
        rgb.thumbnail((max_side, max_side), Image.Resampling.BICUBIC, reducing_gap=2.0)
    return rgb


#: 16/32-bit greyscale modes: Pillow's convert("RGB") clips them to 0..255, so a 16-bit scan turns white.
_WIDE_GREY_MODES = frozenset({"I", "I;16", "I;16B", "I;16L", "I;16N", "F"})


def _stretch_to_8bit(im: Image.Image) -> Image.Image:
    """Map a wide greyscale image's own value range onto 0..255."""
    values = np.asarray(im, dtype=np.float32)
    low, high = float(values.min()), float(values.max())
    scaled = (values - low) * (255.0 / (high - low)) if high > low else np.zeros_like(values)
    return Image.fromarray(scaled.round().astype(np.uint8), mode="L")
