"""Writers for small BEIR / MMEB evaluation sets in a temp folder (shared by the eval and baseline tests)."""

from __future__ import annotations

import json
from pathlib import Path

from PIL import Image


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def write_beir(folder: Path, corpus: list[dict], queries: list[dict], qrels: list[tuple[str, str, int]]) -> Path:
    """A BEIR folder: ``corpus.jsonl``, ``queries.jsonl``, ``qrels/test.tsv`` (with header)."""
    write_jsonl(folder / "corpus.jsonl", corpus)
    write_jsonl(folder / "queries.jsonl", queries)
    (folder / "qrels").mkdir(parents=True, exist_ok=True)
    lines = ["query-id\tcorpus-id\tscore"] + [f"{q}\t{c}\t{s}" for q, c, s in qrels]
    (folder / "qrels" / "test.tsv").write_text("\n".join(lines) + "\n")
    return folder


def write_image(path: Path, colour: tuple[int, int, int], size: tuple[int, int] = (16, 16)) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, colour).save(path)
    return path.name


def text_beir(folder: Path) -> Path:
    """Five text documents and three queries, each with one relevant document (lexical overlap)."""
    docs = {"d1": "the cat sat on the mat", "d2": "dogs bark loudly at night", "d3": "install R packages from CRAN",
            "d4": "a recipe for tomato soup", "d5": "the history of the roman empire"}
    queries = {"q1": "cat on a mat", "q2": "installing packages in R", "q3": "tomato soup recipe"}
    qrels = [("q1", "d1", 1), ("q2", "d3", 1), ("q3", "d4", 1)]
    return write_beir(folder, [{"_id": k, "text": v} for k, v in docs.items()],
                      [{"_id": k, "text": v} for k, v in queries.items()], qrels)
