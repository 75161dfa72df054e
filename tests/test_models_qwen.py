"""Qwen2.5-VL MetaEmbed backend on a tiny random Qwen2_5_VLConfig, fully offline.

The tokenizer is built here with the ``tokenizers`` library and images go through Qwen's real image
processor, so the whole path (prompt, vision tokens, Meta Tokens, M-RoPE, LoRA) runs as with real weights.
"""

from __future__ import annotations

import os

import pytest
import torch
from PIL import Image

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from metaembed.examples import TrainExample  # noqa: E402
from metaembed.models import AttentionUnsupported, Item, ModelLoadError, load_encoder  # noqa: E402
from metaembed.models.qwen import QwenMetaEmbed  # noqa: E402
from metaembed.training.config import config_from_dict  # noqa: E402
from metaembed.training.loss import MMRLoss  # noqa: E402
from metaembed.training.trainer import Trainer  # noqa: E402

SPECIAL = [
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|image_pad|>",
    "<|video_pad|>",
]
WORDS = "a an the red blue green cat dog car house tree query describe image user find picture of : . \n".split(" ")


def build_tiny_base(directory) -> None:
    """Random tiny Qwen2.5-VL + word-level tokenizer + Qwen image processor, saved like a real base folder."""
    from tokenizers import AddedToken, Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast, Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    vocab = {w: i for i, w in enumerate([*SPECIAL, "[UNK]", *sorted({w.strip().lower() for w in WORDS if w.strip()})])}
    tk = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tk.pre_tokenizer = pre_tokenizers.Whitespace()
    tk.add_special_tokens([AddedToken(s, special=True, normalized=False) for s in SPECIAL])
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=tk, pad_token="<|endoftext|>", unk_token="[UNK]")
    config = Qwen2_5_VLConfig(
        text_config={
            "vocab_size": len(vocab),
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "num_key_value_heads": 1,
            "bos_token_id": None,
            "eos_token_id": None,
            "rope_parameters": {"rope_type": "default", "mrope_section": [2, 3, 3], "rope_theta": 10000.0},
        },
        vision_config={
            "depth": 1,
            "hidden_size": 16,
            "intermediate_size": 32,
            "num_heads": 2,
            "out_hidden_size": 32,
            "fullatt_block_indexes": [0],
            "window_size": 56,
        },
        image_token_id=vocab["<|image_pad|>"],
        video_token_id=vocab["<|video_pad|>"],
        vision_start_token_id=vocab["<|vision_start|>"],
        vision_end_token_id=vocab["<|vision_end|>"],
    )
    torch.manual_seed(0)
    Qwen2_5_VLForConditionalGeneration(config).save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    Qwen2VLImageProcessorPil(min_pixels=4 * 28 * 28, max_pixels=16 * 28 * 28).save_pretrained(directory)


@pytest.fixture(scope="module")
def base_dir(tmp_path_factory):
    directory = tmp_path_factory.mktemp("tiny-qwen")
    build_tiny_base(directory)
    return directory


def model_cfg(base_dir, **over):
    return {"base_model": str(base_dir), "min_pixels": 4 * 28 * 28, "max_pixels": 16 * 28 * 28, **over}


@pytest.fixture(scope="module")
def model(base_dir, device):
    torch.manual_seed(0)
    m = QwenMetaEmbed.from_config(model_cfg(base_dir), device=device)
    with torch.no_grad():  # LoRA B starts at zero; make the adapter matter for save/load checks
        for name, p in m.named_parameters():
            if "lora_B" in name:
                p.normal_(std=0.05)
    return m


def image(w, h, colour):
    return Image.new("RGB", (w, h), colour)


ITEMS = [
    Item(text="the red cat"),
    Item(image=image(60, 50, (200, 10, 10))),
    Item(text="find the blue car", image=image(90, 40, (10, 10, 200)), instruction="find picture of :"),
]


def manual_last_hidden(m: QwenMetaEmbed, item: Item, side: str) -> torch.Tensor:
    """Reference: one unpadded item through Qwen's OWN forward (its image merge and its M-RoPE positions)."""
    inputs = {k: v.to(m.device) for k, v in m._inputs([item], side).items()}
    ids = inputs["input_ids"]
    ext_ids = torch.cat([ids, torch.full((1, 80), m.pad_token_id, device=ids.device)], dim=1)
    embeds = m.qwen.get_input_embeddings()(ext_ids).clone()
    embeds[:, -80:] = m.meta_tokens.weight.to(embeds.dtype)
    extra = {k: inputs[k] for k in ("pixel_values", "image_grid_thw") if k in inputs}
    out = m.qwen(
        input_ids=ext_ids,
        inputs_embeds=embeds,
        attention_mask=torch.ones_like(ext_ids),
        mm_token_type_ids=(ext_ids == m.image_token_id).int(),
        use_cache=False,
        **extra,
    )
    return out.last_hidden_state[0]


