"""Build the public eval sets (issue 3) from the Debian-packaged data, deterministically and atomically.

Plus dev sets for model and recipe choices, never the public test sets: Open Clip Art's held-out split
(``oca-dev-t2i``, ``oca-dev-i2t``, ``oca-dev-scenes``), the held-out dev manual (``docs-dev``) and the
last 1,000 Fashion-MNIST train images (``fmnist-dev``).

Composite sets (``tux-scenes`` from the Tux Paint test split, ``oca-dev-scenes`` from the Open Clip
Art dev clips): every picture is placed on ``SCENE_ROUNDS`` (4) canvases of 2x2 by ``scenes.arrange``:
seeded permutations of the pictures (``stable_hash("<set>:<round>:<key>")`` order) concatenated and
cut in fours, a picture whose caption is already on its canvas swapped with the nearest later (else
earlier) one that fits, so no canvas shows one caption twice. Each picture is letterboxed on white
into its 256 px cell (8 px margin; ``scenes.compose``), canvases stored at 512 px. One query per
distinct caption (TEXT_TO_IMAGE instruction); relevant = every canvas holding a picture with that
caption; ``corpus.jsonl`` rows list their ``members`` (picture keys in reading order).

Layouts: BEIR folder (``corpus.jsonl``, ``queries.jsonl``, ``qrels/test.tsv``) or MMEB (``NAME.jsonl``
rows ``qry_text, qry_img_path, tgt_text[], tgt_img_path[]``, gold first, paths relative to the file).
Every set also gets ``info.json`` (task, instructions, counts). Same input files -> byte-identical
output: sorted keys, fixed PNG settings, no timestamps. Each set is written to a temporary folder and
renamed into place, so a reader never sees half a set.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image
from tqdm import tqdm

from metaembed.datasets import fmnist, manuals, openclipart, scenes, tuxpaint
from metaembed.datasets._assets import png_bytes
from metaembed.io import atomic_directory, atomic_write_json
from metaembed.models.instructions import (
    CLASSIFICATION,
    IMAGE_TO_TEXT,
    TEXT_TO_IMAGE,
    TEXT_TO_PAGE,
    Task,
    mmeb_query_text,
)

logger = logging.getLogger(__name__)

#: Tux Paint photos are stored with their longer side capped here (originals reach 2,348 px).
TUX_MAX_SIDE = 512
OCA_MAX_SIDE = 256
RDOCS_DPI = manuals.DEFAULT_DPI
RDOCS_QUERIES_PER_PAGE = 3
#: Composite-canvas sets: 2x2 grids stored at 512 px (256 px cells), every picture on 4 canvases, so
#: there are as many canvases as pictures and each caption is relevant to 4 of them (more if shared).
SCENE_LAYOUT = (2, 2)
SCENE_SIDE = 512
SCENE_ROUNDS = 4


class _Writer:
    """Collects the files of one eval set under its temporary folder."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def bytes(self, rel: str, data: bytes) -> None:
        path = self.root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)

    def jsonl(self, rel: str, rows: Iterable[dict[str, Any]]) -> None:
        self.bytes(rel, "".join(json.dumps(r, sort_keys=True, ensure_ascii=False) + "\n" for r in rows).encode())

    def qrels(self, pairs: Iterable[tuple[str, str]]) -> None:
        lines = ["query-id\tcorpus-id\tscore"] + [f"{q}\t{d}\t1" for q, d in pairs]
        self.bytes("qrels/test.tsv", ("\n".join(lines) + "\n").encode())

    def info(self, name: str, fmt: str, task: Task, description: str, counts: dict[str, int]) -> None:
        info = {"name": name, "format": fmt, "description": description, "counts": counts,
                "query_instruction": task.query, "candidate_instruction": task.candidate}
        self.bytes("info.json", (json.dumps(info, sort_keys=True, ensure_ascii=False, indent=1) + "\n").encode())


@dataclass(frozen=True)
class _Captioned:
    """One captioned image of a caption set: id, stored path, caption and how to load the picture."""

    key: str
    path: str
    caption: str
    load: Callable[[], Image.Image]


def _tux_items() -> list[_Captioned]:
    """Tux Paint test split; photos on white, <= TUX_MAX_SIDE px."""
    return [_Captioned(s.key, f"images/{s.rel}", s.caption,
                       lambda s=s: tuxpaint.load_image(s, max_side=TUX_MAX_SIDE))
            for s in tuxpaint.load_split("test")]


