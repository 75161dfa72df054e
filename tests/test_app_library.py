"""The explorer library (explorer) without a server: fast checks with the toy encoder and a real
index_builder gallery."""

from __future__ import annotations

import dataclasses
import json
import zipfile
from pathlib import Path

import pytest
from app_fixtures import PDF_PAGES, SHAPES, draw, write_inputs
from toy_encoder import ToyEncoder

from explorer import scale, tradeoff
from explorer.config import ExplorerConfig, UploadCaps
from explorer.errors import ExplorerError
from explorer.gallery import resolve_gallery_dir
from explorer.search import format_bytes
from explorer.service import Explorer
from index_builder import build
from metaembed.budget import Budget
from metaembed.datasets.build import build as build_eval_sets
from metaembed.models import ALIASES
from metaembed.scoring import maxsim_pairs


class CountingToy(ToyEncoder):
    """Counts real encode calls, independently of the explorer's own counter."""

    calls = 0

    def encode_queries(self, items, batch_size=16):
        CountingToy.calls += len(items)
        return super().encode_queries(items, batch_size)


@pytest.fixture(scope="module")
def toy_gallery(tmp_path_factory):
    root = tmp_path_factory.mktemp("lib")
    encoder = CountingToy()
    build([write_inputs(root / "inputs")], root / "gallery", encoder=encoder)
    return root, encoder


@pytest.fixture
def explorer(toy_gallery, tmp_path):
    root, encoder = toy_gallery
    config = ExplorerConfig(model="toy", gallery=root / "gallery", eval_set=None, session_root=tmp_path / "sessions",
                            caps=UploadCaps(max_files=3, max_pages=4, max_bytes=2**20))
    return Explorer(config, load_model={"toy": encoder, "other": ToyEncoder(seed=1)}.__getitem__,
                    build_eval_sets=build_eval_sets)


def test_budget_and_k_changes_reuse_the_cached_query(explorer):
    before = CountingToy.calls
    first = explorer.search("a", PDF_PAGES[0], None, None, 8, 16, 5)
    second = explorer.search("a", PDF_PAGES[0], None, None, 2, 4, 3)
    third = explorer.search("a", PDF_PAGES[0], None, "", 16, 64, 6, True, 6)
    assert CountingToy.calls == before + 2  # once per kind in the gallery (images, pages), then cached
    assert [f.outcome.figures["query_encodes"] for f in (first, second, third)] == [2, 2, 2]
    assert second.outcome.figures["query_cached"] and len(second.outcome.hits) == 3
    old, new = [h.id for h in first.outcome.hits], [h.id for h in second.outcome.hits]
    assert second.outcome.moved_in == [i for i in new if i not in old]
    assert second.outcome.moved_out == [i for i in old if i not in new]
    explorer.search("a", PDF_PAGES[0], None, "Find the page.", 8, 16)  # instruction is part of the query
    assert CountingToy.calls == before + 3  # a typed instruction: one encode for every kind


def test_scores_match_the_scorer_and_token_view(explorer):
    view = explorer.search("s", PDF_PAGES[1], None, None, 4, 8, 6)
    session = explorer.session("s")
    gallery = explorer.demo.get()
    top = view.outcome.hits[0]
    query = session.cached_query(session.last.model_fp, session.last.kind_keys[top.kind])
    expected = maxsim_pairs(query[None], gallery.index.get_vectors(top.id)[None], Budget(4, 8))[0, 0]
    assert top.score == pytest.approx(float(expected), abs=2e-2)  # bf16 storage
    fig, overlay, note, _, data = explorer.token_matches("s", 1)
    assert data["score"] == pytest.approx(top.score, abs=2e-2)
    assert overlay is None and "exposes no attention" in note  # the toy backend has no attention API
    assert len(fig.data) == 2


def test_user_errors_are_explorer_errors(explorer, tmp_path):
    with pytest.raises(ExplorerError, match="empty query"):
        explorer.search("e", "  ", None, None, 1, 1)
    with pytest.raises(ExplorerError, match="r_c=65 exceeds"):
        explorer.search("e", "x", None, None, 1, 65)
    with pytest.raises(ExplorerError, match="whole numbers"):
        explorer.search("e", "x", None, None, 1.5, 2)
    with pytest.raises(ExplorerError, match="k′ .* must be at least k"):
        explorer.search("e", "x", None, None, 1, 1, 5, True, 2)
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 20)
    with pytest.raises(ExplorerError, match="query image cannot be used"):
        explorer.search("e", None, str(bad), None, 1, 1)
    with pytest.raises(ExplorerError, match="search first"):
        explorer.token_matches("fresh", 1)


