"""Memory-mapped indexes: opening maps the vectors file, search reads only the budget's slab, mutations copy
and never touch the mapped file, and the streamed writer is byte-identical to safetensors' own."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import unit
from safetensors.torch import load_file
from safetensors.torch import save as save_safetensors

from metaembed.budget import TRAINED_GROUPS, Budget
from metaembed.index import MultiVectorIndex, write_index
from metaembed.store import verify_vectors

REPO = Path(__file__).resolve().parents[1]


def _index(n: int = 40, r_c: int = 8, dim: int = 16, dtype: torch.dtype = torch.bfloat16, seed: int = 0):
    vectors = unit(n, r_c, dim, generator=torch.Generator().manual_seed(seed))
    index = MultiVectorIndex(dim, r_c, dtype, model_name="toy", model_fingerprint="f")
    index.add([f"i{k}" for k in range(n)], vectors, [{"k": k} for k in range(n)])
    return index


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_streamed_file_is_safetensors_and_mapped_search_equals_in_ram(tmp_path, dtype):
    index = _index(dtype=dtype)
    index.save(tmp_path)
    (vectors_file,) = tmp_path.glob("vectors-*.safetensors")
    assert vectors_file.read_bytes() == save_safetensors({"vectors": index.vectors.contiguous()})
    assert torch.equal(load_file(vectors_file)["vectors"], index.vectors)
    mapped, in_ram = MultiVectorIndex.load(tmp_path), MultiVectorIndex.load(tmp_path, mmap=False)
    assert mapped.is_mapped and not in_ram.is_mapped
    query = unit(4, 16, generator=torch.Generator().manual_seed(1))
    for budget in [Budget(1, 1), Budget(2, 4), Budget(4, 8)]:
        for first_stage in (None, 10):
            a = mapped.search(query, budget, k=5, first_stage=first_stage)
            b = in_ram.search(query, budget, k=5, first_stage=first_stage)
            assert a.ids == b.ids and a.scores == b.scores


def test_add_and_remove_copy_on_write_and_never_change_the_mapped_file(tmp_path):
    index = _index()
    index.save(tmp_path)
    (vectors_file,) = tmp_path.glob("vectors-*.safetensors")
    before = hashlib.sha256(vectors_file.read_bytes()).hexdigest()
    mapped = MultiVectorIndex.load(tmp_path)
    reader = MultiVectorIndex.load(tmp_path)  # another reader keeps the old mapping throughout
    query = unit(4, 16, generator=torch.Generator().manual_seed(2))
    old = reader.search(query, Budget(4, 8), k=40)
    mapped.add(["new"], unit(1, 8, 16, generator=torch.Generator().manual_seed(3)))
    assert not mapped.is_mapped and len(mapped) == 41
    mapped.remove(["i0", "i5"])
    mapped.save(tmp_path)  # commits a new vectors file and unlinks the mapped one
    assert hashlib.sha256(vectors_file.read_bytes() if vectors_file.exists() else b"").hexdigest() != before
    assert not vectors_file.exists() and len(list(tmp_path.glob("vectors-*.safetensors"))) == 1
    again = reader.search(query, Budget(4, 8), k=40)  # the unlinked file's pages stay valid and unchanged
    assert again.ids == old.ids and again.scores == old.scores
    reopened = MultiVectorIndex.load(tmp_path, verify=True)
    assert len(reopened) == 39 and "new" in reopened and "i0" not in reopened
    verify_vectors(tmp_path)


def test_write_index_from_a_slab_generator(tmp_path):
    n, r_c, dim = 30, 4, 8
    vectors = unit(r_c, n, dim, generator=torch.Generator().manual_seed(4)).to(torch.bfloat16)
    write_index(tmp_path, (vectors[t] for t in range(r_c)), ids=[str(i) for i in range(n)], metadata=None,
                dim=dim, num_vectors=r_c, dtype=torch.bfloat16, model_name="m", model_fingerprint="x")
    loaded = MultiVectorIndex.load(tmp_path, verify=True)
    assert torch.equal(loaded.vectors, vectors) and loaded.ids[:2] == ["0", "1"] and loaded.model_name == "m"
    with pytest.raises(ValueError, match="slabs written"):
        write_index(tmp_path / "short", iter([vectors[0]]), ids=[str(i) for i in range(n)], metadata=None,
                    dim=dim, num_vectors=r_c, dtype=torch.bfloat16)
    assert not list((tmp_path / "short").glob("*.tmp")) and not list((tmp_path / "short").glob("vectors-*"))


_RSS_CHILD = r"""
import sys, time, torch
from metaembed import fused_maxsim
from metaembed.budget import Budget
from metaembed.index import MultiVectorIndex

