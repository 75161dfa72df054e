"""Training-pair sources for MMR training: ``SOURCES[name](options) -> list[TrainExample]``.

Every source reads only TRAIN data (Open Clip Art's train split, its dev split held out; Tux Paint train split;
Fashion-MNIST train files; the train manuals, the dev and test manuals held out), so no test or dev item
can leak into training (``tests/test_datasets_splits.py`` proves it). Hard negatives come from the same
category: the Open Clip Art folder, the Tux Paint top-level folder, a visually near Fashion-MNIST class,
a neighbouring (or another) page of the same manual, a canvas holding a picture of the named one's
category. ``limit`` subsets are deterministic (stable-hash order, spread over categories), so a
config names exactly one training set. Items carry a stable ``key`` ("oca:…", "tux:…",
"fmnist:train:N", "pdf:NAME.pdf:PAGE", "scene:N:HASH") that backends may use to cache frozen image features.
"""

from __future__ import annotations

import bisect
import hashlib
import logging
import weakref
from collections import defaultdict
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from PIL import Image
from tqdm import tqdm

from metaembed.datasets import fmnist, manuals, openclipart, scenes, tuxpaint
from metaembed.datasets._assets import stable_hash
from metaembed.examples import TrainExample
from metaembed.models.base import Item
from metaembed.models.instructions import (
    CLASSIFICATION,
    IMAGE_TO_TEXT,
    TEXT_TO_IMAGE,
    TEXT_TO_PAGE,
)

logger = logging.getLogger(__name__)
T = TypeVar("T")

#: For each Fashion-MNIST class, the classes it is most often confused with (its hard negatives).
FMNIST_NEAR: dict[str, tuple[str, ...]] = {
    "T-shirt/top": ("Shirt", "Pullover"), "Trouser": ("Dress",), "Pullover": ("Coat", "Shirt"),
    "Dress": ("Coat", "T-shirt/top"), "Coat": ("Pullover", "Shirt"), "Sandal": ("Sneaker", "Ankle boot"),
    "Shirt": ("T-shirt/top", "Pullover", "Coat"), "Sneaker": ("Sandal", "Ankle boot"),
    "Bag": ("Pullover", "Shirt"), "Ankle boot": ("Sneaker", "Sandal"),
}

# Images are shared by the *_t2i and *_i2t sources while either holds them, and freed when neither
# does: bounded memory without a module cache that never shrinks.
_IMAGES: weakref.WeakValueDictionary[tuple[str, int], Image.Image] = weakref.WeakValueDictionary()


def _options(options: dict, defaults: dict[str, Any], source: str) -> dict[str, Any]:
    """Defaults overridden by ``options``; an unknown option is a config typo, so it is an error."""
    unknown = set(options) - set(defaults)
    if unknown:
        raise ValueError(f"data source {source!r}: unknown option(s) {sorted(unknown)}; known: {sorted(defaults)}")
    return {**defaults, **options}


def _whole(opts: dict[str, Any], name: str, source: str, minimum: int = 1, allow_none: bool = False) -> int | None:
    """``opts[name]`` as an int >= ``minimum`` (or None where allowed); anything else is a config error."""
    value = opts[name]
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        allowed = f"an integer >= {minimum}" + (" or null" if allow_none else "")
        raise ValueError(f"data source {source!r}: {name} must be {allowed}, got {value!r}")
    return value


def _hash_order(items: Sequence[T], key: Callable[[T], str], limit: int | None) -> list[T]:
    """Deterministic, category-spread subset: order by a stable hash of the key, keep the first ``limit``."""
    ordered = sorted(items, key=lambda item: stable_hash(key(item)))
    return ordered if limit is None else ordered[: int(limit)]