def test_mismatched_model_is_refused_plainly(explorer):
    message = explorer.select_model("m", "other")
    assert "⚠" in message and "built with another model" in message
    with pytest.raises(ExplorerError, match="built with another model"):
        explorer.search("m", "x", None, None, 1, 1)


def test_uploads_are_private_capped_and_cleaned_up(explorer, tmp_path):
    files = []
    for i, (name, color, shape) in enumerate(SHAPES):
        files.append(tmp_path / f"{i}-{name}")
        draw(color, shape).save(files[-1])
    junk = tmp_path / "junk.gif"
    junk.write_text("GIF? no")
    report = explorer.upload("alice", [*files, junk])
    assert report["accepted"] == [f.name for f in files[:3]]  # max_files=3
    reasons = {s["file"]: s["reason"] for s in report["skipped"]}
    assert "file cap" in reasons[files[3].name] and "unsupported" in reasons["junk.gif"]
    assert report["total_items"] == 3 and explorer.gallery_status("alice")["gallery"] == "own"
    assert explorer.gallery_status("bob")["gallery"] == "demo"
    with pytest.raises(ExplorerError, match="no gallery yet"):
        explorer.use_gallery("bob", "own")
    hits = explorer.search("bob", None, str(files[0]), None, 8, 16, 50).outcome.hits
    assert not any(h.caption.endswith(files[0].name) for h in hits)
    alice_dir = explorer.session("alice").workdir
    assert alice_dir.is_dir() and alice_dir != explorer.session("bob").workdir
    explorer.close_session("alice")
    assert not alice_dir.exists()


def test_pareto_front():
    points = [(0.5, 1.0), (0.6, 2.0), (0.55, 3.0), (0.6, 2.0), (0.7, 8.0)]
    assert tradeoff.pareto(points) == [True, True, False, True, True]


def test_scale_calculator_paper_rows():
    for budget, gflops, gib in ((Budget(1, 1), 0.71, 0.67), (Budget(8, 16), 91.75, 10.68),
                                (Budget(16, 64), 733.89, 42.72)):
        est = scale.estimate(budget, 100_000, 3584, "bf16")
        assert est.gflops == pytest.approx(gflops, rel=0.015) and round(est.index_gib, 2) == gib
        assert est.fits
    assert not scale.estimate(Budget(16, 64), 100_000, 3584, "bf16", "T4 (16 GiB)").fits
    with pytest.raises(ValueError, match="dtype"):
        scale.estimate(Budget(1, 1), 10, 384, "int3")


def test_pairs_file_errors_name_the_line(tmp_path):
    bad_header = tmp_path / "p.csv"
    bad_header.write_text("q,item\nx,y\n")
    with pytest.raises(ExplorerError, match="line 1"):
        tradeoff.read_pairs(bad_header)
    bad_json = tmp_path / "p.jsonl"
    bad_json.write_text('{"query": "a", "relevant_item": "b"}\n{oops\n')
    with pytest.raises(ExplorerError, match="line 2"):
        tradeoff.read_pairs(bad_json)


def test_gallery_sweep_counts_the_first_stage_bytes(explorer, tmp_path):
    """The pairs-file sweep runs the harness's BEIR loop: a two-stage row reads the k' shortlisted candidates at
    r_c plus the whole token-0 table the first stage scans (it used to leave the latter out)."""
    pairs = tmp_path / "pairs.csv"
    pairs.write_text("query,relevant_item\n" + "".join(f"{t},notes.pdf#{i + 1}\n" for i, t in enumerate(PDF_PAGES)))
    gallery = explorer.demo.get()
    n, dim = len(gallery.index), gallery.index.dim
    _, header, rows, _ = explorer.sweep("p", "upload", pairs, "1x1,4x8", two_stage=True, k_prime=3)
    read = {row[0]: row[header.index("bytes read/query")] for row in rows}
    assert read == {"(1,1)": format_bytes(3 * 1 * dim * 2 + n * dim * 4),
                    "(4,8)": format_bytes(3 * 8 * dim * 2 + n * dim * 4)}
    _, header, rows, _ = explorer.sweep("p", "upload", pairs, "4x8")
    assert rows[0][header.index("bytes read/query")] == format_bytes(n * 8 * dim * 2)  # exhaustive: no first stage


