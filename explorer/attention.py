"""Where a candidate Meta Token "looks" in an image: its last-layer attention over the visual tokens.

MetaEmbed-Mini exposes no attention API and its layers call fused ``scaled_dot_product_attention``
(which returns no weights), so we capture the last layer's input through a documented hook: the
encoder's per-layer method ``_layer(layer, x, mask)`` is wrapped on this one instance for the duration
of one ``embed`` call, and the softmax(QK^T/sqrt(d)) weights are recomputed from the same projections
and mask. The encoder's own outputs are unchanged. A backend that offers a public
``candidate_attention(item) -> (R_c, g, g)`` is used instead.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

from explorer.errors import ExplorerError
from metaembed.models import Item, MetaEmbedEncoder
from metaembed.models.mini import letterbox


@dataclass(frozen=True)
class AttentionMaps:
    """``maps[j]`` = candidate Meta Token j's attention over the ``grid x grid`` visual tokens (rows sum <= 1)."""

    maps: torch.Tensor  # (R_c, grid, grid)
    canvas: Image.Image  # the image as the encoder saw it (letterboxed square)


def supports_attention(encoder: MetaEmbedEncoder) -> bool:
    return hasattr(encoder, "candidate_attention") or all(
        hasattr(encoder, name) for name in ("_layer", "lm", "image_features", "image_size", "num_heads"))


@torch.inference_mode()
def candidate_attention(encoder: MetaEmbedEncoder, image: Image.Image, text: str | None = None,
                        instruction: str | None = None) -> AttentionMaps:
    """Attention of each candidate Meta Token over the visual tokens of one image candidate, encoded as the
    gallery encoded it (same text layer / caption and candidate instruction)."""
    item = Item(text=text, image=image, instruction=instruction)
    if hasattr(encoder, "candidate_attention"):
        maps = encoder.candidate_attention(item)
        return AttentionMaps(maps=maps.float().cpu(), canvas=letterbox(image, int(getattr(encoder, "image_size",
                                                                                               max(image.size)))))
    if not supports_attention(encoder):
        raise ExplorerError(f"the {encoder.backend} backend does not expose attention; the overlay is unavailable")
    n_vis = int(encoder.image_features([image]).shape[1])
    grid = math.isqrt(n_vis)
    captured: dict[str, torch.Tensor] = {}
    last = encoder.lm.encoder.layer[-1]
    original = encoder._layer

    def hooked(layer: torch.nn.Module, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        if layer is last:
            sa = layer.attention.self
            n, length, _ = x.shape
            q, k = (p(x).view(n, length, encoder.num_heads, -1).transpose(1, 2) for p in (sa.query, sa.key))
            logits = (q @ k.transpose(-1, -2)) / math.sqrt(q.shape[-1])
            captured["probs"] = logits.masked_fill(~mask, float("-inf")).softmax(-1).mean(1)[0]  # (L, L)
        return original(layer, x, mask)

    encoder._layer = hooked  # instance attribute shadows the method for this call only
    try:
        encoder.embed([item], "candidate")
    finally:
        del encoder._layer
    probs = captured["probs"]
    r_c = encoder.num_candidate_tokens
    # A single item has no padding: [CLS] visual tokens text [SEP] | Meta Tokens.
    maps = probs[-r_c:, 1:1 + n_vis].reshape(r_c, grid, grid).float().cpu()
    return AttentionMaps(maps=maps, canvas=letterbox(image, int(encoder.image_size)))


def overlay(attn: AttentionMaps, tokens: list[int], alpha: float = 0.55) -> Image.Image:
    """The letterboxed image with the summed attention of ``tokens`` as a red heat layer."""
    if not tokens:
        return attn.canvas
    heat = attn.maps[tokens].sum(0)
    heat = (heat - heat.min()) / (heat.max() - heat.min() + 1e-9)
    size = attn.canvas.size
    small = Image.fromarray((heat.numpy() * 255).astype(np.uint8), mode="L")
    mask = small.resize(size, Image.Resampling.BICUBIC)
    red = Image.new("RGB", size, (230, 20, 20))
    return Image.composite(red, attn.canvas, Image.fromarray((np.asarray(mask) * alpha).astype(np.uint8), mode="L"))
