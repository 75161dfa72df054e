"""Scale-out on a real multi-node Ray cluster (a head and two worker nodes as separate processes on loopback,
dashboard off, small object stores, fractional CPUs): the distributed build equals a local build, resumes
shard by shard after a kill, and the served sharded gallery answers exactly as the single-process reference,
through a replica's death, with clear errors for bad requests and bad shards."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import torch
from ingest_fixtures import bad_inputs, good_inputs, many_pictures
from toy_encoder import ToyEncoder

import index_builder
from index_builder.search import search as reference_search
from metaembed.budget import TRAINED_GROUPS

pytestmark = pytest.mark.slow
ray = pytest.importorskip("ray", reason="the cluster tests need Ray: pip install -r requirements-test.txt")

TESTS = Path(__file__).resolve().parent
REPO = TESTS.parent
TOY = {"dim": 16, "num_candidate_tokens": 8, "num_query_tokens": 4}
QUERIES = ["a red circle", "Second page about cats"]


@pytest.fixture(scope="module")
def cluster():
    import slow_toy_encoder
    import toy_encoder
    from ray.cluster_utils import Cluster

    os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"  # every node on 127.0.0.1
    nodes = Cluster(initialize_head=True, head_node_args={
        "num_cpus": 2, "include_dashboard": False, "object_store_memory": 100 * 2**20})
    for _ in range(2):
        nodes.add_node(num_cpus=2, object_store_memory=100 * 2**20)
    nodes.wait_for_nodes()
    ray.init(address=nodes.address, log_to_driver=False)
    for module in (toy_encoder, slow_toy_encoder):  # the test encoders travel to the workers by value
        ray.cloudpickle.register_pickle_by_value(module)
    try:
        assert len([n for n in ray.nodes() if n["Alive"]]) == 3
        yield nodes
    finally:
        from ray import serve

        serve.shutdown()
        ray.shutdown()
        nodes.shutdown()
        os.environ.pop("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", None)


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("inputs")
    good_inputs(root / "good")
    bad_inputs(root / "bad")
    return root


def _by_id(target) -> dict[str, tuple[dict, torch.Tensor, Path]]:
    galleries = target.shards if isinstance(target, index_builder.sharded.ShardedGallery) else [target]
    return {i: (g.index.get_metadata(i), g.index.get_vectors(i), g.dir) for g in galleries for i in g.index.ids}


def _same_items(local, sharded, atol: float) -> None:
    a, b = _by_id(local), _by_id(sharded)
    assert set(a) == set(b) and a
    for item_id, (meta, vectors, folder) in a.items():
        other_meta, other_vectors, other_folder = b[item_id]
        assert (folder / meta.pop("path")).resolve() == (other_folder / other_meta.pop("path")).resolve()
        assert meta == other_meta
        assert torch.allclose(vectors, other_vectors, atol=atol, rtol=0)


def test_distributed_build_equals_local_build(cluster, inputs, tmp_path):
    encoder = ToyEncoder(**TOY)
    local = index_builder.build([inputs], tmp_path / "local", encoder, dtype=torch.float32)
    sharded = index_builder.build([inputs], tmp_path / "sharded", encoder, dtype=torch.float32, shards=2,
                                  ray=cluster.address, workers=2, batch_size=4)
    _same_items(local.gallery, sharded.gallery, atol=1e-4)
    assert sorted(map(tuple, (s.values() for s in local.skipped))) == sorted(
        map(tuple, (s.values() for s in sharded.skipped)))  # every bad file, with the same reason
    assert len(local.skipped) == 10 and sum(sharded.shards.values()) == local.total_items
    assert all(sharded.shards.values())  # both shards hold items
    manifest = json.loads((tmp_path / "sharded" / "manifest.json").read_text())
    assert [s["count"] for s in manifest["shards"]] == list(sharded.shards.values())
    assert manifest["model"]["fingerprint"] == encoder.fingerprint()
    assert index_builder.verify(tmp_path / "sharded", encoder).ok
    summary = index_builder.info(tmp_path / "sharded")
    assert summary.items == local.total_items and summary.shards == sharded.shards
    # add and remove on the sharded gallery: each item lands in (and leaves) the shard its id hashes to
    extra = many_pictures(tmp_path / "extra", 3)
    added = index_builder.add(tmp_path / "sharded", [extra], encoder, ray=cluster.address, workers=1)
    assert added.indexed == 3 and added.total_items == local.total_items + 3
    assert index_builder.remove(tmp_path / "sharded", [str(extra / "pic000.png")]) == 1
    assert index_builder.info(tmp_path / "sharded").items == local.total_items + 2


_KILLED_CHILD = """
import sys, torch, ray
sys.path[:0] = [{tests!r}, {repo!r}]
import slow_toy_encoder, toy_encoder, index_builder
ray.init(address={address!r}, log_to_driver=False)
for m in (slow_toy_encoder, toy_encoder):
    ray.cloudpickle.register_pickle_by_value(m)
