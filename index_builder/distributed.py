"""The distributed build: decoding and PDF rendering in Ray Data CPU tasks, encoding in a pool of encoder
actors (one model per actor, ``num_gpus`` each when there are GPUs), the results streamed back in plan order
to the builder, which commits them into the gallery or its shards exactly as a local build does.

The tasks run the local build's own stages (:mod:`index_builder.stages`), so skips carry the same reasons
and vectors are the same model's on the same pixels. Inputs and the gallery folder must be visible at the
same path from every node (a shared filesystem, as for Ray Data's own file readers: workers read the input
files and write thumbnails), and every node needs this project installed (``pip install .``).
Ray is imported here only, so ``make demo`` and local builds never need it.
"""

from __future__ import annotations

import itertools
import logging
import os
import pickle
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from index_builder.errors import GalleryError
from index_builder.gallery import THUMBS_DIR, thumb_name
from index_builder.stages import Decoded, Skipped, Unit, decode_file, encode_batch
from index_builder.storage import save_thumbnail
from metaembed.models import MetaEmbedEncoder, load_encoder
from metaembed.serve import RAY_REQUIREMENT

logger = logging.getLogger(__name__)

#: CPUs a decode task asks for: small, so encoder actors and decode tasks never starve each other.
DECODE_CPUS = 0.25
#: Object store of a ``local`` cluster: decoded pixels stream through it a few batches at a time.
LOCAL_OBJECT_STORE = 256 * 1024 * 1024


def import_ray() -> Any:
    """``ray``, or a GalleryError naming the install command."""
    try:
        import ray
    except ImportError:
        raise GalleryError(f"this needs Ray, which is not installed: pip install '{RAY_REQUIREMENT}'") from None
    return ray


@dataclass
class Work:
    """What to decode and encode: the planned units, where each one's thumbnail goes, and how to decode."""

    units: list[Unit]
    dpi: int
    max_pixels: int | None
    batch_size: int
    dirs: dict[str, str]  #: item id -> the folder of the gallery (shard) that will hold it


@dataclass
class Batch:
    """One batch back from the cluster: encoded rows, model failures, decode skips, encoder seconds."""

    decoded: list[tuple[Unit, int, int, str | None]] = field(default_factory=list)
    vectors: torch.Tensor = field(default_factory=lambda: torch.empty(0))
    failed: list[tuple[Unit, str]] = field(default_factory=list)
    skipped: list[Skipped] = field(default_factory=list)
    seconds: float = 0.0
    current: str = ""


@dataclass(frozen=True)
class Cluster:
    """Where to run: a started local Ray or an address, and how many encoder actors of what size."""

    workers: int
    cpus_per_worker: float
    gpus_per_worker: float
    threads: int


