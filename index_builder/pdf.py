"""PDF pages as images + text layers, rendered with pypdfium2 (no Poppler) one page at a time.

Only the current page is ever rendered, so memory is bounded by the encode batch, not the document.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import pypdfium2 as pdfium
from PIL import Image

from index_builder.errors import InputSkipped

DEFAULT_DPI = 96
DEFAULT_MAX_PAGES = 1000
#: Longest rendered side in pixels: a poster-sized page at the requested dpi would otherwise be huge.
DEFAULT_MAX_PAGE_SIDE = 1600
#: Characters of a page's text layer kept: the encoder truncates to its own token budget (MetaEmbed-Mini
#: reads 384 tokens, roughly 1,500-2,000 characters), so this only bounds metadata for pathological pages.
MAX_TEXT_CHARS = 4000

_PDFIUM_LOAD_ERRORS = {  # FPDF_ERR_* codes from fpdfview.h
    2: "file not found or could not be opened",
    3: "not a PDF or corrupted",
    4: "password-protected (encrypted) PDF",
    5: "unsupported security scheme",
    6: "page not found or content error",
}


@dataclass(frozen=True)
class Page:
    """One rendered page: 1-based ``number``, RGB ``image``, its text layer (may be empty)."""

    number: int
    image: Image.Image
    text: str


def count_pages(path: Path, max_pages: int = DEFAULT_MAX_PAGES) -> int:
    """Open ``path`` and return its page count; encrypted, broken, empty or over-cap PDFs raise InputSkipped."""
    pdf = _open(path)
    try:
        n = len(pdf)
    finally:
        pdf.close()
    if n == 0:
        raise InputSkipped("PDF has no pages")
    if n > max_pages:
        raise InputSkipped(f"PDF has {n} pages, over the page cap ({max_pages}; raise it with --max-pages)")
    return n


def iter_pages(
    path: Path, numbers: Sequence[int], dpi: int = DEFAULT_DPI, max_side: int = DEFAULT_MAX_PAGE_SIDE
) -> Iterator[Page | tuple[int, InputSkipped]]:
    """Render the given 1-based pages lazily; a page that fails yields ``(number, InputSkipped)``."""
    pdf = _open(path)
    try:
        for number in numbers:
            try:
                page = _render(pdf, number, dpi, max_side)
            except Exception as err:  # noqa: BLE001 -- one bad page must not end the document or the build
                yield number, InputSkipped(f"page {number} could not be rendered ({type(err).__name__}: {err})")
                continue
            yield page
    finally:
        pdf.close()


def _open(path: Path) -> pdfium.PdfDocument:
    try:
        return pdfium.PdfDocument(str(path))
    except pdfium.PdfiumError as err:
        reason = _PDFIUM_LOAD_ERRORS.get(getattr(err, "err_code", None) or -1, f"broken PDF: {err}")
        raise InputSkipped(reason) from None


def _render(pdf: pdfium.PdfDocument, number: int, dpi: int, max_side: int) -> Page:
    page = pdf[number - 1]
    try:
        width_pt, height_pt = page.get_size()
        if width_pt <= 0 or height_pt <= 0:
            raise ValueError(f"page size {width_pt}x{height_pt} pt")
        scale = min(dpi / 72.0, max_side / max(width_pt, height_pt))
        image = page.render(scale=scale).to_pil().convert("RGB")
        textpage = page.get_textpage()
        try:
            text = textpage.get_text_bounded()
        finally:
            textpage.close()
    finally:
        page.close()
    return Page(number, image, " ".join(text.split())[:MAX_TEXT_CHARS])