@pytest.mark.parametrize("cost", ["bytes_read", "latency"])
def test_sweep_pareto_front_is_the_plotted_one(explorer, tmp_path, cost):
    """The chart's x axis is the cost the front is computed on: no plotted point beats a starred one on both
    axes, and every unstarred point is beaten by a plotted one; the table leads with the main metric."""
    pairs = tmp_path / "pairs.csv"
    pairs.write_text("query,relevant_item\n" + "".join(f"{t},notes.pdf#{i + 1}\n" for i, t in enumerate(PDF_PAGES))
                     + f"a red circle,{SHAPES[0][0]}\n")
    fig, header, rows, summary = explorer.sweep("t", "upload", pairs, "1x1,2x4,4x8,8x16,16x64,1x64", cost)
    assert header[1] == "ndcg@5" and header[0] == "budget"  # the main metric first
    assert "3 queries" in summary and str(tmp_path) not in summary and "pairs.csv" in summary
    points = {label: (x, y) for trace in fig.data if trace.mode == "markers+text"
              for label, x, y in zip(trace.text, trace.x, trace.y, strict=True)}
    starred = {row[0] for row in rows if row[-1]}
    assert set(points) == {row[0] for row in rows} and starred
    for label, (x, y) in points.items():
        beaten = any(x2 <= x and y2 >= y and (x2 < x or y2 > y) for x2, y2 in points.values())
        assert beaten == (label not in starred), (label, points, starred)
    for line in (trace for trace in fig.data if trace.mode == "lines"):  # drawn when the front has 2+ points
        assert list(line.x) == sorted(line.x) and len(line.x) == len(starred)  # left to right: no zigzag


def _beir_zip(path, members):
    with zipfile.ZipFile(path, "w") as archive:
        for name, text in members.items():
            archive.writestr(name, text)
    return path


def test_sweep_beir_zip_and_unsafe_zip(explorer, tmp_path):
    corpus = [{"_id": f"d{i}", "text": t} for i, t in enumerate(["red apples", "blue sky at noon", "green grass",
                                                                   "invoice total due", "mountain trail"])]
    queries = [{"_id": "q0", "text": "apples that are red"}, {"_id": "q1", "text": "the total of the invoice"}]
    zipped = _beir_zip(tmp_path / "set.zip", {
        "set/corpus.jsonl": "\n".join(json.dumps(c) for c in corpus),
        "set/queries.jsonl": "\n".join(json.dumps(q) for q in queries),
        "set/qrels/test.tsv": "query-id\tcorpus-id\tscore\nq0\td0\t1\nq1\td3\t1\n"})
    fig, header, rows, summary = explorer.sweep("z", "upload", zipped, "1x1,4x8,16x64")
    assert [r[0] for r in rows] == ["(1,1)", "(4,8)", "(16,64)"]
    assert rows[0][-1] == "★" and "Pareto-optimal" in summary
    assert all(0 <= r[header.index("ndcg@5")] <= 1 for r in rows)
    evil = _beir_zip(tmp_path / "evil.zip", {"../../escape.txt": "x", "corpus.jsonl": "{}"})
    with pytest.raises(ExplorerError, match="outside the archive"):
        explorer.sweep("z", "upload", evil, "")
    with pytest.raises(ExplorerError, match="budgets"):
        explorer.sweep("z", "upload", zipped, "8by8")