def _oca_dev_items() -> list[_Captioned]:
    """Open Clip Art's held-out dev split (``openclipart.split``), clips <= OCA_MAX_SIDE px."""
    return [_Captioned(c.key, f"images/{c.rel}", c.text,
                       lambda c=c: openclipart.load_image(c, max_side=OCA_MAX_SIDE))
            for c in openclipart.split(openclipart.list_clips(), "dev")]


def _write_images(writer: _Writer, items: list[_Captioned]) -> None:
    for item in tqdm(items, desc="images", leave=False):
        writer.bytes(item.path, png_bytes(item.load()))


def _caption_t2i(writer: _Writer, items: list[_Captioned], name: str, description: str) -> dict[str, int]:
    """Caption -> image (BEIR). Identical captions become one query whose relevant set is every image
    with that caption (otherwise the "wrong" twin would count as a miss)."""
    _write_images(writer, items)
    writer.jsonl("corpus.jsonl", ({"_id": item.key, "image": item.path} for item in items))
    query_ids: dict[str, str] = {}
    for item in items:
        query_ids.setdefault(item.caption, f"q{len(query_ids):04d}")
    writer.jsonl("queries.jsonl", ({"_id": qid, "text": caption} for caption, qid in query_ids.items()))
    writer.qrels((query_ids[item.caption], item.key) for item in items)
    counts = {"corpus": len(items), "queries": len(query_ids), "qrels": len(items)}
    writer.info(name, "beir", TEXT_TO_IMAGE, description, counts)
    return counts


def _caption_i2t(writer: _Writer, items: list[_Captioned], name: str, description: str) -> dict[str, int]:
    """Image -> its caption among all distinct captions of the set (MMEB); other images' identical
    captions are not candidates, since they could only tie with the gold one."""
    _write_images(writer, items)
    captions = sorted({item.caption for item in items})
    rows = []
    for item in items:
        targets = [item.caption] + [c for c in captions if c != item.caption]
        rows.append({"qry_text": mmeb_query_text(IMAGE_TO_TEXT.query), "qry_img_path": item.path,
                     "tgt_text": targets, "tgt_img_path": [""] * len(targets)})
    writer.jsonl(f"{name}.jsonl", rows)
    counts = {"queries": len(rows), "candidates_per_query": len(captions)}
    writer.info(name, "mmeb", IMAGE_TO_TEXT, description, counts)
    return counts


def build_tux_t2i(writer: _Writer, limit: int | None) -> dict[str, int]:
    return _caption_t2i(writer, _tux_items()[:limit], "tux-t2i",
                        "Tux Paint test split (odd positions): caption -> photo")


def build_tux_i2t(writer: _Writer, limit: int | None) -> dict[str, int]:
    return _caption_i2t(writer, _tux_items()[:limit], "tux-i2t", "Tux Paint test split: photo -> its caption")


def build_oca_dev_t2i(writer: _Writer, limit: int | None) -> dict[str, int]:
    return _caption_t2i(writer, _oca_dev_items()[:limit], "oca-dev-t2i",
                        "Open Clip Art dev split (held out, for model selection): title + keywords -> clip")


def build_oca_dev_i2t(writer: _Writer, limit: int | None) -> dict[str, int]:
    return _caption_i2t(writer, _oca_dev_items()[:limit], "oca-dev-i2t",
                        "Open Clip Art dev split (held out, for model selection): clip -> title + keywords")


def _fmnist_set(writer: _Writer, limit: int | None, split: str, name: str, description: str,
                prefix: str) -> dict[str, int]:
    """Image -> one of the 10 class names (gold first, the others in class order), MMEB layout."""
    images, labels = fmnist.load_split(split)
    rows = []
    for index in tqdm(range(len(labels))[:limit], desc=f"{name} images", leave=False):
        path = f"images/{prefix}-{index:05d}.png"
        writer.bytes(path, png_bytes(fmnist.to_image(images[index])))
        gold = fmnist.CLASSES[int(labels[index])]
        targets = [gold] + [c for c in fmnist.CLASSES if c != gold]
        rows.append({"qry_text": mmeb_query_text(CLASSIFICATION.query), "qry_img_path": path,
                     "tgt_text": targets, "tgt_img_path": [""] * len(targets)})
    writer.jsonl(f"{name}.jsonl", rows)
    counts = {"queries": len(rows), "candidates_per_query": len(fmnist.CLASSES)}
    writer.info(name, "mmeb", CLASSIFICATION, description, counts)
    return counts


