"""A ToyEncoder that takes time per item, so a test can kill a build half-way (loaded via the registry)."""

from __future__ import annotations

import time

import torch
from toy_encoder import ToyEncoder

SECONDS_PER_ITEM = 0.2  # a 40-item build takes >= 8 s: room to interrupt it even on a loaded machine


class SlowToyEncoder(ToyEncoder):
    def encode_candidates(self, items, batch_size: int = 16) -> torch.Tensor:
        time.sleep(SECONDS_PER_ITEM * len(items))
        return super().encode_candidates(items, batch_size)