def test_each_kind_is_searched_with_its_own_instruction(explorer, tmp_path):
    from metaembed.models.instructions import TEXT_TO_IMAGE, TEXT_TO_PAGE

    both = explorer.search("i", "a red circle", None, None, 8, 16, 6).outcome
    assert both.figures["instructions"] == {"image": TEXT_TO_IMAGE.query, "pdf-page": TEXT_TO_PAGE.query}
    assert both.figures["query_encodes"] == 2 and {h.kind for h in both.hits} == {"image", "pdf-page"}
    assert explorer.search("i", "a red circle", None, None, 1, 1).outcome.figures["query_encodes"] == 2  # cached
    images = explorer.search("i", "a red circle", None, None, 8, 16, 6, find="images").outcome
    pages = explorer.search("i", "a red circle", None, None, 8, 16, 6, find="pages").outcome
    assert images.figures["instructions"] == {"image": TEXT_TO_IMAGE.query}
    assert {h.kind for h in images.hits} == {"image"} and {h.kind for h in pages.hits} == {"pdf-page"}
    assert images.figures["query_encodes"] == 2 and images.figures["candidates"] == len(SHAPES)
    # Fair merge: each kind keeps its own order and scores, and the merged list is their union by score.
    for kind, alone in (("image", images), ("pdf-page", pages)):
        assert [(h.id, h.score) for h in both.hits if h.kind == kind] == [(h.id, h.score) for h in alone.hits]
    union = sorted([*images.hits, *pages.hits], key=lambda h: -h.score)
    assert [h.id for h in both.hits] == [h.id for h in union]
    # Two-stage: every kind gets its own shortlist, so k' covering each kind equals the exhaustive ranking.
    staged = explorer.search("i", "a red circle", None, None, 8, 16, 4, True, len(SHAPES)).outcome
    assert [h.id for h in staged.hits] == [h.id for h in both.hits[:4]] and staged.figures["first_stage_ms"] > 0
    typed = explorer.search("i", "a red circle", None, "Find it.", 1, 1).outcome
    assert set(typed.figures["instructions"].values()) == {"Find it."} and typed.figures["query_encodes"] == 3
    assert set(explorer.search("i", "a red circle", None, "none", 1, 1).outcome.figures["instructions"].values()) \
        == {None}
    path = tmp_path / "q.png"
    draw((1, 2, 3), "circle").save(path)
    assert set(explorer.search("i", None, str(path), None, 1, 1).outcome.figures["instructions"].values()) == {None}
    line = explorer.active_instructions("i", "", False, "", "pages")
    assert TEXT_TO_PAGE.query in line and TEXT_TO_IMAGE.query not in line
    assert "no instruction" in explorer.active_instructions("i", "", True, "", "both")
    with pytest.raises(ExplorerError, match="find must be one of"):
        explorer.search("i", "x", None, None, 1, 1, find="videos")


def test_token_matches_of_a_page_use_the_page_query(explorer):
    view = explorer.search("p", PDF_PAGES[0], None, None, 4, 8, 6)
    rank = next(h.rank for h in view.outcome.hits if h.kind == "pdf-page")
    _, _, _, _, data = explorer.token_matches("p", rank)
    assert data["score"] == pytest.approx(view.outcome.hits[rank - 1].score, abs=2e-2)


def test_bundled_sweep_builds_the_tux_paint_set_once(explorer, monkeypatch):
    pytest.importorskip("metaembed.datasets.tuxpaint")
    monkeypatch.setattr(explorer, "config", dataclasses.replace(explorer.config, bundled_eval_limit=6))
    fig, header, rows, summary = explorer.sweep("b", "bundled", None, "1x1,16x64")
    assert [r[0] for r in rows] == ["(1,1)", "(16,64)"] and "tux-t2i" in summary
    assert (explorer.config.session_root / "eval-cache" / "tux-t2i" / "corpus.jsonl").is_file()
    assert explorer.sweep("b", "bundled", None, "1x1,16x64")[2] == rows  # cached per model and budgets


BUNDLED = ExplorerConfig()
HAVE_BUNDLED = ((resolve_gallery_dir(BUNDLED.gallery) / "manifest.json").is_file()
                and (Path(ALIASES["mini"]) / "config.json").is_file())


@pytest.mark.slow
@pytest.mark.skipif(not HAVE_BUNDLED, reason="the committed MetaEmbed-Mini and demo gallery are not in this checkout")
def test_committed_model_answers_the_committed_gallery(tmp_path):
    """`make demo`'s defaults: the bundled model must be the one that built the demo gallery."""
    ex = Explorer(dataclasses.replace(BUNDLED, session_root=tmp_path))
    view = ex.search("d", "a penguin", None, None, 8, 16, 10)
    assert len(view.outcome.hits) == 10 and view.outcome.figures["candidates"] > 100
    assert ex.search("d", "a penguin", None, None, 1, 1, 10).outcome.figures["query_encodes"] == 2  # images, pages
    # Default settings find what is asked for: a PDF question finds the ReportLab guide, a picture query
    # finds pictures (a clip of a penguin among the first five, an image first).
    pdf = ex.search("d", "how to draw a table in a PDF", None, None, 8, 16, 3).outcome.hits
    assert any(h.kind == "pdf-page" and "reportlab" in h.caption for h in pdf), [h.caption for h in pdf]
    penguin = ex.search("d", "a penguin", None, None, 8, 16, 5).outcome.hits
    assert penguin[0].kind == "image"
    assert any("tux" in h.caption.lower() or "pingu" in h.caption.lower() for h in penguin), penguin