def build_fmnist_cls(writer: _Writer, limit: int | None) -> dict[str, int]:
    return _fmnist_set(writer, limit, "test", "fmnist-cls", "Fashion-MNIST t10k[:1000]: image -> class name", "t10k")


def build_fmnist_dev(writer: _Writer, limit: int | None) -> dict[str, int]:
    return _fmnist_set(writer, limit, "dev", "fmnist-dev",
                       "dev, not a test set: the last 1,000 Fashion-MNIST train images, which training never "
                       "reads: image -> class name", "train-dev")


def _page_set(writer: _Writer, names: list[str], limit: int | None, name: str, description: str) -> dict[str, int]:
    """Sentence -> page (BEIR) over the pages of ``names`` (render + text layer); ``limit`` keeps the first
    N pages of each manual. Query sentences by ``manuals.query_sentences`` over the whole set."""
    pages = []
    for manual in names:
        numbers = range(1, min(manuals.page_count(manual), limit or 10**9) + 1)
        for page in tqdm(manuals.iter_pages(manual, dpi=RDOCS_DPI, numbers=numbers), total=len(numbers),
                         desc=f"render {manual}", leave=False):
            path = f"pages/{page.manual}/{page.number:04d}.png"
            writer.bytes(path, png_bytes(page.image))
            pages.append({"_id": page.key, "image": path, "text": page.text, "_src": (page.manual, page.number)})
    sentences = manuals.query_sentences([(*p["_src"], p["text"]) for p in pages], RDOCS_QUERIES_PER_PAGE)
    queries, qrels = [], []
    for page in pages:
        for n, sentence in enumerate(sentences[page["_src"]]):
            qid = f"{page['_id']}:q{n}"
            queries.append({"_id": qid, "text": sentence})
            qrels.append((qid, page["_id"]))
    writer.jsonl("corpus.jsonl", ({k: v for k, v in p.items() if k != "_src"} for p in pages))
    writer.jsonl("queries.jsonl", queries)
    writer.qrels(qrels)
    counts = {"corpus": len(pages), "queries": len(queries), "qrels": len(qrels)}
    writer.info(name, "beir", TEXT_TO_PAGE, description, counts)
    return counts


def build_rdocs(writer: _Writer, limit: int | None) -> dict[str, int]:
    """Pages of the test manuals and sentences taken from them (see ``metaembed.datasets.manuals``)."""
    return _page_set(writer, manuals.manual_names("test"), limit, "rdocs",
                     f"R-FAQ, R-data, R-admin pages at {RDOCS_DPI} dpi + text layer; sentence -> its page")


def build_docs_dev(writer: _Writer, limit: int | None) -> dict[str, int]:
    """The same as ``rdocs`` over the dev manual (the Debian Reference), which training never reads."""
    return _page_set(writer, manuals.manual_names("dev"), limit, "docs-dev",
                     f"dev, not a test set: Debian Reference pages at {RDOCS_DPI} dpi + text layer "
                     "(held out of training); sentence -> its page")


