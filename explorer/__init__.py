"""UI-free library behind the explorer app: sessions, search with live figures, token matches,
budget trade-offs, the scale calculator and per-session upload galleries.

``app.py`` is a thin Gradio layer over :class:`explorer.service.Explorer`; nothing here
imports gradio, so the same calls are usable from notebooks and tests. Dependencies go one way:
``app.py -> explorer -> index_builder -> metaembed``.
"""

from explorer.config import ExplorerConfig
from explorer.errors import ExplorerError

__all__ = ["ExplorerConfig", "ExplorerError"]
