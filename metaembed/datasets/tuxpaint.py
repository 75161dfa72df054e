"""Tux Paint stamps (Debian ``tuxpaint-stamps-default``): captioned cut-out photos, fixed train/test split.

Split rule (README, data section; ``tests/test_datasets_splits.py`` recomputes it): every ``*.png``
under the stamps folder with a sibling ``.txt`` and no ``/alphabets/`` in its path; relative paths
sorted; 0-based index even -> train, odd -> test. Caption = first line of the ``.txt``, stripped.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from metaembed.datasets._assets import on_white, require

ROOT = Path("/usr/share/tuxpaint/stamps")
APT_PACKAGE = "tuxpaint-stamps-default"
SPLITS = ("train", "test")


@dataclass(frozen=True)
class Stamp:
    """One captioned stamp; ``rel`` is the POSIX path relative to the stamps folder."""

    rel: str
    caption: str

    @property
    def key(self) -> str:
        """Stable identity used as an image cache key and a document id."""
        return f"tux:{self.rel}"

    @property
    def category(self) -> str:
        """Top-level folder (animals, food, ...), used to pick hard negatives."""
        return self.rel.split("/", 1)[0]


def all_stamps(root: Path | None = None) -> list[Stamp]:
    """Every eligible stamp in sorted relative-path order (the order the split rule indexes)."""
    root = require(root or ROOT, APT_PACKAGE)
    stamps = []
    for png in root.rglob("*.png"):
        rel = png.relative_to(root).as_posix()
        txt = png.with_suffix(".txt")
        if "/alphabets/" in f"/{rel}" or not txt.is_file():
            continue
        lines = txt.read_text(encoding="utf-8", errors="replace").splitlines()
        stamps.append(Stamp(rel, lines[0].strip() if lines else ""))
    return sorted(stamps, key=lambda s: s.rel)


def load_split(split: str, root: Path | None = None) -> list[Stamp]:
    """The fixed ``train`` (even positions) or ``test`` (odd positions) split."""
    if split not in SPLITS:
        raise ValueError(f"unknown Tux Paint split {split!r}; expected one of {SPLITS}")
    offset = SPLITS.index(split)
    return all_stamps(root)[offset::2]


def load_image(stamp: Stamp, root: Path | None = None, max_side: int | None = None) -> Image.Image:
    """The stamp as RGB composited on white, optionally downscaled so its longer side is <= ``max_side``."""
    with Image.open(require(root or ROOT, APT_PACKAGE) / stamp.rel) as raw:
        image = on_white(raw)
    if max_side is not None and max(image.size) > max_side:
        image.thumbnail((max_side, max_side), Image.Resampling.BICUBIC)
    return image
