"""Ingestion overhead: items/s of `index_builder.build` vs the model's raw encode rate, same items, same run.

    .venv/bin/python benchmarks/bench_ingest.py                    # bundled MetaEmbed-Mini
    .venv/bin/python benchmarks/bench_ingest.py --model DIR --images 32 --pages 8

The raw pass decodes every item up front (outside the timer) and times only ``encode_candidates`` on
the same batches, in the same order, with the same instructions the builder uses. The build pass times
everything a user waits for: discovery, hashing, decoding, PDF rendering, thumbnails, atomic commits.
overhead = build seconds / raw encode seconds - 1 (target <= 10%). The build's own in-run encode time
is reported too. Raw and build runs alternate ``--repeats`` times; the fastest of each is compared.
The last line of stdout is JSON.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import pypdfium2 as pdfium  # noqa: E402
import torch  # noqa: E402

import index_builder  # noqa: E402
from index_builder.builder import DEFAULT_BATCH_SIZE  # noqa: E402
from index_builder.discovery import Found, discover  # noqa: E402
from index_builder.items import candidate_item  # noqa: E402
from index_builder.pdf import DEFAULT_DPI, iter_pages  # noqa: E402
from metaembed.images import load_image  # noqa: E402
from metaembed.models import Item, MetaEmbedEncoder, load_encoder  # noqa: E402

GALLERY = REPO / "assets" / "gallery"


def prepare_inputs(workdir: Path, images_dir: Path, n_images: int, pdf: Path, n_pages: int) -> Path:
    """A folder with the first ``n_images`` images (sorted) and an ``n_pages``-page excerpt of ``pdf``."""
    inputs = workdir / "inputs"
    inputs.mkdir()
    for i, src in enumerate(sorted(images_dir.rglob("*.png"))[:n_images]):
        (inputs / f"{i:04d}_{src.name}").write_bytes(src.read_bytes())
    if n_pages:
        source = pdfium.PdfDocument(str(pdf))
        excerpt = pdfium.PdfDocument.new()
        excerpt.import_pages(source, list(range(min(n_pages, len(source)))))
        excerpt.save(str(inputs / "excerpt.pdf"))
    return inputs


def decoded_items(inputs: Path, dpi: int) -> list[Item]:
    """The items the builder will encode, in its order (discovery order, pages in order)."""
    items = []
    for found in discover([inputs]):
        assert isinstance(found, Found), found
        if found.kind == "pdf":
            pages = iter_pages(found.path, range(1, len(pdfium.PdfDocument(str(found.path))) + 1), dpi)
            items += [candidate_item(True, page.image, page.text or None, None) for page in pages]
        else:
            items.append(candidate_item(False, load_image(found.path), None, None))
    return items


def raw_encode_seconds(encoder: MetaEmbedEncoder, items: list[Item], batch_size: int) -> float:
    tic = time.perf_counter()
    for start in range(0, len(items), batch_size):
        encoder.encode_candidates(items[start : start + batch_size], batch_size=batch_size)
    return time.perf_counter() - tic


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="mini")
    parser.add_argument("--images-dir", type=Path, default=GALLERY / "images")
    parser.add_argument("--pdf", type=Path, default=GALLERY / "docs" / "reportlab-userguide.pdf")
    parser.add_argument("--images", type=int, default=48)
    parser.add_argument("--pages", type=int, default=16)
    parser.add_argument("--batch-size", type=int, default=DEFAULT_BATCH_SIZE)
    parser.add_argument("--dpi", type=int, default=DEFAULT_DPI)
    parser.add_argument("--repeats", type=int, default=2, help="alternating raw/build runs; the best of each is used")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    if args.threads:
        torch.set_num_threads(args.threads)

    encoder = load_encoder(args.model)
    with tempfile.TemporaryDirectory() as tmp:
        inputs = prepare_inputs(Path(tmp), args.images_dir, args.images, args.pdf, args.pages)
        items = decoded_items(inputs, args.dpi)
        encoder.encode_candidates(items[: args.batch_size], batch_size=args.batch_size)  # warm-up, not timed
        raw_runs, builds = [], []
        for repeat in range(args.repeats):  # alternate, so load changes on a shared machine hit both alike
            raw_runs.append(raw_encode_seconds(encoder, items, args.batch_size))
            builds.append(index_builder.build([inputs], Path(tmp) / f"gallery{repeat}", encoder,
                                              batch_size=args.batch_size, dpi=args.dpi))
            assert builds[-1].indexed == len(items), (builds[-1].indexed, len(items), builds[-1].skipped)
    raw_s = min(raw_runs)
    report = min(builds, key=lambda r: r.seconds)
    result = {
        "benchmark": "ingest",
        "model": encoder.name,
        "device": str(getattr(encoder, "device", "cpu")),
        "threads": torch.get_num_threads(),
        "items": len(items),
        "images": args.images,
        "pages": len(items) - args.images,
        "batch_size": args.batch_size,
        "repeats": args.repeats,
        "raw_encode_s_runs": [round(x, 3) for x in raw_runs],
        "build_s_runs": [round(r.seconds, 3) for r in builds],
        "raw_encode_s": round(raw_s, 3),
        "raw_items_per_s": round(len(items) / raw_s, 3),
        "build_s": round(report.seconds, 3),
        "build_items_per_s": round(report.indexed / report.seconds, 3),
        "build_encode_s": round(report.encode_seconds, 3),
        "overhead_vs_raw": round(report.seconds / raw_s - 1, 4),
        "overhead_within_build": round(report.seconds / report.encode_seconds - 1, 4),
        "target_overhead": 0.10,
    }
    print(f"raw encode {result['raw_items_per_s']} items/s, build {result['build_items_per_s']} items/s, "
          f"overhead {100 * result['overhead_vs_raw']:.1f}% (in-build {100 * result['overhead_within_build']:.1f}%)")
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
