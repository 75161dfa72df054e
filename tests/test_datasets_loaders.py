"""Loaders on real files and crafted bad ones: missing packages, huge PNG headers, bad idx, sentence rule."""

from __future__ import annotations

import gzip
import struct
import zlib
from pathlib import Path

import pytest
from PIL import Image

from metaembed.datasets import MissingDataError, fmnist, manuals, openclipart, tuxpaint
from metaembed.datasets.__main__ import main
from metaembed.datasets.build import RDOCS_QUERIES_PER_PAGE


def _png_header(path: Path, width: int, height: int) -> None:
    """A PNG whose IHDR claims ``width x height`` RGBA, with a token IDAT: valid header, no real pixels."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 6, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0"))
                     + chunk(b"IEND", b""))


def _svg(path: Path, title: str, keywords: list[str]) -> None:
    items = "".join(f"<rdf:li>{k}</rdf:li>" for k in keywords)
    path.write_text(
        '<svg xmlns:dc="http://purl.org/dc/elements/1.1/"><metadata><rdf:RDF><cc:Work>'
        f"<dc:title>{title}</dc:title><dc:subject><rdf:Bag>{items}</rdf:Bag></dc:subject>"
        "<dc:creator><cc:Agent><dc:title>Someone</dc:title></cc:Agent></dc:creator>"
        "</cc:Work></rdf:RDF></metadata></svg>", encoding="utf-8")


@pytest.mark.parametrize("size", [(5000, 5000), (30000, 30000)])  # 25 Mpx; 900 Mpx trips Pillow's bomb guard
def test_openclipart_size_guard_skips_huge_png_without_decoding(tmp_path, size):
    png_root, svg_root = tmp_path / "png", tmp_path / "svg"
    for root in (png_root / "animals", svg_root / "animals"):
        root.mkdir(parents=True)
    _png_header(png_root / "animals" / "huge.png", *size)
    Image.new("RGBA", (40, 20), (255, 0, 0, 0)).save(png_root / "animals" / "small.png")
    _svg(svg_root / "animals" / "huge.svg", "Huge cat", ["cat"])
    _svg(svg_root / "animals" / "small.svg", "Small &amp; red", ["red", "unsorted", "red"])
    clips = openclipart.list_clips(png_root, svg_root)
    assert [c.rel for c in clips] == ["animals/small.png"]
    assert clips[0].title == "Small & red" and clips[0].keywords == ("red",)  # Agent title, noise, dupes dropped
    assert clips[0].text == "Small & red. Keywords: red"
    with pytest.raises(openclipart.ImageTooLargeError, match="huge.png"):
        openclipart.load_image(png_root / "animals" / "huge.png")
    small = openclipart.load_image(png_root / "animals" / "small.png", max_side=10)
    assert small.size == (10, 5) and small.getpixel((0, 0)) == (255, 255, 255)  # transparent -> white


def test_openclipart_real_metadata_and_categories():
    clips = openclipart.list_clips(limit=30)
    assert len(clips) == 30 and all(c.title or c.keywords for c in clips)
    assert not any(c.rel.split("/")[0] in openclipart.DROPPED_CATEGORIES for c in clips)


@pytest.mark.parametrize(
    ("module", "attribute", "call", "package"),
    [
        (tuxpaint, "ROOT", lambda: tuxpaint.load_split("train"), "tuxpaint-stamps-default"),
        (fmnist, "ROOT", lambda: fmnist.load_split("test"), "dataset-fashion-mnist"),
        (openclipart, "PNG_ROOT", lambda: openclipart.list_clips(), "openclipart-png"),
        (openclipart, "SVG_ROOT", lambda: openclipart.list_clips(), "openclipart-svg"),
    ],
)
def test_missing_package_names_apt_package(monkeypatch, tmp_path, module, attribute, call, package):
    monkeypatch.setattr(module, attribute, tmp_path / "absent")
    with pytest.raises(MissingDataError, match=f"apt-get install -y {package}"):
        call()


def test_missing_manual_names_package_and_cli_reports_it(monkeypatch, tmp_path, caplog):
    patched = dict(manuals.MANUALS)
    patched["R-FAQ.pdf"] = (tmp_path / "R-FAQ.pdf", "r-doc-pdf")
    monkeypatch.setattr(manuals, "MANUALS", patched)
    with pytest.raises(MissingDataError, match="r-doc-pdf"):
        manuals.page_count("R-FAQ.pdf")
    assert main(["build", "--out", str(tmp_path / "out"), "--only", "rdocs", "--limit", "1"]) == 2
    assert "r-doc-pdf" in caplog.text
    assert not (tmp_path / "out" / "rdocs").exists() and not (tmp_path / "out" / "rdocs.tmp").exists()


def test_idx_reader_rejects_bad_files(tmp_path):
    bad_magic = tmp_path / "bad.gz"
    bad_magic.write_bytes(gzip.compress(b"\x01\x02\x03\x04" + b"\0" * 8))
    with pytest.raises(fmnist.IdxFormatError, match="bad.gz"):
        fmnist.read_idx(bad_magic)
    short = tmp_path / "short.gz"
    short.write_bytes(gzip.compress(b"\0\0\x08\x01" + struct.pack(">I", 10) + b"\0" * 3))
    with pytest.raises(fmnist.IdxFormatError, match="10"):
        fmnist.read_idx(short)


def test_query_sentence_rule():
    prose = "The installer writes its log to the usual place on every system."
    code = "Use the function x <- read.table(file) to read data into a frame here."
    short = "Too short to use."
    shared = "This sentence appears on two different pages of the manual set."
    pages = [
        ("A.pdf", 1, f"continued from before. {prose} {code} {short} {shared}"),
        ("A.pdf", 2, f"{shared} Another fine sentence with enough words to qualify as a query.\nEnd"),
    ]
    chosen = manuals.query_sentences(pages, per_page=3)
    assert chosen[("A.pdf", 1)] == [prose]  # lower-case start, code, too short, duplicated: all dropped
    assert chosen[("A.pdf", 2)] == ["Another fine sentence with enough words to qualify as a query."]
    assert manuals.clean_text("read\ufffe\r\ning the\r\nmanual") == "reading the\nmanual"
    many = [("B.pdf", 1, " ".join(f"Sentence number {w} has quite enough words in it." for w in "abcdefgh"))]
    first = manuals.query_sentences(many, per_page=2)[("B.pdf", 1)]
    assert len(first) == 2 and first == manuals.query_sentences(many, per_page=2)[("B.pdf", 1)]


def test_test_manuals_yield_at_least_300_queries():
    # The same texts and rule as build_rdocs (which only adds rendering), so this is the set's query count.
    pages = [(p.manual, p.number, p.text) for name in manuals.manual_names("test")
             for p in manuals.iter_pages(name, dpi=None)]
    chosen = manuals.query_sentences(pages, per_page=RDOCS_QUERIES_PER_PAGE)
    assert len(pages) == 178 and sum(len(v) for v in chosen.values()) >= 300


def test_openclipart_thumbnail_cache_round_trips_without_redecoding(tmp_path, monkeypatch):
    clip = openclipart.list_clips(limit=1)[0]
    direct = openclipart.load_image(clip, max_side=48)
    first = openclipart.load_thumbnail(clip, 48, tmp_path)
    assert list(tmp_path.rglob("*.png")) and first.tobytes() == direct.tobytes()

    def no_decoding(*_args, **_kwargs):
        raise AssertionError("the cached thumbnail should be used")

    monkeypatch.setattr(openclipart, "load_image", no_decoding)
    again = openclipart.load_thumbnail(clip, 48, tmp_path)
    assert again.size == direct.size and again.convert("RGB").tobytes() == direct.tobytes()
