"""The harness with the library's real backend: an untrained MetaEmbed-Mini checkpoint via ``--model DIR``."""

from __future__ import annotations

import json

from eval_fixtures import write_beir, write_image, write_jsonl

import metaembed.eval.__main__ as cli
from metaembed.models.mini import MiniMetaEmbed


def test_cli_runs_a_mini_checkpoint_on_both_layouts(tmp_path):
    model_dir = tmp_path / "mini"
    MiniMetaEmbed(device="cpu").save_pretrained(model_dir)
    images = [write_image(tmp_path / "b" / f"{c}.png", rgb) for c, rgb in (("red", (255, 0, 0)), ("blue", (0, 0, 255)))]
    beir = write_beir(tmp_path / "b", [{"_id": "red", "image": images[0], "text": "a red square"},
                                       {"_id": "blue", "image": images[1]}],
                      [{"_id": "q", "text": "red"}], [("q", "red", 1)])
    mmeb = write_jsonl(tmp_path / "b" / "m.jsonl", [{"qry_text": "<|image_1|>\nRepresent the given image.",
                                                     "qry_img_path": images[0], "tgt_text": ["red", "blue"]}])
    for data, metric in ((beir, "ndcg@5"), (mmeb, "precision@1")):
        out = tmp_path / f"{metric}.json"
        assert cli.main(["--data", str(data), "--model", str(model_dir), "--budgets", "1x1,16x64",
                         "--json", str(out)]) == 0
        rows = json.loads(out.read_text())["results"]
        assert [(r["r_q"], r["r_c"]) for r in rows] == [(1, 1), (16, 64)]
        assert all(0.0 <= r["metrics"][metric] <= 1.0 for r in rows)
        assert rows[0]["bytes_read"] < rows[1]["bytes_read"]