def test_model_paths_can_be_locked_for_public_deployments(toy_gallery, tmp_path):
    root, encoder = toy_gallery
    ex = Explorer(ExplorerConfig(model="toy", gallery=root / "gallery", session_root=tmp_path,
                                 allow_model_paths=False), load_model={"toy": encoder}.__getitem__)
    assert ex.model_status("s").endswith("encoding on cpu in float32.")  # a toy backend computes in float32
    assert ex.select_model("s", "toy") == ex.model_status("s")
    with pytest.raises(ExplorerError, match="serves only the model 'toy'"):
        ex.select_model("s", str(tmp_path))


def test_slider_bounds_come_from_the_model(toy_gallery, tmp_path):
    """The app sizes r_q / r_c from the configured model's config before it loads, then from the loaded model."""
    from app import default_bounds

    root, encoder = toy_gallery
    small = ToyEncoder(num_query_tokens=4, num_candidate_tokens=8)
    small.save_pretrained(tmp_path / "small")
    assert default_bounds(str(tmp_path / "small")) == (4, 8)
    ex = Explorer(ExplorerConfig(model="toy", gallery=root / "gallery", session_root=tmp_path / "sessions"),
                  load_model={"toy": encoder, "small": small}.__getitem__)
    assert ex.budget_bounds("s") == (16, 64)
    ex.select_model("s", "small")
    assert ex.budget_bounds("s") == (4, 8)


