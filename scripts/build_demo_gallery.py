"""Regenerate the committed demo gallery in assets/gallery/ (files, provenance, prebuilt index).

    .venv/bin/python scripts/build_demo_gallery.py                 # bundled MetaEmbed-Mini
    .venv/bin/python scripts/build_demo_gallery.py --model DIR     # any checkpoint (e.g. a random Mini)
    .venv/bin/python scripts/build_demo_gallery.py --files-only    # copy/downscale the sources, no index
    .venv/bin/python scripts/build_demo_gallery.py --index-only    # (re)build/resume the index only

Contents, all redistributable:
- Open Clip Art (Debian ``openclipart-png`` / ``-svg``, public domain): clips picked deterministically
  across categories (stable hash order within each), 16 Mpx+ originals skipped before decoding,
  downscaled to <= 320 px on white and palette-quantised (a few KB each).
- Two picture-book PDFs generated here from 30 further clips each (image + title + keywords as a real
  text layer, six per page): public domain like their clips.
- The ReportLab User Guide (Debian ``python-reportlab-doc``, BSD-style licence, which permits
  redistribution with its notice; the notice is copied to licences/).
Tux Paint stamps and the R manuals are GPL and are never copied here.
"""

from __future__ import annotations

import argparse
import ctypes
import hashlib
import html
import io
import json
import logging
import re
import shutil
import sys
import textwrap
from collections import defaultdict
from pathlib import Path

import pypdfium2 as pdfium
import pypdfium2.raw as pdfium_c

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import index_builder  # noqa: E402
from metaembed.datasets import openclipart  # noqa: E402
from metaembed.io import atomic_write  # noqa: E402

logger = logging.getLogger("build_demo_gallery")

GALLERY = REPO / "assets" / "gallery"
INDEX_NAME = "mini-index"
REPORTLAB_PDF = Path("/usr/share/doc/python-reportlab-doc/reportlab-userguide.pdf")
REPORTLAB_COPYRIGHT = Path("/usr/share/doc/python-reportlab-doc/copyright")
#: Beyond openclipart.DROPPED_CATEGORIES: logos may carry trademarks, buttons are UI chrome.
EXCLUDED = ("logos", "buttons")
MAX_SIDE = 320
DEFAULT_CLIPS = 300
#: Picture books generated from further clips: (file, title, categories); BOOK_CLIPS clips, 6 per page.
BOOKS = (
    ("openclipart-picture-book-animals-plants.pdf", "Open Clip Art picture book: animals and plants",
     ("animals", "plants")),
    ("openclipart-picture-book-food-travel.pdf", "Open Clip Art picture book: food, tools and transport",
     ("food", "tools", "transportation")),
)
BOOK_CLIPS = 30
BOOK_IMAGE_PX = 300


def _by_category() -> dict[str, list[openclipart.Clip]]:
    """Usable clips per top-level category, each list in a stable pseudo-random (hash) order."""
    by_category: dict[str, list[openclipart.Clip]] = defaultdict(list)
    for clip in openclipart.list_clips():
        top = clip.rel.split("/", 1)[0]
        if top not in EXCLUDED and "/" in clip.rel:
            by_category[top].append(clip)
    for clips in by_category.values():
        clips.sort(key=lambda c: hashlib.sha1(c.rel.encode()).hexdigest())
    return by_category


def books(used: list[openclipart.Clip]) -> list[tuple[str, str, list[openclipart.Clip]]]:
    """The picture books: (file name, title, clips), from clips not already among the loose images."""
    taken = {c.rel for c in used}
    by_category = _by_category()
    result = []
    for name, title, categories in BOOKS:
        pool = [c for cat in categories for c in by_category[cat] if c.rel not in taken and c.title.isascii()]
        chosen = sorted(pool[:BOOK_CLIPS], key=lambda c: c.rel)
        taken.update(c.rel for c in chosen)
        result.append((name, title, chosen))
    return result


