"""What one gallery item is: its metadata record (stored beside its vectors) and the encoder input it became.

The builder writes a :class:`GalleryItem` per image or PDF page, and everything that reads a gallery
(the explorer's results, captions and overlays, ``remove``, ``info``, ``verify``, the Trade-off tab's
item names) reads it back through :meth:`GalleryItem.from_dict`, so the record's fields and the kind
names live here only.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any

from PIL import Image

from metaembed.models import Item
from metaembed.models.instructions import TEXT_TO_IMAGE, TEXT_TO_PAGE

#: The two kinds of gallery item.
IMAGE = "image"
PDF_PAGE = "pdf-page"


@dataclass(frozen=True)
class GalleryItem:
    """One item's metadata: where it came from, what was encoded, and its thumbnail.

    ``source`` is the path users see (relative to the folder they indexed), ``path`` the file relative to
    the gallery folder, ``page`` the 1-based page of a PDF (None for an image) and ``text`` the text a page
    was encoded with (caption and text layer); an image's text is its ``caption``.
    """

    kind: str
    source: str
    path: str | None = None
    page: int | None = None
    pages: int | None = None
    caption: str | None = None
    text: str | None = None
    instruction: str | None = None
    sha256: str | None = None
    thumbnail: str | None = None
    width: int | None = None
    height: int | None = None

    @property
    def is_page(self) -> bool:
        return self.kind == PDF_PAGE

    @property
    def title(self) -> str:
        """``source`` plus ``p. N`` for a PDF page: what a user needs to find the item again."""
        return f"{self.source} p. {self.page}" if self.page else self.source

    @property
    def encoded_text(self) -> str | None:
        """The text the encoder read with the picture (a page's caption + text layer, an image's caption)."""
        return self.text if self.is_page else self.caption

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, meta: dict[str, Any]) -> GalleryItem:
        """Read a stored record; keys it does not know are ignored, missing ones are None."""
        return cls(**{f.name: meta.get(f.name) for f in fields(cls)})


def candidate_instruction(is_page: bool) -> str | None:
    """The candidate instruction the model was trained with for this kind of item."""
    return TEXT_TO_PAGE.candidate if is_page else TEXT_TO_IMAGE.candidate


def candidate_item(is_page: bool, image: Image.Image, text: str | None, key: str | None) -> Item:
    """The exact Item the builder encodes for an image or a PDF page (verify, the explorer and benchmarks reuse it)."""
    return Item(text=text, image=image, instruction=candidate_instruction(is_page), key=key)