def _negatives(groups: Sequence[Hashable], texts: Sequence[str], salt: str) -> list[int | None]:
    """For each item, a hard negative's index: same group and a different text, else any different text."""
    members: dict[Hashable, list[int]] = defaultdict(list)
    for j, group in enumerate(groups):
        members[group].append(j)
    result: list[int | None] = []
    for i in range(len(groups)):
        pool = [j for j in members[groups[i]] if texts[j] != texts[i]]
        if not pool:
            pool = [j for j in range(len(texts)) if texts[j] != texts[i]]
        result.append(pool[stable_hash(f"{salt}:{i}") % len(pool)] if pool else None)
    return result


def _cached_image(key: str, max_side: int, load: Callable[[], Image.Image]) -> Image.Image:
    image = _IMAGES.get((key, max_side))
    if image is None:
        image = load()
        _IMAGES[(key, max_side)] = image
    return image


def _pair_examples(
    keys: Sequence[str], texts: Sequence[str], images: Sequence[Image.Image], groups: Sequence[Hashable],
    direction: str, source: str,
) -> list[TrainExample]:
    """Caption/image pairs as t2i (text query -> image) or i2t (image query -> caption) examples."""
    negatives = _negatives(groups, texts, source)
    examples = []
    for i, key in enumerate(keys):
        image_item = Item(image=images[i], instruction=TEXT_TO_IMAGE.candidate, key=key)
        n = negatives[i]
        if direction == "t2i":
            query = Item(text=texts[i], instruction=TEXT_TO_IMAGE.query)
            negative = None if n is None else Item(image=images[n], instruction=TEXT_TO_IMAGE.candidate, key=keys[n])
            examples.append(TrainExample(query, image_item, negative, source))
        else:
            query = Item(image=images[i], instruction=IMAGE_TO_TEXT.query, key=key)
            negative = None if n is None else Item(text=texts[n], instruction=IMAGE_TO_TEXT.candidate)
            text_item = Item(text=texts[i], instruction=IMAGE_TO_TEXT.candidate)
            examples.append(TrainExample(query, text_item, negative, source))
    return examples


def _openclipart(direction: str) -> Callable[[dict], list[TrainExample]]:
    source = f"openclipart_{direction}"

    def build(options: dict) -> list[TrainExample]:
        """Open Clip Art train split: title + keywords <-> image (<= ``max_side`` px); negatives from the same folder.

        ``cache_dir`` (optional) keeps the downscaled PNGs on disk: later runs load in seconds, lazily.
        """
        opts = _options(options, {"limit": None, "max_side": 256, "cache_dir": None}, source)
        clips = _hash_order(openclipart.split(openclipart.list_clips(), "train"), lambda c: c.key, opts["limit"])
        images = [
            _cached_image(c.key, opts["max_side"],
                          lambda c=c: openclipart.load_thumbnail(c, opts["max_side"], opts["cache_dir"]))
            for c in tqdm(clips, desc=f"{source} images", leave=False)
        ]
        return _pair_examples([c.key for c in clips], [c.text for c in clips], images,
                              [c.category for c in clips], direction, source)

    return build


def _tux(direction: str) -> Callable[[dict], list[TrainExample]]:
    source = f"tux_{direction}"

    def build(options: dict) -> list[TrainExample]:
        """Tux Paint TRAIN split: caption <-> photo; negatives from the same top-level folder."""
        opts = _options(options, {"limit": None, "max_side": 256}, source)
        stamps = _hash_order(tuxpaint.load_split("train"), lambda s: s.key, opts["limit"])
        images = [
            _cached_image(s.key, opts["max_side"], lambda s=s: tuxpaint.load_image(s, max_side=opts["max_side"]))
            for s in tqdm(stamps, desc=f"{source} images", leave=False)
        ]
        return _pair_examples([s.key for s in stamps], [s.caption for s in stamps], images,
                              [s.category for s in stamps], direction, source)

    return build


