"""BM25 and off-the-shelf MiniLM baselines, scored through the shared harness and metrics."""

from __future__ import annotations

import pytest
import torch
from eval_fixtures import text_beir, write_beir, write_image

from metaembed.baselines.bm25 import evaluate_bm25
from metaembed.baselines.single_vector import MiniLMEncoder
from metaembed.budget import Budget
from metaembed.eval.harness import evaluate
from metaembed.eval.loaders import EvalDataError, load_eval_set
from metaembed.models import Item


def test_bm25_ranks_lexical_matches_first(tmp_path):
    report = evaluate_bm25(load_eval_set(text_beir(tmp_path / "b")))
    (row,) = report.results
    assert row.label == "bm25" and row.r_q is None
    assert row.metrics["ndcg@5"] == pytest.approx(1.0) and row.metrics["mrr@10"] == pytest.approx(1.0)
    assert report.to_dict()["format"] == "beir"


def test_bm25_refuses_image_only_corpus(tmp_path):
    image = write_image(tmp_path / "b" / "a.png", (1, 2, 3))
    folder = write_beir(tmp_path / "b", [{"_id": "d1", "image": image}], [{"_id": "q1", "text": "x"}],
                        [("q1", "d1", 1)])
    with pytest.raises(EvalDataError, match="BM25 needs text on every corpus item"):
        evaluate_bm25(load_eval_set(folder))


def test_minilm_retrieves_paraphrases_without_word_overlap(tmp_path):
    docs = {"d1": "A feline resting on a rug.", "d2": "Canines barking during the night.",
            "d3": "Adding libraries to the R statistics software.", "d4": "How to cook a broth from tomatoes.",
            "d5": "Ancient Rome and its emperors."}
    queries = {"q1": "cat sleeping on a carpet", "q2": "dogs making noise after dark", "q3": "tomato soup recipe"}
    folder = write_beir(tmp_path / "p", [{"_id": k, "text": v} for k, v in docs.items()],
                        [{"_id": k, "text": v} for k, v in queries.items()],
                        [("q1", "d1", 1), ("q2", "d2", 1), ("q3", "d4", 1)])
    report = evaluate(MiniLMEncoder(), folder, budgets=[Budget(1, 1)], label="single-vector")
    (row,) = report.results
    assert row.label == "single-vector" and (row.r_q, row.r_c) == (1, 1)
    assert row.metrics["recall@1"] == pytest.approx(1.0)


def test_minilm_vectors_are_unit_and_refuse_images():
    encoder = MiniLMEncoder()
    vectors = encoder.encode_queries([Item(text="hello world"), Item(text="hello world", instruction="ignored")])
    assert vectors.shape == (2, 1, 384)
    assert torch.allclose(vectors.norm(dim=-1), torch.ones(2, 1), atol=1e-5)
    assert torch.allclose(vectors[0], vectors[1])  # instructions are not fed to an off-the-shelf model
    from PIL import Image

    with pytest.raises(ValueError, match="image-only item"):
        encoder.encode_candidates([Item(image=Image.new("RGB", (4, 4)))])