def close(device: str, exact: float) -> dict[str, float]:
    """Tolerance: fp32 on CPU; on CUDA the backend runs in bf16 (about 3 significant digits)."""
    return {"atol": exact, "rtol": exact if exact < 1e-4 else 0} if device == "cpu" else {"atol": 3e-2, "rtol": 0}


def test_layout_text_image_and_both(model, device):
    q = model.encode_queries(ITEMS)
    c = model.encode_candidates(ITEMS)
    assert q.shape == (3, 16, 32) and c.shape == (3, 64, 32) and q.dtype == torch.float32
    torch.testing.assert_close(q.norm(dim=-1), torch.ones(3, 16))
    for i, item in enumerate(ITEMS):
        with torch.no_grad():
            hidden = torch.nn.functional.normalize(manual_last_hidden(model, item, "query"), dim=-1)
            hidden_c = torch.nn.functional.normalize(manual_last_hidden(model, item, "candidate"), dim=-1)
        hidden, hidden_c = hidden.float().cpu(), hidden_c.float().cpu()
        torch.testing.assert_close(q[i], hidden[-80:-64], **close(device, 1e-5))  # 16 positions before the last 64
        torch.testing.assert_close(c[i], hidden_c[-64:], **close(device, 1e-5))
        assert not torch.allclose(q[i], hidden[-64:-48], atol=1e-3)
    # image, text and image+text give different embeddings; the image really reaches the LLM
    assert (q[0] - q[1]).abs().max() > 1e-3 and (q[1] - q[2]).abs().max() > 1e-3
    other = model.encode_queries([Item(image=image(60, 50, (0, 220, 0)))])
    assert (other[0] - q[1]).abs().max() > 1e-4


def test_meta_token_positions_continue_after_the_input(model):
    inputs = model._inputs([ITEMS[2], ITEMS[0]], "query")
    ids, mask = inputs["input_ids"], inputs["attention_mask"]
    assert mask[1, 0] == 0 and mask[0].all()  # left padding
    ext_ids = torch.cat([ids, torch.full((2, 80), model.pad_token_id)], dim=1)
    ext_mask = torch.cat([mask, torch.ones(2, 80, dtype=mask.dtype)], dim=1)
    pos, _ = model.qwen.get_rope_index(
        ext_ids,
        (ext_ids == model.image_token_id).int(),
        image_grid_thw=inputs["image_grid_thw"],
        attention_mask=ext_mask,
    )
    for b in range(2):
        start = int(pos[:, b, : ids.shape[1]].max()) + 1
        expected = torch.arange(start, start + 80).expand(3, -1)
        assert torch.equal(pos[:, b, -80:], expected)
    assert int(pos[0, 1, -80]) == int(mask[1].sum())  # text-only: plain 0..L-1 positions, pads skipped


def test_attention_is_not_exposed_and_says_so(model):
    """The Qwen backend runs fused SDPA attention and does not implement the attention API: a plain error."""
    with pytest.raises(AttentionUnsupported, match="qwen2_5_vl backend exposes no attention weights"):
        model.candidate_attention(ITEMS[0])


def test_batch_size_invariance(model, device):
    items = [
        Item(text="a dog"),
        Item(text="the green house tree car describe picture of a red cat"),
        Item(image=image(30, 80, (5, 100, 5))),
        Item(text="find the tree", image=image(120, 60, (90, 90, 0))),
        Item(image=image(56, 56, (1, 2, 3)), text="user"),
        Item(text="blue"),
        Item(text="describe the image", instruction="find :"),
        Item(image=image(70, 70, (250, 250, 250))),
    ]
    batched_q = model.encode_queries(items, batch_size=8)
    batched_c = model.encode_candidates(items, batch_size=8)
    for i, item in enumerate(items):
        torch.testing.assert_close(model.encode_queries([item])[0], batched_q[i], **close(device, 1e-4))
        torch.testing.assert_close(model.encode_candidates([item])[0], batched_c[i], **close(device, 1e-4))


