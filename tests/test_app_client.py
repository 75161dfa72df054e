"""The explorer app launched for real (``python app.py`` on a free port) and driven with gradio_client."""

from __future__ import annotations

import re

import pytest
from app_fixtures import PDF_PAGES, SHAPES, build_fixture, draw, running_app
from gradio_client import Client, handle_file
from gradio_client.exceptions import AppError, ValidationError
from ingest_fixtures import write_pdf

from metaembed.budget import TRAINED_GROUPS

pytestmark = pytest.mark.slow

SEARCH_DEFAULTS = {"instruction": "", "k": 5, "mode": "exhaustive", "k_prime": 100, "find": "both"}


@pytest.fixture(scope="module")
def app_root(tmp_path_factory):
    return tmp_path_factory.mktemp("explorer")


@pytest.fixture(scope="module")
def app_url(app_root):
    model, gallery = build_fixture(app_root)
    caps = {"METAEMBED_UPLOAD_MAX_PAGES": "6", "METAEMBED_UPLOAD_MAX_FILES": "5"}
    with running_app(model, gallery, app_root, extra_env=caps) as url:
        yield url


@pytest.fixture(scope="module")
def client(app_url):
    return Client(app_url, verbose=False)


def search(client: Client, text: str | None, r_q: int, r_c: int, image=None, **kwargs):
    args = {**SEARCH_DEFAULTS, **kwargs}
    gallery, figures_md, diff_md, results, figures = client.predict(
        text or "", image, args["instruction"], r_q, r_c, args["k"], args["mode"], args["k_prime"], args["find"],
        api_name="/search")
    return gallery, figures_md, diff_md, results, figures


def test_search_returns_ranked_results_with_timings(client):
    gallery, figures_md, _, results, figures = search(client, PDF_PAGES[0], 8, 16)
    status = client.predict(api_name="/gallery_status")
    assert len(results) == len(gallery) == 5
    assert [r["rank"] for r in results] == [1, 2, 3, 4, 5]
    scores = [r["score"] for r in results]
    assert scores == sorted(scores, reverse=True)
    assert all(-8 <= s <= 8 for s in scores)  # MaxSim over 8 unit vectors, no division by r_q
    assert all(r["source"] for r in results)
    pages = [r for r in results if r["kind"] == "pdf-page"]  # 5 of 6 items: at least one page is listed
    assert pages and all(r["file"].endswith("notes.pdf") and r["page"] in (1, 2) for r in pages)
    assert all(r["kind"] == "image" and r["page"] is None for r in results if r not in pages)
    for key in ("query_encode_ms", "first_stage_ms", "maxsim_ms", "total_ms"):
        assert figures[key] >= 0
    assert figures["total_ms"] >= figures["maxsim_ms"]
    # bytes read at (8,16) = N * r_c * D * 2 (bf16), from the gallery's own dims
    assert figures["bytes_read"] == status["items"] * 16 * status["dim"] * 2
    assert figures["bytes_stored"] == status["stored_bytes"]
    encodings = len(set(figures["instructions"].values()))  # one pass scores every encoding against every item
    assert encodings == 2 and figures["scoring_flops"] == encodings * 2 * 8 * 16 * status["dim"] * status["items"]
    assert "query encode" in figures_md and "MaxSim" in figures_md


def test_budget_change_reranks_without_reencoding(client):
    query = "a brand new query for the cache test"
    _, _, _, first, f1 = search(client, query, 8, 16)
    assert not f1["query_cached"]
    encodes = f1["query_encodes"]
    _, _, diff_md, second, f2 = search(client, query, 1, 1)
    assert f2["query_cached"] and f2["query_encode_ms"] == 0
    assert f2["query_encodes"] == encodes  # no re-encoding
    assert f2["budget"] == "(1,1)" and f2["compared_to"] == "(8,16)"
    assert [r["score"] for r in first] != [r["score"] for r in second]
    assert all(-1 <= r["score"] <= 1 for r in second)
    assert "(8,16)" in diff_md
    _, _, _, _, f3 = search(client, query, 16, 64, k=3)
    assert f3["query_encodes"] == encodes and f3["k"] == 3
    r_q, r_c, *_, f4 = client.predict("(2,4)", query, None, "", 5, "exhaustive", 100, api_name="/preset_search")
    assert (r_q, r_c) == (2, 4) and f4["budget"] == "(2,4)" and f4["query_encodes"] == encodes
    _, _, _, _, f5 = search(client, query + "!", 1, 1)
    assert f5["query_encodes"] == encodes + 2  # a different query is encoded, once per kind (images, pages)


