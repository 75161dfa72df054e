"""Single-vector baselines dressed as MetaEmbed encoders with R_q = R_c = 1.

Wrapping them in the encoder interface lets the baselines run through the SAME harness, index,
scoring and metrics code as MetaEmbed models, at the (1,1) budget (plain cosine retrieval).
"""

from __future__ import annotations

import json
from abc import abstractmethod
from collections.abc import Sequence
from pathlib import Path

import torch

from metaembed.models import Item, MetaEmbedEncoder

from .towers import TEXT_DIM, minilm


class SingleVectorEncoder(MetaEmbedEncoder):
    """One L2-normalised vector per item on both sides."""

    num_query_tokens = 1
    num_candidate_tokens = 1

    @abstractmethod
    def vectors(self, items: Sequence[Item], side: str) -> torch.Tensor:
        """``(n, D)`` embeddings (normalised by the caller)."""

    def embed(self, items: Sequence[Item], side: str) -> torch.Tensor:
        return torch.nn.functional.normalize(self.vectors(items, side).float(), dim=-1).unsqueeze(1)

    @torch.no_grad()
    def encode_queries(self, items: Sequence[Item], batch_size: int = 16) -> torch.Tensor:
        return self.embed(items, "query")

    @torch.no_grad()
    def encode_candidates(self, items: Sequence[Item], batch_size: int = 16) -> torch.Tensor:
        return self.embed(items, "candidate")


class MiniLMEncoder(SingleVectorEncoder):
    """all-MiniLM-L6-v2 off the shelf on the text of each item (a page's text layer; images ignored).

    Like sentence-transformers, texts are cut at 256 word pieces: a long page is represented by its start.
    """

    backend = "minilm-baseline"
    dim = TEXT_DIM

    def __init__(self) -> None:
        super().__init__()
        self.config = {"name": "all-MiniLM-L6-v2 (single vector)", "backend": self.backend}

    def vectors(self, items: Sequence[Item], side: str) -> torch.Tensor:
        texts = []
        for item in items:
            if not (item.text and item.text.strip()):
                raise ValueError(f"MiniLM baseline needs text on every {side}; got an image-only item "
                                 f"({item.key or 'no key'}): this baseline only applies to text sets")
            texts.append(item.text)  # off the shelf: MiniLM was never trained with task instructions
        return minilm().embed(texts)

    def save_pretrained(self, directory: str | Path) -> None:
        """Nothing is trained: only the config is written."""
        Path(directory).mkdir(parents=True, exist_ok=True)
        (Path(directory) / "config.json").write_text(json.dumps(self.config))

    @classmethod
    def from_pretrained(cls, path: str | Path, device: str | torch.device | None = None) -> MiniLMEncoder:
        return cls()
