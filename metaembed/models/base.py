"""The one encoder interface every MetaEmbed backend implements.

Data flows input -> encoder -> multi-vectors: an encoder turns :class:`Item` objects into
L2-normalised Meta-Token embeddings, ``(n, R_q, D)`` for queries and ``(n, R_c, D)`` for candidates.
Everything downstream (index, scorer, eval, app) only sees this interface.
"""

from __future__ import annotations

import hashlib
import json
import logging
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from metaembed.models.attention import AttentionUnsupported, TokenAttention

logger = logging.getLogger(__name__)

CONFIG_NAME = "config.json"


class ModelLoadError(RuntimeError):
    """A checkpoint that is missing, incomplete, or does not match its config."""


@dataclass(frozen=True, eq=False)
class Item:
    """One input to encode: text, an image, both (MMEB-style), or a document page.

    A document page is an image plus its text layer (``text``). ``instruction`` is an optional task
    prefix such as ``"Find the image that matches the caption."``. ``key`` is an optional stable
    identity of the image (file path, page number) that backends may use to cache frozen features.
    """

    text: str | None = None
    image: Image.Image | None = None
    instruction: str | None = None
    key: str | None = None

    def __post_init__(self) -> None:
        if self.image is None and not (self.text and self.text.strip()):
            raise ValueError("an item needs an image or a non-empty text")


def pick_device(device: str | torch.device | None = None) -> torch.device:
    """CUDA when present unless told otherwise: encoding dominates latency, so use the GPU."""
    if device is not None:
        return torch.device(device)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


class MetaEmbedEncoder(torch.nn.Module, ABC):
    """Base class: a backbone plus Meta Tokens; subclasses define the forward pass.

    Subclasses set ``backend`` (the registry key written into ``config.json``), implement
    :meth:`encode_queries`, :meth:`encode_candidates`, :meth:`save_pretrained` and
    :meth:`from_pretrained`, and expose ``num_query_tokens`` (R_q), ``num_candidate_tokens`` (R_c)
    and ``dim`` (D).
    """

    backend: str = ""
    num_query_tokens: int
    num_candidate_tokens: int
    dim: int

    @abstractmethod
    def embed(self, items: Sequence[Item], side: str) -> torch.Tensor:
        """Differentiable forward for training: ``side`` is "query" -> (n, R_q, D) or "candidate" -> (n, R_c, D).

        Runs on the model's device with gradients; the trainer calls this, never ``encode_*``.
        """

    @abstractmethod
    def encode_queries(self, items: Sequence[Item], batch_size: int = 16) -> torch.Tensor:
        """Return ``(n, R_q, D)`` float32 L2-normalised query Meta-Token embeddings (on CPU)."""

    @abstractmethod
    def encode_candidates(self, items: Sequence[Item], batch_size: int = 16) -> torch.Tensor:
        """Return ``(n, R_c, D)`` float32 L2-normalised candidate Meta-Token embeddings (on CPU)."""

    @abstractmethod
    def save_pretrained(self, directory: str | Path) -> None:
        """Write the trained parts (safetensors) and ``config.json`` naming the base weights."""

    @classmethod
    @abstractmethod
    def from_pretrained(cls, path: str | Path, device: str | torch.device | None = None) -> MetaEmbedEncoder:
        """Load a directory written by :meth:`save_pretrained`; never unpickles anything."""

    def candidate_attention(self, item: Item) -> TokenAttention:
        """Where each candidate Meta Token attends when ``item`` is encoded as a candidate (explorer overlays).

        Backends that can read their attention weights override this; the default says plainly that
        this one cannot.
        """
        raise AttentionUnsupported(f"the {self.backend} backend exposes no attention weights")

    @property
    def device(self) -> torch.device:
        """Where the weights live (backends override with their own anchor parameter)."""
        return next(self.parameters(), torch.empty(0)).device

    @property
    def precision(self) -> str:
        """The dtype encodes compute in here ("float32", "bfloat16"): shown by the explorer and recorded by
        the benchmarks, since it sets the speed (and moves vectors within rounding)."""
        return "float32"

    @property
    def name(self) -> str:
        """Human-readable model name (shown in the UI and stored in indexes)."""
        return str(getattr(self, "config", {}).get("name", self.backend))

    def fingerprint(self) -> str:
        """A hash of the trainable weights: an index records it so a mismatched model is refused."""
        digest = hashlib.sha256()
        digest.update(json.dumps(getattr(self, "config", {}), sort_keys=True, default=str).encode())
        for key, tensor in sorted(self.trainable_state_dict().items()):
            digest.update(key.encode())
            digest.update(tensor.detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
        return digest.hexdigest()[:16]

    def trainable_state_dict(self) -> dict[str, torch.Tensor]:
        """The parameters this project trains (what a checkpoint stores); frozen base weights excluded."""
        return {k: v for k, v in self.named_parameters() if v.requires_grad}


def read_config(directory: str | Path) -> dict[str, Any]:
    """Read ``config.json`` from a checkpoint directory with a clear error when it is missing or bad."""
    path = Path(directory) / CONFIG_NAME
    if not path.is_file():
        raise ModelLoadError(f"{path} not found: not a MetaEmbed checkpoint directory")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ModelLoadError(f"{path} is not valid JSON: {err}") from err
