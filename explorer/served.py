"""A gallery served by ``python -m metaembed.serve`` (``METAEMBED_SERVE_URL``): the explorer's second search
backend. The server encodes the query (once, cached) and fans out to its shards; the explorer sends the same
query it would search locally and shows the server's figures, per-shard latency included."""

from __future__ import annotations

import base64
import io
import json
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from PIL import Image

from explorer.errors import ExplorerError
from metaembed.budget import Budget

TIMEOUT_S = 120


class ServedGallery:
    """Search and describe a served gallery over HTTP; every failure is an :class:`ExplorerError`."""

    def __init__(self, url: str) -> None:
        self.url = url.rstrip("/")
        self._info: dict[str, Any] | None = None

    def info(self) -> dict[str, Any]:
        """``GET /info``: shards, item count, R_q, R_c, model (asked once)."""
        if self._info is None:
            self._info = self._call(urllib.request.Request(self.url + "/info"))
        return self._info

    def search(self, text: str | None, image: Image.Image | None, instruction: str | None, budget: Budget, k: int,
               first_stage: int | None) -> tuple[dict[str, Any], float]:
        """``POST /search``; returns the response and the round trip in ms."""
        body: dict[str, Any] = {"text": text, "instruction": instruction, "r_q": budget.r_q, "r_c": budget.r_c,
                                "k": k, "first_stage": first_stage}
        if image is not None:
            buffer = io.BytesIO()
            image.save(buffer, format="PNG")
            body["image"] = base64.b64encode(buffer.getvalue()).decode()
        request = urllib.request.Request(self.url + "/search", data=json.dumps(body).encode(),
                                         headers={"Content-Type": "application/json"})
        tic = time.perf_counter()
        answer = self._call(request)
        return answer, (time.perf_counter() - tic) * 1000

    def thumbnail(self, hit: dict[str, Any]) -> Path | None:
        """The hit's thumbnail when the served gallery's folder is readable from here (same machine or a
        shared filesystem), else None."""
        folder, rel = self.info().get("directory"), hit.get("thumbnail")
        if not folder or not rel:
            return None
        path = Path(folder) / str(hit.get("shard", "")) / rel
        return path if path.is_file() else None

    def _call(self, request: urllib.request.Request) -> dict[str, Any]:
        try:
            with urllib.request.urlopen(request, timeout=TIMEOUT_S) as response:
                return json.loads(response.read())
        except urllib.error.HTTPError as err:
            try:
                message = json.loads(err.read()).get("error", err.reason)
            except (ValueError, AttributeError):
                message = err.reason
            raise ExplorerError(f"the search server at {self.url} refused the search: {message}") from None
        except (urllib.error.URLError, OSError, ValueError) as err:
            raise ExplorerError(f"the search server at {self.url} cannot be reached: {err}") from None
