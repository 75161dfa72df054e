"""Shared helpers for the explorer tests: a small real gallery and a real app server on a free port.

The gallery is built with the real index_builder from images drawn here and a real PDF (the ingest
tests' writer, with a text layer), encoded by a
real (randomly initialised, seeded) MetaEmbed-Mini saved with ``save_pretrained``, so the tests do
not depend on the committed model or gallery. The server is ``python app.py`` in a subprocess.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from ingest_fixtures import write_pdf
from PIL import Image, ImageDraw

REPO = Path(__file__).resolve().parents[1]
#: (file name, colour, shape) of the fixture images: distinct enough for an image query to find itself.
SHAPES = [("red-circle.png", (220, 30, 30), "circle"), ("blue-square.png", (30, 60, 220), "square"),
          ("green-bars.png", (30, 170, 60), "bars"), ("yellow-cross.png", (230, 200, 20), "cross")]
PDF_PAGES = ["invoice total amount due in march", "mountain hiking trail map and elevation"]


def draw(color: tuple[int, int, int], shape: str, size: int = 160) -> Image.Image:
    image = Image.new("RGB", (size, size), "white")
    pen = ImageDraw.Draw(image)
    if shape == "circle":
        pen.ellipse((20, 20, size - 20, size - 20), fill=color)
    elif shape == "square":
        pen.rectangle((30, 30, size - 30, size - 30), fill=color)
    elif shape == "bars":
        for x in range(10, size, 40):
            pen.rectangle((x, 10, x + 18, size - 10), fill=color)
    elif shape == "stripes":
        for y in range(5, size, 30):
            pen.rectangle((5, y, size - 5, y + 12), fill=color)
    else:
        pen.rectangle((size // 2 - 12, 10, size // 2 + 12, size - 10), fill=color)
        pen.rectangle((10, size // 2 - 12, size - 10, size // 2 + 12), fill=color)
    return image


def write_inputs(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name, color, shape in SHAPES:
        draw(color, shape).save(folder / name)
    write_pdf(folder / "notes.pdf", PDF_PAGES)  # real text layer, as a user's PDF would have
    return folder


def build_fixture(root: Path) -> tuple[Path, Path]:
    """(model dir, gallery dir): a seeded random MetaEmbed-Mini and a 6-item gallery it built."""
    import torch

    from index_builder import build
    from metaembed.models.mini import MiniMetaEmbed

    torch.manual_seed(0)
    model = MiniMetaEmbed(device="cpu")
    model.save_pretrained(root / "model")
    report = build([write_inputs(root / "inputs")], root / "gallery", encoder=model)
    assert report.total_items == len(SHAPES) + len(PDF_PAGES), report.summary
    return root / "model", root / "gallery"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextmanager
def running_app(model: Path, gallery: Path, workdir: Path, timeout_s: float = 120.0,
                extra_env: dict[str, str] | None = None) -> Iterator[str]:
    """Start ``python app.py`` on a free port (via GRADIO_SERVER_PORT) and yield its URL; stop it after."""
    port = free_port()
    env = {**os.environ, "GRADIO_SERVER_PORT": str(port), "GRADIO_ANALYTICS_ENABLED": "False",
           "METAEMBED_MODEL": str(model), "METAEMBED_GALLERY": str(gallery), "HF_HUB_OFFLINE": "1",
           "METAEMBED_SESSION_ROOT": str(workdir / "sessions"), "METAEMBED_EVAL_SET": str(workdir / "no-eval-set"),
           "GRADIO_TEMP_DIR": str(workdir / "gradio-tmp"), **(extra_env or {})}
    log = (workdir / "app.log").open("w")
    proc = subprocess.Popen([sys.executable, str(REPO / "app.py"), "--host", "127.0.0.1"], cwd=REPO, env=env,
                            stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/"
    try:
        deadline = time.monotonic() + timeout_s
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"app exited with {proc.returncode}: {(workdir / 'app.log').read_text()[-2000:]}")
            try:
                with urllib.request.urlopen(url, timeout=2) as response:
                    if response.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"app did not answer within {timeout_s} s")
            time.sleep(0.5)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()
