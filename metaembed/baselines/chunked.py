"""Chunked MiniLM: a training-free multi-vector baseline for text-bearing candidates (pages).

all-MiniLM-L6-v2 reads a page's whole text layer (up to 510 word pieces), its last-layer token states
([CLS] / [SEP] dropped) are averaged over ``r`` contiguous chunks of equal length, and the query is one
mean-pooled vector (MiniLM's own pooling); scoring is MaxSim, i.e. the best chunk's cosine. It shows what
local (chunk-level) matching buys on these pages with no training at all, so a trained MetaEmbed model
has a floor at every candidate budget. Chunks of different ``r`` are not nested, so each ``r`` is its own
encoder with ``R_c = r`` evaluated at budget (1, r).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import torch

from metaembed.models import Item, MetaEmbedEncoder

from .towers import TEXT_DIM, minilm

#: The candidate budgets the baseline is reported at (the r_c of the five trained groups).
CHUNK_COUNTS = (1, 4, 8, 16, 64)


def chunk_means(states: torch.Tensor, r: int) -> torch.Tensor:
    """``(r, D)`` means of ``r`` contiguous, equal-length chunks of ``states`` ``(T, D)``.

    With fewer than ``r`` tokens a chunk takes the token its span starts in, so every chunk is a real
    mean (never a padded zero, which could beat a real negative similarity).
    """
    length = states.shape[0]
    bounds = [k * length // r for k in range(r + 1)]
    return torch.stack([states[lo:max(hi, lo + 1)].mean(0) for lo, hi in zip(bounds, bounds[1:])])


class ChunkedMiniLMEncoder(MetaEmbedEncoder):
    """``R_q = 1`` (mean-pooled query), ``R_c = r`` chunk means of the candidate's text."""

    backend = "chunked-minilm-baseline"
    num_query_tokens = 1
    dim = TEXT_DIM

    def __init__(self, chunks: int) -> None:
        super().__init__()
        if chunks < 1:
            raise ValueError(f"chunks must be >= 1, got {chunks}")
        self.num_candidate_tokens = int(chunks)
        self.config = {"name": f"chunked all-MiniLM-L6-v2 (r={chunks})", "backend": self.backend, "chunks": chunks}

    @staticmethod
    def _texts(items: Sequence[Item], side: str) -> list[str]:
        texts = [item.text for item in items]
        if not all(t and t.strip() for t in texts):
            raise ValueError(f"the chunked MiniLM baseline needs text on every {side}: it applies to text sets only")
        return texts  # off the shelf: MiniLM was never trained with task instructions

    def embed(self, items: Sequence[Item], side: str) -> torch.Tensor:
        if side == "query":
            return minilm().embed(self._texts(items, side)).unsqueeze(1)
        vectors = [chunk_means(states[1:-1] if states.shape[0] > 2 else states, self.num_candidate_tokens)
                   for states in minilm().token_states(self._texts(items, side))]
        return torch.nn.functional.normalize(torch.stack(vectors), dim=-1)

    @torch.no_grad()
    def encode_queries(self, items: Sequence[Item], batch_size: int = 16) -> torch.Tensor:
        return self.embed(items, "query")

    @torch.no_grad()
    def encode_candidates(self, items: Sequence[Item], batch_size: int = 16) -> torch.Tensor:
        return self.embed(items, "candidate")

    def save_pretrained(self, directory: str | Path) -> None:
        """Nothing is trained: only the config is written."""
        Path(directory).mkdir(parents=True, exist_ok=True)
        (Path(directory) / "config.json").write_text(json.dumps(self.config))

    @classmethod
    def from_pretrained(cls, path: str | Path, device: str | torch.device | None = None) -> ChunkedMiniLMEncoder:
        return cls(int(json.loads((Path(path) / "config.json").read_text())["chunks"]))