def connect(ray: Any, spec: str, workers: int | None, gpus_per_worker: float) -> tuple[Cluster, bool]:
    """Join (or, for ``local[:W]``, start) a Ray cluster; returns the pool to use and whether we started Ray."""
    started = False
    if not ray.is_initialized():
        if spec == "local" or spec.startswith("local:"):
            os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")  # a one-machine Ray: loopback only
            ray.init(num_cpus=os.cpu_count(), include_dashboard=False, object_store_memory=LOCAL_OBJECT_STORE,
                     log_to_driver=False)
        else:
            ray.init(address=spec, log_to_driver=False)
        started = True
    if spec.startswith("local:"):
        try:
            workers = int(spec.split(":", 1)[1])
        except ValueError:
            raise GalleryError(f"--ray {spec!r}: expected local, local:W (W encoder workers) or an address") from None
    if workers is None:  # one model per GPU slot, else one per node
        gpus = ray.cluster_resources().get("GPU", 0)
        workers = int(gpus // gpus_per_worker) if gpus_per_worker else len([n for n in ray.nodes() if n["Alive"]])
    if workers < 1:
        raise GalleryError(f"need at least one encoder worker, got {workers}")
    cpus = float(ray.cluster_resources().get("CPU", 1))
    largest = max(float(n["Resources"].get("CPU", 0)) for n in ray.nodes() if n["Alive"])
    # an actor must fit on one node beside a decode task, and the pool must leave room for decoding
    per_worker = max(0.1, min(largest - DECODE_CPUS, (cpus - DECODE_CPUS) / workers))
    return Cluster(workers, per_worker, gpus_per_worker, max(1, round(per_worker))), started


def run(work: Work, model: MetaEmbedEncoder | str, spec: str, workers: int | None = None,
        gpus_per_worker: float = 0.0) -> Iterator[Batch]:
    """Decode and encode ``work`` on Ray and yield the results in plan order, a batch at a time.

    ``model`` is a model reference each actor loads itself (the CLI), or an encoder instance shipped to
    every actor (tests, notebooks). A Ray started here (``local``) is shut down when the run ends.
    """
    if not work.units:
        return
    ray = import_ray()
    cluster, started = connect(ray, spec, workers, gpus_per_worker)
    logger.info("Ray build: %d encoder worker(s), %.2f CPUs and %g GPUs each, %d torch thread(s)",
                cluster.workers, cluster.cpus_per_worker, cluster.gpus_per_worker, cluster.threads)
    try:
        context = ray.data.DataContext.get_current()
        context.execution_options.preserve_order = True  # same order as a local build: reproducible galleries
        context.enable_progress_bars = False
        rows = [{"units": pickle.dumps([(u, work.dirs[u.item_id]) for u in group])}
                for _, group in itertools.groupby(work.units, key=lambda u: u.found.path)]
        dataset = ray.data.from_items(rows, override_num_blocks=min(len(rows), 8 * cluster.workers))
        dataset = dataset.flat_map(_decode_row, fn_kwargs={"dpi": work.dpi, "max_pixels": work.max_pixels},
                                   num_cpus=DECODE_CPUS)
        dataset = dataset.map_batches(
            EncoderActor, fn_constructor_args=(model, work.batch_size, cluster.threads), batch_size=work.batch_size,
            batch_format="numpy", compute=ray.data.ActorPoolStrategy(size=cluster.workers),
            num_cpus=cluster.cpus_per_worker,
            num_gpus=cluster.gpus_per_worker or None)
        for batch in dataset.iter_batches(batch_size=work.batch_size, batch_format="numpy"):
            yield _to_batch(batch)
    finally:
        if started:
            ray.shutdown()


_COLUMNS = ("kind", "unit", "pixels", "width", "height", "text", "has_text", "label", "reason")


def _decode_row(row: dict[str, Any], dpi: int, max_pixels: int | None) -> list[dict[str, Any]]:
    """CPU stage: one file's units -> one row per decoded item (raw RGB bytes) or per skip; thumbnails here."""
    entries = pickle.loads(row["units"])  # our own plan, pickled by the driver above
    dirs = {unit.item_id: folder for unit, folder in entries}
    out = []
    for entry in decode_file([unit for unit, _ in entries], dpi, max_pixels):
        if isinstance(entry, Skipped):
            out.append(dict(zip(_COLUMNS, ("skip", pickle.dumps(entry.units), b"", 0, 0, "", False, entry.label,
                                           entry.reason), strict=True)))
            continue
        image = entry.image.convert("RGB")
        save_thumbnail(image, Path(dirs[entry.unit.item_id]) / THUMBS_DIR / thumb_name(entry.unit.item_id))
        out.append(dict(zip(_COLUMNS, ("item", pickle.dumps(entry.unit), image.tobytes(), image.width, image.height,
                                       entry.text or "", entry.text is not None, "", ""), strict=True)))
    return out


class EncoderActor:
    """One encoder per actor, loaded once; encodes the decoded rows of a batch (the local build's encode)."""

    def __init__(self, model: MetaEmbedEncoder | str, batch_size: int, threads: int) -> None:
        torch.set_num_threads(threads)
        self.encoder = model if isinstance(model, MetaEmbedEncoder) else load_encoder(model)
        self.batch_size = batch_size

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        n = len(batch["kind"])
        rows = [i for i in range(n) if batch["kind"][i] == "item"]
        decoded = [Decoded(pickle.loads(batch["unit"][i]), _image(batch, i),
                           str(batch["text"][i]) if batch["has_text"][i] else None) for i in rows]
        encoded = encode_batch(self.encoder, decoded, self.batch_size)
        kinds, reasons = [str(k) for k in batch["kind"]], [str(r) for r in batch["reason"]]
        vectors = np.zeros((n, self.encoder.num_candidate_tokens, self.encoder.dim), dtype=np.float32)
        for position, row in enumerate(encoded.kept):
            vectors[rows[row]] = encoded.vectors[position].numpy()
        for row, reason in encoded.failed:
            kinds[rows[row]], reasons[rows[row]] = "failed", reason
        out = {name: batch[name] for name in _COLUMNS if name != "pixels"}
        out.update(kind=np.array(kinds, dtype=object), reason=np.array(reasons, dtype=object), vectors=vectors,
                   seconds=np.full(n, encoded.seconds / max(n, 1)))
        return out


def _image(batch: dict[str, np.ndarray], i: int) -> Image.Image:
    return Image.frombytes("RGB", (int(batch["width"][i]), int(batch["height"][i])), batch["pixels"][i])


def _to_batch(columns: dict[str, np.ndarray]) -> Batch:
    batch = Batch(seconds=float(np.sum(columns["seconds"])))
    keep: list[int] = []
    for i, kind in enumerate(columns["kind"]):
        if kind == "skip":
            batch.skipped.append(Skipped(str(columns["label"][i]), str(columns["reason"][i]),
                                         pickle.loads(columns["unit"][i])))
            continue
        unit = pickle.loads(columns["unit"][i])
        batch.current = unit.found.display
        if kind == "failed":
            batch.failed.append((unit, str(columns["reason"][i])))
            continue
        text = str(columns["text"][i]) if columns["has_text"][i] else None
        batch.decoded.append((unit, int(columns["width"][i]), int(columns["height"][i]), text))
        keep.append(i)
    batch.vectors = torch.from_numpy(np.ascontiguousarray(columns["vectors"][keep]))
    return batch


__all__: Sequence[str] = ["Batch", "EncoderActor", "Work", "connect", "import_ray", "run"]
