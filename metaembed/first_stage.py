"""Optional first stage: approximate search on candidate token 0 with FAISS, then exact MaxSim.

MMR trains the first candidate vector as a single-vector embedding (budget (1,1)), so a standard
inner-product ANN index over it shortlists k' candidates cheaply; the exact scorer then re-ranks only
those at the chosen budget.
"""

from __future__ import annotations

import faiss
import numpy as np
import torch

#: Above this many candidates an HNSW graph replaces the exact flat index.
HNSW_THRESHOLD = 50_000
HNSW_NEIGHBOURS = 32


class TokenZeroIndex:
    """FAISS inner-product index over each candidate's first Meta-Token vector."""

    def __init__(self, token_zero: torch.Tensor, hnsw_threshold: int = HNSW_THRESHOLD) -> None:
        vectors = np.ascontiguousarray(token_zero.to(torch.float32).numpy())
        n, dim = vectors.shape
        if n >= hnsw_threshold:
            self.index = faiss.IndexHNSWFlat(dim, HNSW_NEIGHBOURS, faiss.METRIC_INNER_PRODUCT)
            self.index.hnsw.efSearch = 128
        else:
            self.index = faiss.IndexFlatIP(dim)
        self.index.add(vectors)
        self.kind = "hnsw" if n >= hnsw_threshold else "flat"

    def shortlist(self, query_token_zero: torch.Tensor, k: int) -> np.ndarray:
        """Positions of the ``k`` best candidates for each query row ``(B, D)``; -1 pads short lists."""
        query = np.ascontiguousarray(query_token_zero.to(torch.float32).numpy())
        _, positions = self.index.search(query, k)
        return positions

    @property
    def bytes_per_query(self) -> int:
        """Bytes a flat search reads (the HNSW figure depends on the graph walk; we report flat's)."""
        return self.index.ntotal * self.index.d * 4
