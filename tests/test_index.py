import json

import pytest
import torch
from conftest import unit

from metaembed.budget import TRAINED_GROUPS, Budget, BudgetError
from metaembed.index import IndexLoadError, MultiVectorIndex
from metaembed.scoring import maxsim, topk
from metaembed.store import MANIFEST, verify_vectors


def make_index(n=50, r_c=64, dim=32, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    vectors = unit(n, r_c, dim, generator=g)
    index = MultiVectorIndex(dim, r_c, dtype, model_name="toy", model_fingerprint="abc")
    index.add([f"item{i}" for i in range(n)], vectors, [{"i": i} for i in range(n)])
    return index, vectors


def test_search_matches_direct_scoring_every_budget():
    index, vectors = make_index()
    query = unit(16, 32, generator=torch.Generator().manual_seed(9))
    for budget in TRAINED_GROUPS:
        result = index.search(query, budget, k=5)
        values, positions = topk(maxsim(query, vectors.transpose(0, 1).contiguous(), budget)[0], 5)
        assert result.ids == [f"item{p}" for p in positions.tolist()]
        assert result.scores == pytest.approx(values.tolist(), abs=1e-5)
        assert result.bytes_read == index.bytes_read(budget) == 50 * budget.r_c * 32 * 4
        assert [m["i"] for m in result.metadata] == positions.tolist()
    assert index.stored_bytes == 50 * 64 * 32 * 4


def test_batch_search_and_validation():
    index, _ = make_index(n=10, r_c=8)
    queries = unit(3, 4, 32, generator=torch.Generator().manual_seed(1))
    results = index.search(queries, Budget(2, 8), k=3)
    assert [r.ids for r in results] == [index.search(q, Budget(2, 8), k=3).ids for q in queries]
    with pytest.raises(BudgetError, match="r_c=9"):
        index.search(queries[0], Budget(1, 9))
    with pytest.raises(BudgetError, match="r_q=5"):
        index.search(queries[0], Budget(5, 1))
    with pytest.raises(ValueError, match="k must be"):
        index.search(queries[0], Budget(1, 1), k=0)


def test_add_remove_keeps_ids_vectors_metadata_aligned():
    index, vectors = make_index(n=20, r_c=4, dim=8)
    assert index.remove(["item3", "item7"]) == 2
    assert len(index) == 18 and "item3" not in index
    torch.testing.assert_close(index.get_vectors("item8"), vectors[8])
    assert index.get_metadata("item8") == {"i": 8}
    extra = unit(2, 4, 8, generator=torch.Generator().manual_seed(5))
    index.add(["new0", "new1"], extra, [{"i": 100}, {"i": 101}])
    hit = index.search(extra[1], Budget(4, 4), k=1)
    assert hit.ids == ["new1"] and hit.metadata == [{"i": 101}]
    with pytest.raises(ValueError, match="duplicate ids: item8"):
        index.add(["item8"], extra[:1])
    with pytest.raises(KeyError, match="nope"):
        index.remove(["item9", "nope"])
    assert "item9" in index  # a failed remove removes nothing
    with pytest.raises(ValueError, match="shape"):
        index.add(["x"], unit(1, 3, 8))
    with pytest.raises(ValueError, match="NaN"):
        index.add(["x"], torch.full((1, 4, 8), float("nan")))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_persist_round_trip(tmp_path, dtype):
    index, _ = make_index(n=30, dtype=dtype)
    index.remove(["item0"])
    index.save(tmp_path / "idx")
    loaded = MultiVectorIndex.load(tmp_path / "idx")
    assert loaded.ids == index.ids and loaded.dtype == dtype and loaded.model_fingerprint == "abc"
    assert torch.equal(loaded.vectors, index.vectors)
    query = unit(16, 32, generator=torch.Generator().manual_seed(3))
    a, b = index.search(query, Budget(4, 8), k=7), loaded.search(query, Budget(4, 8), k=7)
    assert a.ids == b.ids and a.scores == b.scores
    loaded.add(["later"], unit(1, 64, 32))
    loaded.save(tmp_path / "idx")
    assert len(MultiVectorIndex.load(tmp_path / "idx")) == 30
    assert len(list((tmp_path / "idx").glob("vectors-*.safetensors"))) == 1  # stale file removed


def test_corrupt_truncated_and_mismatched_files_are_refused(tmp_path):
    index, _ = make_index(n=10)
    target = tmp_path / "idx"
    index.save(target)
    vectors_file = next(target.glob("vectors-*.safetensors"))
    data = vectors_file.read_bytes()

    vectors_file.write_bytes(data[: len(data) // 2])
    with pytest.raises(IndexLoadError, match="checksum"):
        MultiVectorIndex.load(target, mmap=False)  # read into RAM: the whole file's SHA-256 is checked
    with pytest.raises(IndexLoadError, match="not a complete safetensors file.*truncated"):
        MultiVectorIndex.load(target)  # mapped: the size against the header, at once
    with pytest.raises(IndexLoadError, match="safetensors"):
        MultiVectorIndex.load(target, verify=False, mmap=False)
    flipped = bytearray(data)
    flipped[-3] ^= 0xFF  # same size, one vector byte changed: only the checksum can tell
    vectors_file.write_bytes(bytes(flipped))
    assert len(MultiVectorIndex.load(target)) == 10
    with pytest.raises(IndexLoadError, match="checksum"):
        MultiVectorIndex.load(target, verify=True)
    with pytest.raises(IndexLoadError, match="checksum"):
        verify_vectors(target)

    vectors_file.write_bytes(data)
    manifest = json.loads((target / MANIFEST).read_text())
    (target / MANIFEST).write_text(json.dumps({**manifest, "count": 11}))
    with pytest.raises(IndexLoadError, match="manifest says"):
        MultiVectorIndex.load(target)
    (target / MANIFEST).write_text(json.dumps({**manifest, "format_version": 99}))
    with pytest.raises(IndexLoadError, match="format version 99"):
        MultiVectorIndex.load(target)
    (target / MANIFEST).write_text(json.dumps(manifest)[:-20])
    with pytest.raises(IndexLoadError, match="not valid JSON"):
        MultiVectorIndex.load(target)
    (target / MANIFEST).unlink()
    with pytest.raises(IndexLoadError, match="not a MetaEmbed index"):
        MultiVectorIndex.load(target)
    (target / MANIFEST).write_text(json.dumps(manifest))
    vectors_file.unlink()
    with pytest.raises(IndexLoadError, match="missing"):
        MultiVectorIndex.load(target)


def test_interrupted_save_leaves_previous_index_readable(tmp_path, monkeypatch):
    index, _ = make_index(n=10)
    index.save(tmp_path)
    index.add(["extra"], unit(1, 64, 32))

    def crash(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr("metaembed.store.atomic_write_json", crash)
    with pytest.raises(KeyboardInterrupt):
        index.save(tmp_path)
    monkeypatch.undo()
    assert len(MultiVectorIndex.load(tmp_path)) == 10
    assert not list(tmp_path.glob(".*.tmp"))


def around(centres: torch.Tensor, per_centre: int, r: int, noise: float, g: torch.Generator) -> torch.Tensor:
    """``per_centre`` items of ``r`` unit vectors scattered around each centre."""
    base = centres.repeat_interleave(per_centre, dim=0)[:, None, :]
    jitter = noise * torch.randn(len(base), r, centres.shape[1], generator=g)
    return torch.nn.functional.normalize(base + jitter, dim=-1)


def test_two_stage_recall_at_10_against_exhaustive():
    g = torch.Generator().manual_seed(0)
    dim, r_c = 64, 16
    centres = unit(100, dim, generator=g)
    vectors = around(centres, 40, r_c, noise=0.05, g=g)
    index = MultiVectorIndex(dim, r_c, torch.float32)
    index.add([str(i) for i in range(len(vectors))], vectors)
    queries = around(centres[:50], 1, 8, noise=0.05, g=g)
    recalls = []
    for q in queries:
        exact = set(index.search(q, Budget(8, 16), k=10).ids)
        approx = index.search(q, Budget(8, 16), k=10, first_stage=100)
        assert approx.candidates_scored == 100 and approx.bytes_read == 100 * 16 * dim * 4
        recalls.append(len(exact & set(approx.ids)) / 10)
    assert sum(recalls) / len(recalls) >= 0.99
    assert index.first_stage_index().kind == "flat"


def test_hnsw_above_threshold_and_first_stage_larger_than_index():
    from metaembed.first_stage import TokenZeroIndex

    g = torch.Generator().manual_seed(1)
    assert TokenZeroIndex(unit(300, 16, generator=g), hnsw_threshold=200).kind == "hnsw"
    index, _ = make_index(n=20)
    q = unit(16, 32, generator=g)
    assert index.search(q, Budget(2, 4), k=5, first_stage=50).ids == index.search(q, Budget(2, 4), k=5).ids


def test_reader_retries_when_a_writer_commits_between_its_reads(tmp_path, monkeypatch):
    """Manifest read, then a writer replaces the index and deletes the old vectors file: load still works."""
    import metaembed.store as store

    old, _ = make_index(n=5, seed=1)
    new, _ = make_index(n=7, seed=2)
    old.save(tmp_path)
    real_read_manifest = store.read_manifest
    calls = {"n": 0}

    def racing_read_manifest(directory):
        manifest = real_read_manifest(directory)
        calls["n"] += 1
        if calls["n"] == 1:
            new.save(tmp_path)  # commits a new manifest and removes the old vectors file
        return manifest

    monkeypatch.setattr(store, "read_manifest", racing_read_manifest)
    assert len(MultiVectorIndex.load(tmp_path)) == 7