def test_model_tab_says_what_runs_and_how(client):
    import torch

    from metaembed.models.precision import native_bfloat16

    status = client.predict(api_name="/model_status")  # what the Model tab shows on arrival
    precision = "bfloat16" if native_bfloat16(torch.device("cpu")) else "float32"
    assert status.startswith("Model: MetaEmbed-Mini (backend mini, D=384, R_q=16, R_c=64, fingerprint ")
    assert status.endswith(f"encoding on cpu in {precision}.")  # and the gallery matches: no warning
    assert client.predict("", api_name="/select_model") == status  # empty = the default model


def test_two_stage_search_reports_first_stage(client):
    _, _, _, results, figures = search(client, PDF_PAGES[1], 4, 8, k=2, mode="two-stage", k_prime=3)
    # k' per kind: 3 of the 4 images and both pages
    assert figures["mode"] == "two-stage" and figures["candidates_scored"] == 3 + len(PDF_PAGES)
    assert len(results) == 2 and figures["first_stage_ms"] > 0


def test_token_matches_agree_with_search_score(client):
    _, _, _, results, _ = search(client, PDF_PAGES[0], 4, 8)
    _, _, note, _, data = client.predict(1, 0, api_name="/token_matches")
    assert data["id"] == results[0]["id"]
    assert sum(data["shares"].values()) == pytest.approx(1.0) and "Matches won" in note
    assert len(data["similarity"]) == 4 and all(len(row) == 8 for row in data["similarity"])
    assert data["contributions"] == [max(row) for row in data["similarity"]]
    assert data["score"] == pytest.approx(results[0]["score"], abs=2e-2)  # index stores bf16
    with pytest.raises(AppError, match="rank must be between 1 and 5"):
        client.predict(9, 0, api_name="/token_matches")


def test_image_candidate_gets_attention_overlay(client, tmp_path):
    name, color, shape = SHAPES[0]
    path = tmp_path / name
    draw(color, shape).save(path)
    _, _, _, results, _ = search(client, None, 16, 64, image=handle_file(str(path)))
    assert results[0]["source"].endswith(name)  # the identical image ranks first
    _, overlay, note, page_text, data = client.predict(1, 1, api_name="/token_matches")
    assert overlay is not None and "attention" in note.lower() and page_text == ""  # an image: no page text
    assert data["overlay_tokens"] == [data["best"][0]]


def test_a_page_match_highlights_the_words_its_tokens_attend_to(client):
    _, _, _, results, _ = search(client, PDF_PAGES[1], 4, 8, find="pages")
    assert results[0]["kind"] == "pdf-page"
    _, overlay, note, page_text, data = client.predict(1, 0, api_name="/token_matches")
    marked = re.findall(r"<mark[^>]*>([^<]+)</mark>", page_text)
    words = " ".join(PDF_PAGES).split()
    assert overlay is not None and marked and all(any(m.strip(" .,").lower() in w for w in words) for m in marked)
    assert "page's text" in note
    _, _, one_note, _, one = client.predict(1, 1, api_name="/token_matches")  # query token 1 alone
    assert one["overlay_tokens"] == [data["best"][0]] and "query token q1" in one_note


def test_bad_inputs_get_friendly_errors_and_server_stays_up(client, tmp_path):
    with pytest.raises(ValidationError, match="empty query"):
        search(client, "   ", 1, 1)
    with pytest.raises(ValidationError, match=r"r_q must be in 1\.\.16, got 99"):
        search(client, "x", 99, 1)
    with pytest.raises(ValidationError, match=r"r_c must be in 1\.\.64, got 0"):
        search(client, "x", 1, 0)
    junk = tmp_path / "junk.png"
    junk.write_bytes(b"this is not an image at all")
    with pytest.raises(AppError, match="query image cannot be used"):
        search(client, None, 1, 1, image=handle_file(str(junk)))
    with pytest.raises(ValidationError, match=r"preset '\(3,3\)' is not one of"):
        client.predict("(3,3)", "x", None, "", 5, "exhaustive", 100, api_name="/preset_search")
    with pytest.raises(AppError, match="not found"):
        client.predict("/no/such/model", api_name="/select_model")
    *_, results, _ = search(client, PDF_PAGES[1], 2, 4)  # still serving
    assert results


