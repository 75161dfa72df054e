"""Galleries as the explorer sees them: the shared demo gallery or a visitor's own (each an open
:class:`index_builder.Gallery`), what to display for an item, and the model check (an index only
answers queries from the model that built it)."""

from __future__ import annotations

import json
import logging
import textwrap
import threading
from pathlib import Path
from typing import Any

from PIL import Image, ImageDraw

from explorer.errors import ExplorerError
from explorer.models import fingerprint
from index_builder import Gallery, GalleryError, InputSkipped, info, load_gallery
from index_builder.items import candidate_item
from index_builder.storage import THUMB_SIDE
from metaembed.models import Item, MetaEmbedEncoder

logger = logging.getLogger(__name__)

#: What the Gallery tab and ``/gallery_status`` report of a gallery (from :func:`index_builder.info`).
STATUS_FIELDS = ("items", "images", "pages", "dim", "r_c", "stored_bytes", "model_name", "model_fingerprint")


def resolve_gallery_dir(path: Path) -> Path:
    """``path`` itself when it holds a manifest, else its sub-folder that does (``assets/gallery/<name>/``)."""
    if (path / "manifest.json").is_file() or not path.is_dir():
        return path
    found = sorted(p.parent for p in path.glob("*/manifest.json"))
    return found[0] if found else path


#: Words of a page's text that stand for its heading on a result card.
HEADING_WORDS = 6


def catalogue_titles(gallery_dir: Path) -> dict[str, str]:
    """``source -> title`` from a ``sources.jsonl`` (rows with ``file`` and ``title``) in the gallery folder or
    the folder it indexed (its parent, as for the demo gallery); empty when there is none."""
    for folder in (gallery_dir, gallery_dir.parent):
        path = folder / "sources.jsonl"
        if path.is_file():
            titles = {}
            for line in path.read_text(encoding="utf-8").splitlines():
                row = json.loads(line) if line.strip() else {}
                if row.get("file") and row.get("title"):
                    titles[str(row["file"])] = str(row["title"])
            return titles
    return {}


def display_title(gallery: Gallery, item_id: str, titles: dict[str, str]) -> str:
    """What a result card calls an item: a clip's catalogue title, a page's opening words with its file and
    page number, else the file name (and page)."""
    record = gallery.item(item_id)
    name = Path(record.source).name
    if record.is_page:
        words = (record.text or "").split()
        heading = " ".join(words[:HEADING_WORDS]) + ("…" if len(words) > HEADING_WORDS else "")
        return f"{heading} — {name} p. {record.page}" if heading else f"{name} p. {record.page}"
    title = titles.get(record.source)
    return f"{title} ({name})" if title else name


class DemoGallery:
    """The bundled gallery, loaded once on first use and shared read-only by every session."""

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self._gallery: Gallery | None = None
        self.titles: dict[str, str] = {}
        self._lock = threading.Lock()

    def get(self) -> Gallery:
        with self._lock:
            if self._gallery is None:
                path = resolve_gallery_dir(Path(self.path)) if self.path is not None else None
                if path is None or not (path / "manifest.json").is_file():
                    raise ExplorerError(f"the demo gallery is not available at {self.path}; upload your own files "
                                        "in the Gallery tab, or set METAEMBED_GALLERY to a gallery directory")
                self._gallery = open_gallery(path)
                self.titles = catalogue_titles(path)
            return self._gallery


def open_gallery(path: Path) -> Gallery:
    """Load an index_builder gallery directory with a user-facing error."""
    try:
        return load_gallery(path)
    except (GalleryError, OSError, ValueError) as err:
        raise ExplorerError(f"cannot open gallery {path}: {err}") from err


def gallery_blurb(gallery: Gallery, label: str) -> str:
    """One line on what a gallery holds, for the landing: counts by kind and the documents the pages come from."""
    stats = gallery_stats(gallery)
    documents = sorted({Path(gallery.item(i).source).name for i in gallery.index.ids if gallery.item(i).is_page})
    docs = ""
    if documents:
        shown = ", ".join(documents[:3]) + (f" and {len(documents) - 3} more" if len(documents) > 3 else "")
        docs = f" from {len(documents)} PDF{'s' if len(documents) > 1 else ''} ({shown})"
    return (f"Searching **{'your' if label == 'your' else 'the demo'} gallery**: {stats['items']:,} items — "
            f"{stats['images']:,} images and {stats['pages']:,} PDF pages{docs}.")


def gallery_stats(gallery: Gallery) -> dict[str, Any]:
    """Counts and bytes of an open gallery (:func:`index_builder.info`, read from memory)."""
    summary = info(gallery).to_dict()
    return {key: summary[key] for key in STATUS_FIELDS}


def check_match(gallery: Gallery, encoder: MetaEmbedEncoder, label: str) -> None:
    """Refuse plainly when the gallery was built by another model: its vectors mean nothing to this one."""
    try:
        gallery.check_model(encoder, fingerprint(encoder), name=f"the {label} gallery")
    except GalleryError as err:
        raise ExplorerError(str(err)) from None


def display_image(gallery: Gallery, item_id: str) -> Path | Image.Image:
    """The thumbnail file (served as-is: nothing is re-encoded per search), or a text card when missing."""
    path = gallery.thumbnail(item_id)
    if path is not None:
        return Path(path)
    record = gallery.item(item_id)
    return text_card(record.encoded_text or record.title)


def encoded_item(gallery: Gallery, item_id: str) -> Item | None:
    """The Item the builder encoded (re-decoded from its source), or, when the source has moved, the same
    text with the thumbnail as its picture; None when there is no picture at all."""
    try:
        return gallery.encoded_item(item_id)
    except InputSkipped as err:
        logger.warning("cannot re-open the source of %s: %s", item_id, err)
    thumb = gallery.thumbnail(item_id)
    if thumb is None:
        return None
    record = gallery.item(item_id)
    with Image.open(thumb) as img:
        return candidate_item(record.is_page, img.convert("RGB"), record.encoded_text, item_id)


def text_card(text: str, side: int = THUMB_SIDE) -> Image.Image:
    """A plain image showing ``text``, so text-only items still appear in an image gallery."""
    card = Image.new("RGB", (side, side), (248, 248, 244))
    wrapped = "\n".join(textwrap.wrap(text, width=30)[:12])
    ImageDraw.Draw(card).multiline_text((10, 10), wrapped, fill=(30, 30, 30))
    return card
