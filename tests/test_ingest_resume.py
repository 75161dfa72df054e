"""Resumability: a build killed with SIGKILL (or interrupted with SIGINT) in a real subprocess resumes
without re-encoding committed items, the gallery on disk is readable at every moment, and the result
equals an uninterrupted build."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch
from ingest_fixtures import many_pictures
from toy_encoder import ToyEncoder

import index_builder
from index_builder.gallery import INDEX_DIR, THUMBS_DIR
from metaembed.index import MultiVectorIndex
from metaembed.store import MANIFEST, IndexLoadError

TESTS = Path(__file__).resolve().parent
REPO = TESTS.parent
N_ITEMS = 40
TOY = {"dim": 16, "num_candidate_tokens": 8, "num_query_tokens": 4}

# The child is the real CLI, with the slow toy encoder registered as a backend.
CHILD = (
    "import sys; sys.path[:0] = [{tests!r}, {repo!r}]; import metaembed.models as m; "
    "m.BACKENDS['slowtoy'] = 'slow_toy_encoder:SlowToyEncoder'; "
    "from index_builder.cli import main; sys.exit(main(sys.argv[1:]))"
)


class CountingEncoder(ToyEncoder):
    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.encoded = 0

    def encode_candidates(self, items, batch_size: int = 16) -> torch.Tensor:
        self.encoded += len(items)
        return super().encode_candidates(items, batch_size)


def _model_dir(tmp_path: Path) -> Path:
    directory = tmp_path / "model"
    ToyEncoder(**TOY).save_pretrained(directory)
    config = json.loads((directory / "config.json").read_text())
    (directory / "config.json").write_text(json.dumps({**config, "backend": "slowtoy"}))
    return directory


def _start_build(inputs: Path, out: Path, model: Path) -> subprocess.Popen:
    code = CHILD.format(tests=str(TESTS), repo=str(REPO))
    cmd = [sys.executable, "-c", code, "build", str(inputs), "--out", str(out), "--model", str(model),
           "--batch-size", "2", "--chunk-size", "4", "--no-progress"]
    # A job started in the background (nohup, CI runners) inherits SIGINT ignored, and Python then never
    # raises KeyboardInterrupt: give the child the default disposition, as an interactive shell would.
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))


def _committed(out: Path) -> int:
    """Items in the index on disk; raises if the on-disk index is unreadable."""
    index_dir = out / INDEX_DIR
    if not (index_dir / MANIFEST).exists():
        return 0
    for _ in range(3):
        before = (index_dir / MANIFEST).read_bytes()
        try:
            return len(MultiVectorIndex.load(index_dir))
        except IndexLoadError:
            # a reader can race the writer's clean-up of the previous vectors file; the disk state is
            # consistent only if the manifest moved on meanwhile, so anything else is a real failure
            if (index_dir / MANIFEST).read_bytes() == before:
                raise
    raise AssertionError("index kept changing under the reader")


def _wait_for_commits(proc: subprocess.Popen, out: Path, at_least: int) -> list[int]:
    seen = []
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and proc.poll() is None:
        seen.append(_committed(out))  # polled continuously: must never fail
        if seen[-1] >= at_least:
            return seen
        time.sleep(0.02)
    raise AssertionError(f"build did not commit {at_least} items in time: {proc.communicate()}")


def _snapshot(out: Path) -> dict[str, tuple[dict, torch.Tensor]]:
    gallery = index_builder.load_gallery(out)
    return {i: (gallery.index.get_metadata(i), gallery.index.get_vectors(i)) for i in gallery.index.ids}


def test_sigkill_mid_build_then_resume_equals_uninterrupted(tmp_path: Path) -> None:
    inputs = many_pictures(tmp_path / "in", N_ITEMS)
    model, out = _model_dir(tmp_path), tmp_path / "g"
    proc = _start_build(inputs, out, model)
    try:
        _wait_for_commits(proc, out, at_least=8)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    committed = _committed(out)
    assert 8 <= committed < N_ITEMS and committed % 4 == 0  # whole chunks only
    assert index_builder.verify(out, load_model=False).ok

    encoder = CountingEncoder(**TOY)
    report = index_builder.build([inputs], out, encoder, batch_size=2, chunk_size=4)
    assert encoder.encoded == N_ITEMS - committed  # nothing committed was encoded again
    assert report.resumed == committed and report.total_items == N_ITEMS

    reference = tmp_path / "ref"
    index_builder.build([inputs], reference, ToyEncoder(**TOY), batch_size=2, chunk_size=100)
    resumed, uninterrupted = _snapshot(out), _snapshot(reference)
    assert set(resumed) == set(uninterrupted)
    for item_id, (meta, vectors) in uninterrupted.items():
        assert resumed[item_id][0] == meta
        assert torch.equal(resumed[item_id][1], vectors)
    check = index_builder.verify(out, encoder)
    assert check.ok and not check.warnings  # the killed chunk's thumbnails were rewritten, none orphaned


def test_resume_removes_the_partial_files_a_killed_write_left(tmp_path: Path) -> None:
    """SIGKILL between an atomic write's temp file and its rename leaves the temp file behind; the SIGKILL
    test above hits that window only by chance, so it is planted here."""
    inputs = many_pictures(tmp_path / "in", 6)
    out = tmp_path / "g"
    index_builder.build([inputs], out, ToyEncoder(**TOY), batch_size=2, chunk_size=4)
    thumbs = out / THUMBS_DIR
    leftovers = [thumbs / ".040e8589dbfab8ad.webp.lrgoh86i.tmp", out / INDEX_DIR / ".vectors.abc123.tmp"]
    for leftover in leftovers:
        leftover.write_bytes(b"partial")
    before = index_builder.verify(out, load_model=False)
    assert before.ok and any("belong to no item" in w for w in before.warnings)  # the warning is real

    index_builder.build([inputs], out, ToyEncoder(**TOY), batch_size=2, chunk_size=4)
    assert not any(p.exists() for p in leftovers)
    after = index_builder.verify(out, load_model=False)
    assert after.ok and not after.warnings and after.checked_items == 6


def test_sigint_commits_finished_batches_and_exits_130(tmp_path: Path) -> None:
    inputs = many_pictures(tmp_path / "in", N_ITEMS)
    model, out = _model_dir(tmp_path), tmp_path / "g"
    proc = _start_build(inputs, out, model)
    _wait_for_commits(proc, out, at_least=4)
    os.kill(proc.pid, signal.SIGINT)
    _, stderr = proc.communicate(timeout=30)
    assert proc.returncode == 130 and "Rerun the same command to resume" in stderr and "Traceback" not in stderr
    report = json.loads((out / "report.json").read_text())
    assert report["interrupted"] and report["indexed"] == _committed(out)  # every finished batch was kept
    assert report["indexed"] % 2 == 0 and report["indexed"] < N_ITEMS