def test_user_errors_keep_the_results_and_log_one_line(app_url, app_root):
    """Rank out of range, empty query, no own gallery, k' < k, a bad model path: a message each, the last
    search still there, one log line each and no traceback."""
    erin = Client(app_url, verbose=False)
    log = app_root / "app.log"
    start = log.stat().st_size
    _, _, _, results, _ = search(erin, PDF_PAGES[0], 4, 8)
    with pytest.raises(AppError, match="rank must be between 1 and 5, got 99"):
        erin.predict(99, 0, api_name="/token_matches")
    with pytest.raises(ValidationError, match="empty query"):
        search(erin, "", 4, 8)
    with pytest.raises(AppError, match="no gallery yet"):
        erin.predict("own", api_name="/use_gallery")
    with pytest.raises(ValidationError, match=r"k′ \(3\) must be at least k \(5\)"):
        search(erin, PDF_PAGES[0], 4, 8, mode="two-stage", k_prime=3)
    with pytest.raises(AppError, match="not found"):
        erin.predict("/no/such/model", api_name="/select_model")
    *_, data = erin.predict(1, 0, api_name="/token_matches")  # the last search is still the session's
    assert data["id"] == results[0]["id"] and data["budget"] == "(4,8)"
    _, _, _, _, figures = search(erin, PDF_PAGES[0], 1, 1)
    assert figures["compared_to"] == "(4,8)" and figures["query_cached"]
    written = log.read_text()[start:]
    assert "Traceback" not in written, written
    user_lines = [line for line in written.splitlines() if "user error" in line]
    for needle in ("rank must be between", "empty query", "no gallery yet", "must be at least k", "not found"):
        assert sum(needle in line for line in user_lines) == 1, (needle, user_lines)


def test_two_visitors_search_at_once(app_url):
    """Two sessions searching concurrently each get their own ranking and their own budget history."""
    from concurrent.futures import ThreadPoolExecutor

    visitors = [(Client(app_url, verbose=False), PDF_PAGES[i]) for i in range(2)]

    def session(pair):
        client, query = pair
        out = []
        for r_q, r_c in ((8, 16), (2, 4), (16, 64)):
            *_, results, figures = search(client, query, r_q, r_c)
            out.append((results, figures))
        return out

    with ThreadPoolExecutor(2) as pool:
        runs = list(pool.map(session, visitors))
    for (_, query), run in zip(visitors, runs, strict=True):
        assert [f["compared_to"] for _, f in run] == [None, "(8,16)", "(2,4)"]
        assert [f["query_cached"] for _, f in run] == [False, True, True]
        alone = search(Client(app_url, verbose=False), query, 16, 64)[3]
        assert [r["id"] for r in run[-1][0]] == [r["id"] for r in alone]


def test_upload_build_search_and_session_isolation(app_url, tmp_path):
    alice, bob = Client(app_url, verbose=False), Client(app_url, verbose=False)
    mine = tmp_path / "purple-stripes.png"
    draw((140, 40, 160), "stripes").save(mine)
    fake = tmp_path / "fake.png"
    fake.write_text("plain text pretending to be a png")
    empty = tmp_path / "empty.jpg"
    empty.write_bytes(b"")
    broken = tmp_path / "broken.png"
    broken.write_bytes(mine.read_bytes()[:60])  # valid PNG header, truncated body
    report, summary, status, which = alice.predict(
        [handle_file(str(p)) for p in (mine, fake, empty, broken)], api_name="/upload")
    skipped = {s["file"]: s["reason"] for s in report["skipped"]}
    assert report["accepted"][0] == "purple-stripes.png" and report["indexed"] == 1
    assert set(skipped) == {"fake.png", "empty.jpg", "broken.png"}, skipped
    assert "empty" in skipped["empty.jpg"] and "unsupported" in skipped["fake.png"]
    assert which == "own" and status["gallery"] == "own" and status["items"] == 1
    _, _, _, results, _ = search(alice, None, 8, 16, image=handle_file(str(mine)))
    assert results[0]["source"].endswith("purple-stripes.png")

    # Bob is another session: he searches the demo gallery and cannot switch to Alice's uploads.
    assert bob.predict(api_name="/gallery_status")["gallery"] == "demo"
    with pytest.raises(AppError, match="no gallery yet"):
        bob.predict("own", api_name="/use_gallery")
    _, _, _, bob_results, _ = search(bob, None, 8, 16, image=handle_file(str(mine)), k=50)
    assert not any("purple-stripes" in r["source"] for r in bob_results)

    # Alice extends her gallery; back on the demo gallery she no longer sees her file.
    second = tmp_path / "orange-square.png"
    draw((240, 140, 20), "square").save(second)
    report, *_ = alice.predict([handle_file(str(second))], api_name="/upload")
    assert report["total_items"] == 2
    assert alice.predict("demo", api_name="/use_gallery")["items"] == len(SHAPES) + len(PDF_PAGES)


