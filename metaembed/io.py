"""The file helpers every reader and writer in the project shares: atomic writes, a line-numbered JSONL
reader, and the table of storage dtypes.

One copy of each, so that a fix (an fsync, file permissions, the wording of an error) reaches every
caller: the index store, galleries, eval reports, checkpoints, feature caches and the eval sets.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch

#: Storage dtypes by the name written into manifests (``str(dtype)`` without ``torch.``).
DTYPES: dict[str, torch.dtype] = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
#: Short names people type (the scale calculator, command lines).
DTYPE_ALIASES = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}


def dtype_name(dtype: torch.dtype) -> str:
    """``torch.bfloat16`` -> ``"bfloat16"`` (the name stored in manifests)."""
    return str(dtype).removeprefix("torch.")


def dtype_from_name(name: str) -> torch.dtype:
    """``"bfloat16"``, ``"bf16"`` or ``"torch.bfloat16"`` -> ``torch.bfloat16``; anything else is a ValueError."""
    key = name.removeprefix("torch.")
    try:
        return DTYPES[DTYPE_ALIASES.get(key, key)]
    except KeyError:
        known = ", ".join([*DTYPES, *DTYPE_ALIASES])
        raise ValueError(f"unknown dtype {name!r}; known: {known}") from None


def atomic_write(path: str | Path, data: bytes | Callable[[Path], None], *, durable: bool = True) -> None:
    """Write ``path`` so that readers see either the old file or the complete new one, never a partial one.

    ``data`` is the content, or a function that writes the file at the temporary path it is given (for
    writers that only take a path, such as safetensors' ``save_file``). ``durable=False`` skips the fsync:
    right for files that can be regenerated (thumbnails, eval-set images), where it would cost more than
    the file itself. The file is made world-readable: ``mkstemp`` creates 0600 files, and indexes,
    galleries and checkpoints are shared read-only data.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        if callable(data):
            os.close(fd)
            data(Path(tmp))
            if durable:
                with open(tmp, "rb+") as handle:
                    os.fsync(handle.fileno())
        else:
            with os.fdopen(fd, "wb") as handle:
                handle.write(data)
                handle.flush()
                if durable:
                    os.fsync(handle.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def remove_partial_writes(directory: str | Path) -> int:
    """Delete the temporary files a killed :func:`atomic_write` left in ``directory``; returns how many.

    A SIGKILL or power loss skips the ``except`` clause that normally removes them, and resuming is the
    first moment they are known to be garbage. Only one writer may use ``directory`` at a time.
    """
    directory = Path(directory)
    if not directory.is_dir():
        return 0
    leftovers = [p for p in directory.glob(".*.tmp") if p.is_file()]
    for leftover in leftovers:
        leftover.unlink(missing_ok=True)
    return len(leftovers)


def atomic_write_json(path: str | Path, obj: Any, *, indent: int = 2, sort_keys: bool = False) -> None:
    """:func:`atomic_write` of ``obj`` as UTF-8 JSON with a final newline (``sort_keys``: same content, same bytes)."""
    text = json.dumps(obj, indent=indent, sort_keys=sort_keys, ensure_ascii=False) + "\n"
    atomic_write(path, text.encode("utf-8"))


@contextlib.contextmanager
def atomic_directory(path: str | Path) -> Iterator[Path]:
    """Yield an empty temporary folder beside ``path``; when the block succeeds it becomes ``path``.

    A previous ``path`` is renamed aside first and deleted only once the new folder is in place, so a
    crash leaves the old or the new folder under that name, never a half-written one; when the block
    fails the temporary folder is removed. Its name starts with a dot, so listings of finished folders
    (``step-*`` checkpoints, eval sets) never see it.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp"))
    try:
        yield tmp
        os.chmod(tmp, 0o755)  # mkdtemp makes 0700
        old = None
        if path.exists():
            old = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.", suffix=".old"))
            os.replace(path, old / path.name)
        os.replace(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


class JsonlError(ValueError):
    """A JSONL line that is not valid JSON; ``line`` is 1-based and ``msg`` is the parser's reason."""

    def __init__(self, path: Path, line: int, msg: str) -> None:
        super().__init__(f"{path}, line {line}: not valid JSON ({msg})")
        self.path, self.line, self.msg = path, line, msg


def read_jsonl(path: str | Path, encoding: str = "utf-8") -> Iterator[tuple[int, Any]]:
    """Yield ``(line number, value)`` for every non-blank line of a JSONL file, streaming it.

    A malformed line raises :class:`JsonlError` naming the file and line, so every format built on JSONL
    (eval sets, caption sidecars, query files) reports the line the user must fix.
    """
    path = Path(path)
    with path.open(encoding=encoding) as handle:
        for line_no, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                yield line_no, json.loads(line)
            except json.JSONDecodeError as err:
                raise JsonlError(path, line_no, err.msg) from err
