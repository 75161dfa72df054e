"""Where the bundled MetaEmbed-Mini and the demo gallery live, wherever the package runs from.

The repository keeps them in ``assets/``; a wheel (``pip install .``) installs that folder as package data
at ``metaembed/assets/`` (``pyproject.toml``). So the search has two places, in this order: the installed
package data, then the ``assets/`` folder beside the package (a checkout, or an editable install). Nothing
depends on the working directory.
"""

from __future__ import annotations

from pathlib import Path

_PACKAGE = Path(__file__).resolve().parent
#: Searched in order; the first that exists is used.
CANDIDATES = (_PACKAGE / "assets", _PACKAGE.parent / "assets")


def assets_dir() -> Path:
    """The folder holding ``metaembed-mini/`` and ``gallery/`` (the checkout's ``assets/`` when none exists,
    so that an error names the place a checkout would have it)."""
    return next((path for path in CANDIDATES if path.is_dir()), CANDIDATES[-1])


#: The bundled MetaEmbed-Mini checkpoint (``load_encoder()`` / ``"mini"``).
MODEL_DIR = assets_dir() / "metaembed-mini"
#: The demo gallery folder (its prebuilt index is a sub-folder; the explorer finds it).
GALLERY_DIR = assets_dir() / "gallery"
