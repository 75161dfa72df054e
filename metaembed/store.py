"""On-disk index format: vectors in safetensors, everything else in a JSON manifest, written atomically.

Layout of an index directory::

    index.json                     manifest: format version, shapes, dtype, model, ids, metadata,
                                   name and SHA-256 of the vectors file
    vectors-<sha12>.safetensors    token-major (R_c, N, D) tensor under the key "vectors"

Why content-addressed vector files: the manifest is the single commit point. A writer first puts the
new vectors file in place under its own name, then atomically replaces ``index.json``; a crash at any
moment leaves either the old or the new manifest, each pointing at a complete file. Stale vector
files are removed only after the new manifest is in place, and no file is ever changed in place, so a
reader that has *mapped* a vectors file keeps a complete, unchanging view of it (Linux keeps an unlinked
file's pages for as long as a mapping holds them).

Opening maps the vectors file (:func:`open_vectors`, copy-on-write) instead of reading it: a gallery larger
than RAM opens at once and the scorer pulls each budget's slab ``[:r_c]`` through the page cache. What is
checked when (the checksum of a mapped file cannot be verified without reading all of it):

* at open, always: the manifest, the safetensors header (key, dtype, shape against the manifest) and the
  file's exact size, so a truncated, foreign or mislabelled file is refused at once;
* the SHA-256 of the whole file: by :func:`verify_vectors` (``index_builder verify``, ``--verify`` of the
  server), by ``MultiVectorIndex.load(..., verify=True)``, and always when an index is read into RAM
  (``mmap=False``), where every byte is read anyway.
"""

from __future__ import annotations

import hashlib
import json
import logging
import mmap
import os
import struct
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from metaembed.io import atomic_write_json

logger = logging.getLogger(__name__)

FORMAT_NAME = "metaembed-index"
FORMAT_VERSION = 1
MANIFEST = "index.json"
_TENSOR_KEY = "vectors"
#: safetensors' dtype codes for the storage dtypes, and the numpy dtype each element is mapped as
#: (numpy has no bfloat16: its bits are mapped as int16 and viewed as torch.bfloat16).
_CODES = {torch.float32: "F32", torch.bfloat16: "BF16", torch.float16: "F16"}
_MAPPED_AS = {torch.float32: np.float32, torch.bfloat16: np.int16, torch.float16: np.float16}
_HEADER_LIMIT = 100 * 1024 * 1024  # safetensors' own limit on the JSON header
_BLOCK = 16 * 1024 * 1024  # bytes per write or hash step: bounded memory whatever the index size


class IndexLoadError(RuntimeError):
    """An index directory that is missing, truncated, corrupt, or from another format version."""


