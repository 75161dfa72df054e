"""The regions MetaEmbed-Mini's vectors are anchored to: nested, coarse-to-fine, one per Meta Token.

A multi-vector embedding only buys quality with its budget if its vectors differ, and vectors that
differ have to look at different parts of the input. Each Meta Token ``j`` therefore gets a fixed region
of the item: a span of its text (a page's text layer, a caption) or a rectangle of its image. The
readout adds the mean input state over that region to the Meta Token's own state (see ``mini.py``), so
vector ``j`` starts as "what region j says" and training adds what the Meta Token learns on top.

Regions are ordered coarse-to-fine so that every budget prefix covers the whole input at a finer
granularity than the prefix before it:

* text, levels ``(1, 3, 4, 8, 48)``: the whole text, thirds, quarters, eighths, 48ths; the level sizes
  add up to 1, 4, 8, 16, 64, the trained candidate budgets, so each budget adds one complete level;
* images: the whole image, then 2x2, 3x3, 4x4 and 5x5 grids, then five half-size windows between
  the quadrants and four 2/3-size corner windows (64 regions in all), so that objects of many sizes
  and positions have a region of their own.

Weights are overlap measures between a region and the input units (token ``t`` of ``T`` covers
``[t/T, (t+1)/T)``; visual cell ``(r, c)`` of a ``g x g`` grid covers its square), normalised to sum to
one per region, so a region is never empty, even on a three-token caption.
"""

from __future__ import annotations

from functools import lru_cache

import torch

TEXT_LEVELS = (1, 3, 4, 8, 48)
IMAGE_GRIDS = (1, 2, 3, 4, 5)
Interval = tuple[float, float]
Rect = tuple[float, float, float, float]  # (top, left, bottom, right) in [0, 1]


@lru_cache(maxsize=8)
def text_regions(count: int, levels: tuple[int, ...] = TEXT_LEVELS) -> tuple[Interval, ...]:
    """The first ``count`` text regions: each level splits [0, 1) into equal parts; finest level repeats."""
    regions: list[Interval] = []
    level_sizes = list(levels)
    while len(regions) < count:
        n = level_sizes.pop(0) if level_sizes else levels[-1]
        regions.extend((k / n, (k + 1) / n) for k in range(n))
    return tuple(regions[:count])


def _extra_windows() -> list[Rect]:
    """Half-size windows that straddle the quadrant borders, then 2/3-size corner windows."""
    half = [(0.0, 0.25), (0.25, 0.0), (0.25, 0.25), (0.25, 0.5), (0.5, 0.25)]
    third = [(0.0, 0.0), (0.0, 1 / 3), (1 / 3, 0.0), (1 / 3, 1 / 3)]
    return [(t, s, t + 0.5, s + 0.5) for t, s in half] + [(t, s, t + 2 / 3, s + 2 / 3) for t, s in third]


@lru_cache(maxsize=8)
def image_regions(count: int, grids: tuple[int, ...] = IMAGE_GRIDS) -> tuple[Rect, ...]:
    """The first ``count`` image rectangles (see the module docstring); beyond 64 the 5x5 grid repeats."""
    regions: list[Rect] = [(r / g, c / g, (r + 1) / g, (c + 1) / g) for g in grids for r in range(g) for c in range(g)]
    regions += _extra_windows()
    while len(regions) < count:
        g = grids[-1]
        regions += [(r / g, c / g, (r + 1) / g, (c + 1) / g) for r in range(g) for c in range(g)]
    return tuple(regions[:count])


def _overlap(lo: torch.Tensor, hi: torch.Tensor, unit_lo: torch.Tensor, unit_hi: torch.Tensor) -> torch.Tensor:
    """(R, U) overlap lengths of R intervals with U unit intervals."""
    return (torch.minimum(hi[:, None], unit_hi[None]) - torch.maximum(lo[:, None], unit_lo[None])).clamp(min=0)


def text_weights(count: int, length: int) -> torch.Tensor:
    """``(count, length)`` pooling weights of the text regions over ``length`` tokens (rows sum to 1)."""
    spans = torch.tensor(text_regions(count), dtype=torch.float64)
    edges = torch.arange(length + 1, dtype=torch.float64) / max(length, 1)
    weights = _overlap(spans[:, 0], spans[:, 1], edges[:-1], edges[1:])
    return (weights / weights.sum(1, keepdim=True)).float()


def image_weights(count: int, grid: int) -> torch.Tensor:
    """``(count, grid * grid)`` pooling weights of the image regions over a row-major ``grid x grid`` map."""
    rects = torch.tensor(image_regions(count), dtype=torch.float64)
    edges = torch.arange(grid + 1, dtype=torch.float64) / grid
    rows = _overlap(rects[:, 0], rects[:, 2], edges[:-1], edges[1:])  # (R, g)
    cols = _overlap(rects[:, 1], rects[:, 3], edges[:-1], edges[1:])
    weights = (rows[:, :, None] * cols[:, None, :]).reshape(len(rects), grid * grid)
    return (weights / weights.sum(1, keepdim=True)).float()
