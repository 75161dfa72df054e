"""The attention API's types: where a candidate's Meta Tokens attend, or that a backend cannot say.

:meth:`metaembed.models.MetaEmbedEncoder.candidate_attention` returns a :class:`TokenAttention`; the
explorer's overlay (and, later, its page-text highlight) reads nothing else of an encoder's internals.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from PIL import Image


class AttentionUnsupported(NotImplementedError):
    """The backend cannot say where its Meta Tokens attend; callers show a note instead of an overlay."""


@dataclass(frozen=True, eq=False)
class TokenAttention:
    """Where each candidate Meta Token attends in one item: last layer, heads averaged.

    ``visual[j]`` is Meta Token j's attention over the ``(rows, cols)`` grid of visual tokens laid over
    ``canvas``, the image exactly as the encoder saw it (None for a text-only item). ``text[j, t]`` is its
    attention on the item's own text token t: ``tokens[t]`` is the token as the tokenizer wrote it and
    ``item.text[spans[t][0]:spans[t][1]]`` the characters it came from, so a caller can highlight page
    words. Attention also goes to what is not listed (special tokens, the instruction, other Meta
    Tokens), so ``visual[j].sum() + text[j].sum() <= 1``.

    A backend whose vectors start from a region of the item (MetaEmbed-Mini v2) also gives ``readout[j]``,
    the weight of each unit in vector j's region: over the flattened visual grid when ``readout_units`` is
    ``"visual"``, over the text tokens when it is ``"text"`` (rows sum to 1); None otherwise.
    """

    visual: torch.Tensor | None  # (R_c, rows, cols)
    text: torch.Tensor  # (R_c, T)
    tokens: list[str]
    spans: list[tuple[int, int]]
    canvas: Image.Image | None
    readout: torch.Tensor | None = None  # (R_c, rows * cols) or (R_c, T)
    readout_units: str | None = None
