"""Serving precision of the shipped MetaEmbed-Mini: bfloat16 where the hardware has it, same rankings as float32.

Real packaged weights, real Tux Paint photos and captions, real ReportLab guide pages.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import pytest
import torch

from metaembed.budget import Budget
from metaembed.datasets import manuals, tuxpaint
from metaembed.models import Item, load_encoder
from metaembed.models.instructions import TEXT_TO_IMAGE, TEXT_TO_PAGE
from metaembed.models.precision import compute_in, native_bfloat16, resolve_compute_dtype, set_compute_dtype
from metaembed.scoring import maxsim

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def encoder():
    return load_encoder(None, device="cpu")


@pytest.fixture(scope="module")
def inputs() -> tuple[list[Item], list[Item]]:
    stamps = tuxpaint.load_split("test")[:12]
    pages = list(manuals.iter_pages("reportlab-userguide.pdf", dpi=96, numbers=[3, 20, 45]))
    candidates = [Item(image=tuxpaint.load_image(s, max_side=256), instruction=TEXT_TO_IMAGE.candidate)
                  for s in stamps]
    candidates += [Item(image=p.image, text=p.text, instruction=TEXT_TO_PAGE.candidate) for p in pages]
    queries = [Item(text=s.caption, instruction=TEXT_TO_IMAGE.query) for s in stamps]
    return queries, candidates


@pytest.mark.parametrize("features, native", [
    ({"avx512_bf16": True, "amx_bf16": False}, True), ({"avx512_bf16": False, "amx_bf16": True}, True),
    ({"avx512_bf16": False, "amx_bf16": False, "amx_tile": True}, False), ({}, False), (None, False)])
def test_auto_picks_bfloat16_only_where_the_cpu_has_it(monkeypatch, features, native) -> None:
    def capabilities() -> dict:
        if features is None:
            raise RuntimeError("no cpuinfo")
        return features

    monkeypatch.setattr(torch.cpu, "get_capabilities", capabilities)
    assert native_bfloat16(CPU) is native
    assert resolve_compute_dtype("auto", CPU) == (torch.bfloat16 if native else torch.float32)


def test_names_resolve_and_bad_names_are_refused(encoder) -> None:
    assert resolve_compute_dtype("float32", CPU) == torch.float32
    assert resolve_compute_dtype("bfloat16", CPU) == torch.bfloat16
    assert encoder.compute_dtype == "auto"  # the shipped default
    assert encoder.precision == ("bfloat16" if native_bfloat16(CPU) else "float32")
    with pytest.raises(ValueError, match="compute dtype must be one of"):
        encoder.compute_dtype = "int4"
    assert encoder.compute_dtype == "auto"  # a refused name leaves the setting alone


def test_backends_that_pick_their_own_precision_refuse_a_forced_one() -> None:
    from toy_encoder import ToyEncoder

    toy = ToyEncoder()
    set_compute_dtype(toy, "auto")  # accepted: nothing to change
    with pytest.raises(ValueError, match="picks its own precision"):
        set_compute_dtype(toy, "bfloat16")
    assert toy.precision == "float32" and not hasattr(toy, "compute_dtype")


@contextlib.contextmanager
def computing_at(encoder, dtype: str) -> Iterator[None]:
    """The shared module-scoped encoder at ``dtype`` for one block, back to the default after it."""
    encoder.compute_dtype = dtype
    try:
        yield
    finally:
        encoder.compute_dtype = "auto"


def test_training_forward_ignores_the_serving_precision(encoder, inputs) -> None:
    items = inputs[1][:2]
    outputs = {}
    for dtype in ("bfloat16", "float32"):
        with computing_at(encoder, dtype), torch.no_grad():
            outputs[dtype] = encoder.embed(items, "candidate")  # the trainer's forward: its own precision
    torch.testing.assert_close(outputs["bfloat16"], outputs["float32"], atol=1e-6, rtol=0)
    with torch.no_grad(), compute_in(torch.bfloat16, CPU):  # what the check would see if the setting leaked
        assert (encoder.embed(items, "candidate") - outputs["float32"]).abs().max() > 1e-4


def _encode(encoder, dtype: str, queries: list[Item], candidates: list[Item]) -> tuple[torch.Tensor, torch.Tensor]:
    with computing_at(encoder, dtype):
        return encoder.encode_queries(queries), encoder.encode_candidates(candidates, batch_size=4)


def test_bfloat16_vectors_rank_as_float32_ones(encoder, inputs) -> None:
    queries, candidates = inputs
    q32, c32 = _encode(encoder, "float32", queries, candidates)
    q16, c16 = _encode(encoder, "bfloat16", queries, candidates)
    assert not torch.equal(c16, c32), "bfloat16 must actually change the arithmetic"
    assert (c16 * c32).sum(-1).min() > 0.995 and (q16 * q32).sum(-1).min() > 0.995
    for budget in (Budget(1, 1), Budget(16, 64)):
        s32, s16 = (maxsim(q, c.transpose(0, 1).contiguous(), budget) for q, c in ((q32, c32), (q16, c16)))
        noise = (s32 - s16).abs().max()
        assert noise < 0.02 * budget.r_q
        # Each query's bfloat16 top candidate is its float32 top one, or one within twice the rounding noise.
        best32 = s32.max(1).values
        assert (s32.gather(1, s16.argmax(1, keepdim=True)).squeeze(1) >= best32 - 2 * noise).all(), budget
        assert (s32.argmax(1) == s16.argmax(1)).float().mean() >= 0.75, budget  # and mostly the same one


def test_feature_cache_keeps_precisions_apart(encoder, inputs) -> None:
    _, candidates = inputs
    keyed = [Item(image=c.image, instruction=c.instruction, key=f"stamp-{i}") for i, c in enumerate(candidates[:2])]
    cache = encoder.enable_feature_cache({})
    try:
        _encode(encoder, "bfloat16", [Item(text="x")], keyed)
        _encode(encoder, "float32", [Item(text="x")], keyed)
        assert len(cache) == 4 and sum("/bfloat16:" in k for k in cache) == 2
        assert not torch.equal(cache[next(k for k in cache if "/bfloat16:stamp-0" in k)],
                               cache[next(k for k in cache if k.endswith(":stamp-0") and "bfloat16" not in k)])
    finally:
        encoder.feature_cache = None


def test_bfloat16_batches_agree_with_items_alone(encoder, inputs) -> None:
    # float32 agrees within 1e-4 (test_models_mini); bfloat16 pads differently per batch, so it agrees to its
    # rounding: measured 2e-3 per component, cosine >= 0.99997.
    queries, candidates = inputs
    for items, encode in ((queries[:6], encoder.encode_queries), (candidates[-5:], encoder.encode_candidates)):
        with computing_at(encoder, "bfloat16"):
            batched = encode(items, batch_size=8)
            alone = torch.cat([encode([item], batch_size=1) for item in items])
        assert (batched * alone).sum(-1).min() > 0.9995
