"""Eval-set loaders: both layouts, format detection, and errors that name the file and line."""

from __future__ import annotations

import pytest
from eval_fixtures import text_beir, write_beir, write_image, write_jsonl

from metaembed.eval.loaders import BeirSet, EvalDataError, MmebSet, detect_format, load_eval_set


def test_beir_loads_text_title_images_and_qrels(tmp_path):
    folder = tmp_path / "set"
    image = write_image(folder / "img" / "p1.png", (255, 0, 0))
    write_beir(folder, [{"_id": "p1", "image": f"img/{image}", "title": "Intro", "text": "R basics"},
                        {"_id": 7, "text": "other page"}],
               [{"_id": "q1", "text": "basics of R"}, {"_id": "q2", "text": "no relevant doc"}],
               [("q1", "p1", 1), ("q2", "7", 0)])
    data = load_eval_set(folder)
    assert isinstance(data, BeirSet)
    assert [c.id for c in data.corpus] == ["p1", "7"]
    assert data.corpus[0].text == "Intro\nR basics"
    assert data.corpus[0].image == (folder / "img" / "p1.png").resolve()
    # q2 has only a zero-grade judgement: BEIR drops queries without a relevant document.
    assert [q.id for q in data.queries] == ["q1"] and data.qrels == {"q1": {"p1": 1}}
    assert data.corpus[0].to_item().image.size == (16, 16)


def test_detect_format(tmp_path):
    assert detect_format(text_beir(tmp_path / "b")) == "beir"
    assert detect_format(write_jsonl(tmp_path / "m.jsonl", [])) == "mmeb"
    other = tmp_path / "x.csv"
    other.write_text("")
    with pytest.raises(EvalDataError, match="x.csv.*--format"):
        detect_format(other)
    with pytest.raises(EvalDataError, match="no such file"):
        detect_format(tmp_path / "missing")


def test_limit_keeps_first_queries_and_whole_corpus(tmp_path):
    data = load_eval_set(text_beir(tmp_path / "b"), limit=2)
    assert [q.id for q in data.queries] == ["q1", "q2"] and len(data.corpus) == 5 and set(data.qrels) == {"q1", "q2"}


def test_malformed_json_names_file_and_line(tmp_path):
    folder = text_beir(tmp_path / "b")
    path = folder / "corpus.jsonl"
    path.write_text(path.read_text() + "{not json\n")
    with pytest.raises(EvalDataError, match=r"corpus\.jsonl, line 6: not valid JSON"):
        load_eval_set(folder)


def test_row_without_id_or_content(tmp_path):
    folder = text_beir(tmp_path / "b")
    write_jsonl(folder / "queries.jsonl", [{"_id": "q1", "text": "x"}, {"text": "no id"}])
    with pytest.raises(EvalDataError, match=r"queries\.jsonl, line 2: missing or invalid '_id'"):
        load_eval_set(folder)
    write_jsonl(folder / "queries.jsonl", [{"_id": "q1"}])
    with pytest.raises(EvalDataError, match=r"queries\.jsonl, line 1: query 'q1' has neither"):
        load_eval_set(folder)


def test_qrels_unknown_ids_name_file_and_line(tmp_path):
    folder = text_beir(tmp_path / "b")
    with (folder / "qrels" / "test.tsv").open("a") as handle:
        handle.write("q1\tnope\t1\n")
    with pytest.raises(EvalDataError, match=r"test\.tsv, line 5: corpus-id 'nope' is not in corpus\.jsonl"):
        load_eval_set(folder)
    write_beir(folder, [{"_id": "d1", "text": "a"}], [{"_id": "q1", "text": "a"}], [("qX", "d1", 1)])
    with pytest.raises(EvalDataError, match=r"test\.tsv, line 2: query-id 'qX'"):
        load_eval_set(folder)


