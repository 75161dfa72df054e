"""Sharded search without Ray: the merge of per-shard top-k equals one index's top-k, shards are checked at
open, and POST /search bodies are validated once with messages that say what to change."""

from __future__ import annotations

import base64
import io
import shutil

import pytest
import torch
from conftest import unit
from PIL import Image

from metaembed import shards as shard_format
from metaembed.budget import TRAINED_GROUPS
from metaembed.index import MultiVectorIndex
from metaembed.serve.protocol import RequestError, SearchRequest, search_local


def _split(tmp_path, n=60, dim=16, r_c=64, k_shards=3):
    vectors = unit(n, r_c, dim, generator=torch.Generator().manual_seed(0))
    vectors[7] = vectors[3]  # an exact tie across shards (items 3 and 7 land in shards 0 and 1)
    whole = MultiVectorIndex(dim, r_c, torch.bfloat16, model_fingerprint="f")
    whole.add([f"i{k}" for k in range(n)], vectors, [{"k": k} for k in range(n)])
    specs = []
    for s in range(k_shards):
        part = MultiVectorIndex(dim, r_c, torch.bfloat16, model_fingerprint="f")
        rows = [k for k in range(n) if k % k_shards == s]
        part.add([f"i{k}" for k in rows], vectors[rows], [{"k": k} for k in rows])
        name = shard_format.shard_name(s)
        part.save(tmp_path / name / "index")
        specs.append(shard_format.ShardSpec(name, f"{name}/index", len(part)))
    shard_format.write_manifest(tmp_path, specs, {"model": {"fingerprint": "f"}, "dim": dim, "r_c": r_c,
                                                  "dtype": "bfloat16"})
    return whole, vectors[3]


def test_merged_shard_top_k_equals_one_index_at_every_budget(tmp_path):
    whole, tied = _split(tmp_path)
    shards = shard_format.open_shards(tmp_path)
    assert [s.name for s in shards] == ["shard-000", "shard-001", "shard-002"]
    assert all(s.index.is_mapped for s in shards)
    query = tied[:16]  # items 3 and 7 (the same vectors) head every ranking, tied
    for budget in TRAINED_GROUPS:
        request = SearchRequest(None, None, None, budget, 12, None)
        merged = search_local(shards, request, lambda _r: (query, 0.0))
        expected = whole.search(query, budget, k=12)
        assert [h["score"] for h in merged["hits"]] == pytest.approx(expected.scores, abs=1e-6)
        # exact ties (i3 and i7) go to the lower shard, as one index gives them to the lower position
        assert [h["id"] for h in merged["hits"]] == expected.ids and expected.ids[:2] == ["i3", "i7"]
        assert merged["bytes_read"] == whole.bytes_read(budget)
        assert all(h["k"] == int(h["id"][1:]) for h in merged["hits"])  # metadata travels with its hit


def test_a_missing_or_inconsistent_shard_is_named(tmp_path):
    _split(tmp_path)
    other = MultiVectorIndex(8, 64, torch.bfloat16, model_fingerprint="f")
    other.add(["x"], unit(1, 64, 8))
    shutil.rmtree(tmp_path / "shard-001" / "index")
    other.save(tmp_path / "shard-001" / "index")
    with pytest.raises(shard_format.ShardError, match="shard shard-001 .* holds D, R_c"):
        shard_format.open_shards(tmp_path)
    shutil.rmtree(tmp_path / "shard-001")
    with pytest.raises(shard_format.ShardError, match="shard shard-001 cannot be opened"):
        shard_format.open_shards(tmp_path)
    (tmp_path / "manifest.json").write_text("{oops")
    with pytest.raises(shard_format.ShardError, match="not valid JSON"):
        shard_format.open_shards(tmp_path)


def test_request_validation_messages():
    png = io.BytesIO()
    Image.new("RGB", (8, 8), (200, 10, 10)).save(png, format="PNG")
    ok = SearchRequest.from_json({"image": base64.b64encode(png.getvalue()).decode(), "r_q": 2, "r_c": 4, "k": 3,
                                  "first_stage": 5}, 16, 64)
    assert ok.budget.r_q == 2 and ok.item().image.size == (8, 8) and ok.text is None
    assert SearchRequest.from_json({"text": " hi "}, 16, 64).budget.r_c == 64  # full budget by default
    for body, words in [({"text": "  "}, "empty query"), ({"text": "x", "r_q": 0}, "'r_q' must be in 1..16"),
                        ({"text": "x", "r_c": True}, "whole number"), ({"text": "x", "k": 2, "first_stage": 1},
                                                                      "at least k"),
                        ({"text": 3}, "'text' must be a string"), ({"text": "x", "nope": 1}, "unknown field"),
                        ("text", "JSON object"), ({"image": "@@"}, "base64")]:
        with pytest.raises(RequestError, match=words):
            SearchRequest.from_json(body, 16, 64)
    with pytest.raises(RequestError, match="cannot be used"):
        SearchRequest.from_json({"image": base64.b64encode(b"GIF89a broken").decode()}, 16, 64).item()


def test_local_builds_the_explorer_and_the_cli_never_import_ray():
    """``make demo`` installs no Ray: only the distributed build and the server import it, lazily."""
    import subprocess
    import sys
    from pathlib import Path

    code = ("import sys, explorer.service, index_builder.cli, index_builder.distributed, metaembed.serve.protocol; "
            "print('ray' in sys.modules)")
    repo = Path(__file__).resolve().parents[1]
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=repo, check=True,
                         env={"PYTHONPATH": str(repo), "PATH": "/usr/bin:/bin", "HF_HUB_OFFLINE": "1"}, timeout=300)
    assert out.stdout.strip() == "False"
