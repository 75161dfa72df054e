"""``pip install .`` (a wheel, not editable) into a fresh venv: every package imports from the install, and
the bundled MetaEmbed-Mini and demo gallery are found and answer a search from an unrelated folder."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
#: What a wheel is built from: the project's metadata, its three packages and the assets shipped as package data.
SOURCES = ("pyproject.toml", "requirements.txt", "README.md", "metaembed", "index_builder", "explorer", "assets")

CHECK = """
import importlib, json, sys
from pathlib import Path
for name in sys.argv[2:]:
    importlib.import_module(name)
import metaembed
from explorer.config import ExplorerConfig
from explorer.service import Explorer
from metaembed.bundled import GALLERY_DIR, MODEL_DIR
explorer = Explorer(ExplorerConfig(session_root=Path(sys.argv[1])))
view = explorer.search("s", "a penguin", None, None, 8, 16, 10)
print(json.dumps({"package": metaembed.__file__, "model": str(MODEL_DIR), "gallery": str(GALLERY_DIR),
                  "hits": len(view.outcome.hits), "candidates": view.outcome.figures["candidates"],
                  "thumbnail": str(view.entries[0][0])}))
"""


def _packages() -> list[str]:
    """Every package of the source tree (a folder with ``__init__.py``), as a dotted name."""
    return sorted(".".join(p.parent.relative_to(REPO).parts) for top in ("metaembed", "index_builder", "explorer")
                  for p in (REPO / top).rglob("__init__.py"))


def test_wheel_install_finds_the_bundled_model_and_gallery_from_another_folder(tmp_path):
    source = tmp_path / "source"  # a copy: pip builds in the tree it is given, which must not be the checkout
    source.mkdir()
    for name in SOURCES:
        if (REPO / name).is_dir():
            shutil.copytree(REPO / name, source / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(REPO / name, source / name)
    venv = tmp_path / "venv"
    # No pip of its own: 3.11's ensurepip would also put an old setuptools first on its path.
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    site = subprocess.run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          check=True, capture_output=True, text=True).stdout.strip()
    # The dependencies, pip and setuptools come from this test's environment (a plain path line: its .pth
    # files, among them an editable install of this project, are not processed), so nothing is downloaded.
    Path(site, "test-dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    subprocess.run([python, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation", "--no-index",
                    str(source)], check=True, env=env, capture_output=True)

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    done = subprocess.run([python, "-c", CHECK, str(tmp_path / "sessions"), *_packages()], cwd=elsewhere, env=env,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    found = json.loads(done.stdout.strip().splitlines()[-1])
    for key in ("package", "model", "gallery", "thumbnail"):
        assert Path(found[key]).resolve().is_relative_to(Path(site).resolve()), (key, found[key])
    manifest = json.loads(next((REPO / "assets" / "gallery").glob("*/index/index.json")).read_text())
    assert found["hits"] == 10 and found["candidates"] == manifest["count"]
