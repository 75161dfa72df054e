"""Memory follows the batch, not the document: a 10x longer PDF must not raise peak RSS by its size."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from ingest_fixtures import write_pdf

TESTS = Path(__file__).resolve().parent
# Peak RSS of a child that builds the PDF with the toy encoder; ru_maxrss is in KiB on Linux.
CHILD = (
    "import sys, resource; sys.path[:0] = [{tests!r}, {repo!r}]; import index_builder; "
    "from toy_encoder import ToyEncoder; "
    "r = index_builder.build([sys.argv[1]], sys.argv[2], ToyEncoder(dim=16, num_candidate_tokens=8), batch_size=4, "
    "dpi=96); assert r.indexed == int(sys.argv[3]), r.summary; "
    "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)"
)


def _peak_rss_mib(pdf: Path, out: Path, pages: int) -> float:
    code = CHILD.format(tests=str(TESTS), repo=str(TESTS.parent))
    done = subprocess.run([sys.executable, "-c", code, str(pdf), str(out), str(pages)], capture_output=True,
                          text=True, check=True, timeout=600)
    return int(done.stdout.strip().splitlines()[-1]) / 1024


@pytest.mark.slow
def test_long_pdf_is_streamed(tmp_path: Path) -> None:
    short = write_pdf(tmp_path / "short.pdf", [f"page {i}" for i in range(10)])
    long = write_pdf(tmp_path / "long.pdf", [f"page {i}" for i in range(100)])
    small = _peak_rss_mib(short, tmp_path / "g1", 10)
    large = _peak_rss_mib(long, tmp_path / "g2", 100)
    # one rendered page is 816 x 1056 x 3 B = 2.5 MiB: holding the 90 extra pages would add ~225 MiB
    print(f"peak RSS {small:.0f} MiB (10 pages) vs {large:.0f} MiB (100 pages)")
    assert large - small < 60, (small, large)