def rss_mib():  # resident pages of mapped files: the index's slabs as this process touches them
    for line in open("/proc/self/status"):
        if line.startswith("RssFile:"):
            return int(line.split()[1]) / 1024

# A tiny index and the kernels first: the libraries a first load and a first search map in are not the index.
tiny = MultiVectorIndex.load(sys.argv[2])
fused_maxsim.warm_up()
tiny.search(torch.ones(4, tiny.dim), Budget(4, 8), k=1)
base = rss_mib()
tic = time.perf_counter()
index = MultiVectorIndex.load(sys.argv[1])
open_s = time.perf_counter() - tic
opened = rss_mib()
query = torch.nn.functional.normalize(torch.randn(16, index.dim), dim=-1)
index.search(query, Budget(1, 1), k=5)
one = rss_mib()
index.search(query, Budget(4, 8), k=5)
eight = rss_mib()
print(open_s, opened - base, one - base, eight - base)
"""


def test_mapped_index_resident_memory_follows_the_slabs_read(tmp_path):
    """A 16-token index of 24 MiB per slab: opening maps it, (1,1) touches one slab, (4,8) eight."""
    n, r_c, dim = 32_768, 16, 384
    slab_mib = n * dim * 2 / 2**20  # 24 MiB
    generator = torch.Generator().manual_seed(5)
    slabs = (unit(n, dim, generator=generator).to(torch.bfloat16) for _ in range(r_c))
    write_index(tmp_path, slabs, ids=[str(i) for i in range(n)], metadata=None, dim=dim, num_vectors=r_c,
                dtype=torch.bfloat16)
    # Drop the file from the page cache so RSS counts what this process maps in (a page the writer left
    # cached still only counts once the reader touches it, so this only makes the test stricter).
    fd = os.open(next(tmp_path.glob("vectors-*")), os.O_RDONLY)
    os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    os.close(fd)
    _index(n=4).save(tmp_path / "tiny")
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    out = subprocess.run([sys.executable, "-c", _RSS_CHILD, str(tmp_path), str(tmp_path / "tiny")],
                         capture_output=True, text=True, env=env, check=True, timeout=300).stdout.split()
    open_s, opened, one, eight = map(float, out)
    assert opened < slab_mib / 4  # the whole index is 384 MiB; opening touched almost none of it
    assert slab_mib * 0.9 < one < slab_mib * 1.5  # slab 0
    assert slab_mib * 7.5 < eight < slab_mib * 9  # slabs 0..7, not all 16
    assert open_s < 5  # loose: the figure itself is measured by benchmarks/bench_cluster.py


def test_harness_runs_on_a_mapped_index(tmp_path):
    """The eval harness's BEIR loop takes any index, so a mapped gallery is evaluated by the same code."""
    from metaembed.eval.harness import evaluate_index

    index = _index(n=20)
    index.save(tmp_path)
    mapped = MultiVectorIndex.load(tmp_path)
    queries = [(f"q{k}", unit(4, 16, generator=torch.Generator().manual_seed(k))) for k in range(3)]
    qrels = {f"q{k}": {f"i{k}": 1} for k in range(3)}
    budgets = [b for b in TRAINED_GROUPS if b.r_q <= 4 and b.r_c <= 8]
    ours, ram = evaluate_index(mapped, queries, qrels, budgets), evaluate_index(_index(n=20), queries, qrels, budgets)
    assert [r.metrics for r in ours] == [r.metrics for r in ram]