def fmnist_cls(options: dict) -> list[TrainExample]:
    """Fashion-MNIST TRAIN image -> its class name; the first ``per_class`` images of each class
    (file order), negative = a visually near class (``FMNIST_NEAR``)."""
    opts = _options(options, {"per_class": 300, "limit": None}, "fmnist_cls")
    images, labels = fmnist.load_split("train")
    taken: dict[int, int] = defaultdict(int)
    examples = []
    for index, label in enumerate(labels.tolist()):
        if taken[label] >= opts["per_class"]:
            continue
        taken[label] += 1
        name = fmnist.CLASSES[label]
        near = FMNIST_NEAR[name]
        key = f"fmnist:train:{index}"
        examples.append(TrainExample(
            Item(image=fmnist.to_image(images[index]).convert("RGB"), instruction=CLASSIFICATION.query, key=key),
            Item(text=name, instruction=CLASSIFICATION.candidate),
            Item(text=near[stable_hash(key) % len(near)], instruction=CLASSIFICATION.candidate),
            "fmnist_cls",
        ))
    return _hash_order(examples, lambda e: e.query.key or "", opts["limit"])


MANUAL_NEGATIVES = ("adjacent", "random")


def _adjacent_pages(texts: dict[tuple[str, int], str], pages: Sequence[tuple[str, int]]) -> list[int | None]:
    """For each ``(manual, number)``, the previous or next page of that manual with a text layer (the
    nearer one each way; which of the two by a stable hash), or None when the manual has no other."""
    with_text: dict[str, list[int]] = defaultdict(list)
    for (manual, number), text in sorted(texts.items()):
        if text.strip():
            with_text[manual].append(number)
    result: list[int | None] = []
    for manual, number in pages:
        numbers = with_text[manual]
        at = bisect.bisect_left(numbers, number)
        after = at + (at < len(numbers) and numbers[at] == number)
        sides = ([numbers[at - 1]] if at > 0 else []) + ([numbers[after]] if after < len(numbers) else [])
        result.append(sides[stable_hash(f"manuals_pages:adjacent:{manual}:{number}") % len(sides)] if sides else None)
    return result


def manuals_pages(options: dict) -> list[TrainExample]:
    """TRAIN manuals (never the dev or test ones): query sentence -> the page (render + text layer) it came from.

    ``max_pages`` pages per manual, evenly spaced over it (``None``: every page); sentences by
    ``manuals.query_sentences`` over the text layers of every train page (``per_page`` each), so a
    sentence found on two pages is never a query. Only pages that yield a sentence, and their
    negatives, are rendered, at ``dpi``, each downscaled at once to ``max_side`` px (``None``: kept at
    full size; about 0.15 MB a page at 256 px, so all ~3,000 train pages fit in ~0.5 GB). Negative
    (``negative``): ``adjacent`` = the previous or next page of the same manual that has text (the
    closest distractor: same layout, same topic), ``random`` = another chosen page of the same manual.
    """
    source = "manuals_pages"
    opts = _options(options, {"max_pages": 60, "dpi": 60, "max_side": 256, "per_page": 3,
                              "negative": "adjacent", "limit": None}, source)
    max_pages = _whole(opts, "max_pages", source, allow_none=True)
    max_side = _whole(opts, "max_side", source, allow_none=True)
    if opts["negative"] not in MANUAL_NEGATIVES:
        raise ValueError(f"data source {source!r}: negative must be one of {MANUAL_NEGATIVES}, "
                         f"got {opts['negative']!r}")
    names = manuals.manual_names("train")
    texts = {(p.manual, p.number): p.text for name in names for p in manuals.iter_pages(name, dpi=None)}
    sentences = manuals.query_sentences([(*page, text) for page, text in texts.items()], per_page=int(opts["per_page"]))
    positives: list[tuple[str, int]] = []
    for name in names:
        count = sum(1 for manual, _ in texts if manual == name)
        take = count if max_pages is None else min(count, max_pages)
        numbers = sorted({1 + int(i * max(1.0, count / take)) for i in range(take)})
        positives.extend((name, n) for n in numbers if sentences[(name, n)])
    if opts["negative"] == "adjacent":
        negative_pages = [None if n is None else (page[0], n)
                          for page, n in zip(positives, _adjacent_pages(texts, positives), strict=True)]
    else:
        picks = _negatives([manual for manual, _ in positives], [f"{m}:{n}" for m, n in positives], source)
        negative_pages = [None if j is None else positives[j] for j in picks]
    wanted = sorted(set(positives) | {page for page in negative_pages if page is not None})
    items: dict[tuple[str, int], Item] = {}
    for name in names:
        numbers = [n for manual, n in wanted if manual == name]
        for p in tqdm(manuals.iter_pages(name, dpi=int(opts["dpi"]), numbers=numbers, max_side=max_side),
                      total=len(numbers), desc=f"render {name}", leave=False):
            items[(name, p.number)] = Item(image=p.image, text=p.text or None, instruction=TEXT_TO_PAGE.candidate,
                                           key=p.key)
    examples = []
    for page, negative in zip(positives, negative_pages, strict=True):
        for sentence in sentences[page]:
            query = Item(text=sentence, instruction=TEXT_TO_PAGE.query)
            examples.append(TrainExample(query, items[page], None if negative is None else items[negative], source))
    logger.info("manuals_pages: %d sentences from %d pages of %d train manuals (%d pages rendered with the "
                "%s negatives, %d pages read)", len(examples), len(positives), len(names), len(items),
                opts["negative"], len(texts))
    return _hash_order(examples, lambda e: f"{e.positive.key}:{e.query.text}", opts["limit"])


