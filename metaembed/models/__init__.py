"""Encoder backends and the loader that picks one from a name or checkpoint directory."""

from __future__ import annotations

import importlib
from pathlib import Path

import torch

from metaembed.models.base import (
    AttentionUnsupported,
    Item,
    MetaEmbedEncoder,
    ModelLoadError,
    TokenAttention,
    pick_device,
    read_config,
)

#: ``config.json["backend"]`` -> "module:Class", imported lazily so a backend's heavy
#: dependencies load only when that backend is used.
BACKENDS: dict[str, str] = {
    "mini": "metaembed.models.mini:MiniMetaEmbed",
    "qwen2_5_vl": "metaembed.models.qwen:QwenMetaEmbed",
}

#: The bundled default model, trained by this project (see README).
DEFAULT_MODEL_DIR = Path(__file__).resolve().parents[2] / "assets" / "metaembed-mini"
ALIASES = {"mini": DEFAULT_MODEL_DIR, "metaembed-mini": DEFAULT_MODEL_DIR}


def backend_class(backend: str) -> type[MetaEmbedEncoder]:
    """Import the encoder class registered under ``backend``."""
    if backend not in BACKENDS:
        raise ModelLoadError(f"unknown backend {backend!r}; known: {', '.join(sorted(BACKENDS))}")
    module_name, class_name = BACKENDS[backend].split(":")
    return getattr(importlib.import_module(module_name), class_name)


def load_encoder(name_or_path: str | Path | None = None, device: str | torch.device | None = None) -> MetaEmbedEncoder:
    """Load a MetaEmbed encoder: ``None``/"mini" is the bundled MetaEmbed-Mini, else a checkpoint dir."""
    path = ALIASES.get(str(name_or_path).lower(), None) if name_or_path is not None else DEFAULT_MODEL_DIR
    path = Path(path if path is not None else name_or_path)
    if not path.is_dir():
        raise ModelLoadError(f"model {name_or_path!r} is neither a known name ({', '.join(ALIASES)}) nor a directory")
    config = read_config(path)
    return backend_class(config.get("backend", "")).from_pretrained(path, device=device)


__all__ = ["BACKENDS", "AttentionUnsupported", "Item", "MetaEmbedEncoder", "ModelLoadError", "TokenAttention",
           "backend_class", "load_encoder", "pick_device"]
