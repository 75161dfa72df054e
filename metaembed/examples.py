"""Training triples: the type the data sources produce and the trainer consumes.

It lives below both :mod:`metaembed.datasets` (which builds examples from Debian data) and
:mod:`metaembed.training` (which samples and trains on them), so neither package imports the other:
the trainer is handed the sources it needs (``Trainer(cfg, registry)``) by whoever calls it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from metaembed.models.base import Item


@dataclass(eq=False)
class TrainExample:
    """One (query, positive, optional hard negative) triple from the data source named ``source``."""

    query: Item
    positive: Item
    negative: Item | None
    source: str


#: A data source: its options (a config entry minus name / weight / sampler options) -> examples.
Source = Callable[[dict], list[TrainExample]]