def _header(shape: tuple[int, ...], dtype: torch.dtype) -> bytes:
    """The safetensors header of one tensor, padded with spaces to 8 bytes as safetensors pads it, so a
    streamed file is byte-identical to ``safetensors.torch.save`` of the same tensor (tested)."""
    nbytes = int(np.prod(shape)) * torch.empty(0, dtype=dtype).element_size()
    text = json.dumps({_TENSOR_KEY: {"dtype": _CODES[dtype], "shape": list(shape), "data_offsets": [0, nbytes]}},
                      separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    return struct.pack("<Q", len(text)) + text


def write_vectors(directory: str | Path, slabs: Iterable[torch.Tensor], shape: tuple[int, int, int],
                  dtype: torch.dtype) -> tuple[str, str]:
    """Stream token-major vectors, one ``(N, D)`` slab per token, into ``vectors-<sha12>.safetensors``.

    Returns ``(file name, sha256)``. Written slab by slab through a temporary file, hashed on the way, then
    renamed to its content name (kept if that file exists already). Why not ``safetensors.torch.save``: it
    serialises a dict of in-memory tensors into one bytes object, a full copy of the index; a mapped or
    large index must be written without materialising it.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    digest = hashlib.sha256()
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".vectors.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            def put(data: bytes | memoryview) -> None:
                digest.update(data)
                handle.write(data)

            put(_header(shape, dtype))
            written = 0
            for slab in slabs:
                if tuple(slab.shape) != shape[1:] or slab.dtype != dtype:
                    raise ValueError(f"slab of shape {tuple(slab.shape)} {slab.dtype}, expected {shape[1:]} {dtype}")
                rows = max(1, _BLOCK // max(1, shape[2] * slab.element_size()))
                for start in range(0, shape[1], rows):
                    block = slab[start:start + rows].contiguous().view(torch.uint8).numpy()
                    put(memoryview(block).cast("B"))
                written += 1
            if written != shape[0]:
                raise ValueError(f"{written} slabs written, expected {shape[0]}")
            handle.flush()
            os.fsync(handle.fileno())
        sha = digest.hexdigest()
        name = f"vectors-{sha[:12]}.safetensors"
        if (directory / name).is_file():
            os.unlink(tmp)
        else:
            os.chmod(tmp, 0o644)
            os.replace(tmp, directory / name)
        return name, sha
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_index(directory: str | Path, vectors: torch.Tensor | Iterable[torch.Tensor], manifest: dict[str, Any],
                shape: tuple[int, int, int] | None = None, dtype: torch.dtype | None = None) -> None:
    """Persist token-major ``vectors`` and ``manifest`` (ids, metadata, shapes...) under ``directory``.

    ``vectors`` is an ``(R_c, N, D)`` tensor (in RAM or mapped), or an iterable of its ``(N, D)`` slabs with
    ``shape`` and ``dtype`` given (a writer that produces the index token by token, never all at once).
    """
    directory = Path(directory)
    if isinstance(vectors, torch.Tensor):
        shape, dtype = tuple(vectors.shape), vectors.dtype
        vectors = (vectors[t] for t in range(vectors.shape[0]))
    if shape is None or dtype is None:
        raise ValueError("write_index needs shape and dtype when vectors are given slab by slab")
    vectors_file, digest = write_vectors(directory, vectors, shape, dtype)
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


def _open_consistent(directory: Path, attempts: int = 3) -> tuple[dict[str, Any], Any]:
    """Manifest plus an open binary handle on the vectors file it names.

    A writer may commit a new manifest and delete the old vectors file between our two steps; then the
    manifest has changed and we read again. A file that stays missing is a broken index. Once the file is
    open, a later unlink by a writer no longer matters.
    """
    for _ in range(attempts):
        manifest = read_manifest(directory)
        path = directory / str(manifest.get("vectors_file", ""))
        try:
            return manifest, path.open("rb")
        except (FileNotFoundError, IsADirectoryError):
            if read_manifest(directory) == manifest:
                break
    raise IndexLoadError(f"{path} is missing: the index in {directory} is incomplete")


def _check_header(path: Path, handle: Any) -> tuple[int, torch.dtype, tuple[int, ...]]:
    """Parse and check the safetensors header; returns (data offset, dtype, shape)."""
    size = os.fstat(handle.fileno()).st_size
    raw = handle.read(8)
    problem = None
    if len(raw) < 8:
        problem = f"{size} bytes, shorter than a header"
    else:
        length = struct.unpack("<Q", raw)[0]
        if length > min(_HEADER_LIMIT, size - 8):
            problem = f"its header claims {length} bytes of {size}"
    if problem is None:
        try:
            header = json.loads(handle.read(length))
            entry = header[_TENSOR_KEY]
            dtype = {code: dt for dt, code in _CODES.items()}[entry["dtype"]]
            shape = tuple(int(s) for s in entry["shape"])
            begin, end = (int(o) for o in entry["data_offsets"])
        except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError, ValueError) as err:
            raise IndexLoadError(f"{path} is not a readable safetensors file with a {_TENSOR_KEY!r} tensor: "
                                 f"{type(err).__name__}: {err}") from err
        expected = int(np.prod(shape)) * torch.empty(0, dtype=dtype).element_size()
        if begin != 0 or end != expected or 8 + length + end != size:
            problem = f"{size} bytes, the header says {8 + length + end} (truncated or corrupt)"
    if problem is not None:
        raise IndexLoadError(f"{path} is not a complete safetensors file: {problem}")
    return 8 + length, dtype, shape


def open_vectors(directory: str | Path, mmap_file: bool = True,
                 verify: bool | None = None) -> tuple[torch.Tensor, dict[str, Any]]:
    """Load ``(vectors, manifest)`` with the header checked: mapped copy-on-write (default), or read into RAM.

    A mapping is private: writes to the tensor (there are none: the index copies before it mutates) would
    never reach the file. ``verify`` (default: only when reading into RAM, where every byte is read anyway)
    also checks the whole file's SHA-256 against the manifest, on the same open file.
    """
    directory = Path(directory)
    manifest, handle = _open_consistent(directory)
    path = directory / str(manifest.get("vectors_file", ""))
    with handle:
        if verify if verify is not None else not mmap_file:
            _check_sha(path, handle, manifest)
        offset, dtype, shape = _check_header(path, handle)
        count = int(np.prod(shape))
        if mmap_file and count:
            mapped = mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_COPY)
            array = np.frombuffer(mapped, dtype=_MAPPED_AS[dtype], count=count, offset=offset)
        else:
            handle.seek(offset)
            array = np.frombuffer(bytearray(handle.read()), dtype=_MAPPED_AS[dtype], count=count)
    return torch.from_numpy(array).view(dtype).view(shape), manifest


def _check_sha(path: Path, handle: Any, manifest: dict[str, Any]) -> None:
    """Stream the open file through SHA-256 in blocks (memory stays flat), then rewind it."""
    digest = hashlib.sha256()
    handle.seek(0)
    for block in iter(lambda: handle.read(_BLOCK), b""):
        digest.update(block)
    handle.seek(0)
    if digest.hexdigest() != manifest.get("vectors_sha256"):
        raise IndexLoadError(f"{path} does not match its checksum in {MANIFEST}: truncated or corrupt")


def verify_vectors(directory: str | Path) -> None:
    """Check the whole vectors file against the SHA-256 in the manifest (what ``verify`` commands run)."""
    directory = Path(directory)
    manifest, handle = _open_consistent(directory)
    with handle:
        _check_sha(directory / str(manifest.get("vectors_file", "")), handle, manifest)
