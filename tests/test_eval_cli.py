"""``python -m metaembed.eval``: JSON + plot outputs and clear errors for a user's bad file."""

from __future__ import annotations

import json
import logging
import shutil

import pytest
from eval_fixtures import text_beir, write_jsonl
from toy_encoder import ToyEncoder

import metaembed.eval.__main__ as cli


@pytest.fixture
def toy_model(monkeypatch):
    monkeypatch.setattr(cli, "load_encoder", lambda name: ToyEncoder())


def test_cli_writes_table_json_and_plot(tmp_path, toy_model, capsys):
    data = text_beir(tmp_path / "b")
    out = tmp_path / "out"
    code = cli.main(["--data", str(data), "--budgets", "1x1,4x8", "--json", str(out / "r.json"),
                     "--plot", str(out / "sweep")])
    assert code == 0
    stdout = capsys.readouterr().out
    assert "ndcg@5" in stdout and "4x8" in stdout
    report = json.loads((out / "r.json").read_text())
    assert report["model"] == "toy-hash" and report["data"] == str(data)
    assert [(r["r_q"], r["r_c"]) for r in report["results"]] == [(1, 1), (4, 8)]
    assert "plotly" in (out / "sweep.html").read_text()[:100000].lower()
    if shutil.which("chromium"):
        assert (out / "sweep.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_cli_bad_file_is_a_clear_error(tmp_path, toy_model, caplog):
    bad = write_jsonl(tmp_path / "bad.jsonl", [{"qry_text": "q", "tgt_text": ["a"]}])
    with caplog.at_level(logging.ERROR):
        assert cli.main(["--data", str(bad)]) == 2
    assert "bad.jsonl, line 1" in caplog.text
    assert cli.main(["--data", str(text_beir(tmp_path / "b")), "--budgets", "32x64"]) == 2
    assert "r_q=32" in caplog.text


def test_summary_merges_model_and_baseline_reports(tmp_path, toy_model, capsys):
    from metaembed.eval import summary

    data = text_beir(tmp_path / "b")
    assert cli.main(["--data", str(data), "--budgets", "1x1,2x4", "--json", str(tmp_path / "toy.json")]) == 0
    baseline = {"model": "BM25", "data": str(data), "format": "beir", "results": [
        {"r_q": None, "r_c": None, "label": "bm25", "metrics": {"ndcg@5": 0.5, "mrr@10": 0.25},
         "scoring_ms_per_query": 0.1, "bytes_read": None, "encode_ms_per_item": 1.0}]}
    (tmp_path / "bm25.json").write_text(json.dumps(baseline))
    capsys.readouterr()
    assert summary.main([str(tmp_path / "toy.json"), str(tmp_path / "bm25.json")]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0].startswith("| set | model | budget | ndcg@5")
    body = [line for line in lines[2:] if line]
    assert len(body) == 3 and "| BM25 | bm25 | 50.0 | - |" in body[0] and "| toy-hash | 2x4 |" in body[2]
