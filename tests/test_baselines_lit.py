"""LiT-style baseline: the loss, head training, checkpoints, and a tiny real end-to-end run."""

from __future__ import annotations

import json

import pytest
import torch
from eval_fixtures import write_beir

from metaembed.baselines import __main__ as cli
from metaembed.baselines.lit import LitConfig, LitEncoder, LitHeads, info_nce, train_heads
from metaembed.datasets import tuxpaint
from metaembed.models import Item


def test_info_nce_treats_shared_captions_as_positives():
    image = torch.nn.functional.normalize(torch.tensor([[1.0, 0.1], [1.0, -0.1], [0.0, 1.0]]), dim=-1)
    text = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])  # rows 0 and 1: the same caption, same vector
    scale = torch.tensor(10.0)
    shared = info_nce(image, text, torch.tensor([0, 0, 1]), scale)  # rows 0 and 1 share one caption
    distinct = info_nce(image, text, torch.tensor([0, 1, 2]), scale)  # pretends they differ: a false negative
    assert shared < distinct
    shuffled = info_nce(image, text[[2, 0, 1]], torch.tensor([1, 0, 0]), scale)
    assert shared < shuffled


def test_train_heads_aligns_linked_features():
    generator = torch.Generator().manual_seed(0)
    image = torch.randn(48, 1280, generator=generator)
    noise = 0.01 * torch.randn(48, 384, generator=generator)
    text = image[:, :384] @ torch.randn(384, 384, generator=generator) + noise
    texts = [f"caption {i}" for i in range(48)]
    with torch.no_grad():
        before = (LitHeads(32).embed_images(image) @ LitHeads(32).embed_texts(text).T).argmax(1)
    heads = train_heads(image, text, texts, LitConfig(dim=32, epochs=40, batch_size=48, lr=1e-2))
    with torch.no_grad():
        top1 = (heads.embed_images(image) @ heads.embed_texts(text).T).argmax(1)
    assert (before == torch.arange(48)).float().mean() < 0.2
    assert (top1 == torch.arange(48)).float().mean() > 0.9


def test_checkpoint_round_trip(tmp_path):
    heads = LitHeads(dim=8)
    encoder = LitEncoder(heads.eval(), LitConfig(dim=8))
    encoder.save_pretrained(tmp_path / "lit")
    loaded = LitEncoder.from_pretrained(tmp_path / "lit")
    items = [Item(text="a red bird")]
    assert torch.allclose(encoder.encode_queries(items), loaded.encode_queries(items))
    assert json.loads((tmp_path / "lit" / "config.json").read_text())["backend"] == "lit-baseline"


@pytest.mark.slow
def test_lit_trains_and_evaluates_on_real_sample(tmp_path, capsys):
    """Tiny real run: a few real training pairs from each source, a 6-stamp Tux Paint test set."""
    (tmp_path / "lit.yaml").write_text("dim: 16\nepochs: 3\nbatch_size: 16\nfmnist_per_class: 1\n"
                                       "tux_limit: 8\nopenclipart_limit: 6\n")
    stamps = tuxpaint.load_split("test")[:6]
    folder = write_beir(tmp_path / "tux", [{"_id": s.key, "image": str(tuxpaint.ROOT / s.rel)} for s in stamps],
                        [{"_id": f"q{i}", "text": s.caption} for i, s in enumerate(stamps)],
                        [(f"q{i}", s.key, 1) for i, s in enumerate(stamps)])
    out = tmp_path / "lit.json"
    code = cli.main(["lit", "--data", str(folder), "--cache", str(tmp_path / "cache"),
                     "--config", str(tmp_path / "lit.yaml"), "--json", str(out)])
    assert code == 0
    report = json.loads(out.read_text())
    (row,) = report["results"]
    assert row["label"] == "single-vector" and 0.0 <= row["metrics"]["ndcg@5"] <= 1.0
    assert (tmp_path / "cache" / "effnet_lite0_features.safetensors").is_file()
    assert "single-vector" in capsys.readouterr().out
