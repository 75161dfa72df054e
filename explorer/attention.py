"""Where candidate Meta Tokens "look" in an image: their attention over the visual grid, as a heat layer.

The weights come from the encoder's public :meth:`~metaembed.models.MetaEmbedEncoder.candidate_attention`
(a :class:`~metaembed.models.TokenAttention`); a backend without it raises
:class:`~metaembed.models.AttentionUnsupported`, which the service shows as a note.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

from metaembed.models import TokenAttention


def overlay(attention: TokenAttention, tokens: list[int], alpha: float = 0.55) -> Image.Image:
    """The image as the encoder saw it, with the summed visual attention of Meta Tokens ``tokens`` in red."""
    if attention.visual is None or attention.canvas is None:
        raise ValueError("a text-only item has no image to overlay")
    if not tokens:
        return attention.canvas
    heat = attention.visual[tokens].sum(0)
    heat = (heat - heat.min()) / (heat.max() - heat.min() + 1e-9)
    size = attention.canvas.size
    small = Image.fromarray((heat.numpy() * 255).astype(np.uint8), mode="L")
    mask = small.resize(size, Image.Resampling.BICUBIC)
    red = Image.new("RGB", size, (230, 20, 20))
    return Image.composite(red, attention.canvas,
                           Image.fromarray((np.asarray(mask) * alpha).astype(np.uint8), mode="L"))
