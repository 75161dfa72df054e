"""Encoder backends and the loader that picks one from a name or checkpoint directory."""

from __future__ import annotations

import importlib
from pathlib import Path

import torch

from metaembed.bundled import MODEL_DIR
from metaembed.models.attention import AttentionUnsupported, TokenAttention
from metaembed.models.base import CONFIG_NAME, Item, MetaEmbedEncoder, ModelLoadError, pick_device, read_config

#: ``config.json["backend"]`` -> "module:Class", imported lazily so a backend's heavy
#: dependencies load only when that backend is used.
BACKENDS: dict[str, str] = {
    "mini": "metaembed.models.mini:MiniMetaEmbed",
    "qwen2_5_vl": "metaembed.models.qwen:QwenMetaEmbed",
}

#: The bundled default model, trained by this project (see README); found by :mod:`metaembed.bundled`.
DEFAULT_MODEL_DIR = MODEL_DIR
ALIASES = {"mini": DEFAULT_MODEL_DIR, "metaembed-mini": DEFAULT_MODEL_DIR}


def backend_class(backend: str) -> type[MetaEmbedEncoder]:
    """Import the encoder class registered under ``backend``."""
    if backend not in BACKENDS:
        raise ModelLoadError(f"unknown backend {backend!r}; known: {', '.join(sorted(BACKENDS))}")
    module_name, class_name = BACKENDS[backend].split(":")
    return getattr(importlib.import_module(module_name), class_name)


def model_dir(name_or_path: str | Path | None = None) -> Path:
    """The checkpoint directory of a model: ``None``/"mini" is the bundled MetaEmbed-Mini, else the path given."""
    path = ALIASES.get(str(name_or_path).lower(), None) if name_or_path is not None else DEFAULT_MODEL_DIR
    path = Path(path if path is not None else name_or_path)
    if not path.is_dir():
        raise ModelLoadError(f"model {name_or_path!r} is neither a known name ({', '.join(ALIASES)}) nor a directory")
    return path


def load_encoder(name_or_path: str | Path | None = None, device: str | torch.device | None = None) -> MetaEmbedEncoder:
    """Load a MetaEmbed encoder: ``None``/"mini" is the bundled MetaEmbed-Mini, else a checkpoint dir."""
    path = model_dir(name_or_path)
    config = read_config(path)
    return backend_class(config.get("backend", "")).from_pretrained(path, device=device)


def token_counts(name_or_path: str | Path | None = None) -> tuple[int, int]:
    """``(R_q, R_c)`` a checkpoint was saved with, read from its config.json without loading any weights
    (the app sizes its budget sliders before the model has loaded)."""
    path = model_dir(name_or_path)
    config = read_config(path)
    try:
        return int(config["num_query_tokens"]), int(config["num_candidate_tokens"])
    except (KeyError, TypeError, ValueError) as err:
        raise ModelLoadError(f"{path / CONFIG_NAME} does not give the Meta Token counts: {err}") from err


__all__ = ["BACKENDS", "AttentionUnsupported", "Item", "MetaEmbedEncoder", "ModelLoadError", "TokenAttention",
           "backend_class", "load_encoder", "model_dir", "pick_device", "token_counts"]