def test_upload_caps_are_enforced(app_url, tmp_path):
    carol = Client(app_url, verbose=False)  # the server runs with at most 6 pages and 5 files per session
    paths = []
    for i in range(3):
        path = tmp_path / f"doc{i}.pdf"
        paths.append(write_pdf(path, [f"document {i} page {p}" for p in range(3)]))
    report, summary, *_ = carol.predict([handle_file(str(p)) for p in paths], api_name="/upload")
    assert report["accepted"] == ["doc0.pdf", "doc1.pdf"]
    assert report["skipped"][0]["file"] == "doc2.pdf" and "page cap" in report["skipped"][0]["reason"]
    assert report["total_items"] == 6 and report["pages"] == 6


def test_scale_calculator_reproduces_paper_rows(client):
    rows, verdict = client.predict("Qwen2.5-VL 7B", "bf16", 100_000, 8, 16, "A100 / H100 (80 GiB)", 0,
                                   api_name="/scale")
    table = {row[0]: (row[1], row[2], row[3]) for row in rows["data"]}
    paper = {"(1,1)": (0.71, 0.67), "(8,16)": (91.75, 10.68), "(16,64)": (733.89, 42.72)}
    for budget, (gflops, gib) in paper.items():
        assert table[budget][0] == pytest.approx(gflops, rel=0.015)  # the paper rounds 0.7168 down to 0.71
        assert table[budget][1] == pytest.approx(gib, abs=0.01)
    assert len(rows["data"]) == len(TRAINED_GROUPS) + 1 and rows["data"][0][0] == "(8,16) (yours)"
    assert "Fits" in verdict
    rows, verdict = client.predict("Qwen2.5-VL 32B", "fp32", 1_000_000, 16, 64, "T4 (16 GiB)", 0,
                                   api_name="/scale")
    assert "Does not fit" in verdict
    _, verdict = client.predict("Qwen2.5-VL 7B", "bf16", 100_000, 16, 64, "A100 / H100 (80 GiB)", 40,
                                api_name="/scale")
    assert "Does not fit" in verdict and "42.72 GiB" in verdict  # a typed memory size overrides the device
    assert "of your 40 GiB" in verdict and "use bf16" not in verdict  # bf16 is already chosen
    _, verdict = client.predict("Qwen2.5-VL 7B", "bf16", 1_000_000, 8, 16, "A100 / H100 (80 GiB)", 24,
                                api_name="/scale")
    assert "445% of your 24 GiB" in verdict and "80 GiB" not in verdict


def test_sweep_on_current_gallery_with_pairs_file(client, tmp_path):
    pairs = tmp_path / "pairs.csv"
    pairs.write_text("query,relevant_item\n" + "".join(f"{t},notes.pdf#{i + 1}\n" for i, t in enumerate(PDF_PAGES))
                     + f"a red circle,{SHAPES[0][0]}\n")
    fig, table, summary = client.predict("upload", handle_file(str(pairs)), "1x1,4x8,16x64", "bytes read", False,
                                         100, api_name="/sweep")
    headers, data = table["headers"], table["data"]
    assert [row[0] for row in data] == ["(1,1)", "(4,8)", "(16,64)"]
    ndcg = headers.index("ndcg@5")
    assert all(0 <= row[ndcg] <= 1 for row in data)
    assert data[0][-1] == "★"  # the cheapest budget is always Pareto-optimal on bytes read
    assert "Pareto-optimal" in summary
    bad = tmp_path / "bad.csv"
    bad.write_text("query,relevant_item\nhello,no-such-file.png\n")
    with pytest.raises(AppError, match="not in the current gallery"):
        client.predict("upload", handle_file(str(bad)), "", "bytes read", False, 100, api_name="/sweep")
    with pytest.raises(AppError, match="bundled eval set is not available"):
        client.predict("bundled", None, "", "bytes read", False, 100, api_name="/sweep")