#: scenes_t2i layouts as (rows, cols, pictures); canvas n takes the one at stable_hash("scenes_t2i:layout:<n>").
SCENE_LAYOUTS = ((1, 2, 2), (2, 1, 2), (2, 2, 3), (2, 2, 4))
#: Part of every canvas key: bump it when the composition rule changes, so cached features go stale.
SCENE_RULE = "scenes-v1"


@dataclass(frozen=True)
class Scene:
    """One planned training canvas: ``cells`` = member keys in reading order (None = a blank cell),
    ``named`` = the member whose text is the query, ``negative`` = index of the hard-negative scene."""

    key: str
    rows: int
    cols: int
    cells: tuple[str | None, ...]
    named: str
    query: str
    negative: int | None


@dataclass(frozen=True)
class _Picture:
    key: str
    text: str
    category: str
    load: Callable[[int], Image.Image]


def _scene_pictures(cache_dir: str | None) -> list[_Picture]:
    """Open Clip Art TRAIN clips and the Tux Paint TRAIN split; categories are prefixed so they never mix."""
    clips = openclipart.split(openclipart.list_clips(), "train")
    return ([_Picture(c.key, c.text, f"oca:{c.category}",
                      lambda side, c=c: openclipart.load_thumbnail(c, side, cache_dir)) for c in clips]
            + [_Picture(s.key, s.caption, f"tux:{s.category}",
                        lambda side, s=s: tuxpaint.load_image(s, max_side=side)) for s in tuxpaint.load_split("train")])


def _plan(pictures: Sequence[_Picture], canvases: int, max_side: int) -> list[Scene]:
    layouts = [SCENE_LAYOUTS[stable_hash(f"scenes_t2i:layout:{n}") % len(SCENE_LAYOUTS)] for n in range(canvases)]
    groups = scenes.arrange([p.key for p in pictures], [p.text for p in pictures], [size for *_, size in layouts],
                            salt="scenes_t2i")
    by_text: dict[str, set[int]] = defaultdict(set)
    by_category: dict[str, dict[int, None]] = defaultdict(dict)  # insertion-ordered set
    for n, members in enumerate(groups):
        for i in members:
            by_text[pictures[i].text].add(n)
            by_category[pictures[i].category][n] = None
    plan = []
    for n, ((rows, cols, size), members) in enumerate(zip(layouts, groups, strict=True)):
        cells: list[str | None] = [pictures[i].key for i in members]
        if size < rows * cols:
            cells.insert(stable_hash(f"scenes_t2i:blank:{n}") % (rows * cols), None)
        named = pictures[members[stable_hash(f"scenes_t2i:named:{n}") % size]]
        excluded = by_text[named.text]  # canvases showing the named picture or one with the same text
        pool = [m for m in by_category[named.category] if m not in excluded]
        if not pool:
            pool = [m for m in range(canvases) if m not in excluded]
        digest = hashlib.sha1(f"{SCENE_RULE}:{max_side}:{rows}x{cols}:{cells}".encode()).hexdigest()[:10]
        plan.append(Scene(f"scene:{n}:{digest}", rows, cols, tuple(cells), named.key, named.text,
                          pool[stable_hash(f"scenes_t2i:negative:{n}") % len(pool)] if pool else None))
    return plan


