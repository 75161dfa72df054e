"""Small deterministic encoders for tests (no weights, no training): reusable by every test module.

``ToyEncoder`` hashes character trigrams of the text and coarse pixel statistics of the image into a
feature vector, then projects it with a fixed seeded random matrix per Meta-Token slot. Same input ->
same vectors in every process; similar texts -> similar vectors, so retrieval metrics are non-trivial.
``ConstantEncoder`` gives every input the same vectors (every score ties), to check tie handling.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from pathlib import Path

import torch

from metaembed.models import Item, MetaEmbedEncoder

FEATURES = 96


def _text_features(text: str) -> torch.Tensor:
    feats = torch.zeros(FEATURES)
    padded = f"  {text.lower()}  "
    for i in range(len(padded) - 2):
        digest = hashlib.blake2b(padded[i:i + 3].encode(), digest_size=4).digest()
        feats[int.from_bytes(digest, "little") % FEATURES] += 1.0
    return feats


def _image_features(image) -> torch.Tensor:
    small = image.convert("RGB").resize((4, 4))
    pixels = torch.tensor(list(small.getdata()), dtype=torch.float32).flatten() / 255.0  # 48 values
    return torch.cat([pixels, pixels - pixels.mean()])  # 96 values


class ToyEncoder(MetaEmbedEncoder):
    """Deterministic hashing encoder with the paper's token counts by default (R_q=16, R_c=64)."""

    backend = "toy"

    def __init__(self, num_query_tokens: int = 16, num_candidate_tokens: int = 64, dim: int = 32, seed: int = 0):
        super().__init__()
        self.num_query_tokens, self.num_candidate_tokens, self.dim = num_query_tokens, num_candidate_tokens, dim
        self.config = {"name": "toy-hash", "backend": self.backend, "num_query_tokens": num_query_tokens,
                       "num_candidate_tokens": num_candidate_tokens, "dim": dim, "seed": seed}
        generator = torch.Generator().manual_seed(seed)
        slots = max(num_query_tokens, num_candidate_tokens)
        self.projections = torch.randn(slots, dim, FEATURES, generator=generator)

    def _features(self, item: Item) -> torch.Tensor:
        feats = torch.zeros(FEATURES)
        if item.text:
            feats += _text_features(item.text)
        if item.image is not None:
            feats += _image_features(item.image)
        return feats + 1e-3

    def embed(self, items: Sequence[Item], side: str) -> torch.Tensor:
        count = self.num_query_tokens if side == "query" else self.num_candidate_tokens
        feats = torch.stack([self._features(item) for item in items])  # (n, F)
        vectors = torch.einsum("tdf,nf->ntd", self.projections[:count], feats)
        return torch.nn.functional.normalize(vectors, dim=-1)

    def encode_queries(self, items: Sequence[Item], batch_size: int = 16) -> torch.Tensor:
        return self.embed(items, "query").float()

    def encode_candidates(self, items: Sequence[Item], batch_size: int = 16) -> torch.Tensor:
        return self.embed(items, "candidate").float()

    def save_pretrained(self, directory: str | Path) -> None:
        Path(directory).mkdir(parents=True, exist_ok=True)
        (Path(directory) / "config.json").write_text(json.dumps(self.config))

    @classmethod
    def from_pretrained(cls, path: str | Path, device=None) -> ToyEncoder:
        config = json.loads((Path(path) / "config.json").read_text())
        return cls(config["num_query_tokens"], config["num_candidate_tokens"], config["dim"], config["seed"])


class ConstantEncoder(ToyEncoder):
    """Every input gets identical vectors: every candidate ties, so an honest scorer must score 0."""

    def embed(self, items: Sequence[Item], side: str) -> torch.Tensor:
        count = self.num_query_tokens if side == "query" else self.num_candidate_tokens
        return torch.nn.functional.normalize(torch.ones(len(items), count, self.dim), dim=-1)
