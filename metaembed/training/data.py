"""The deterministic weighted mixture of named data sources (:class:`metaembed.examples.TrainExample` pools).

The sampler is resumable from a tiny JSON state (step + per-source draw counts): the batch of step s
depends only on (seed, s, counts), so an interrupted run continues on the same trajectory.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from metaembed.examples import Source, TrainExample
from metaembed.models.base import Item

#: Options the sampler consumes itself; everything else in a data entry goes to the source function.
SAMPLER_OPTIONS = ("query_instruction", "candidate_instruction", "hard_negatives")


def _with_instruction(item: Item, instruction: str | None) -> Item:
    return item if instruction is None else dataclasses.replace(item, instruction=instruction)


def load_source(name: str, options: Mapping[str, Any], registry: Mapping[str, Source]) -> list[TrainExample]:
    """Call the registered source ``name`` and apply the sampler options (instructions, hard negatives)."""
    if name not in registry:
        raise ValueError(f"unknown data source {name!r}; known: {', '.join(sorted(registry)) or '(none)'}")
    source_opts = {k: v for k, v in options.items() if k not in SAMPLER_OPTIONS}
    examples = list(registry[name](source_opts))
    if not examples:
        raise ValueError(f"data source {name!r} with options {source_opts} returned no examples")
    q_instr = options.get("query_instruction")
    c_instr = options.get("candidate_instruction")
    keep_neg = bool(options.get("hard_negatives", True))
    return [
        TrainExample(
            query=_with_instruction(ex.query, q_instr),
            positive=_with_instruction(ex.positive, c_instr),
            negative=_with_instruction(ex.negative, c_instr) if keep_neg and ex.negative is not None else None,
            source=name,
        )
        for ex in examples
    ]


class MixtureSampler:
    """Draw batches from several pools: source by weight, then each pool in a per-epoch shuffled order.

    Drawing without replacement inside a pool (until it is exhausted) keeps duplicate positives, which
    would be false in-batch negatives, rare.
    """

    def __init__(self, pools: Mapping[str, Sequence[TrainExample]], weights: Mapping[str, float], seed: int) -> None:
        self.names = list(pools)
        if not self.names:
            raise ValueError("the data mix is empty")
        w = np.array([float(weights[n]) for n in self.names], dtype=np.float64)
        if (w <= 0).any() or not np.isfinite(w).all():
            raise ValueError(f"data weights must be positive numbers, got {dict(zip(self.names, w.tolist()))}")
        self.probs = w / w.sum()
        self.pools = {n: list(pools[n]) for n in self.names}
        self.seed = int(seed)
        self.step = 0
        self.counts = {n: 0 for n in self.names}
        self._perms: dict[int, tuple[int, np.ndarray]] = {}

    def _permutation(self, source_idx: int, epoch: int) -> np.ndarray:
        """Order of one pool in one epoch (one cached per pool: epochs only move forward)."""
        cached = self._perms.get(source_idx)
        if cached is None or cached[0] != epoch:
            size = len(self.pools[self.names[source_idx]])
            cached = (epoch, np.random.default_rng([self.seed, 1, source_idx, epoch]).permutation(size))
            self._perms[source_idx] = cached
        return cached[1]

    def next_batch(self, size: int) -> list[TrainExample]:
        """The next ``size`` examples; a function of (seed, step, counts) only."""
        rng = np.random.default_rng([self.seed, 0, self.step])
        choices = rng.choice(len(self.names), size=size, p=self.probs)
        batch = []
        for idx in choices.tolist():
            name = self.names[idx]
            epoch, pos = divmod(self.counts[name], len(self.pools[name]))
            batch.append(self.pools[name][int(self._permutation(idx, epoch)[pos])])
            self.counts[name] += 1
        self.step += 1
        return batch

    def state_dict(self) -> dict[str, Any]:
        return {"step": self.step, "counts": dict(self.counts)}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        if set(state["counts"]) != set(self.names):
            raise ValueError(f"checkpoint data mix {sorted(state['counts'])} differs from config {sorted(self.names)}")
        self.step = int(state["step"])
        self.counts = {n: int(state["counts"][n]) for n in self.names}


def build_sampler(entries: Sequence[Mapping[str, Any]], seed: int, registry: Mapping[str, Source]) -> MixtureSampler:
    """Load every configured source (``{name, weight, options...}``) from ``registry`` and mix them."""
    pools: dict[str, list[TrainExample]] = {}
    weights: dict[str, float] = {}
    for entry in entries:
        name = entry["name"]
        if name in pools:
            raise ValueError(f"data source {name!r} is listed twice")
        options = {k: v for k, v in entry.items() if k not in ("name", "weight")}
        pools[name] = load_source(name, options, registry)
        weights[name] = float(entry.get("weight", 1.0))
    return MixtureSampler(pools, weights, seed)