index_builder.build([{inputs!r}], {out!r}, slow_toy_encoder.SlowToyEncoder(**{toy!r}), shards=2, ray={address!r},
                    workers=1, batch_size=2, chunk_size=2)
"""


def test_killed_distributed_build_resumes_per_shard(cluster, tmp_path):
    pictures = many_pictures(tmp_path / "in", 24)
    out = tmp_path / "g"
    code = _KILLED_CHILD.format(tests=str(TESTS), repo=str(REPO), address=cluster.address, inputs=str(pictures),
                                out=str(out), toy=TOY)
    child = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and child.poll() is None:
            counts = _committed(out)
            if sum(counts) >= 6:
                break
            time.sleep(0.2)
        child.send_signal(signal.SIGKILL)
    finally:
        child.wait(timeout=60)
    committed = _committed(out)
    assert 6 <= sum(committed) < 24, (committed, child.stderr.read().decode()[-2000:])

    report = index_builder.build([pictures], out, ToyEncoder(**TOY), shards=2, ray=cluster.address, workers=2)
    assert report.resumed == sum(committed) and report.indexed == 24 - sum(committed)  # nothing encoded twice
    reference = index_builder.build([pictures], tmp_path / "ref", ToyEncoder(**TOY))
    _same_items(reference.gallery, report.gallery, atol=1e-2)  # bf16 galleries: within one rounding step
    assert index_builder.verify(out, ToyEncoder(**TOY)).ok


def _committed(out: Path) -> list[int]:
    from metaembed.index import MultiVectorIndex

    counts = []
    for shard in sorted(out.glob("shard-*")):
        if (shard / "index" / "index.json").is_file():
            counts.append(len(MultiVectorIndex.load(shard / "index")))  # readable at every moment
    return counts


@pytest.fixture(scope="module")
def mini_galleries(cluster, inputs, tmp_path_factory) -> tuple[Path, Path]:
    """The bundled model, built by the real CLI twice: locally, and with 2 shards on the cluster."""
    root = tmp_path_factory.mktemp("mini")
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    for extra in ([], ["--shards", "2", "--ray", cluster.address, "--workers", "2"]):
        out = root / ("sharded" if extra else "local")
        run = subprocess.run([sys.executable, "-m", "index_builder", "build", str(inputs / "good"), "--out", str(out),
                              "--no-progress", *extra], capture_output=True, text=True, env=env, timeout=600)
        assert run.returncode == 0, run.stderr[-3000:]
    return root / "local", root / "sharded"


def test_cli_distributed_build_with_the_bundled_model(mini_galleries):
    local, sharded = mini_galleries
    _same_items(index_builder.load_gallery(local), index_builder.sharded.ShardedGallery.open(sharded), atol=1e-2)


@pytest.fixture(scope="module")
def served(cluster, mini_galleries) -> str:
    from metaembed.serve import app

    url = app.start(app.plan(mini_galleries[1]), port=8765, replicas=2, encoder_replicas=1, shard_cpus=0.25,
                    encoder_cpus=0.25)
    yield url
    from ray import serve

    serve.delete(app.APP_NAME)


def _post(url: str, body: object) -> tuple[int, dict]:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    request = urllib.request.Request(url + "/search", data=data, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=60) as answer:
            return answer.status, json.loads(answer.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


def test_sharded_search_equals_single_process_search_at_every_budget(served, mini_galleries):
    local, sharded = mini_galleries
    for text in QUERIES:
        for budget in TRAINED_GROUPS:
            for first_stage in (None, 4):
                body = {"text": text, "r_q": budget.r_q, "r_c": budget.r_c, "k": 3, "first_stage": first_stage}
                status, answer = _post(served, body)
                assert status == 200, answer
                ref = reference_search(sharded, body)
                assert [(h["id"], h["shard"]) for h in answer["hits"]] == [(h["id"], h["shard"]) for h in ref["hits"]]
                assert [h["score"] for h in answer["hits"]] == pytest.approx([h["score"] for h in ref["hits"]],
                                                                            abs=1e-5)
                assert answer["bytes_read"] == ref["bytes_read"]
                assert set(answer["timings"]["per_shard_ms"]) == {"shard-000", "shard-001"}
                assert answer["hits"][0]["source"] and answer["hits"][0]["kind"]
                if first_stage is None:  # exhaustive: the unsharded gallery ranks the same items
                    unsharded = reference_search(local, body)
                    assert [h["id"] for h in unsharded["hits"]] == [h["id"] for h in answer["hits"]]
                    assert [h["score"] for h in unsharded["hits"]] == pytest.approx(
                        [h["score"] for h in answer["hits"]], abs=0.05)  # bf16 vectors of two builds


def test_bad_requests_get_4xx_with_a_message(served):
    for body, status, words in [
        ({"text": "", "r_q": 1, "r_c": 1}, 400, "empty query"),
        ({"text": "x", "r_q": 17, "r_c": 1}, 400, "'r_q' must be in 1..16"),
        ({"text": "x", "r_c": 65}, 400, "'r_c' must be in 1..64"),
        ({"text": "x", "k": 0}, 400, "'k' must be in"),
        ({"text": "x", "k": 5, "first_stage": 2}, 400, "at least k"),
        ({"text": "x", "image": "%%%"}, 400, "not valid base64"),
        ({"image": "bm90IGFuIGltYWdl"}, 400, "cannot be used"),
        ({"text": "x", "colour": 1}, 400, "unknown field"),
        (b"{not json", 400, "not valid JSON"),
        ([1, 2], 400, "JSON object"),
    ]:
        got, answer = _post(served, body)
        assert got == status and words in answer["error"], (body, got, answer)
    with pytest.raises(urllib.error.HTTPError) as err:
        urllib.request.urlopen(served + "/search", timeout=30)
    assert err.value.code == 405
    info = json.loads(urllib.request.urlopen(served + "/info", timeout=30).read())
    assert info["shards"] == ["shard-000", "shard-001"] and info["r_q"] == 16


def test_a_killed_shard_replica_does_not_stop_the_answers(served, mini_galleries):
    from metaembed.serve import app

    body = {"text": QUERIES[0], "r_q": 8, "r_c": 16, "k": 3}
    expected = [h["id"] for h in reference_search(mini_galleries[1], body)["hits"]]
    outcomes: list[tuple[int, object]] = []
    stop = threading.Event()

    def query_loop() -> None:
        while not stop.is_set() and len(outcomes) < 200:
            status, answer = _post(served, body)
            outcomes.append((status, [h["id"] for h in answer["hits"]] if status == 200 else answer["error"]))

    worker = threading.Thread(target=query_loop)
    worker.start()
    time.sleep(1.0)
    victims = app.replica_actor_names("shard-000")
    assert len(victims) == 2
    ray.kill(ray.get_actor(victims[0], namespace="serve"), no_restart=True)
    time.sleep(3.0)
    stop.set()
    worker.join(timeout=120)
    assert outcomes and all(status in (200, 503) for status, _ in outcomes)
    assert all(ids == expected for status, ids in outcomes if status == 200)
    assert all("shard-000 is unavailable" in error for status, error in outcomes if status == 503)
    deadline = time.monotonic() + 120  # Serve replaces the replica; the gallery answers in full again
    while len(app.replica_actor_names("shard-000")) < 2 or victims[0] in app.replica_actor_names("shard-000"):
        assert time.monotonic() < deadline, "the killed replica was not replaced"
        time.sleep(1)
    status, answer = _post(served, body)
    assert status == 200 and [h["id"] for h in answer["hits"]] == expected


def test_missing_or_corrupt_shard_is_a_clear_error_at_start(mini_galleries, tmp_path):
    broken = tmp_path / "broken"
    shutil.copytree(mini_galleries[1], broken)
    env = {**os.environ, "PYTHONPATH": str(REPO)}

    def start() -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "metaembed.serve", str(broken), "--ray", "127.0.0.1:1"],
                              capture_output=True, text=True, env=env, timeout=300)

    vectors = next((broken / "shard-001" / "index").glob("vectors-*.safetensors"))
    vectors.write_bytes(vectors.read_bytes()[:-100])
    run = start()
    assert run.returncode == 2 and "shard shard-001 cannot be opened" in run.stderr and "truncated" in run.stderr
    assert "Traceback" not in run.stderr
    shutil.rmtree(broken / "shard-001")
    run = start()
    assert run.returncode == 2 and "shard-001" in run.stderr and "Traceback" not in run.stderr


def test_the_explorer_searches_a_served_gallery(served, mini_galleries, tmp_path):
    from explorer.config import ExplorerConfig
    from explorer.errors import ExplorerError
    from explorer.service import Explorer

    explorer = Explorer(ExplorerConfig(serve_url=served, session_root=tmp_path))
    info = json.loads(urllib.request.urlopen(served + "/info").read())
    assert explorer.model_status("visitor") == (
        f"Model: {info['model']} (fingerprint {info['model_fingerprint']}), encoding on the search server "
        f"{served}; your own gallery uses this machine's model.")
    view = explorer.search("visitor", QUERIES[1], None, "", 8, 16, 3)
    reference = reference_search(mini_galleries[1], {"text": QUERIES[1], "r_q": 8, "r_c": 16, "k": 3})
    assert [r["id"] for r in view.results] == [h["id"] for h in reference["hits"]]
    assert set(view.outcome.figures["per_shard_ms"]) == {"shard-000", "shard-001"}
    assert "| shard shard-000 |" in view.figures_md and "| shard shard-001 |" in view.figures_md
    assert all(isinstance(image, Path) for image, _ in view.entries)  # thumbnails via /info's folder
    again = explorer.search("visitor", QUERIES[1], None, "", 1, 1, 3)
    assert again.outcome.figures["query_cached"] and again.outcome.compared_to == "(8,16)"
    with pytest.raises(ExplorerError, match="stay on the search server"):
        explorer.token_matches("visitor", 1)
    with pytest.raises(ExplorerError, match="budget out of range"):
        explorer.search("visitor", "x", None, "", 17, 1, 3)
