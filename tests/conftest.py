"""Shared test setup: offline hub access, quiet threads, and small random-vector helpers."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import pytest  # noqa: E402
import torch  # noqa: E402


def unit(*shape: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """Random L2-normalised vectors along the last axis."""
    return torch.nn.functional.normalize(torch.randn(*shape, generator=generator), dim=-1)


@pytest.fixture(scope="session")
def device() -> str:
    """Where the Qwen backend and trainer tests run: CPU in CI; ``METAEMBED_TEST_DEVICE=cuda`` runs the
    same tests on a GPU (bf16 autocast paths), which CI machines do not have."""
    return os.environ.get("METAEMBED_TEST_DEVICE", "cpu")


@pytest.fixture
def rng() -> torch.Generator:
    return torch.Generator().manual_seed(1234)