def _scene_t2i(writer: _Writer, items: list[_Captioned], limit: int | None, name: str,
               description: str) -> dict[str, int]:
    """Caption -> composite canvas (BEIR): ``SCENE_ROUNDS`` uses of every item, ``SCENE_LAYOUT`` per canvas.

    Canvases come from ``scenes.arrange`` (no caption twice on a canvas) and ``scenes.compose`` at
    ``SCENE_SIDE`` px; ``limit`` keeps the first N canvases. One query per distinct caption on the kept
    canvases (in item order); relevant = every canvas holding an item with that caption. Corpus rows
    list their ``members`` (item keys in reading order) so a reader can check the qrels; they carry no
    text, which would give the captions away.
    """
    rows, cols = SCENE_LAYOUT
    per_canvas = rows * cols
    sizes = [per_canvas] * (len(items) * SCENE_ROUNDS // per_canvas)
    plan = scenes.arrange([i.key for i in items], [i.caption for i in items], sizes, salt=name)[:limit]
    inner = scenes.inner_side(scenes.cell_side(rows, cols, SCENE_SIDE))
    fitted: dict[int, Image.Image] = {}  # each item is decoded once, kept at cell size (~60 MB for Tux)
    corpus = []
    for n, members in enumerate(tqdm(plan, desc=f"{name} canvases", leave=False)):
        for i in members:
            if i not in fitted:
                fitted[i] = scenes.fit(items[i].load(), inner)
        path = f"canvases/{n:04d}.png"
        writer.bytes(path, png_bytes(scenes.compose([fitted[i] for i in members], rows, cols, SCENE_SIDE)))
        corpus.append({"_id": f"{name}:{n:04d}", "image": path, "members": [items[i].key for i in members]})
    present = {items[i].caption for members in plan for i in members}
    query_ids: dict[str, str] = {}
    for item in items:
        if item.caption in present:
            query_ids.setdefault(item.caption, f"q{len(query_ids):04d}")
    relevant: dict[str, list[str]] = {qid: [] for qid in query_ids.values()}
    for doc, members in zip(corpus, plan, strict=True):
        for i in members:
            relevant[query_ids[items[i].caption]].append(doc["_id"])
    writer.jsonl("corpus.jsonl", corpus)
    writer.jsonl("queries.jsonl", ({"_id": qid, "text": caption} for caption, qid in query_ids.items()))
    pairs = [(qid, doc) for qid, docs in relevant.items() for doc in docs]
    writer.qrels(pairs)
    counts = {"corpus": len(corpus), "queries": len(query_ids), "qrels": len(pairs)}
    writer.info(name, "beir", TEXT_TO_IMAGE, description, counts)
    return counts


def build_tux_scenes(writer: _Writer, limit: int | None) -> dict[str, int]:
    return _scene_t2i(writer, _tux_items(), limit, "tux-scenes",
                      f"Tux Paint test split, {SCENE_LAYOUT[0]}x{SCENE_LAYOUT[1]} canvases of photos on white "
                      f"({SCENE_SIDE} px, each photo on {SCENE_ROUNDS} canvases): caption -> every canvas "
                      "holding a photo with it")


def build_oca_dev_scenes(writer: _Writer, limit: int | None) -> dict[str, int]:
    return _scene_t2i(writer, _oca_dev_items(), limit, "oca-dev-scenes",
                      f"dev, not a test set: Open Clip Art dev clips, {SCENE_LAYOUT[0]}x{SCENE_LAYOUT[1]} "
                      f"canvases ({SCENE_SIDE} px, each clip on {SCENE_ROUNDS} canvases): title + keywords "
                      "-> every canvas holding a clip with that text")


BUILDERS: dict[str, Callable[[_Writer, int | None], dict[str, int]]] = {
    "tux-t2i": build_tux_t2i,
    "tux-i2t": build_tux_i2t,
    "fmnist-cls": build_fmnist_cls,
    "rdocs": build_rdocs,
    "oca-dev-t2i": build_oca_dev_t2i,
    "oca-dev-i2t": build_oca_dev_i2t,
    "tux-scenes": build_tux_scenes,
    "oca-dev-scenes": build_oca_dev_scenes,
    "docs-dev": build_docs_dev,
    "fmnist-dev": build_fmnist_dev,
}


def build(out: Path, only: Iterable[str] | None = None, limit: int | None = None) -> dict[str, dict[str, int]]:
    """Build the named eval sets (default all) under ``out``; returns counts per set.

    Each set goes to a temporary folder first and replaces ``out/NAME`` only when complete.
    """
    names = list(only) if only else list(BUILDERS)
    unknown = [n for n in names if n not in BUILDERS]
    if unknown:
        raise ValueError(f"unknown eval set(s) {unknown}; known: {', '.join(BUILDERS)}")
    if limit is not None and limit < 1:
        raise ValueError(f"--limit must be >= 1, got {limit}")
    out.mkdir(parents=True, exist_ok=True)
    results = {}
    for name in names:
        with atomic_directory(out / name) as tmp:  # the previous set disappears only once the new one is complete
            results[name] = BUILDERS[name](_Writer(tmp), limit)
        logger.info("built %s: %s", out / name, results[name])
    atomic_write_json(out / "counts.json", _merged_counts(out, results), indent=1, sort_keys=True)
    return results


def _merged_counts(out: Path, fresh: dict[str, dict[str, int]]) -> dict[str, dict[str, int]]:
    """Counts of every set present under ``out`` (a ``--only`` build keeps the others' entries)."""
    merged = {}
    for name in BUILDERS:
        info = out / name / "info.json"
        if name in fresh:
            merged[name] = fresh[name]
        elif info.is_file():
            merged[name] = json.loads(info.read_text(encoding="utf-8"))["counts"]
    return merged
