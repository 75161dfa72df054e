"""Galleries as the explorer sees them: the shared demo gallery or a visitor's own, each an
index_builder gallery directory; plus what to display for an item (thumbnail, caption) and the
model check (an index only answers queries from the model that built it)."""

from __future__ import annotations

import logging
import textwrap
import threading
from pathlib import Path
from typing import Any

from PIL import Image, ImageDraw

from explorer.errors import ExplorerError
from explorer.models import fingerprint
from index_builder import GalleryError, InputSkipped, load_gallery
from index_builder.images import load_image
from index_builder.pdf import iter_pages
from metaembed.models import MetaEmbedEncoder
from metaembed.models.instructions import TEXT_TO_IMAGE, TEXT_TO_PAGE

logger = logging.getLogger(__name__)

THUMB_SIDE = 256


def resolve_gallery_dir(path: Path) -> Path:
    """``path`` itself when it holds a manifest, else its sub-folder that does (``assets/gallery/<name>/``)."""
    if (path / "manifest.json").is_file() or not path.is_dir():
        return path
    found = sorted(p.parent for p in path.glob("*/manifest.json"))
    return found[0] if found else path


def query_instruction(gallery: Any, has_text: bool, has_image: bool) -> str | None:
    """The training-time query instruction for this gallery's task (candidates were encoded with theirs).

    Text-only queries: "find the page" when most items are PDF pages, else "find the image"; image queries
    have no trained instruction for image candidates, so none is added.
    """
    if not has_text or has_image:
        return None
    kinds = [(gallery.index.get_metadata(i) or {}).get("kind") for i in gallery.index.ids]
    pages = sum(1 for k in kinds if k == "pdf-page")
    return (TEXT_TO_PAGE if pages * 2 > len(kinds) else TEXT_TO_IMAGE).query


class DemoGallery:
    """The bundled gallery, loaded once on first use and shared read-only by every session."""

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self._gallery: Any = None
        self._lock = threading.Lock()

    def get(self) -> Any:
        with self._lock:
            if self._gallery is None:
                path = resolve_gallery_dir(Path(self.path)) if self.path is not None else None
                if path is None or not (path / "manifest.json").is_file():
                    raise ExplorerError(f"the demo gallery is not available at {self.path}; upload your own files "
                                        "in the Gallery tab, or set METAEMBED_GALLERY to a gallery directory")
                self._gallery = open_gallery(path)
            return self._gallery


def open_gallery(path: Path) -> Any:
    """Load an index_builder gallery directory with a user-facing error."""
    try:
        return load_gallery(path)
    except (GalleryError, OSError, ValueError) as err:
        raise ExplorerError(f"cannot open gallery {path}: {err}") from err


def gallery_stats(gallery: Any) -> dict[str, Any]:
    """Counts and bytes of an opened gallery (from memory: ``index_builder.info`` would re-read the disk)."""
    index = gallery.index
    kinds = [(index.get_metadata(i) or {}).get("kind") for i in index.ids]
    pages = sum(1 for k in kinds if k == "pdf-page")
    return {"items": len(kinds), "images": len(kinds) - pages, "pages": pages, "dim": int(index.dim),
            "r_c": int(index.num_vectors), "stored_bytes": int(index.stored_bytes),
            "model_name": gallery.manifest["model"]["name"], "model_fingerprint": gallery.fingerprint}


def check_match(gallery: Any, encoder: MetaEmbedEncoder, label: str) -> None:
    """Refuse plainly when the gallery was built by another model: its vectors mean nothing to this one."""
    built_with = gallery.fingerprint
    if gallery.index.dim != encoder.dim:
        raise ExplorerError(f"the {label} gallery holds D={gallery.index.dim} vectors but model {encoder.name} "
                            f"makes D={encoder.dim}: select the model that built it, or rebuild the gallery")
    if built_with != fingerprint(encoder):
        raise ExplorerError(f"the {label} gallery was built with another model (fingerprint {built_with}); the "
                            f"selected model {encoder.name} has {fingerprint(encoder)}. Select the matching model "
                            "or rebuild the gallery with this one (Gallery tab).")


def item_caption(gallery: Any, item_id: str) -> str:
    """``source`` plus ``p. N`` for PDF pages: what a user needs to find the item again."""
    meta = gallery.index.get_metadata(item_id) or {}
    source = str(meta.get("source") or item_id)
    page = meta.get("page")
    return f"{source} p. {page}" if page else source


def display_image(gallery: Any, item_id: str) -> Path | Image.Image:
    """The thumbnail file (served as-is: nothing is re-encoded per search), or a text card when missing."""
    path = gallery.thumbnail(item_id)
    if path is not None:
        return Path(path)
    meta = gallery.index.get_metadata(item_id) or {}
    return text_card(str(meta.get("caption") or meta.get("text") or item_caption(gallery, item_id)))


def encoded_image(gallery: Any, item_id: str) -> Image.Image | None:
    """The picture as the builder encoded it: the original image or the re-rendered PDF page (thumbnail
    when the source has moved); None for a text-only item."""
    meta = gallery.index.get_metadata(item_id) or {}
    source = gallery.source(item_id)
    try:
        if source is not None and meta.get("kind") == "image":
            return load_image(source)
        if source is not None and meta.get("kind") == "pdf-page" and meta.get("page"):
            for page in iter_pages(source, [int(meta["page"])]):
                if not isinstance(page, tuple):
                    return page.image
    except InputSkipped as err:
        logger.warning("cannot re-open %s: %s", source, err)
    thumb = gallery.thumbnail(item_id)
    if thumb is None:
        return None
    with Image.open(thumb) as img:
        return img.convert("RGB")


def text_card(text: str, side: int = THUMB_SIDE) -> Image.Image:
    """A plain image showing ``text``, so text-only items still appear in an image gallery."""
    card = Image.new("RGB", (side, side), (248, 248, 244))
    wrapped = "\n".join(textwrap.wrap(text, width=30)[:12])
    ImageDraw.Draw(card).multiline_text((10, 10), wrapped, fill=(30, 30, 30))
    return card