def pick_clips(total: int) -> list[openclipart.Clip]:
    """``total`` clips spread over categories (share ~ sqrt(category size)), stable-hash order inside each."""
    by_category = _by_category()
    weights = {cat: len(clips) ** 0.5 for cat, clips in by_category.items()}
    scale = total / sum(weights.values())
    quota = {cat: min(len(by_category[cat]), max(1, round(w * scale))) for cat, w in weights.items()}
    picked = [clip for cat in sorted(quota) for clip in by_category[cat][: quota[cat]]]
    return sorted(picked[:total], key=lambda c: c.rel)


def _add_text(pdf: pdfium.PdfDocument, page: pdfium.PdfPage, text: str, x: float, y: float, size: float) -> None:
    """One line of Helvetica text. pypdfium2 has no text helper yet, so this uses PDFium's C API directly;
    the text becomes a real text layer (what index_builder extracts), not pixels."""
    obj = pdfium_c.FPDFPageObj_NewTextObj(pdf.raw, b"Helvetica", ctypes.c_float(size))
    data = (text.encode("latin-1", "replace").decode("latin-1") + "\x00").encode("utf-16-le")
    buf = ctypes.create_string_buffer(data, len(data))
    if not pdfium_c.FPDFText_SetText(obj, ctypes.cast(buf, ctypes.POINTER(pdfium_c.FPDF_WCHAR))):
        raise RuntimeError(f"PDFium refused text {text!r}")
    pdfium_c.FPDFPageObj_Transform(obj, 1, 0, 0, 1, x, y)
    pdfium_c.FPDFPage_InsertObject(page.raw, obj)


def book_title(clip: openclipart.Clip) -> str:
    """The clip's title, unless it is an e-mail address (a few are): then its first keywords."""
    if clip.title and "@" not in clip.title:
        return html.unescape(clip.title)  # some titles are escaped twice ("B &amp; W")
    return ", ".join(clip.keywords[:2]) or Path(clip.rel).stem