def test_gradients_reach_meta_tokens_and_lora_only(base_dir, device):
    torch.manual_seed(1)
    m = QwenMetaEmbed.from_config(
        model_cfg(base_dir, num_query_tokens=4, num_candidate_tokens=8, gradient_checkpointing=True), device=device
    )
    trainable = [n for n, p in m.named_parameters() if p.requires_grad]
    assert "meta_tokens.weight" in trainable
    lora = [n for n in trainable if "lora_" in n]
    assert set(trainable) == {"meta_tokens.weight", *lora}
    assert all("language_model" in n for n in lora)  # the vision tower is not adapted
    assert {n.split(".")[-4] for n in lora} == {
        "q_proj",
        "k_proj",
        "v_proj",
        "o_proj",
        "gate_proj",
        "up_proj",
        "down_proj",
    }
    m.train()
    q = m.embed(ITEMS, "query")
    c = m.embed(ITEMS + [Item(text="a dog")], "candidate")
    MMRLoss(groups=[(1, 1), (2, 4), (4, 8)])(q, c[:3], c[3:]).total.backward()
    for name, p in m.named_parameters():
        if p.requires_grad:
            assert p.grad is not None, name
        else:
            assert p.grad is None, name
    assert m.meta_tokens.weight.grad.abs().sum() > 0
    assert all(float(p.grad.abs().sum()) > 0 for n, p in m.named_parameters() if "lora_B" in n)
    assert m.meta_tokens.weight.grad[:4].abs().sum() > 0 and m.meta_tokens.weight.grad[4:].abs().sum() > 0


def test_save_load_identical_and_clear_errors(model, tmp_path, monkeypatch, device):
    model.save_pretrained(tmp_path / "m")
    assert sorted(p.name for p in (tmp_path / "m").iterdir()) == ["adapter", "config.json", "meta_tokens.safetensors"]
    assert not list((tmp_path / "m" / "adapter").glob("*.bin"))
    loaded = load_encoder(tmp_path / "m", device=device)
    assert isinstance(loaded, QwenMetaEmbed) and loaded.name == "MetaEmbed-Qwen2.5-VL"
    assert torch.equal(loaded.encode_queries(ITEMS), model.encode_queries(ITEMS))
    assert torch.equal(loaded.encode_candidates(ITEMS[:2]), model.encode_candidates(ITEMS[:2]))
    assert loaded.fingerprint() == model.fingerprint()

    config = (
        (tmp_path / "m" / "config.json").read_text().replace(str(model.config["base_model"]), "/nowhere/Qwen2.5-VL-3B")
    )
    (tmp_path / "m" / "config.json").write_text(config)
    with pytest.raises(ModelLoadError, match="not available locally.*--local-dir /nowhere/Qwen2.5-VL-3B"):
        QwenMetaEmbed.from_pretrained(tmp_path / "m", device=device)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "empty-hf-home"))
    with pytest.raises(ModelLoadError, match="huggingface-cli download Qwen/Qwen2.5-VL-3B-Instruct"):
        QwenMetaEmbed.from_config({"base_model": "Qwen/Qwen2.5-VL-3B-Instruct"}, device=device)
    (tmp_path / "m" / "meta_tokens.safetensors").unlink()
    with pytest.raises(ModelLoadError, match="meta_tokens.safetensors is missing"):
        QwenMetaEmbed.from_pretrained(tmp_path / "m", device=device)
    with pytest.raises(ValueError, match="unknown qwen2_5_vl model setting 'lora_rank'"):
        QwenMetaEmbed.from_config(model_cfg(model.config["base_model"], lora_rank=4))


def test_trainer_runs_qwen_backend_and_resumes(base_dir, tmp_path, device):
    def source(options):
        words = ["red cat", "blue car", "green tree", "a dog"]
        return [
            TrainExample(
                Item(text=w),
                Item(text=f"the {w}", image=image(40 + 8 * i, 40, (60 * i, 0, 0))),
                Item(text="house") if i % 2 else None,
                "toy",
            )
            for i, w in enumerate(words)
        ]

    raw = {
        "model": {"backend": "qwen2_5_vl", **model_cfg(base_dir), "num_query_tokens": 2, "num_candidate_tokens": 4},
        "groups": ["1x1", "2x4"],
        "data": [{"name": "toy"}],
        "steps": 2,
        "batch_size": 2,
        "seed": 0,
        "optimizer": {"lr": 0.01},
        "output_dir": str(tmp_path / "out"),
        "checkpoint_dir": str(tmp_path / "ck"),
        "checkpoint_every": 1,
    }
    trainer = Trainer(config_from_dict(raw), registry={"toy": source}, device=device)
    trainer.train()
    resumed = Trainer(config_from_dict(raw | {"steps": 3}), registry={"toy": source}, device=device)
    assert resumed.resume() and resumed.step == 2
    for name, p in trainer.params.items():
        assert torch.equal(p, resumed.params[name]), name
    final = QwenMetaEmbed.from_pretrained(tmp_path / "out", device=device)
    torch.testing.assert_close(final.encode_queries(ITEMS[:1]), trainer.model.encode_queries(ITEMS[:1]))
