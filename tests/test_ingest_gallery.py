"""The committed demo gallery (assets/gallery/): built with the committed model, complete, redistributable."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import index_builder
from index_builder.gallery import INDEX_DIR
from metaembed.models import DEFAULT_MODEL_DIR, load_encoder

ASSETS = Path(__file__).resolve().parents[1] / "assets"
GALLERY = ASSETS / "gallery"
INDEX = GALLERY / "mini-index"
MAX_COMMITTED_BYTES = 40 * 1024 * 1024


def _sources() -> list[dict]:
    return [json.loads(line) for line in (GALLERY / "sources.jsonl").read_text().splitlines()]


def test_gallery_items_exist_and_are_listed_with_licences() -> None:
    gallery = index_builder.load_gallery(INDEX)
    assert 300 <= len(gallery.index) <= 600
    listed = {row["file"]: row for row in _sources()}
    for item_id in gallery.index.ids:
        meta = gallery.index.get_metadata(item_id)
        source = gallery.source(item_id)
        assert source is not None and gallery.thumbnail(item_id) is not None, item_id
        row = listed[source.resolve().relative_to(GALLERY.resolve()).as_posix()]
        assert row["licence"].startswith(("public domain", "BSD")), row
        assert meta["kind"] in ("image", "pdf-page")
    kinds = {gallery.index.get_metadata(i)["kind"] for i in gallery.index.ids}
    assert kinds == {"image", "pdf-page"}
    assert gallery.manifest["model"]["ref"] == "mini" and gallery.manifest["dtype"] == "bfloat16"


def test_gallery_holds_no_gpl_material_and_stays_small() -> None:
    for row in _sources():
        assert not any(gpl in row["origin"] for gpl in ("tuxpaint", "/R/", "debian-reference")), row
    total = sum(p.stat().st_size for p in GALLERY.rglob("*") if p.is_file())
    assert total < MAX_COMMITTED_BYTES, f"assets/gallery is {total / 2**20:.1f} MiB"
    report = json.loads((INDEX / "report.json").read_text())
    assert report["skipped"] == [] and not report["interrupted"]
    assert not list((INDEX / INDEX_DIR).glob(".*.tmp"))  # no leftovers from an interrupted write


@pytest.mark.slow
def test_gallery_matches_committed_model() -> None:
    encoder = load_encoder(DEFAULT_MODEL_DIR)
    result = index_builder.verify(INDEX, encoder, reencode=8)  # 8 items re-encoded from their files
    assert result.ok, result.problems
    assert result.model_checked and result.reencoded == 8 and not result.warnings
    assert index_builder.info(INDEX).model_fingerprint == encoder.fingerprint()
