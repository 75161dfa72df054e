"""index_builder input handling: discovery by magic bytes, safe image decoding, PDF pages, captions."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from ingest_fixtures import bad_inputs, good_inputs, png_header_only, write_pdf

from index_builder.captions import load_captions
from index_builder.discovery import Found, Rejected, discover, sniff
from index_builder.errors import GalleryError, InputSkipped
from index_builder.pdf import count_pages, iter_pages
from metaembed.images import ImageError, load_image


def test_discovery_sniffs_content_not_extension(tmp_path: Path) -> None:
    files = good_inputs(tmp_path / "in")
    (tmp_path / "in" / ".hidden.png").write_bytes(files["png"].read_bytes())
    found = {Path(f.path).name: f for f in discover([tmp_path / "in"]) if isinstance(f, Found)}
    assert found["h_really_jpeg.png"].kind == "jpeg"
    assert {found[p.name].kind for k, p in files.items() if k != "jpeg_as_png"} == {
        "png", "jpeg", "webp", "bmp", "tiff", "gif", "pdf"}
    assert ".hidden.png" not in found
    assert found["d.bmp"].display == "in/sub/deeper/d.bmp"  # relative to the input's parent folder


def test_discovery_rejects_with_reasons_and_excludes_output(tmp_path: Path) -> None:
    bad = bad_inputs(tmp_path / "bad")
    out = tmp_path / "bad" / "gallery"
    out.mkdir()
    (out / "thumb.png").write_bytes(b"\x89PNG\r\n\x1a\n")
    fifo = tmp_path / "bad" / "pipe"
    os.mkfifo(fifo)
    entries = list(discover([tmp_path / "bad", tmp_path / "missing"], exclude=[out]))
    rejected = {Path(e.path).name: e.reason for e in entries if isinstance(e, Rejected)}
    assert rejected["empty.png"] == "empty file"
    assert "unsupported file type" in rejected["notes.jpg"] and "unsupported" in rejected["drawing.svg"]
    assert "no such file" in rejected["missing"] and "dangling" in rejected["dangling.png"]
    assert rejected["pipe"] == "not a regular file"
    assert not any("thumb.png" in str(e.path) for e in entries)
    assert bad["bomb"].name not in rejected  # sniffed as PNG; refused later, when its header is read


def test_sniff_table() -> None:
    assert sniff(b"RIFF\0\0\0\0WEBPVP8 ") == "webp" and sniff(b"RIFF\0\0\0\0WAVEfmt ") is None
    assert sniff(b"\n\n%PDF-1.7") == "pdf" and sniff(b"GIF89a") == "gif" and sniff(b"MM\0*") == "tiff"


def test_load_image_formats_and_transparency(tmp_path: Path) -> None:
    files = good_inputs(tmp_path)
    for key in ("png", "jpeg", "webp", "bmp", "tiff", "gif", "jpeg_as_png"):
        image = load_image(files[key])
        assert image.mode == "RGB" and image.size == (96, 64), key
    rgba = load_image(files["rgba"])
    assert rgba.getpixel((2, 2)) == (255, 255, 255)  # transparent -> white, not black
    assert rgba.getpixel((32, 32)) == (200, 30, 30)


def test_load_image_downscales_to_bound_memory(tmp_path: Path) -> None:
    from PIL import Image

    Image.new("RGB", (3000, 1500), "red").save(tmp_path / "big.png")
    assert load_image(tmp_path / "big.png", max_side=512).size == (512, 256)


@pytest.mark.parametrize("key,reason", [
    ("truncated", "truncated"), ("corrupt", "corrupt"), ("bomb", "too large"),
])
def test_bad_images_raise_image_error(tmp_path: Path, key: str, reason: str) -> None:
    files = bad_inputs(tmp_path)
    with pytest.raises(ImageError, match=reason):
        load_image(files[key])
    with pytest.raises(ImageError, match=reason):  # the same checks on bytes (a search request's image)
        load_image(files[key].read_bytes())


def test_pixel_limit_checked_from_header_before_decoding(tmp_path: Path) -> None:
    # 5000 x 5000 claims 25 Mpx; the data is a few bytes, so decoding would fail differently
    path = png_header_only(tmp_path / "claims.png", 5000, 5000)
    with pytest.raises(ImageError, match="25,000,000 px exceeds the 16,000,000 px limit"):
        load_image(path, max_pixels=16_000_000)


def test_pdf_pages_text_and_streaming(tmp_path: Path) -> None:
    pdf = write_pdf(tmp_path / "d.pdf", ["alpha page", "beta page", "gamma page"])
    assert count_pages(pdf) == 3
    pages = iter_pages(pdf, [3, 1], dpi=36)
    first = next(pages)  # lazily rendered: one page at a time
    assert first.number == 3 and first.text == "gamma page" and first.image.size == (306, 396)
    assert next(pages).text == "alpha page"
    assert next(pages, None) is None


@pytest.mark.parametrize("key,reason", [
    ("encrypted", "password"), ("broken_pdf", "not a PDF or corrupted"), ("truncated_pdf", "corrupted"),
])
def test_bad_pdfs(tmp_path: Path, key: str, reason: str) -> None:
    with pytest.raises(InputSkipped, match=reason):
        count_pages(bad_inputs(tmp_path)[key])


def test_pdf_page_cap(tmp_path: Path) -> None:
    with pytest.raises(InputSkipped, match=r"5 pages, over the page cap \(4"):
        count_pages(bad_inputs(tmp_path)["too_many_pages"], max_pages=4)


def test_captions_csv_and_jsonl(tmp_path: Path) -> None:
    (tmp_path / "c.csv").write_text('path,text\nimgs/a.png,"a red, round thing"\nb.png,blue\n')
    (tmp_path / "c.jsonl").write_text('{"path": "a.png", "text": "red"}\n\n{"path": "/abs/b.png", "text": "x"}\n')
    csv_caps = load_captions(tmp_path / "c.csv")
    assert csv_caps[(tmp_path / "imgs" / "a.png").resolve()] == "a red, round thing"
    assert csv_caps[(tmp_path / "b.png").resolve()] == "blue"
    assert load_captions(tmp_path / "c.jsonl")[Path("/abs/b.png")] == "x"


@pytest.mark.parametrize("content,match", [
    ('{"path": "a.png"}\n', "line 1: needs a non-empty path and text"),
    ('{"path": "a.png", "text": "ok"}\n{oops\n', "line 2: invalid JSON"),
])
def test_bad_captions_file_names_line(tmp_path: Path, content: str, match: str) -> None:
    (tmp_path / "c.jsonl").write_text(content)
    with pytest.raises(GalleryError, match=match):
        load_captions(tmp_path / "c.jsonl")


def test_sixteen_bit_greyscale_keeps_its_contrast(tmp_path: Path) -> None:
    import numpy as np
    from PIL import Image

    ramp = (np.arange(64, dtype=np.uint16).reshape(8, 8) * 1000)  # 0 .. 63,000: beyond 8 bits
    Image.fromarray(ramp).save(tmp_path / "scan16.png")
    image = load_image(tmp_path / "scan16.png")
    assert image.getpixel((0, 0)) == (0, 0, 0) and image.getpixel((7, 7)) == (255, 255, 255)
    assert 100 < image.getpixel((0, 4))[0] < 160  # the middle of the ramp stays mid-grey, not clipped white