def plan_scenes(canvases: int = 3000, max_side: int = 384) -> list[Scene]:
    """The canvases ``scenes_t2i`` composes (no pixels): members, named picture, negative; deterministic."""
    return _plan(_scene_pictures(None), canvases, max_side)


def scenes_t2i(options: dict) -> list[TrainExample]:
    """Composite TRAIN canvases: the text of one picture on a canvas -> that canvas (``scenes``).

    ``canvases`` canvases of 2-4 pictures (``SCENE_LAYOUTS``, mixed by a stable hash) drawn from the
    Open Clip Art train clips and the Tux Paint train split by ``scenes.arrange`` (every picture used
    equally often, no text twice on a canvas), each at most ``max_side`` px (cells max_side / 2; about
    0.3 MB a canvas at 384 px). Hard negative: a canvas without that text holding a picture of the named
    one's category (Open Clip Art folder / Tux top-level folder), else any canvas without that text.
    ``limit`` keeps a stable-hash subset and composes only it and its negatives; ``cache_dir`` as in
    ``openclipart_*`` (downscaled clips on disk). Keys ``scene:<n>:<hash of rule, size, layout, members>``.
    """
    source = "scenes_t2i"
    opts = _options(options, {"canvases": 3000, "max_side": 384, "limit": None, "cache_dir": None}, source)
    canvases = _whole(opts, "canvases", source)
    max_side = _whole(opts, "max_side", source, minimum=32)
    pictures = _scene_pictures(opts["cache_dir"])
    plan = _plan(pictures, canvases, max_side)
    chosen = _hash_order(range(len(plan)), lambda n: plan[n].key, _whole(opts, "limit", source, allow_none=True))
    needed = sorted(set(chosen) | {plan[n].negative for n in chosen if plan[n].negative is not None})
    by_key = {p.key: p for p in pictures}
    inner = scenes.inner_side(scenes.cell_side(2, 2, max_side))  # every layout has 2 cells on its longer side
    fitted: dict[str, Image.Image] = {}  # each picture decoded once; freed when the canvases are done
    images: dict[int, Image.Image] = {}
    for n in tqdm(needed, desc=f"{source} canvases", leave=False):
        scene = plan[n]
        for key in scene.cells:
            if key is not None and key not in fitted:
                fitted[key] = scenes.fit(by_key[key].load(inner), inner)
        images[n] = scenes.compose([None if k is None else fitted[k] for k in scene.cells], scene.rows, scene.cols,
                                   max_side)
    del fitted

    def canvas(n: int) -> Item:
        return Item(image=images[n], instruction=TEXT_TO_IMAGE.candidate, key=plan[n].key)

    examples = [TrainExample(Item(text=plan[n].query, instruction=TEXT_TO_IMAGE.query), canvas(n),
                             None if plan[n].negative is None else canvas(plan[n].negative), source)
                for n in chosen]
    logger.info("scenes_t2i: %d canvases (%d composed with their negatives) from %d train pictures",
                len(examples), len(images), len(pictures))
    return examples


SOURCES: dict[str, Callable[[dict], list[TrainExample]]] = {
    "openclipart_t2i": _openclipart("t2i"),
    "openclipart_i2t": _openclipart("i2t"),
    "tux_t2i": _tux("t2i"),
    "tux_i2t": _tux("i2t"),
    "fmnist_cls": fmnist_cls,
    "manuals_pages": manuals_pages,
    "scenes_t2i": scenes_t2i,
}
