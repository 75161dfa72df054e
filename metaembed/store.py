"""On-disk index format: vectors in safetensors, everything else in a JSON manifest, written atomically.

Layout of an index directory::

    index.json                     manifest: format version, shapes, dtype, model, ids, metadata,
                                   name and SHA-256 of the vectors file
    vectors-<sha12>.safetensors    token-major (R_c, N, D) tensor under the key "vectors"

Why content-addressed vector files: the manifest is the single commit point. A writer first puts the
new vectors file in place under its own name, then atomically replaces ``index.json``; a crash at any
moment leaves either the old or the new manifest, each pointing at a complete file. Stale vector
files are removed only after the new manifest is in place.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors

from metaembed.io import atomic_write, atomic_write_json

logger = logging.getLogger(__name__)

FORMAT_NAME = "metaembed-index"
FORMAT_VERSION = 1
MANIFEST = "index.json"
_TENSOR_KEY = "vectors"


class IndexLoadError(RuntimeError):
    """An index directory that is missing, truncated, corrupt, or from another format version."""


def write_index(directory: str | Path, vectors: torch.Tensor, manifest: dict[str, Any]) -> None:
    """Persist token-major ``vectors`` and ``manifest`` (ids, metadata, shapes...) under ``directory``."""
    directory = Path(directory)
    data = save_safetensors({_TENSOR_KEY: vectors.contiguous()})
    digest = hashlib.sha256(data).hexdigest()
    vectors_file = f"vectors-{digest[:12]}.safetensors"
    if not (directory / vectors_file).is_file():
        atomic_write(directory / vectors_file, data)
    full = {**manifest, "format": FORMAT_NAME, "format_version": FORMAT_VERSION,
            "vectors_file": vectors_file, "vectors_sha256": digest}
    atomic_write_json(directory / MANIFEST, full, indent=1, sort_keys=True)
    for stale in directory.glob("vectors-*.safetensors"):
        if stale.name != vectors_file:
            stale.unlink(missing_ok=True)


def read_manifest(directory: str | Path) -> dict[str, Any]:
    """Read and check ``index.json`` (format and version) with an error that names the file."""
    path = Path(directory) / MANIFEST
    if not path.is_file():
        raise IndexLoadError(f"{path} not found: {directory} is not a MetaEmbed index directory")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise IndexLoadError(f"{path} is corrupt (not valid JSON): {err}") from err
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT_NAME:
        raise IndexLoadError(f"{path} is not a {FORMAT_NAME} manifest")
    if manifest.get("format_version") != FORMAT_VERSION:
        raise IndexLoadError(
            f"{path} has format version {manifest.get('format_version')!r}; this code reads version {FORMAT_VERSION}"
        )
    return manifest


def _read_consistent(directory: Path, attempts: int = 3) -> tuple[dict[str, Any], bytes]:
    """Manifest plus the bytes of the vectors file it names.

    A writer may commit a new manifest and delete the old vectors file between our two reads; then the
    manifest has changed and we read again. A file that stays missing is a broken index.
    """
    for _ in range(attempts):
        manifest = read_manifest(directory)
        path = directory / str(manifest.get("vectors_file", ""))
        try:
            return manifest, path.read_bytes()
        except (FileNotFoundError, IsADirectoryError):
            if read_manifest(directory) == manifest:
                break
    raise IndexLoadError(f"{path} is missing: the index in {directory} is incomplete")


def read_index(directory: str | Path, verify: bool = True) -> tuple[torch.Tensor, dict[str, Any]]:
    """Load ``(vectors, manifest)``; with ``verify`` the vectors file's SHA-256 must match the manifest."""
    directory = Path(directory)
    manifest, data = _read_consistent(directory)
    path = directory / str(manifest.get("vectors_file", ""))
    if verify and hashlib.sha256(data).hexdigest() != manifest.get("vectors_sha256"):
        raise IndexLoadError(f"{path} does not match its checksum in {MANIFEST}: truncated or corrupt")
    try:
        tensors = load_safetensors(data)
    except (SafetensorError, ValueError, RuntimeError) as err:
        raise IndexLoadError(f"{path} is not a readable safetensors file: {err}") from err
    if _TENSOR_KEY not in tensors:
        raise IndexLoadError(f"{path} has no {_TENSOR_KEY!r} tensor")
    return tensors[_TENSOR_KEY], manifest
