"""Where candidate Meta Tokens "look" in an image: their attention over the visual grid, as a heat layer.

The weights come from the encoder's public :meth:`~metaembed.models.MetaEmbedEncoder.candidate_attention`
(a :class:`~metaembed.models.TokenAttention`); a backend without it raises
:class:`~metaembed.models.AttentionUnsupported`, which the service shows as a note.
"""

from __future__ import annotations

import html

import numpy as np
from PIL import Image, ImageDraw

from metaembed.models import TokenAttention

#: The overlay's width on screen: the encoder's canvas is small (a few hundred px at most).
OVERLAY_WIDTH = 448
HEAT = (230, 20, 20)
LEGEND_HEIGHT = 34
#: Page words highlighted: the text tokens with the most attention of the matched Meta Tokens.
TOP_WORDS = 12


def overlay(attention: TokenAttention, tokens: list[int], alpha: float = 0.7) -> Image.Image:
    """The image as the encoder saw it, enlarged, with the summed visual attention of Meta Tokens ``tokens`` in
    red over it (each grid cell a block, so the grid the model sees stays visible) and a colour legend below."""
    if attention.visual is None or attention.canvas is None:
        raise ValueError("a text-only item has no image to overlay")
    canvas = attention.canvas.convert("RGB")
    size = (OVERLAY_WIDTH, round(OVERLAY_WIDTH * canvas.height / canvas.width))
    canvas = canvas.resize(size, Image.Resampling.BICUBIC)
    if tokens:
        heat = attention.visual[tokens].sum(0)
        heat = (heat - heat.min()) / (heat.max() - heat.min() + 1e-9)
        small = Image.fromarray((heat.numpy() * 255 * alpha).astype(np.uint8), mode="L")
        canvas = Image.composite(Image.new("RGB", size, HEAT), canvas, small.resize(size, Image.Resampling.NEAREST))
    picture = Image.new("RGB", (size[0], size[1] + LEGEND_HEIGHT), "white")
    picture.paste(canvas, (0, 0))
    pen = ImageDraw.Draw(picture)
    left, right, top = 120, size[0] - 120, size[1] + 8
    for x in range(left, right):  # the same blend as the heat layer, from none to the most attention
        share = alpha * (x - left) / (right - left)
        pen.line([(x, top), (x, top + 14)], fill=tuple(round(255 * (1 - share) + c * share) for c in HEAT))
    pen.rectangle([left, top, right, top + 14], outline=(120, 120, 120))
    pen.text((8, top + 1), "least attention", fill=(40, 40, 40))
    pen.text((right + 8, top + 1), "most attention", fill=(40, 40, 40))
    return picture


def text_highlight(attention: TokenAttention, text: str, tokens: list[int], top: int = TOP_WORDS) -> str:
    """The page text as HTML with the words Meta Tokens ``tokens`` attend to most marked (darker = more), so a
    page match can be read where the page image is unreadable; empty when the item has no text tokens."""
    if not tokens or attention.text.numel() == 0 or not attention.spans:
        return ""
    weights = attention.text[tokens].sum(0)
    best = sorted(range(len(weights)), key=lambda t: -float(weights[t]))[:top]
    peak = float(weights[best[0]]) or 1.0
    marks = {t: float(weights[t]) / peak for t in best}
    end = max(stop for _, stop in attention.spans)
    parts, cursor = [], 0
    for t, (start, stop) in enumerate(attention.spans):
        if t not in marks or start < cursor:
            continue
        parts.append(html.escape(text[cursor:start]))
        parts.append(f'<mark style="background: rgba(230, 20, 20, {0.15 + 0.6 * marks[t]:.2f})">'
                     f"{html.escape(text[start:stop])}</mark>")
        cursor = stop
    parts.append(html.escape(text[cursor:end]))
    more = " …" if end < len(text) else ""
    return f'<div class="page-text">{"".join(parts)}{more}</div>'