@pytest.mark.slow
def test_attention_overlay_reads_the_real_mini_without_changing_it():
    import torch

    from explorer.attention import LEGEND_HEIGHT, OVERLAY_WIDTH, overlay
    from metaembed.models import Item
    from metaembed.models.mini import MiniMetaEmbed

    torch.manual_seed(0)
    model = MiniMetaEmbed(device="cpu").eval()
    image = draw((200, 40, 40), "circle")
    before = model.encode_candidates([Item(image=image, text="a red circle")])
    maps = model.candidate_attention(Item(image=image, text="a red circle"))
    after = model.encode_candidates([Item(image=image, text="a red circle")])
    assert torch.equal(before, after) and "_layer" not in vars(model)  # nothing is patched
    grid = int(model.config["visual_grid"])
    assert maps.visual.shape == (model.num_candidate_tokens, grid, grid)
    total = maps.visual.sum(dim=(1, 2))
    assert bool((maps.visual >= 0).all()) and bool((total <= 1 + 1e-5).all()) and bool((total > 0).all())
    picture, plain = overlay(maps, [0, 1]), overlay(maps, [])
    assert picture.size == plain.size and picture.width == OVERLAY_WIDTH > maps.canvas.width  # enlarged
    assert picture.height == round(OVERLAY_WIDTH * maps.canvas.height / maps.canvas.width) + LEGEND_HEIGHT
    top = picture.height - LEGEND_HEIGHT
    assert picture.crop((0, 0, picture.width, top)).tobytes() != plain.crop((0, 0, plain.width, top)).tobytes()
    assert picture.crop((0, top, picture.width, picture.height)).tobytes() == \
        plain.crop((0, top, plain.width, plain.height)).tobytes()  # the legend: the same colour ramp
    ramp = [picture.getpixel((x, top + 15)) for x in (130, picture.width // 2, picture.width - 130)]
    assert ramp[0][1] > ramp[1][1] > ramp[2][1]  # whiter to redder, as the heat layer


def test_duplicate_upload_is_reported_and_not_kept(explorer, tmp_path):
    first, copy = tmp_path / "a.png", tmp_path / "a-copy.png"
    draw((9, 99, 199), "bars").save(first)
    copy.write_bytes(first.read_bytes())
    report = explorer.upload("dave", [first, copy])
    assert report["indexed"] == 1 and report["total_items"] == 1
    (skip,) = report["skipped"]
    assert {skip["file"], skip["reason"].removeprefix("same content as ").removesuffix(", already in your gallery")} \
        == {"a.png", "a-copy.png"}
    assert len(list(explorer.session("dave").uploads_dir().iterdir())) == 1
    # Another file called a.png (stored as a-1.png), then its copy under a third name: the report names the
    # files the visitor uploaded, never the folder's renamed copy.
    other = tmp_path / "other" / "a.png"
    other.parent.mkdir()
    draw((200, 10, 10), "cross").save(other)
    again = tmp_path / "b.png"
    again.write_bytes(other.read_bytes())
    assert explorer.upload("dave", [other])["indexed"] == 1
    (skip,) = explorer.upload("dave", [again])["skipped"]
    assert skip == {"file": "b.png", "reason": "same content as a.png, already in your gallery"}


def test_upload_report_rows_caps_left_and_web_wording(explorer, tmp_path):
    from ingest_fixtures import write_pdf

    big = write_pdf(tmp_path / "big.pdf", [f"page {i}" for i in range(5)])  # the fixture caps: 4 pages, 3 files
    small = tmp_path / "small.png"
    draw((1, 200, 1), "circle").save(small)
    report = explorer.upload("erin", [small, big])
    assert report["files"] == [["small.png", "indexed", ""], ["big.pdf", "skipped", report["skipped"][0]["reason"]]]
    reason = report["skipped"][0]["reason"]
    assert "this PDF has 5 pages" in reason and "3 of 4 images/pages left" in reason and "--" not in reason
    assert report["left"] == {"files": 2, "pages": 3, "mb": pytest.approx(1 - small.stat().st_size / 2**20, abs=0.1)}
    assert "You can still add 2 file(s), 3 images/pages" in report["summary"]
    cards = explorer.own_cards("erin")
    assert [caption for _, caption in cards] == ["small.png"] and Path(cards[0][0]).is_file()
    assert explorer.own_cards("nobody") == []


def test_result_cards_name_items_and_mark_rank_moves(explorer):
    first = explorer.search("m", "a red circle", None, None, 16, 64, 4)
    assert all(r["marker"] == "" for r in first.results)  # nothing to compare with yet
    titles = {r["id"]: r["title"] for r in first.results}
    for r in first.results:
        assert r["title"] in next(caption for _, caption in first.entries if caption.startswith(f"#{r['rank']} "))
        if r["kind"] == "pdf-page":
            assert r["title"].endswith(f"notes.pdf p. {r['page']}")
            assert PDF_PAGES[r["page"] - 1].split()[0] in r["title"]
        else:
            assert titles[r["id"]] == Path(r["file"]).name
    second = explorer.search("m", "a red circle", None, None, 1, 1, 4)
    old = {r["id"]: r["rank"] for r in first.results}
    for r in second.results:
        change = old[r["id"]] - r["rank"] if r["id"] in old else None
        expected = "new" if change is None else f"↑{change}" if change > 0 else f"↓{-change}" if change < 0 else ""
        assert r["marker"] == expected
    assert second.outcome.figures["trained"] and "(a trained group)" in second.figures_md
    odd = explorer.search("m", "a red circle", None, None, 4, 33, 4)
    assert not odd.outcome.figures["trained"] and "not a trained group" in odd.figures_md


def test_catalogue_titles_and_the_gallery_line(toy_gallery, tmp_path):
    from explorer.gallery import catalogue_titles

    root, encoder = toy_gallery
    (tmp_path / "sources.jsonl").write_text(json.dumps({"file": SHAPES[0][0], "title": "Red circle"}) + "\n")
    assert catalogue_titles(tmp_path / "gallery") == {SHAPES[0][0]: "Red circle"}  # the indexed folder's list
    ex = Explorer(ExplorerConfig(model="toy", gallery=root / "gallery", session_root=tmp_path / "s"),
                  load_model={"toy": encoder}.__getitem__)
    line = ex.gallery_blurb("g")
    assert f"{len(SHAPES) + len(PDF_PAGES)} items" in line and f"{len(SHAPES)} images" in line
    assert "notes.pdf" in line and "demo gallery" in line


def test_a_space_locks_model_paths_unless_the_operator_opts_in(monkeypatch):
    monkeypatch.delenv("METAEMBED_ALLOW_MODEL_PATHS", raising=False)
    monkeypatch.delenv("SPACE_ID", raising=False)
    assert ExplorerConfig.from_env().allow_model_paths
    monkeypatch.setenv("SPACE_ID", "someone/metaembed-explorer")
    assert not ExplorerConfig.from_env().allow_model_paths
    monkeypatch.setenv("METAEMBED_ALLOW_MODEL_PATHS", "1")
    assert ExplorerConfig.from_env().allow_model_paths
    monkeypatch.setenv("METAEMBED_ALLOW_MODEL_PATHS", "0")
    monkeypatch.delenv("SPACE_ID")
    assert not ExplorerConfig.from_env().allow_model_paths
