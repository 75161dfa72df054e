"""Read evaluation sets in the two public layouts (BEIR/ViDoRe folders, MMEB JSONL files).

Loaders only parse and validate: images stay as paths and are opened lazily while encoding, so a
large set never sits decoded in memory. Every error names the file (and line) the user must fix.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image

from metaembed.io import JsonlError, read_jsonl
from metaembed.models import Item
from metaembed.models.instructions import IMAGE_TOKEN

FORMATS = ("beir", "mmeb")
#: Optional file beside a set naming the task instructions (``query_instruction``, ``candidate_instruction``).
INFO_FILE = "info.json"


class EvalDataError(ValueError):
    """An evaluation set that is missing, malformed or inconsistent (message names file and line)."""


@dataclass(frozen=True)
class Record:
    """One query or candidate before encoding: text and/or an image path (absolute)."""

    id: str
    text: str | None = None
    image: Path | None = None
    instruction: str | None = None

    def identity(self) -> tuple[str | None, str | None, str | None]:
        """What makes two records encode identically (used to encode duplicates once)."""
        return (self.text, str(self.image) if self.image else None, self.instruction)

    def to_item(self) -> Item:
        """Open the image (if any) and build the encoder input."""
        return Item(text=self.text, image=open_image(self.image) if self.image else None,
                    instruction=self.instruction, key=str(self.image) if self.image else None)


@dataclass
class BeirSet:
    """A retrieval set: queries search the whole corpus; relevance from qrels."""

    path: Path
    corpus: list[Record]
    queries: list[Record]
    qrels: dict[str, dict[str, int]]
    format: str = field(default="beir", init=False)


@dataclass
class MmebRow:
    """One MMEB query with its own candidate list; the gold candidate is ``candidates[0]``."""

    query: Record
    candidates: list[Record]


@dataclass
class MmebSet:
    """A set of MMEB rows (Precision@1 over each row's own candidates)."""

    path: Path
    rows: list[MmebRow]
    format: str = field(default="mmeb", init=False)


def open_image(path: Path) -> Image.Image:
    """Open an image as RGB; transparent pixels are composited on white (Tux Paint stamps are RGBA)."""
    try:
        with Image.open(path) as img:
            img.load()
            if img.mode in ("RGBA", "LA", "P"):
                img = img.convert("RGBA")
                background = Image.new("RGBA", img.size, (255, 255, 255, 255))
                return Image.alpha_composite(background, img).convert("RGB")
            return img.convert("RGB")
    except (OSError, Image.DecompressionBombError) as err:
        raise EvalDataError(f"{path}: cannot read image: {err}") from err


def detect_format(path: str | Path) -> str:
    """A folder is BEIR, a ``.jsonl`` file is MMEB."""
    path = Path(path)
    if path.is_dir():
        return "beir"
    if path.is_file() and path.suffix == ".jsonl":
        return "mmeb"
    if not path.exists():
        raise EvalDataError(f"{path}: no such file or folder")
    raise EvalDataError(f"{path}: cannot tell the format (a folder = beir, a .jsonl file = mmeb); pass --format")


def load_eval_set(path: str | Path, fmt: str | None = None, limit: int | None = None) -> BeirSet | MmebSet:
    """Load a set; ``limit`` keeps the first N queries (BEIR keeps the whole corpus, MMEB keeps N rows)."""
    fmt = fmt or detect_format(path)
    if fmt == "beir":
        return load_beir(path, limit)
    if fmt == "mmeb":
        return load_mmeb(path, limit)
    raise EvalDataError(f"unknown format {fmt!r}; expected one of {', '.join(FORMATS)}")


def _jsonl(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    if not path.is_file():
        raise EvalDataError(f"{path}: file not found")
    try:
        for line_no, row in read_jsonl(path):
            if not isinstance(row, dict):
                raise EvalDataError(f"{path}, line {line_no}: expected a JSON object")
            yield line_no, row
    except JsonlError as err:
        raise EvalDataError(str(err)) from err


def _optional_str(row: dict[str, Any], key: str, where: str) -> str | None:
    value = row.get(key)
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise EvalDataError(f"{where}: field {key!r} must be a string, got {type(value).__name__}")
    return value


def _image_path(base: Path, rel: str | None, where: str) -> Path | None:
    if rel is None:
        return None
    path = (base / rel).resolve()
    if not path.is_file():
        raise EvalDataError(f"{where}: image {rel!r} not found (looked for {path})")
    return path


def _instructions(folder: Path) -> dict[str, str | None]:
    """Task instructions from ``info.json`` (written by ``metaembed.datasets build``); none when absent."""
    path = folder / INFO_FILE
    if not path.is_file():
        return {}
    try:
        info = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise EvalDataError(f"{path}, line {err.lineno}: not valid JSON ({err.msg})") from err
    if not isinstance(info, dict):
        raise EvalDataError(f"{path}: expected a JSON object")
    out = {}
    for side in ("query", "candidate"):
        value = info.get(f"{side}_instruction")
        if value is not None and not isinstance(value, str):
            raise EvalDataError(f"{path}: '{side}_instruction' must be a string or null")
        out[side] = value or None
    return out


def _beir_records(path: Path, kind: str, instruction: str | None) -> list[Record]:
    records: list[Record] = []
    seen: set[str] = set()
    for line_no, row in _jsonl(path):
        where = f"{path}, line {line_no}"
        raw_id = row.get("_id")
        if not isinstance(raw_id, (str, int)) or isinstance(raw_id, bool) or str(raw_id) == "":
            raise EvalDataError(f"{where}: missing or invalid '_id'")
        rid = str(raw_id)
        if rid in seen:
            raise EvalDataError(f"{where}: duplicate {kind} id {rid!r}")
        seen.add(rid)
        title, text = _optional_str(row, "title", where), _optional_str(row, "text", where)
        text = "\n".join(t for t in (title, text) if t) or None
        image = _image_path(path.parent, _optional_str(row, "image", where), where)
        if text is None and image is None:
            raise EvalDataError(f"{where}: {kind} {rid!r} has neither 'text' nor 'image'")
        records.append(Record(id=rid, text=text, image=image, instruction=instruction))
    return records


def _qrels(path: Path, query_ids: set[str], corpus_ids: set[str]) -> dict[str, dict[str, int]]:
    if not path.is_file():
        raise EvalDataError(f"{path}: file not found")
    qrels: dict[str, dict[str, int]] = {}
    with path.open(encoding="utf-8", newline="") as handle:
        for line_no, fields in enumerate(csv.reader(handle, delimiter="\t"), start=1):
            if line_no == 1 or not fields or not "".join(fields).strip():
                continue  # header
            where = f"{path}, line {line_no}"
            if len(fields) != 3:
                raise EvalDataError(f"{where}: expected 3 tab-separated fields (query-id, corpus-id, score)")
            qid, cid, score = (f.strip() for f in fields)
            try:
                grade = int(float(score))
            except ValueError as err:
                raise EvalDataError(f"{where}: score {score!r} is not a number") from err
            if qid not in query_ids:
                raise EvalDataError(f"{where}: query-id {qid!r} is not in queries.jsonl")
            if cid not in corpus_ids:
                raise EvalDataError(f"{where}: corpus-id {cid!r} is not in corpus.jsonl")
            qrels.setdefault(qid, {})[cid] = grade
    return qrels


def load_beir(folder: str | Path, limit: int | None = None) -> BeirSet:
    """Load ``corpus.jsonl``, ``queries.jsonl`` and ``qrels/test.tsv``; keep queries that have a relevant doc."""
    folder = Path(folder)
    if not folder.is_dir():
        raise EvalDataError(f"{folder}: not a folder (BEIR layout needs corpus.jsonl, queries.jsonl, qrels/test.tsv)")
    instructions = _instructions(folder)
    corpus = _beir_records(folder / "corpus.jsonl", "corpus item", instructions.get("candidate"))
    queries = _beir_records(folder / "queries.jsonl", "query", instructions.get("query"))
    qrels = _qrels(folder / "qrels" / "test.tsv", {q.id for q in queries}, {c.id for c in corpus})
    if not corpus:
        raise EvalDataError(f"{folder / 'corpus.jsonl'}: the corpus is empty")
    # A query with no relevant document would score 0 by construction; BEIR drops them too.
    queries = [q for q in queries if any(g > 0 for g in qrels.get(q.id, {}).values())]
    if limit is not None:
        queries = queries[:limit]
    if not queries:
        raise EvalDataError(f"{folder}: no queries with a relevant document in qrels/test.tsv")
    return BeirSet(path=folder, corpus=corpus, queries=queries,
                   qrels={q.id: qrels[q.id] for q in queries})


def _str_list(row: dict[str, Any], key: str, where: str) -> list[str | None]:
    value = row.get(key)
    if value is None:
        return []
    if not isinstance(value, list) or not all(v is None or isinstance(v, str) for v in value):
        raise EvalDataError(f"{where}: field {key!r} must be a list of strings")
    return [v or None for v in value]


def _mmeb_record(rid: str, text: str | None, image: Path | None, instruction: str | None = None) -> Record:
    """MMEB writes ``<|image_1|>`` into the text of image items; with an image, the rest is the instruction."""
    if text is not None:
        text = text.replace(IMAGE_TOKEN, "").strip() or None
    if image is not None and text is not None:
        return Record(id=rid, image=image, instruction=" ".join(t for t in (instruction, text) if t))
    return Record(id=rid, text=text, image=image, instruction=instruction)


def load_mmeb(path: str | Path, limit: int | None = None) -> MmebSet:
    """Load MMEB rows: ``qry_text``, ``qry_img_path``, ``tgt_text[]``, ``tgt_img_path[]`` (gold first).

    For an image query MMEB's ``qry_text`` is ``"<|image_1|>\n<instruction>"``: the placeholder is
    dropped and the rest becomes the item's instruction. A text-only query keeps its text as text.
    """
    path = Path(path)
    if not path.is_file():
        raise EvalDataError(f"{path}: file not found")
    candidate_instruction = _instructions(path.parent).get("candidate")
    rows: list[MmebRow] = []
    for line_no, row in _jsonl(path):
        if limit is not None and len(rows) >= limit:
            break
        where = f"{path}, line {line_no}"
        query = _mmeb_record(str(line_no), _optional_str(row, "qry_text", where),
                             _image_path(path.parent, _optional_str(row, "qry_img_path", where), where))
        if query.text is None and query.image is None:
            raise EvalDataError(f"{where}: the query has neither 'qry_text' nor 'qry_img_path'")
        texts, images = _str_list(row, "tgt_text", where), _str_list(row, "tgt_img_path", where)
        if texts and images and len(texts) != len(images):
            raise EvalDataError(f"{where}: 'tgt_text' has {len(texts)} entries but 'tgt_img_path' has {len(images)}")
        size = max(len(texts), len(images))
        if size < 2:
            raise EvalDataError(f"{where}: need at least 2 candidates (gold first), got {size}")
        texts, images = texts or [None] * size, images or [None] * size
        candidates = []
        for j, (text, rel) in enumerate(zip(texts, images, strict=True)):
            record = _mmeb_record(f"{line_no}:{j}", text, _image_path(path.parent, rel, where), candidate_instruction)
            if record.text is None and record.image is None:
                raise EvalDataError(f"{where}: candidate {j} has neither text nor image")
            candidates.append(record)
        rows.append(MmebRow(query=query, candidates=candidates))
    if not rows:
        raise EvalDataError(f"{path}: no query rows")
    return MmebSet(path=path, rows=rows)
