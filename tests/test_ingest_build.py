"""index_builder build/add/remove/info/verify on generated inputs with the deterministic toy encoder."""

from __future__ import annotations

import itertools
import json
import threading
import time
from pathlib import Path

import pytest
import torch
from ingest_fixtures import bad_inputs, good_inputs, picture, write_pdf
from toy_encoder import ToyEncoder

import index_builder
from index_builder import GalleryError, Progress
from index_builder.cli import main as cli_main
from metaembed.budget import Budget
from metaembed.models import Item


class CountingEncoder(ToyEncoder):
    """ToyEncoder that remembers how many items it encoded (to prove a resume re-encodes nothing)."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.encoded = 0

    def encode_candidates(self, items, batch_size: int = 16) -> torch.Tensor:
        self.encoded += len(items)
        return super().encode_candidates(items, batch_size)


@pytest.fixture
def encoder() -> CountingEncoder:
    return CountingEncoder(dim=16, num_candidate_tokens=8, num_query_tokens=4)


def test_build_good_and_bad_inputs(tmp_path: Path, encoder: CountingEncoder) -> None:
    good_inputs(tmp_path / "in")
    bad_inputs(tmp_path / "in" / "bad")
    seen: list[Progress] = []
    report = index_builder.build([tmp_path / "in"], tmp_path / "g", encoder, batch_size=3, chunk_size=4,
                                 max_pages=4, progress=seen.append)
    # 8 images (all formats incl. a JPEG named .png) + 2 PDF pages
    assert report.indexed == 10 and report.total_items == 10 and encoder.encoded == 10
    reasons = {Path(s["path"]).name: s["reason"] for s in report.skipped}
    assert set(reasons) == {"empty.png", "truncated.jpg", "corrupt.png", "notes.jpg", "bomb.png", "drawing.svg",
                            "encrypted.pdf", "broken.pdf", "truncated.pdf", "long.pdf", "dangling.png"}
    assert "page cap" in reasons["long.pdf"] and "password" in reasons["encrypted.pdf"]
    on_disk = json.loads((tmp_path / "g" / "report.json").read_text())
    assert on_disk["indexed"] == 10 and len(on_disk["skipped"]) == 11 and on_disk["ok"]
    assert [p.done for p in seen] == [0, 3, 6, 9, 10] and seen[-1].eta_s == 0
    # 3 images look fine by their magic bytes and fail only when decoded: the total shrinks then
    assert (seen[0].total, seen[-1].total, seen[-1].skipped) == (13, 10, 3)
    assert seen[-1].items_per_s > 0 and seen[1].current

    gallery = index_builder.load_gallery(tmp_path / "g")
    metas = {i: gallery.index.get_metadata(i) for i in gallery.index.ids}
    pages = {m["page"]: m for m in metas.values() if m["kind"] == "pdf-page"}
    assert set(pages) == {1, 2} and {m["source"] for m in pages.values()} == {"in/doc.pdf"}
    assert pages[2]["text"] == "Second page about cats" and pages[1]["pages"] == 2
    for item_id, meta in metas.items():
        assert gallery.thumbnail(item_id) is not None
        assert gallery.source(item_id) is not None and item_id.startswith(meta["sha256"][:16])
    # the stored vectors are what the encoder gives for the same input (bf16 storage)
    png_id = next(i for i, m in metas.items() if m["source"] == "in/a.png")
    direct = ToyEncoder(dim=16, num_candidate_tokens=8, num_query_tokens=4).encode_candidates(
        [Item(image=picture(1))])[0]
    assert torch.allclose(gallery.index.get_vectors(png_id), direct, atol=1e-2)


def test_nothing_indexable_is_not_ok(tmp_path: Path, encoder: CountingEncoder, capsys) -> None:
    bad_inputs(tmp_path / "bad")
    report = index_builder.build([tmp_path / "bad"], tmp_path / "g", encoder, max_pages=4)
    assert not report.ok and report.indexed == 0 and len(report.skipped) == 11


def test_duplicates_indexed_once_and_reported(tmp_path: Path, encoder: CountingEncoder) -> None:
    (tmp_path / "in").mkdir()
    picture(1).save(tmp_path / "in" / "a.png")
    (tmp_path / "in" / "copy_of_a.png").write_bytes((tmp_path / "in" / "a.png").read_bytes())
    report = index_builder.build([tmp_path / "in"], tmp_path / "g", encoder)
    assert report.indexed == 1
    assert report.duplicates == [{"path": "in/copy_of_a.png", "duplicate_of": "in/a.png"}]
    # adding yet another copy later: still a duplicate of the committed item
    (tmp_path / "more").mkdir()
    (tmp_path / "more" / "again.png").write_bytes((tmp_path / "in" / "a.png").read_bytes())
    again = index_builder.add(tmp_path / "g", [tmp_path / "more"], encoder)
    assert again.indexed == 0 and again.duplicates[0]["duplicate_of"] == "in/a.png" and again.ok


def test_captions_make_image_text_candidates(tmp_path: Path, encoder: CountingEncoder) -> None:
    (tmp_path / "in").mkdir()
    picture(1).save(tmp_path / "in" / "a.png")
    picture(2).save(tmp_path / "in" / "b.png")
    (tmp_path / "caps.csv").write_text("path,text\nin/a.png,a purple ball on teal\n")
    index_builder.build([tmp_path / "in"], tmp_path / "g", encoder, captions=tmp_path / "caps.csv")
    gallery = index_builder.load_gallery(tmp_path / "g")
    by_source = {gallery.index.get_metadata(i)["source"]: i for i in gallery.index.ids}
    assert gallery.index.get_metadata(by_source["in/a.png"])["caption"] == "a purple ball on teal"
    assert gallery.index.get_metadata(by_source["in/b.png"])["caption"] is None
    captioned = encoder.encode_candidates([Item(image=picture(1), text="a purple ball on teal")])[0]
    assert torch.allclose(gallery.index.get_vectors(by_source["in/a.png"]), captioned, atol=1e-2)


def test_add_remove_info_verify(tmp_path: Path, encoder: CountingEncoder) -> None:
    (tmp_path / "in").mkdir()
    for i in range(3):
        picture(i + 10).save(tmp_path / "in" / f"p{i}.png")
    write_pdf(tmp_path / "doc.pdf", ["one", "two", "three"])
    index_builder.build([tmp_path / "in"], tmp_path / "g", encoder)
    assert index_builder.add(tmp_path / "g", [tmp_path / "doc.pdf"], encoder).indexed == 3
    summary = index_builder.info(tmp_path / "g")
    assert (summary.items, summary.images, summary.pages, summary.documents) == (6, 3, 3, 1)
    assert (summary.dim, summary.r_c, summary.dtype) == (16, 8, "bfloat16")
    assert summary.stored_bytes == 6 * 8 * 16 * 2
    assert summary.bytes_per_budget[str(Budget(2, 4))] == 6 * 4 * 16 * 2
    assert summary.model_fingerprint == encoder.fingerprint()
    assert index_builder.verify(tmp_path / "g", encoder).ok

    assert index_builder.remove(tmp_path / "g", ["doc.pdf"]) == 3  # a source removes all its pages
    with pytest.raises(GalleryError, match="nothing removed"):
        index_builder.remove(tmp_path / "g", ["in/p0.png", "no-such-id"])
    gallery = index_builder.load_gallery(tmp_path / "g")
    first = gallery.index.ids[0]
    assert index_builder.remove(tmp_path / "g", [first]) == 1
    assert len(index_builder.load_gallery(tmp_path / "g").index) == 2
    assert len(list((tmp_path / "g" / "thumbs").iterdir())) == 2  # removed items' thumbnails are gone
    assert index_builder.verify(tmp_path / "g", encoder).ok


def test_model_mismatch_is_refused(tmp_path: Path, encoder: CountingEncoder) -> None:
    (tmp_path / "in").mkdir()
    picture(1).save(tmp_path / "in" / "a.png")
    index_builder.build([tmp_path / "in"], tmp_path / "g", encoder)
    other = ToyEncoder(dim=16, num_candidate_tokens=8, num_query_tokens=4, seed=1)
    with pytest.raises(GalleryError, match="fingerprint"):
        index_builder.add(tmp_path / "g", [tmp_path / "in"], other)
    result = index_builder.verify(tmp_path / "g", other)
    assert not result.ok and "fingerprint" in result.problems[0]


def test_verify_detects_damage(tmp_path: Path, encoder: CountingEncoder) -> None:
    (tmp_path / "in").mkdir()
    picture(1).save(tmp_path / "in" / "a.png")
    index_builder.build([tmp_path / "in"], tmp_path / "g", encoder)
    next((tmp_path / "g" / "thumbs").iterdir()).unlink()
    assert any("thumbnail" in p for p in index_builder.verify(tmp_path / "g", encoder).problems)
    vectors = next((tmp_path / "g" / "index").glob("vectors-*.safetensors"))
    data = vectors.read_bytes()
    vectors.write_bytes(data[:-2] + bytes([data[-2] ^ 0x01]) + data[-1:])  # one bit: the mapped open cannot see it
    assert len(index_builder.load_gallery(tmp_path / "g").index) == 1
    result = index_builder.verify(tmp_path / "g", encoder)
    assert not result.ok and "checksum" in result.problems[0]
    vectors.write_bytes(data[:-10])
    result = index_builder.verify(tmp_path / "g", encoder)
    assert not result.ok and "truncated" in result.problems[0]


def test_refuses_foreign_directory(tmp_path: Path, encoder: CountingEncoder) -> None:
    (tmp_path / "g").mkdir()
    (tmp_path / "g" / "precious.txt").write_text("mine")
    with pytest.raises(GalleryError, match="not empty and is not a gallery"):
        index_builder.build([tmp_path], tmp_path / "g", encoder)


@pytest.fixture
def toy_model_dir(tmp_path: Path, monkeypatch) -> Path:
    """A ToyEncoder checkpoint the CLI can load through the ordinary backend registry."""
    from metaembed import models

    monkeypatch.setitem(models.BACKENDS, "toy", "toy_encoder:ToyEncoder")
    ToyEncoder(dim=16, num_candidate_tokens=8, num_query_tokens=4).save_pretrained(tmp_path / "model")
    return tmp_path / "model"


def test_cli_end_to_end(tmp_path: Path, toy_model_dir: Path, capsys) -> None:
    good_inputs(tmp_path / "in")
    bad_inputs(tmp_path / "bad")
    out = str(tmp_path / "g")
    model = ["--model", str(toy_model_dir), "--no-progress"]
    assert cli_main(["build", str(tmp_path / "in"), str(tmp_path / "bad"), "--out", out, "--max-pages", "4",
                     *model]) == 0
    printed = capsys.readouterr().out
    assert "indexed 10 items" in printed and "skipped 11" in printed
    assert "skipped  bad/bomb.png: image too large" in printed
    assert cli_main(["info", out, "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["items"] == 10 and summary["pages"] == 2 and summary["model_ref"] == str(toy_model_dir)
    assert cli_main(["verify", out]) == 0 and "OK: 10 items checked, model checked" in capsys.readouterr().out
    assert cli_main(["remove", out, "in/doc.pdf"]) == 0 and "removed 2 items" in capsys.readouterr().out
    assert cli_main(["add", out, str(tmp_path / "in" / "doc.pdf"), "--no-progress"]) == 0  # model from manifest
    assert "indexed 2 items" in capsys.readouterr().out
    # a second build of the same inputs re-encodes nothing
    assert cli_main(["build", str(tmp_path / "in"), "--out", out, *model]) == 0
    assert "indexed 0 items (10 already present)" in capsys.readouterr().out


def test_cli_errors_are_messages_not_tracebacks(tmp_path: Path, toy_model_dir: Path, caplog, capsys) -> None:
    bad_inputs(tmp_path / "bad")
    assert cli_main(["build", str(tmp_path / "bad"), "--out", str(tmp_path / "g"), "--model",
                     str(tmp_path / "no-model"), "--no-progress"]) == 2
    assert "neither a known name" in caplog.text and "Traceback" not in caplog.text
    assert cli_main(["build", str(tmp_path / "bad"), "--out", str(tmp_path / "g"), "--model", str(toy_model_dir),
                     "--no-progress", "--max-pages", "4"]) == 1  # nothing could be indexed
    assert "indexed 0 items" in capsys.readouterr().out
    assert cli_main(["info", str(tmp_path / "nothing")]) == 2
    assert cli_main(["remove", str(tmp_path / "g"), "no-such-id"]) == 2
    assert "nothing removed" in caplog.text


def test_verify_reencode_catches_changed_pipeline(tmp_path: Path, encoder: CountingEncoder) -> None:
    (tmp_path / "in").mkdir()
    for i in range(4):
        picture(i + 20).save(tmp_path / "in" / f"p{i}.png")
    write_pdf(tmp_path / "in" / "doc.pdf", ["one page", "two page"])
    index_builder.build([tmp_path / "in"], tmp_path / "g", encoder)
    result = index_builder.verify(tmp_path / "g", encoder, reencode=6)
    assert result.ok and result.reencoded == 6
    picture(99).save(tmp_path / "in" / "p0.png")  # the file under a stored item now shows something else
    result = index_builder.verify(tmp_path / "g", encoder, reencode=6)
    assert any("re-encoded vectors differ" in p for p in result.problems)


def test_prefetch_order_errors_and_early_stop() -> None:
    from index_builder.prefetch import prefetch

    assert list(prefetch(iter(range(50)), depth=3)) == list(range(50))

    def failing():
        yield 1
        raise ValueError("bad producer")

    stream = prefetch(failing())
    assert next(stream) == 1
    with pytest.raises(ValueError, match="bad producer"):
        next(stream)

    produced = []

    def endless():
        for i in itertools.count():
            produced.append(i)
            yield i

    stream = prefetch(endless(), depth=2)
    assert next(stream) == 0
    stream.close()  # the consumer stops early (Ctrl-C, UI cancel): the producer must stop too
    stopped_at = len(produced)
    time.sleep(0.3)
    assert len(produced) == stopped_at <= 5
    assert not any(t.name == "index_builder-prefetch" for t in threading.enumerate())
