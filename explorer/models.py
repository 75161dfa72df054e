"""Load MetaEmbed encoders once per process and share them between sessions (read-only use).

Loading is lazy so the app starts in seconds; the first search pays for it (or a warm-up thread does).
"""

from __future__ import annotations

import logging
import threading
import weakref
from collections.abc import Callable
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


def load_model(name_or_path: str) -> MetaEmbedEncoder:
    """``"mini"`` or a MetaEmbed checkpoint directory on this machine, in eval mode; a visitor-readable
    :class:`ExplorerError` when it is missing or broken."""
    alias = ALIASES.get(name_or_path.lower())
    if alias is not None and not Path(alias).is_dir():
        raise ExplorerError(f"the bundled MetaEmbed-Mini weights are missing ({alias} not found): train it (see "
                            "README) or point METAEMBED_MODEL / the Model tab at a MetaEmbed checkpoint directory")
    if alias is None and not Path(name_or_path).expanduser().is_dir():
        raise ExplorerError(f"model {name_or_path!r} not found: give 'mini' or a MetaEmbed checkpoint directory "
                            "(one with config.json and .safetensors weights)")
    try:
        encoder = load_encoder(alias or Path(name_or_path).expanduser()).eval()
    except (ModelLoadError, OSError, ValueError) as err:
        raise ExplorerError(f"cannot load model {name_or_path!r}: {err}. The weights must be on this machine "
                            "(no model hub is reachable offline).") from err
    logger.info("loaded model %s (%s, D=%d, R_q=%d, R_c=%d)", name_or_path, encoder.name, encoder.dim,
                encoder.num_query_tokens, encoder.num_candidate_tokens)
    return encoder


class ModelCache:
    """Encoders keyed by the name or directory they were loaded from.

    ``load`` turns a name into an encoder (default :func:`load_model`); notebooks and tests pass their own
    to serve encoders they built in memory.
    """

    def __init__(self, default: str = "mini", allow_other: bool = True,
                 load: Callable[[str], MetaEmbedEncoder] = load_model) -> None:
        self.default = default
        self.allow_other = allow_other
        self._load = load
        self._models: dict[str, MetaEmbedEncoder] = {}
        self._lock = threading.Lock()

    def get(self, name_or_path: str | None = None) -> MetaEmbedEncoder:
        """The encoder for ``name_or_path`` (default model when empty); a clear message when missing."""
        key = (name_or_path or "").strip() or self.default
        with self._lock:
            if key not in self._models:
                if key != self.default and not self.allow_other:
                    raise ExplorerError(f"this deployment serves only the model {self.default!r} "
                                        "(METAEMBED_ALLOW_MODEL_PATHS=0)")
                self._models[key] = self._load(key)
            return self._models[key]
