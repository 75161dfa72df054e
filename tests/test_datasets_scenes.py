"""Composite canvases on real Debian data: the canvas helper, the scene eval sets, the ``scenes_t2i`` source."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest
from PIL import Image, ImageChops

from metaembed.datasets import openclipart, scenes, tuxpaint
from metaembed.datasets.__main__ import main
from metaembed.datasets._assets import png_bytes
from metaembed.datasets.build import OCA_MAX_SIDE, SCENE_ROUNDS, SCENE_SIDE, TUX_MAX_SIDE, build
from metaembed.datasets.training import SCENE_LAYOUTS, SOURCES, plan_scenes
from metaembed.eval.loaders import load_beir

WHITE = (255, 255, 255)


def _ink(image: Image.Image) -> tuple[int, int, int, int] | None:
    """Bounding box of the non-white pixels."""
    return ImageChops.difference(image, Image.new("RGB", image.size, WHITE)).getbbox()


def _jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def _files(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _cell(canvas: Image.Image, rows: int, cols: int, index: int) -> Image.Image:
    return canvas.crop(scenes.cell_boxes(rows, cols, max(canvas.size))[index])


def _alone(picture: Image.Image, cell: int) -> Image.Image:
    """What one cell of side ``cell`` holding ``picture`` looks like (a 1x1 canvas of that side)."""
    return scenes.compose([picture], 1, 1, cell)


def _load(key: str, side: int) -> Image.Image:
    """A member picture loaded the way the builders and the source load it, from its key alone."""
    kind, rel = key.split(":", 1)
    if kind == "tux":
        return tuxpaint.load_image(tuxpaint.Stamp(rel, ""), max_side=side)
    return openclipart.load_image(openclipart.PNG_ROOT / rel, max_side=side)


def test_compose_letterboxes_each_picture_into_its_cell():
    wide, tall = Image.new("RGB", (100, 50), (255, 0, 0)), Image.new("RGBA", (20, 40), (0, 0, 255, 255))
    photo = tuxpaint.load_image(tuxpaint.load_split("test")[0], max_side=TUX_MAX_SIDE)
    canvas = scenes.compose([wide, None, tall, photo], 2, 2, 512)
    assert canvas.size == (512, 512) and canvas.mode == "RGB"
    # cell 256, margin 8, so a picture is fitted into 240 px, centred: 240x120 and 120x240 (scaled up).
    assert _ink(_cell(canvas, 2, 2, 0)) == (8, 68, 248, 188)
    assert _ink(_cell(canvas, 2, 2, 1)) is None  # the blank cell
    assert _ink(_cell(canvas, 2, 2, 2)) == (68, 8, 188, 248)
    assert _cell(canvas, 2, 2, 2).getpixel((128, 128)) == (0, 0, 255)
    assert _cell(canvas, 2, 2, 3).tobytes() == _alone(photo, 256).tobytes()
    assert png_bytes(canvas) == png_bytes(scenes.compose([wide, None, tall, photo], 2, 2, 512))
    fitted = scenes.fit(photo, 240)
    assert max(fitted.size) == 240 and scenes.fit(fitted, 240).tobytes() == fitted.tobytes()  # idempotent
    assert scenes.compose([wide, tall], 1, 2, 384).size == (384, 192)
    assert scenes.compose([wide, tall], 2, 1, 384).size == (192, 384)
    with pytest.raises(ValueError, match="do not fit"):
        scenes.compose([wide] * 3, 1, 2, 384)
    with pytest.raises(ValueError, match="too small"):
        scenes.compose([wide], 2, 2, 1)


def test_arrange_uses_every_picture_equally_and_never_repeats_a_caption():
    stamps = tuxpaint.load_split("test")
    keys, captions = [s.key for s in stamps], [s.caption for s in stamps]
    assert len(set(captions)) < len(captions)  # shared captions exist, so clashes must be repaired
    plan = scenes.arrange(keys, captions, [4] * len(stamps), salt="t")
    assert len(plan) == len(stamps) and all(len(c) == 4 for c in plan)
    assert set(Counter(i for canvas in plan for i in canvas).values()) == {4}
    assert all(len({captions[i] for i in canvas}) == len(canvas) for canvas in plan)
    assert plan == scenes.arrange(keys, captions, [4] * len(stamps), salt="t")
    assert plan != scenes.arrange(keys, captions, [4] * len(stamps), salt="u")
    mixed = scenes.arrange(keys, captions, [2, 3, 4] * 200, salt="t")
    uses = Counter(i for canvas in mixed for i in canvas)
    assert [len(c) for c in mixed] == [2, 3, 4] * 200 and max(uses.values()) - min(uses.values()) <= 1
    assert all(len({captions[i] for i in canvas}) == len(canvas) for canvas in mixed)
    with pytest.raises(ValueError, match="cannot place"):
        scenes.arrange(["a", "b", "c"], ["same", "same", "other"], [2, 2, 2], salt="t")


@pytest.fixture(scope="module")
def scene_builds(tmp_path_factory) -> tuple[Path, Path]:
    first, second = tmp_path_factory.mktemp("a"), tmp_path_factory.mktemp("b")
    for root in (first, second):
        build(root, only=["tux-scenes", "oca-dev-scenes"], limit=12)
    return first, second


def _check_scene_set(root: Path, texts: dict[str, str], load_side: int) -> None:
    """Counts, no caption twice on a canvas, qrels = exactly the canvases holding the caption, pixels."""
    corpus = _jsonl(root / "corpus.jsonl")
    queries = {q["_id"]: q["text"] for q in _jsonl(root / "queries.jsonl")}
    assert len(corpus) == 12 and all(len(doc["members"]) == 4 for doc in corpus)
    for doc in corpus:
        assert len({texts[key] for key in doc["members"]}) == 4
    holding = {(qid, doc["_id"]) for doc in corpus for qid, text in queries.items()
               if text in {texts[key] for key in doc["members"]}}
    qrels = [line.split("\t") for line in (root / "qrels" / "test.tsv").read_text().splitlines()[1:]]
    assert {(q, d) for q, d, _ in qrels} == holding and len(qrels) == len(holding) == 48
    assert len(set(queries.values())) == len(queries) == len({texts[k] for doc in corpus for k in doc["members"]})
    loaded = load_beir(root)  # the eval loader reads it, and a canvas carries no caption text
    assert len(loaded.corpus) == 12 and all(record.text is None for record in loaded.corpus)
    assert loaded.queries[0].instruction == json.loads((root / "info.json").read_text())["query_instruction"]
    doc = corpus[5]
    canvas = Image.open(root / doc["image"]).convert("RGB")
    assert canvas.size == (SCENE_SIDE, SCENE_SIDE)
    for index, key in enumerate(doc["members"]):  # each cell holds exactly its listed member
        assert _cell(canvas, 2, 2, index).tobytes() == _alone(_load(key, load_side), SCENE_SIDE // 2).tobytes()


def test_scene_sets_are_deterministic_and_relevance_is_what_the_canvas_shows(scene_builds):
    first, second = scene_builds
    assert _files(first) == _files(second)
    assert not any(".tmp" in name for name in _files(first))
    _check_scene_set(first / "tux-scenes", {s.key: s.caption for s in tuxpaint.load_split("test")}, TUX_MAX_SIDE)
    dev = openclipart.split(openclipart.list_clips(), "dev")
    _check_scene_set(first / "oca-dev-scenes", {c.key: c.text for c in dev}, OCA_MAX_SIDE)


@pytest.mark.slow
def test_full_tux_scenes_uses_every_test_photo_four_times(tmp_path):
    counts = build(tmp_path, only=["tux-scenes"])["tux-scenes"]
    stamps = tuxpaint.load_split("test")
    corpus = _jsonl(tmp_path / "tux-scenes" / "corpus.jsonl")
    assert counts["corpus"] == len(corpus) == len(stamps) >= 300
    uses = Counter(key for doc in corpus for key in doc["members"])
    assert set(uses) == {s.key for s in stamps} and set(uses.values()) == {SCENE_ROUNDS}
    assert counts["queries"] == len({s.caption for s in stamps}) and counts["qrels"] == SCENE_ROUNDS * len(stamps)


def test_cli_takes_several_set_names_after_one_only(tmp_path):
    assert main(["build", "--out", str(tmp_path), "--only", "tux-scenes", "docs-dev", "--limit", "2"]) == 0
    counts = json.loads((tmp_path / "counts.json").read_text())
    assert set(counts) == {"tux-scenes", "docs-dev"} and counts["tux-scenes"]["corpus"] == 2


@pytest.fixture(scope="module")
def plan():
    return plan_scenes(canvases=400, max_side=256)


def test_scene_plan_keys_are_stable_and_follow_the_composition(plan):
    assert len(plan) == 400 and len({s.key for s in plan}) == 400
    assert [s.key for s in plan] == [s.key for s in plan_scenes(canvases=400, max_side=256)]
    assert all(s.key.startswith(f"scene:{n}:") for n, s in enumerate(plan))
    # Another canvas size is another picture: no key may be reused for it.
    assert not {s.key for s in plan} & {s.key for s in plan_scenes(canvases=400, max_side=384)}
    layouts = Counter((s.rows, s.cols, sum(k is not None for k in s.cells)) for s in plan)
    assert set(layouts) == set(SCENE_LAYOUTS) and all(len(s.cells) == s.rows * s.cols for s in plan)


def test_scene_negatives_hide_the_named_text_and_share_its_category(plan):
    clips = openclipart.split(openclipart.list_clips(), "train")
    text = {c.key: c.text for c in clips} | {s.key: s.caption for s in tuxpaint.load_split("train")}
    category = {c.key: f"oca:{c.category}" for c in clips}
    category |= {s.key: f"tux:{s.category}" for s in tuxpaint.load_split("train")}
    same_category_used = 0
    for n, scene in enumerate(plan):
        members = [k for k in scene.cells if k is not None]
        assert scene.named in members and scene.query == text[scene.named]
        assert len({text[k] for k in members}) == len(members)
        negative = plan[scene.negative]
        assert scene.negative != n and scene.query not in {text[k] for k in negative.cells if k}
        alternatives = [m for m in plan if scene.query not in {text[k] for k in m.cells if k}
                        and category[scene.named] in {category[k] for k in m.cells if k}]
        if alternatives:  # a same-category canvas without the text exists, so the negative is one
            assert category[scene.named] in {category[k] for k in negative.cells if k}
            same_category_used += 1
    assert same_category_used > 300


def test_scenes_source_positives_hold_the_named_picture():
    examples = SOURCES["scenes_t2i"]({"canvases": 400, "max_side": 256, "limit": 10})
    plan = {s.key: s for s in plan_scenes(canvases=400, max_side=256)}
    again = SOURCES["scenes_t2i"]({"canvases": 400, "max_side": 256, "limit": 10})
    assert len(examples) == 10 and [e.positive.key for e in examples] == [e.positive.key for e in again]
    for example in examples:
        scene = plan[example.positive.key]
        image = example.positive.image
        assert example.query.text == scene.query and example.positive.text is None
        assert image.size == (256 // 2 * scene.cols, 256 // 2 * scene.rows)
        assert image.tobytes() == again[examples.index(example)].positive.image.tobytes()
        index = scene.cells.index(scene.named)
        inner = scenes.inner_side(128)
        assert _cell(image, scene.rows, scene.cols, index).tobytes() == _alone(_load(scene.named, inner), 128).tobytes()
        assert example.negative.key == list(plan)[scene.negative] and max(example.negative.image.size) <= 256
    for bad in ({"canvases": 0}, {"max_side": "big"}, {"canvas": 5}, {"limit": -1}):
        with pytest.raises(ValueError, match="scenes_t2i"):
            SOURCES["scenes_t2i"](bad)
