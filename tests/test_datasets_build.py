"""Eval-set builders: layouts of issue 3, byte-identical rebuilds, atomic output, the docs-dev page set."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image

from metaembed.datasets import fmnist, manuals, tuxpaint
from metaembed.datasets.build import BUILDERS, RDOCS_DPI, build
from metaembed.models.instructions import IMAGE_TOKEN, TEXT_TO_PAGE


def _files(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def _qrels(path: Path) -> list[list[str]]:
    lines = path.read_text(encoding="utf-8").splitlines()
    assert lines[0] == "query-id\tcorpus-id\tscore"
    return [line.split("\t") for line in lines[1:]]


@pytest.fixture(scope="module")
def small_builds(tmp_path_factory) -> tuple[Path, Path]:
    first, second = tmp_path_factory.mktemp("a"), tmp_path_factory.mktemp("b")
    build(first, limit=6)
    build(second, limit=6)
    return first, second


def test_builds_are_byte_identical_and_atomic(small_builds):
    first, second = small_builds
    files = _files(first)
    assert files == _files(second)
    assert {name.split("/")[0] for name in files} == set(BUILDERS) | {"counts.json"}
    assert not any(".tmp" in name for name in files)
    assert sum(name.endswith(".png") for name in files) > 20


def test_beir_sets_are_consistent(small_builds):
    root = small_builds[0]
    for name in ("tux-t2i", "rdocs", "tux-scenes", "oca-dev-scenes"):
        corpus = _jsonl(root / name / "corpus.jsonl")
        queries = _jsonl(root / name / "queries.jsonl")
        qrels = _qrels(root / name / "qrels" / "test.tsv")
        corpus_ids, query_ids = {d["_id"] for d in corpus}, {q["_id"] for q in queries}
        assert len(corpus_ids) == len(corpus) and len(query_ids) == len(queries)
        assert all((root / name / d["image"]).is_file() for d in corpus)
        assert qrels and {q for q, _, _ in qrels} == query_ids and {d for _, d, _ in qrels} <= corpus_ids
    test_stamps = {s.key: s.caption for s in tuxpaint.load_split("test")[:6]}
    texts = {q["_id"]: q["text"] for q in _jsonl(root / "tux-t2i" / "queries.jsonl")}
    for qid, doc, score in _qrels(root / "tux-t2i" / "qrels" / "test.tsv"):
        assert test_stamps[doc] == texts[qid] and score == "1"
    pages = {d["_id"]: d["text"] for d in _jsonl(root / "rdocs" / "corpus.jsonl")}
    sentences = {q["_id"]: q["text"] for q in _jsonl(root / "rdocs" / "queries.jsonl")}
    for qid, doc, _ in _qrels(root / "rdocs" / "qrels" / "test.tsv"):
        assert sentences[qid] in " ".join(pages[doc].split())  # the query comes from its relevant page


def test_docs_dev_is_rdocs_built_from_the_held_out_manual(tmp_path):
    counts = build(tmp_path, only=["docs-dev"], limit=40)["docs-dev"]
    root = tmp_path / "docs-dev"
    corpus = _jsonl(root / "corpus.jsonl")
    assert counts["corpus"] == len(corpus) == 40 and counts["queries"] >= 20
    assert {d["_id"].split(":")[1] for d in corpus} == set(manuals.manual_names("dev")) == {"debian-reference.en.pdf"}
    pages = {d["_id"]: d["text"] for d in corpus}
    sentences = {q["_id"]: q["text"] for q in _jsonl(root / "queries.jsonl")}
    qrels = _qrels(root / "qrels" / "test.tsv")
    assert len(qrels) == len(sentences) == counts["qrels"]
    for qid, doc, _ in qrels:
        assert qid.startswith(doc + ":q") and sentences[qid] in " ".join(pages[doc].split())
    rendered = Image.open(root / corpus[0]["image"])
    assert rendered.size == next(manuals.iter_pages("debian-reference.en.pdf", dpi=RDOCS_DPI, numbers=[1])).image.size
    info = json.loads((root / "info.json").read_text())
    assert info["query_instruction"] == TEXT_TO_PAGE.query and "dev" in info["description"]


def test_mmeb_sets_put_gold_first(small_builds):
    root = small_builds[0]
    _, labels = fmnist.load_split("test")
    rows = _jsonl(root / "fmnist-cls" / "fmnist-cls.jsonl")
    assert len(rows) == 6
    for row, label in zip(rows, labels.tolist(), strict=False):
        assert row["tgt_text"][0] == fmnist.CLASSES[label] and sorted(row["tgt_text"]) == sorted(fmnist.CLASSES)
        assert row["qry_text"].startswith(IMAGE_TOKEN) and (root / "fmnist-cls" / row["qry_img_path"]).is_file()
        assert len(row["tgt_img_path"]) == len(row["tgt_text"])
    _, dev_labels = fmnist.load_split("dev")
    rows = _jsonl(root / "fmnist-dev" / "fmnist-dev.jsonl")
    assert [row["tgt_text"][0] for row in rows] == [fmnist.CLASSES[label] for label in dev_labels[:6].tolist()]
    assert all((root / "fmnist-dev" / row["qry_img_path"]).is_file() for row in rows)
    assert "dev" in json.loads((root / "fmnist-dev" / "info.json").read_text())["description"]
    stamps = tuxpaint.load_split("test")[:6]
    rows = _jsonl(root / "tux-i2t" / "tux-i2t.jsonl")
    for row, stamp in zip(rows, stamps, strict=True):
        assert row["tgt_text"][0] == stamp.caption and row["qry_img_path"] == f"images/{stamp.rel}"
        assert len(set(row["tgt_text"])) == len(row["tgt_text"]) == len({s.caption for s in stamps})


def test_only_rebuild_replaces_one_set_and_keeps_counts(small_builds, tmp_path):
    build(tmp_path, only=["fmnist-cls"], limit=2)
    build(tmp_path, only=["tux-i2t"], limit=3)
    counts = json.loads((tmp_path / "counts.json").read_text())
    assert counts == {"fmnist-cls": {"candidates_per_query": 10, "queries": 2},
                      "tux-i2t": {"candidates_per_query": 3, "queries": 3}}
    with pytest.raises(ValueError, match="unknown eval set"):
        build(tmp_path, only=["nope"])