def test_missing_files_and_images(tmp_path):
    folder = text_beir(tmp_path / "b")
    (folder / "qrels" / "test.tsv").unlink()
    with pytest.raises(EvalDataError, match=r"qrels/test\.tsv: file not found"):
        load_eval_set(folder)
    write_beir(folder, [{"_id": "d1", "image": "gone.png"}], [{"_id": "q1", "text": "a"}], [("q1", "d1", 1)])
    with pytest.raises(EvalDataError, match=r"corpus\.jsonl, line 1: image 'gone.png' not found"):
        load_eval_set(folder)


def test_empty_query_set_is_an_error(tmp_path):
    folder = write_beir(tmp_path / "b", [{"_id": "d1", "text": "a"}], [{"_id": "q1", "text": "a"}], [])
    with pytest.raises(EvalDataError, match="no queries with a relevant document"):
        load_eval_set(folder)
    with pytest.raises(EvalDataError, match="no query rows"):
        load_eval_set(write_jsonl(tmp_path / "empty.jsonl", []))


def test_mmeb_rows_paths_relative_to_file(tmp_path):
    write_image(tmp_path / "imgs" / "a.png", (0, 0, 255))
    path = write_jsonl(tmp_path / "set.jsonl", [
        {"qry_text": "find it", "qry_img_path": "imgs/a.png", "tgt_text": ["gold", "other"], "tgt_img_path": ["", ""]},
        {"qry_text": "second", "qry_img_path": "", "tgt_text": ["x", "y", "z"]},
    ])
    data = load_eval_set(path, limit=None)
    assert isinstance(data, MmebSet) and len(data.rows) == 2
    assert data.rows[0].query.image == (tmp_path / "imgs" / "a.png").resolve()
    assert [c.text for c in data.rows[1].candidates] == ["x", "y", "z"]
    assert all(c.image is None for c in data.rows[1].candidates)
    assert len(load_eval_set(path, limit=1).rows) == 1


@pytest.mark.parametrize(("row", "message"), [
    ({"qry_text": "q", "tgt_text": ["a", "b"], "tgt_img_path": ["x.png"]}, "'tgt_text' has 2 entries but"),
    ({"qry_text": "q", "tgt_text": ["only gold"]}, "need at least 2 candidates"),
    ({"tgt_text": ["a", "b"]}, "neither 'qry_text' nor 'qry_img_path'"),
    ({"qry_text": "q", "tgt_text": "a"}, "must be a list of strings"),
    ({"qry_text": "q", "tgt_text": ["a", "b"], "tgt_img_path": ["", "missing.png"]}, "image 'missing.png' not found"),
])
def test_mmeb_malformed_rows_name_file_and_line(tmp_path, row, message):
    good = {"qry_text": "q", "tgt_text": ["a", "b"]}
    path = write_jsonl(tmp_path / "bad.jsonl", [good, good, row])
    with pytest.raises(EvalDataError, match=rf"bad\.jsonl, line 3: .*{message}"):
        load_eval_set(path)


def test_mmeb_image_placeholder_becomes_instruction_and_info_json(tmp_path):
    write_image(tmp_path / "a.png", (0, 0, 255))
    (tmp_path / "info.json").write_text('{"query_instruction": "ignored for mmeb", "candidate_instruction": "Rep."}')
    path = write_jsonl(tmp_path / "set.jsonl", [
        {"qry_text": "<|image_1|>\nRepresent the given image.", "qry_img_path": "a.png", "tgt_text": ["a", "b"]}])
    row = load_eval_set(path).rows[0]
    assert row.query.text is None and row.query.instruction == "Represent the given image."
    assert row.candidates[0].text == "a" and row.candidates[0].instruction == "Rep."
    item = row.query.to_item()
    assert item.image is not None and item.text is None


def test_beir_info_json_instructions(tmp_path):
    folder = text_beir(tmp_path / "b")
    (folder / "info.json").write_text('{"query_instruction": "Find it.", "candidate_instruction": null}')
    data = load_eval_set(folder)
    assert data.queries[0].instruction == "Find it." and data.corpus[0].instruction is None
    (folder / "info.json").write_text('{"query_instruction": 3}')
    with pytest.raises(EvalDataError, match=r"info\.json: 'query_instruction' must be"):
        load_eval_set(folder)
