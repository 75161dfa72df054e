"""Per-visitor state: which gallery and model a visitor uses, their uploads, their cached query vectors
and their last search. Kept server-side and keyed by the Gradio session id so that nothing one visitor
does (uploads included) is visible to another, and so big tensors never travel to the browser."""

from __future__ import annotations

import atexit
import hashlib
import logging
import os
import secrets
import shutil
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path

import torch
from PIL import Image

from index_builder import Gallery, InputFile
from metaembed.budget import Budget

logger = logging.getLogger(__name__)

#: Distinct queries whose vectors a session keeps (16 x D floats each: tiny).
QUERY_CACHE_SIZE = 64


def query_key(text: str | None, image: Image.Image | None, instruction: str | None) -> str:
    """Content hash of a query: same text/image/instruction -> same key -> no re-encoding."""
    digest = hashlib.sha256()
    for part in (text or "", instruction or ""):
        digest.update(part.encode("utf-8"))
        digest.update(b"\x00")
    if image is not None:
        digest.update(f"{image.mode}:{image.size}".encode())
        digest.update(image.tobytes())
    return digest.hexdigest()[:24]


@dataclass(frozen=True)
class LastSearch:
    """A session's last search: the query (content key, model), the budget and the top-k ids. The token
    view reads it, and the next search of the same query says how its budget moved the ranking."""

    query_key: str
    model_fp: str
    budget: Budget
    ids: list[str]
    served: bool = False  #: searched on a metaembed.serve server: its vectors are not here
    #: item kind -> cache key of the query vectors that scored items of that kind (one encode per instruction)
    kind_keys: dict[str, str] = field(default_factory=dict)


@dataclass
class Session:
    """State of one visitor. ``encode_count`` counts real query encodes (cache misses)."""

    id: str
    workdir: Path
    gallery_choice: str = "demo"
    own_gallery: Gallery | None = None
    #: Files admitted into ``uploads_dir()`` by their display name ("uploads/a.png"): what the caps count.
    uploads: dict[str, InputFile] = field(default_factory=dict)
    #: display name -> the file name the visitor uploaded it as (the folder may have renamed a clash)
    upload_names: dict[str, str] = field(default_factory=dict)
    model_name: str | None = None
    encode_count: int = 0
    last: LastSearch | None = None
    last_used: float = field(default_factory=time.monotonic)
    lock: threading.RLock = field(default_factory=threading.RLock)
    _queries: OrderedDict[tuple[str, str], torch.Tensor] = field(default_factory=OrderedDict)

    def cached_query(self, model_fp: str, key: str) -> torch.Tensor | None:
        vectors = self._queries.get((model_fp, key))
        if vectors is not None:
            self._queries.move_to_end((model_fp, key))
        return vectors

    def store_query(self, model_fp: str, key: str, vectors: torch.Tensor) -> None:
        self._queries[(model_fp, key)] = vectors
        while len(self._queries) > QUERY_CACHE_SIZE:
            self._queries.popitem(last=False)

    def uploads_dir(self) -> Path:
        """This session's private folder (created on first use)."""
        path = self.workdir / "uploads"
        path.mkdir(parents=True, exist_ok=True)
        return path

    def close(self) -> None:
        """Forget everything and delete this session's files."""
        self._queries.clear()
        self.uploads.clear()
        self.upload_names.clear()
        self.own_gallery = None
        shutil.rmtree(self.workdir, ignore_errors=True)


class SessionStore:
    """Sessions by id; idle ones expire after ``ttl_s`` and their folders are deleted."""

    def __init__(self, root: Path, ttl_s: int = 3600) -> None:
        # One folder per server process, removed at exit, so restarts never inherit old uploads.
        self.root = Path(root) / f"run-{os.getpid()}-{secrets.token_hex(4)}"
        atexit.register(shutil.rmtree, self.root, True)
        self.ttl_s = ttl_s
        self._sessions: dict[str, Session] = {}
        self._lock = threading.Lock()

    def get(self, session_id: str | None) -> Session:
        """The session for ``session_id`` (a fresh one on first sight)."""
        if not session_id:
            raise ValueError("no session id: the explorer needs one per visitor")
        safe = hashlib.sha256(session_id.encode()).hexdigest()[:20]  # never a path from the client
        with self._lock:
            self._expire()
            session = self._sessions.get(session_id)
            if session is None:
                session = Session(id=session_id, workdir=self.root / safe)
                self._sessions[session_id] = session
            session.last_used = time.monotonic()
            return session

    def close(self, session_id: str | None) -> None:
        with self._lock:
            session = self._sessions.pop(session_id or "", None)
        if session is not None:
            session.close()

    def __len__(self) -> int:
        return len(self._sessions)

    def _expire(self) -> None:
        now = time.monotonic()
        for sid in [s.id for s in self._sessions.values() if now - s.last_used > self.ttl_s]:
            logger.info("session %s expired", sid[:8])
            self._sessions.pop(sid).close()

