"""Composite canvases: several pictures tiled on white, so a query can name one object among others.

Used by the ``tux-scenes`` / ``oca-dev-scenes`` eval sets and the ``scenes_t2i`` training source. Two jobs:

* ``compose``: a ``rows x cols`` grid of square cells; each picture is letterboxed (aspect kept, scaled
  up or down) into its cell inside a white margin of ``cell // MARGIN_DIVISOR`` px, so neighbours never
  touch; ``None`` leaves a cell blank. Pure PIL with fixed settings: the same inputs give the same pixels.
* ``arrange``: which pictures go on which canvas. Seeded permutations of all pictures (order =
  ``stable_hash(salt:round:key)``) are concatenated and cut into canvases of the requested sizes, so
  every picture is used equally often (within one). A slot whose text already stands on its canvas (a
  "clash": the query naming it would be ambiguous) is swapped with the nearest slot, later ones first,
  whose picture fits on this canvas and whose canvas can take this one; the multiset of uses is kept.
"""

from __future__ import annotations

from collections.abc import Sequence

from PIL import Image

from metaembed.datasets._assets import on_white, stable_hash

WHITE = (255, 255, 255)
#: The white margin inside each cell is its side divided by this (8 px in a 256 px cell).
MARGIN_DIVISOR = 32


def cell_side(rows: int, cols: int, side: int) -> int:
    """Side of one square cell when the canvas's longer side is ``side``."""
    if rows < 1 or cols < 1:
        raise ValueError(f"a layout needs at least 1 row and 1 column, got {rows}x{cols}")
    cell = side // max(rows, cols)
    if cell < 2 * (cell // MARGIN_DIVISOR) + 1:
        raise ValueError(f"canvas side {side} is too small for a {rows}x{cols} layout")
    return cell


def cell_boxes(rows: int, cols: int, side: int) -> list[tuple[int, int, int, int]]:
    """``(left, top, right, bottom)`` of every cell in reading order (margin included)."""
    cell = cell_side(rows, cols, side)
    return [(c * cell, r * cell, (c + 1) * cell, (r + 1) * cell) for r in range(rows) for c in range(cols)]


def fit(image: Image.Image, side: int) -> Image.Image:
    """``image`` on white (any mode) scaled (aspect kept) so its longer side is ``side``; unchanged if it already is.

    Fitting an already fitted image is the identity, so callers may cache fitted pictures and pass
    them to ``compose`` without changing a pixel of the result.
    """
    image = on_white(image)
    width, height = image.size
    scale = side / max(width, height)
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    if size == image.size:
        return image
    return image.resize(size, Image.Resampling.BICUBIC)


def inner_side(cell: int) -> int:
    """Side of the area a picture is fitted into inside a cell of side ``cell``."""
    return cell - 2 * (cell // MARGIN_DIVISOR)


def compose(images: Sequence[Image.Image | None], rows: int, cols: int, side: int) -> Image.Image:
    """RGB canvas ``cols * cell`` x ``rows * cell`` (longer side ``side``) holding ``images`` in reading order."""
    if len(images) > rows * cols:
        raise ValueError(f"{len(images)} images do not fit a {rows}x{cols} layout")
    cell = cell_side(rows, cols, side)
    margin, inner = cell // MARGIN_DIVISOR, inner_side(cell)
    canvas = Image.new("RGB", (cols * cell, rows * cell), WHITE)
    for image, (left, top, _, _) in zip(images, cell_boxes(rows, cols, side), strict=False):
        if image is None:
            continue
        picture = fit(image, inner)
        width, height = picture.size
        canvas.paste(picture, (left + margin + (inner - width) // 2, top + margin + (inner - height) // 2))
    return canvas


def arrange(keys: Sequence[str], texts: Sequence[str], sizes: Sequence[int], salt: str) -> list[list[int]]:
    """Indices into ``keys`` for each canvas (``sizes[n]`` pictures on canvas n), no text twice on a canvas.

    See the module docstring for the rule. Raises ``ValueError`` when a clash cannot be repaired (a
    canvas larger than the number of distinct texts, or one text on almost every slot).
    """
    if len(keys) != len(texts) or not keys:
        raise ValueError(f"need as many texts as keys, and at least one ({len(keys)} keys, {len(texts)} texts)")
    if any(size < 1 for size in sizes):
        raise ValueError("every canvas needs at least one picture")
    total = sum(sizes)
    slots: list[int] = []
    for round_ in range(-(-total // len(keys))):
        slots.extend(sorted(range(len(keys)), key=lambda i: stable_hash(f"{salt}:{round_}:{keys[i]}")))
    del slots[total:]
    canvas_of, bounds, start = [], [], 0
    for n, size in enumerate(sizes):
        canvas_of.extend([n] * size)
        bounds.append((start, start + size))
        start += size

    def others(position: int) -> set[str]:
        lo, hi = bounds[canvas_of[position]]
        return {texts[slots[p]] for p in range(lo, hi) if p != position}

    for n, (lo, hi) in enumerate(bounds):
        for p in range(lo, hi):
            if texts[slots[p]] not in {texts[slots[q]] for q in range(lo, p)}:
                continue
            for q in [*range(hi, total), *range(lo - 1, -1, -1)]:
                if texts[slots[q]] not in others(p) and texts[slots[p]] not in others(q):
                    slots[p], slots[q] = slots[q], slots[p]
                    break
            else:
                raise ValueError(f"{salt}: cannot place canvas {n} without two pictures of one text")
    return [slots[lo:hi] for lo, hi in bounds]
