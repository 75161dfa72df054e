"""Explorer settings as data, read from environment variables so tests and Spaces can point
the app at other models, galleries and upload caps without code changes."""

from __future__ import annotations

import dataclasses
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from metaembed.bundled import GALLERY_DIR

#: name -> environment variable; documented in the README.
ENV = {
    "model": "METAEMBED_MODEL",
    "gallery": "METAEMBED_GALLERY",
    "eval_set": "METAEMBED_EVAL_SET",
    "session_root": "METAEMBED_SESSION_ROOT",
    "max_files": "METAEMBED_UPLOAD_MAX_FILES",
    "max_pages": "METAEMBED_UPLOAD_MAX_PAGES",
    "max_mb": "METAEMBED_UPLOAD_MAX_MB",
    "session_ttl_s": "METAEMBED_SESSION_TTL_S",
    "max_eval_corpus": "METAEMBED_MAX_EVAL_CORPUS",
    "bundled_eval_limit": "METAEMBED_BUNDLED_EVAL_LIMIT",
    "allow_model_paths": "METAEMBED_ALLOW_MODEL_PATHS",
    "serve_url": "METAEMBED_SERVE_URL",
}


def _int_env(name: str, default: int) -> int:
    raw = os.environ.get(name)
    if raw is None or raw.strip() == "":
        return default
    try:
        value = int(raw)
    except ValueError as err:
        raise ValueError(f"environment variable {name}={raw!r} is not an integer") from err
    if value < 1:
        raise ValueError(f"environment variable {name}={raw!r} must be >= 1")
    return value


def _allow_model_paths(env: os._Environ[str] | dict[str, str]) -> bool:
    """METAEMBED_ALLOW_MODEL_PATHS when set; otherwise on, except on a Hugging Face Space (``SPACE_ID`` set),
    where a visitor could otherwise make the shared server load any checkpoint folder it can read."""
    raw = env.get(ENV["allow_model_paths"], "").strip().lower()
    if not raw:
        return not env.get("SPACE_ID")
    return raw not in ("0", "false", "no")


@dataclass(frozen=True)
class UploadCaps:
    """Per-session upload limits. Defaults are Spaces-safe (2 vCPU, 16 GB RAM, shared by visitors)."""

    max_files: int = 20
    max_pages: int = 60
    max_bytes: int = 50 * 1024 * 1024

    def describe(self) -> str:
        """The sentence the UI shows next to the upload box."""
        return (f"Up to {self.max_files} files, {self.max_pages} images/pages in total and "
                f"{self.max_bytes / 2**20:.0f} MB per session; uploads are private to your session "
                "and deleted when it ends.")


@dataclass(frozen=True)
class ExplorerConfig:
    """Where the model, demo gallery and eval set live, and the per-session limits."""

    model: str = "mini"
    gallery: Path | None = GALLERY_DIR
    #: An eval set (BEIR folder / MMEB .jsonl) for the Trade-off tab; None = build the bundled Tux Paint set.
    eval_set: Path | None = None
    session_root: Path = field(default_factory=lambda: Path(tempfile.gettempdir()) / "metaembed-explorer")
    caps: UploadCaps = UploadCaps()
    session_ttl_s: int = 3600
    #: A user-uploaded eval set is encoded in full before sweeping; this bounds its corpus.
    max_eval_corpus: int = 500
    #: Photos in the bundled Tux Paint caption -> photo set (built once from Debian's tuxpaint-stamps-default).
    bundled_eval_limit: int = 60
    #: Whether visitors may load other checkpoint directories (a public Space may set 0: one big model
    #: loaded by one visitor would take the memory every visitor shares).
    allow_model_paths: bool = True
    #: A gallery served by ``python -m metaembed.serve`` (its base URL): the demo choice searches it instead.
    serve_url: str | None = None

    @classmethod
    def from_env(cls, **overrides: Any) -> ExplorerConfig:
        """Defaults overridden by ``METAEMBED_*`` variables (see :data:`ENV`), then by ``overrides`` (the
        command line's flags; a None value is a flag not given)."""
        env = os.environ
        default = cls()
        caps = UploadCaps(
            max_files=_int_env(ENV["max_files"], default.caps.max_files),
            max_pages=_int_env(ENV["max_pages"], default.caps.max_pages),
            max_bytes=_int_env(ENV["max_mb"], default.caps.max_bytes // 2**20) * 2**20,
        )
        config = cls(
            model=env.get(ENV["model"]) or default.model,
            gallery=Path(env[ENV["gallery"]]) if env.get(ENV["gallery"]) else default.gallery,
            eval_set=Path(env[ENV["eval_set"]]) if env.get(ENV["eval_set"]) else default.eval_set,
            session_root=Path(env[ENV["session_root"]]) if env.get(ENV["session_root"]) else default.session_root,
            caps=caps,
            session_ttl_s=_int_env(ENV["session_ttl_s"], default.session_ttl_s),
            max_eval_corpus=_int_env(ENV["max_eval_corpus"], default.max_eval_corpus),
            bundled_eval_limit=_int_env(ENV["bundled_eval_limit"], default.bundled_eval_limit),
            allow_model_paths=_allow_model_paths(env),
            serve_url=env.get(ENV["serve_url"]) or None,
        )
        return dataclasses.replace(config, **{k: v for k, v in overrides.items() if v is not None})
