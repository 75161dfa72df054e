"""Load MetaEmbed encoders once per process and share them between sessions (read-only use).

Loading is lazy so the app starts in seconds; the first search pays for it (or a warm-up thread does).
"""

from __future__ import annotations

import logging
import os
import threading
import weakref
from pathlib import Path

from explorer.errors import ExplorerError
from metaembed.models import ALIASES, MetaEmbedEncoder, ModelLoadError, load_encoder

logger = logging.getLogger(__name__)

_FINGERPRINTS: weakref.WeakKeyDictionary[MetaEmbedEncoder, str] = weakref.WeakKeyDictionary()


def fingerprint(encoder: MetaEmbedEncoder) -> str:
    """``encoder.fingerprint()`` computed once per encoder: it hashes every trained weight (milliseconds
    each time), and the explorer asks on every search; served encoders never change their weights."""
    if encoder not in _FINGERPRINTS:
        _FINGERPRINTS[encoder] = encoder.fingerprint()
    return _FINGERPRINTS[encoder]


class ModelCache:
    """Encoders keyed by the name or directory they were loaded from."""

    def __init__(self, default: str = "mini", allow_other: bool = True) -> None:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")  # no hub on the project's machines or in CI
        self.default = default
        self.allow_other = allow_other
        self._models: dict[str, MetaEmbedEncoder] = {}
        self._lock = threading.Lock()

    def get(self, name_or_path: str | None = None) -> MetaEmbedEncoder:
        """The encoder for ``name_or_path`` (default model when empty); a clear message when missing."""
        key = (name_or_path or "").strip() or self.default
        with self._lock:
            if key in self._models:
                return self._models[key]
            if key != self.default and not self.allow_other:
                raise ExplorerError(f"this deployment serves only the model {self.default!r} "
                                    "(METAEMBED_ALLOW_MODEL_PATHS=0)")
            path = Path(key).expanduser()
            if key.lower() in ALIASES and not Path(ALIASES[key.lower()]).is_dir():
                raise ExplorerError(f"the bundled MetaEmbed-Mini weights are missing ({ALIASES[key.lower()]} not "
                                    "found): train it (see README) or point METAEMBED_MODEL / the Model tab at a "
                                    "MetaEmbed checkpoint directory")
            if key.lower() not in ALIASES and not path.is_dir():
                raise ExplorerError(f"model {key!r} not found: give 'mini' or a MetaEmbed checkpoint directory "
                                    "(one with config.json and .safetensors weights)")
            try:
                encoder = load_encoder(key).eval()
            except (ModelLoadError, OSError, ValueError) as err:
                raise ExplorerError(f"cannot load model {key!r}: {err}. The weights must be on this machine "
                                    "(no model hub is reachable offline).") from err
            logger.info("loaded model %s (%s, D=%d, R_q=%d, R_c=%d)", key, encoder.name, encoder.dim,
                        encoder.num_query_tokens, encoder.num_candidate_tokens)
            self._models[key] = encoder
            return encoder

    def register(self, key: str, encoder: MetaEmbedEncoder) -> None:
        """Make an already-built encoder selectable under ``key`` (notebooks, tests, custom backends)."""
        with self._lock:
            self._models[key] = encoder.eval()