def write_picture_book(path: Path, title: str, clips: list[openclipart.Clip]) -> None:
    """An A4 picture book, six clips per page, each with its title and keywords as real text."""
    pdf = pdfium.PdfDocument.new()
    per_page, (width, height) = 6, (595, 842)
    for first in range(0, len(clips), per_page):
        page = pdf.new_page(width, height)
        _add_text(pdf, page, title, 50, 795, 18)
        _add_text(pdf, page, f"Page {first // per_page + 1}", 500, 795, 10)
        for slot, clip in enumerate(clips[first : first + per_page]):
            x, top = 50 + (slot % 2) * 260, 760 - (slot // 2) * 245
            image = openclipart.load_image(clip, max_side=BOOK_IMAGE_PX)
            scale = min(200 / image.width, 150 / image.height)
            jpeg = io.BytesIO()
            image.save(jpeg, format="JPEG", quality=85)
            jpeg.seek(0)
            obj = pdfium.PdfImage.new(pdf)
            obj.load_jpeg(jpeg, inline=True)  # DCT-compressed: a few KB per clip instead of raw pixels
            obj.set_matrix(pdfium.PdfMatrix().scale(image.width * scale, image.height * scale)
                           .translate(x, top - image.height * scale))
            page.insert_obj(obj)
            _add_text(pdf, page, book_title(clip), x, top - 168, 11)
            for n, line in enumerate(textwrap.wrap(", ".join(clip.keywords), 50)[:3]):
                _add_text(pdf, page, line, x, top - 182 - 11 * n, 8)
        page.gen_content()
    buf = io.BytesIO()
    pdf.save(buf)
    atomic_write(path, reproducible(buf.getvalue()))


def reproducible(data: bytes) -> bytes:
    """Pin PDFium's creation date and random file /ID (same lengths, so the xref offsets stay valid):
    regenerating the gallery then gives byte-identical PDFs, hence identical item ids."""
    data = re.sub(rb"/CreationDate\(D:\d{14}", b"/CreationDate(D:20000101000000", data)
    digest = hashlib.sha256(re.sub(rb"/ID\[<[0-9A-F]{32}><[0-9A-F]{32}>\]", b"", data)).hexdigest()[:32].upper()
    return re.sub(rb"/ID\[<[0-9A-F]{32}><[0-9A-F]{32}>\]", b"/ID[<%s><%s>]" % (digest.encode(), digest.encode()), data)


def write_files(out: Path, clips: list[openclipart.Clip]) -> list[dict[str, str]]:
    """Downscaled clips, picture books and the ReportLab guide under ``out``; returns the provenance rows."""
    rows = []
    for clip in clips:
        image = openclipart.load_image(clip, max_side=MAX_SIDE)
        buf = io.BytesIO()
        image.quantize(256, method=2).save(buf, format="PNG", optimize=True)  # 2 = FASTOCTREE
        target = out / "images" / clip.rel
        atomic_write(target, buf.getvalue())
        rows.append({"file": target.relative_to(out).as_posix(), "origin": f"{openclipart.PNG_ROOT}/{clip.rel}",
                     "package": openclipart.PNG_PACKAGE, "licence": "public domain (Open Clip Art)",
                     "title": clip.title, "keywords": ", ".join(clip.keywords)})
    docs = out / "docs"
    for name, title, clips_in_book in books(clips):
        write_picture_book(docs / name, title, clips_in_book)
        rows.append({"file": f"docs/{name}", "origin": ", ".join(f"{openclipart.PNG_ROOT}/{c.rel}"
                                                                 for c in clips_in_book),
                     "package": openclipart.PNG_PACKAGE, "licence": "public domain (Open Clip Art; generated here)",
                     "title": title, "keywords": ""})
    shutil.copyfile(REPORTLAB_PDF, docs / REPORTLAB_PDF.name)
    (out / "licences").mkdir(exist_ok=True)
    shutil.copyfile(REPORTLAB_COPYRIGHT, out / "licences" / "reportlab-userguide.copyright")
    rows.append({"file": f"docs/{REPORTLAB_PDF.name}", "origin": str(REPORTLAB_PDF), "package": "python-reportlab-doc",
                 "licence": "BSD-style (ReportLab Inc.), see licences/reportlab-userguide.copyright",
                 "title": "ReportLab PDF Library User Guide", "keywords": ""})
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=GALLERY)
    parser.add_argument("--model", default="mini", help="model name or checkpoint dir for the index")
    parser.add_argument("--clips", type=int, default=DEFAULT_CLIPS)
    parser.add_argument("--batch-size", type=int, default=16)
    stage = parser.add_mutually_exclusive_group()
    stage.add_argument("--files-only", action="store_true", help="write the sources, do not build the index")
    stage.add_argument("--index-only", action="store_true",
                       help="keep the sources; resume the index (rebuilt from scratch if the model changed)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")

    index_dir = args.out / INDEX_NAME
    if not args.index_only:  # sources are regenerated from scratch (byte-identical on a rerun)
        for stale in ("images", "docs", "licences", INDEX_NAME):
            shutil.rmtree(args.out / stale, ignore_errors=True)
        clips = pick_clips(args.clips)
        rows = write_files(args.out, clips)
        atomic_write(args.out / "sources.jsonl",
                           "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows).encode())
        logger.info("wrote %d clips, %d picture books and the ReportLab guide to %s", len(clips), len(BOOKS), args.out)
    if args.files_only:
        return 0
    inputs = [args.out / "images", args.out / "docs"]
    options = {"batch_size": args.batch_size, "progress_bar": True, "chunk_size": 128}
    try:
        report = index_builder.build(inputs, index_dir, args.model, **options)
    except index_builder.GalleryError as err:  # an index from another model: derived data, rebuild it
        logger.warning("%s -- rebuilding %s from scratch", err, index_dir)
        shutil.rmtree(index_dir)
        report = index_builder.build(inputs, index_dir, args.model, **options)
    print(report.summary)
    return 0 if report.ok and not report.skipped else 1


if __name__ == "__main__":
    sys.exit(main())
