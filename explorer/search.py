"""One search with its live figures: encode the query once (cached per session), score at the chosen
budget, and explain the cost (ms per stage, bytes, FLOPs) and how the ranking moved."""

from __future__ import annotations

import threading
import time
import weakref
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from PIL import Image

from explorer.errors import ExplorerError
from explorer.models import fingerprint
from explorer.served import ServedGallery
from explorer.session import LastSearch, Session, query_key
from index_builder import IMAGE, PDF_PAGE, Gallery
from metaembed.budget import TRAINED_GROUPS, Budget, BudgetError
from metaembed.costs import scoring_flops
from metaembed.first_stage import TokenZeroIndex
from metaembed.index import MultiVectorIndex
from metaembed.models import Item, MetaEmbedEncoder
from metaembed.models.instructions import TEXT_TO_IMAGE, TEXT_TO_PAGE
from metaembed.scoring import maxsim, topk

MAX_K = 50
MAX_K_PRIME = 10_000
#: The Search tab's "find" choice -> the item kinds it ranks.
FIND = {"both": (IMAGE, PDF_PAGE), "images": (IMAGE,), "pages": (PDF_PAGE,)}
KIND_LABEL = {IMAGE: "images", PDF_PAGE: "pages"}
#: The trained query instruction of a text query, per kind of candidate it looks for.
TEXT_INSTRUCTION = {IMAGE: TEXT_TO_IMAGE.query, PDF_PAGE: TEXT_TO_PAGE.query}


@dataclass(frozen=True)
class Query:
    """What a visitor searches with: text, an image, or both, plus an optional instruction."""

    text: str | None = None
    image: Image.Image | None = None
    instruction: str | None = None

    def __post_init__(self) -> None:
        if self.image is None and not (self.text and self.text.strip()):
            raise ExplorerError("empty query: type some text or give an image")

    def key(self) -> str:
        return query_key(self.text and self.text.strip(), self.image, self.instruction and self.instruction.strip())

    def item(self) -> Item:
        text = self.text.strip() if self.text and self.text.strip() else None
        instruction = self.instruction.strip() if self.instruction and self.instruction.strip() else None
        return Item(text=text, image=self.image, instruction=instruction)


def default_instruction(kind: str, has_text: bool, has_image: bool) -> str | None:
    """The instruction a query is encoded with to find items of ``kind``: candidates were encoded with
    their kind's trained instruction, so a text query gets the matching one (MMEB's text->image and
    visual-document tasks); image queries had no trained instruction for these candidates, so none."""
    return TEXT_INSTRUCTION[kind] if has_text and not has_image else None


def plan_queries(text: str | None, image: Image.Image | None, given: str | None,
                 kinds: Sequence[str]) -> list[tuple[Query, tuple[str, ...]]]:
    """What to encode for a search over ``kinds``: one :class:`Query` per distinct instruction, with the
    kinds it scores. ``given`` empty = each kind's trained instruction; ``none`` = no instruction; else as
    typed (one encode for every kind)."""
    given = (given or "").strip()
    has_text = bool(text and text.strip())
    groups: dict[str | None, list[str]] = {}
    for kind in kinds:
        if given.lower() == "none":
            instruction = None
        else:
            instruction = given or default_instruction(kind, has_text, image is not None)
        groups.setdefault(instruction, []).append(kind)
    return [(Query(text=text, image=image, instruction=instruction), tuple(group))
            for instruction, group in groups.items()]


def find_kinds(find: str | None, present: Sequence[str]) -> tuple[str, ...]:
    """The kinds a "find" choice ranks in a gallery holding ``present``; a choice it cannot serve is a message."""
    choice = (find or "both").strip().lower()
    if choice not in FIND:
        raise ExplorerError(f"find must be one of {', '.join(FIND)}, got {find!r}")
    kinds = tuple(k for k in FIND[choice] if k in present)
    if not kinds:
        raise ExplorerError(f"this gallery holds no {choice}: choose 'both' or "
                            f"'{KIND_LABEL[present[0]] if present else 'images'}'")
    return kinds


class KindSplit:
    """Positions of each kind of item in an index, and a FAISS token-0 index per kind for two-stage
    searches (built on first use), so every kind gets its own shortlist of k′."""

    def __init__(self, gallery: Gallery) -> None:
        kinds = [gallery.item(i).kind for i in gallery.index.ids]
        self.size = len(kinds)
        self.positions = {kind: torch.tensor([p for p, k in enumerate(kinds) if k == kind], dtype=torch.long)
                          for kind in dict.fromkeys(kinds)}
        self._first_stage: dict[str, TokenZeroIndex] = {}
        self._lock = threading.Lock()

    def first_stage(self, index: MultiVectorIndex, kind: str) -> TokenZeroIndex:
        with self._lock:
            if kind not in self._first_stage:
                self._first_stage[kind] = TokenZeroIndex(index.vectors[0, self.positions[kind]])
            return self._first_stage[kind]


_SPLITS: weakref.WeakKeyDictionary[MultiVectorIndex, KindSplit] = weakref.WeakKeyDictionary()
_SPLITS_LOCK = threading.Lock()


def kind_split(gallery: Gallery) -> KindSplit:
    """The gallery's :class:`KindSplit`, computed once per index and again after items are added."""
    with _SPLITS_LOCK:
        split = _SPLITS.get(gallery.index)
        if split is None or split.size != len(gallery.index):
            split = _SPLITS[gallery.index] = KindSplit(gallery)
        return split


@dataclass(frozen=True)
class Ranked:
    """A merged ranking over kinds, with what it cost."""

    positions: list[int]
    scores: list[float]
    maxsim_ms: float
    first_stage_ms: float
    bytes_read: int
    candidates_scored: int


def rank_by_kind(index: MultiVectorIndex, split: KindSplit, groups: Sequence[tuple[torch.Tensor, tuple[str, ...]]],
                 budget: Budget, k: int, first_stage: int | None) -> Ranked:
    """Score each kind with the query vectors encoded for it and merge by score.

    The merge is fair because every score is the same quantity: a sum of r_q cosine maxima between a query
    encoded with the instruction the model was trained with for that kind and candidates encoded with
    theirs. Exhaustive: one pass over the whole index for all encodings at once. Two-stage: each kind's own
    FAISS token-0 shortlist of k′, then exact MaxSim."""
    if first_stage is None:
        start = time.perf_counter()
        scores = maxsim(torch.stack([v for v, _ in groups]), index.vectors, budget)
        merged = torch.full((len(index),), float("-inf"))
        for row, (_, kinds) in enumerate(groups):
            for kind in kinds:
                merged[split.positions[kind]] = scores[row, split.positions[kind]]
        scored = sum(len(split.positions[kind]) for _, kinds in groups for kind in kinds)
        values, positions = topk(merged, min(k, scored))
        return Ranked(positions.tolist(), values.tolist(), (time.perf_counter() - start) * 1000, 0.0,
                      index.bytes_read(budget), scored)
    first_ms, maxsim_ms, all_positions, all_scores = 0.0, 0.0, [], []
    shortlist_bytes = 0
    for vectors, kinds in groups:
        for kind in kinds:
            fs = split.first_stage(index, kind)
            start = time.perf_counter()
            shortlist = fs.shortlist(vectors[:1], min(first_stage, len(split.positions[kind])))[0]
            candidates = split.positions[kind][torch.from_numpy(shortlist[shortlist >= 0]).long()]
            first_ms += (time.perf_counter() - start) * 1000
            shortlist_bytes += fs.bytes_per_query
            start = time.perf_counter()
            all_scores.append(maxsim(vectors, index.vectors[: budget.r_c, candidates], budget)[0])
            all_positions.append(candidates)
            maxsim_ms += (time.perf_counter() - start) * 1000
    positions = torch.cat(all_positions)
    values, local = topk(torch.cat(all_scores), min(k, len(positions)))
    bytes_read = len(positions) * budget.r_c * index.dim * index.element_size + shortlist_bytes
    return Ranked(positions[local].tolist(), values.tolist(), maxsim_ms, first_ms, bytes_read, len(positions))


@dataclass(frozen=True)
class Hit:
    rank: int
    id: str
    score: float
    caption: str
    kind: str | None = None


@dataclass
class SearchOutcome:
    hits: list[Hit]
    figures: dict[str, Any]
    moved_in: list[str] = field(default_factory=list)
    moved_out: list[str] = field(default_factory=list)
    rank_changes: dict[str, int] = field(default_factory=dict)  # id -> old rank - new rank (positive = up)
    compared_to: str | None = None  # budget of the previous ranking of the same query


def check_budget(r_q: Any, r_c: Any, encoder: MetaEmbedEncoder, index: MultiVectorIndex) -> Budget:
    """A budget within what both the model (R_q) and the index (R_c) hold, or a message naming the bound.

    The explorer's one budget check, where a search enters it (:meth:`explorer.service.Explorer.search`);
    everything after it is handed a :class:`Budget`.
    """
    return check_bounds(r_q, r_c, encoder.num_query_tokens, index.num_vectors)


def check_bounds(r_q: Any, r_c: Any, max_r_q: int, max_r_c: int) -> Budget:
    """A budget of whole numbers within ``max_r_q`` x ``max_r_c`` (a local model and index, or a server's)."""
    try:
        r_q_i, r_c_i = int(r_q), int(r_c)
        if r_q_i != r_q or r_c_i != r_c:
            raise BudgetError(f"budget must be whole numbers, got r_q={r_q}, r_c={r_c}")
        return Budget(r_q_i, r_c_i).validate(max_r_q, max_r_c)
    except (BudgetError, TypeError, ValueError) as err:
        raise ExplorerError(f"budget out of range: {err}") from err


def check_k(k: Any, n: int, name: str = "k", upper: int = MAX_K) -> int:
    """A whole number in 1..upper, clamped to the gallery size ``n``."""
    try:
        value = int(k)
    except (TypeError, ValueError) as err:
        raise ExplorerError(f"{name} must be a whole number, got {k!r}") from err
    if value != k or not 1 <= value <= upper:
        raise ExplorerError(f"{name} must be a whole number in 1..{upper}, got {k}")
    return min(value, n)


def check_depth(k: Any, two_stage: bool, k_prime: Any, n: int) -> tuple[int, int | None]:
    """``(k, k′ or None)`` for a gallery of ``n`` items: k′ only for a two-stage search, and never below k."""
    k_eff = check_k(k, n)
    first_stage = check_k(k_prime, n, "k′", MAX_K_PRIME) if two_stage else None
    if first_stage is not None and first_stage < k_eff:
        raise ExplorerError(f"k′ ({first_stage}) must be at least k ({k_eff}): the first stage keeps k′ candidates")
    return k_eff, first_stage


def encode_queries(session: Session, encoder: MetaEmbedEncoder, queries: Sequence[Query]) -> tuple[list[Any], float]:
    """Query vectors ``(R_q, D)`` for each query, from the session cache where possible; the others are encoded
    and counted. One at a time: a batch of one short text takes the encoder's fast single-query path (two
    queries in one batch measured 467 ms against 17 ms for two single encodes with MetaEmbed-Mini). Returns
    the vectors and the encode ms (0 when all were cached)."""
    fp = fingerprint(encoder)
    vectors = [session.cached_query(fp, q.key()) for q in queries]
    missing = [i for i, v in enumerate(vectors) if v is None]
    if not missing:
        return vectors, 0.0
    start = time.perf_counter()
    for i in missing:
        vectors[i] = encoder.encode_queries([queries[i].item()])[0]
        session.encode_count += 1
        session.store_query(fp, queries[i].key(), vectors[i])
    return vectors, (time.perf_counter() - start) * 1000


def run_search(session: Session, encoder: MetaEmbedEncoder, gallery: Gallery,
               groups: Sequence[tuple[Query, tuple[str, ...]]], budget: Budget, k: Any = 10, two_stage: bool = False,
               k_prime: Any = 100) -> SearchOutcome:
    """Search ``gallery`` with one encoding per group of kinds (:func:`plan_queries`) and report figures;
    re-uses cached query vectors when only budget/k change."""
    index = gallery.index
    split = kind_split(gallery)
    n = sum(len(split.positions[kind]) for _, kinds in groups for kind in kinds)
    if n == 0:
        raise ExplorerError("the gallery is empty: add images or PDFs in the Gallery tab")
    k_eff, first_stage = check_depth(k, two_stage, k_prime, n)
    start = time.perf_counter()
    encoded, encode_ms = encode_queries(session, encoder, [query for query, _ in groups])
    cache_hit = encode_ms == 0.0
    if len(groups) == 1 and n == len(index):  # one encoding for every item: the index's own search
        result = index.search(encoded[0], budget, k=k_eff, first_stage=first_stage)
        ranked = Ranked(result.positions, result.scores, float(result.maxsim_ms), float(result.first_stage_ms),
                        int(result.bytes_read) + int(result.first_stage_bytes), int(result.candidates_scored or n))
    else:
        ranked = rank_by_kind(index, split, [(v, kinds) for v, (_, kinds) in zip(encoded, groups, strict=True)],
                              budget, k_eff, first_stage)
    search_ms = (time.perf_counter() - start) * 1000 - encode_ms
    total_ms = (time.perf_counter() - start) * 1000
    ids = index.ids
    hits = []
    for i, (position, score) in enumerate(zip(ranked.positions, ranked.scores, strict=True)):
        record = gallery.item(ids[position])
        hits.append(Hit(rank=i + 1, id=ids[position], score=float(score), caption=record.title, kind=record.kind))
    two_stage_used = first_stage is not None and ranked.candidates_scored < n
    flops = scoring_flops(budget, ranked.candidates_scored, encoder.dim) if two_stage_used else \
        len(groups) * scoring_flops(budget, len(index), encoder.dim)
    if two_stage_used:
        flops += len(groups) * scoring_flops(Budget(1, 1), n, encoder.dim)  # FAISS on token 0 (flat inner product)
    figures = {
        "budget": str(budget),
        "trained": budget in TRAINED_GROUPS,
        "mode": "two-stage" if two_stage_used else "exhaustive",
        "k": k_eff,
        "k_prime": first_stage if two_stage_used else None,
        "candidates_scored": int(ranked.candidates_scored),
        "candidates": n,
        "query_encode_ms": round(encode_ms, 3),
        "query_cached": cache_hit,
        "query_encodes": session.encode_count,
        "first_stage_ms": round(ranked.first_stage_ms, 3),
        "maxsim_ms": round(ranked.maxsim_ms, 3),
        "search_ms": round(search_ms, 3),
        "total_ms": round(total_ms, 3),
        "bytes_stored": int(index.stored_bytes),
        "bytes_read": int(ranked.bytes_read),
        "scoring_flops": int(flops),
        "model": encoder.name,
        "instructions": {kind: query.item().instruction for query, kinds in groups for kind in kinds},
    }
    key = "|".join(f"{','.join(kinds)}:{query.key()}" for query, kinds in groups)
    outcome = SearchOutcome(hits=hits, figures=figures)
    _diff(session.last, key, outcome)
    session.last = LastSearch(query_key=key, model_fp=fingerprint(encoder), budget=budget,
                              ids=[h.id for h in hits],
                              kind_keys={kind: query.key() for query, kinds in groups for kind in kinds})
    return outcome


def run_served_search(session: Session, served: ServedGallery, query: Query, budget: Budget, k: Any = 10,
                      two_stage: bool = False, k_prime: Any = 100) -> tuple[SearchOutcome, list[dict[str, Any]]]:
    """Search a served gallery (the server encodes the query); the figures add each shard's latency.
    Returns the outcome and the server's hits (their metadata names the items)."""
    info = served.info()
    n = int(info["count"])
    if n == 0:
        raise ExplorerError("the served gallery is empty")
    k_eff, first_stage = check_depth(k, two_stage, k_prime, n)
    item = query.item()
    answer, round_trip_ms = served.search(item.text, item.image, item.instruction, budget, k_eff, first_stage)
    timings = answer["timings"]
    hits = [Hit(rank=i + 1, id=str(h["id"]), score=float(h["score"]), caption=_served_title(h),
                kind=h.get("kind"))
            for i, h in enumerate(answer["hits"])]
    figures = {
        "budget": str(budget), "trained": budget in TRAINED_GROUPS,
        "mode": "two-stage" if first_stage is not None else "exhaustive", "k": k_eff,
        "k_prime": first_stage, "candidates": n, "candidates_scored": None,
        "query_encode_ms": timings["encode_ms"], "query_cached": timings["encode_ms"] == 0,
        "query_encodes": session.encode_count, "first_stage_ms": 0.0,
        "maxsim_ms": max(timings["per_shard_ms"].values()), "per_shard_ms": timings["per_shard_ms"],
        "merge_ms": timings["merge_ms"], "search_ms": timings["total_ms"],
        "total_ms": round(round_trip_ms, 3), "bytes_stored": None, "bytes_read": int(answer["bytes_read"]),
        "scoring_flops": _served_flops(budget, n, int(info["dim"]), first_stage, len(info["shards"])),
        "model": info.get("model"),
        "instructions": {"all": item.instruction}, "served": served.url,
    }
    outcome = SearchOutcome(hits=hits, figures=figures)
    _diff(session.last, query.key(), outcome)
    session.last = LastSearch(query_key=query.key(), model_fp=str(info.get("model_fingerprint")), budget=budget,
                              ids=[h.id for h in hits], served=True)
    return outcome, answer["hits"]


def _served_title(hit: dict[str, Any]) -> str:
    source = str(hit.get("source") or hit["id"])
    return f"{source} p. {hit['page']}" if hit.get("page") else source


def _served_flops(budget: Budget, n: int, dim: int, first_stage: int | None, shards: int) -> int:
    """Exhaustive: every item at the budget; two-stage: token 0 of every item, then k′ per shard."""
    if first_stage is None:
        return scoring_flops(budget, n, dim)
    return scoring_flops(Budget(1, 1), n, dim) + scoring_flops(budget, min(n, first_stage * shards), dim)


def _diff(previous: LastSearch | None, key: str, outcome: SearchOutcome) -> None:
    """Compare with the previous ranking of the same query (``previous``, the session's last search)."""
    ids = [h.id for h in outcome.hits]
    if previous is not None and previous.query_key == key:
        old_rank = {item_id: i for i, item_id in enumerate(previous.ids)}
        outcome.compared_to = str(previous.budget)
        outcome.moved_in = [i for i in ids if i not in old_rank]
        outcome.moved_out = [i for i in previous.ids if i not in set(ids)]
        outcome.rank_changes = {i: old_rank[i] - r for r, i in enumerate(ids) if i in old_rank}
    outcome.figures["moved_in"] = len(outcome.moved_in)
    outcome.figures["moved_out"] = len(outcome.moved_out)
    outcome.figures["compared_to"] = outcome.compared_to


def rank_marker(outcome: SearchOutcome, item_id: str) -> str:
    """``↑2`` / ``↓1`` / ``new`` versus the previous budget of the same query ("" when unchanged or first)."""
    if not outcome.compared_to:
        return ""
    if item_id in outcome.moved_in:
        return "new"
    change = outcome.rank_changes.get(item_id, 0)
    return f"↑{change}" if change > 0 else f"↓{-change}" if change < 0 else ""


def card_caption(hit: Hit, outcome: SearchOutcome, title: str) -> str:
    """A result card's caption: rank, score, kind and the marker on the first line, the title below it."""
    marker = rank_marker(outcome, hit.id)
    kind = "page" if hit.kind == PDF_PAGE else "image" if hit.kind == IMAGE else hit.kind or "item"
    return f"#{hit.rank} · {hit.score:.2f} · {kind}{f' · {marker}' if marker else ''}\n{title}"


def describe_instructions(instructions: dict[str, str | None]) -> str:
    """``images: "…" · pages: "…"`` (kinds sharing one instruction named together), for the UI."""
    by_text: dict[str | None, list[str]] = {}
    for kind, instruction in instructions.items():
        by_text.setdefault(instruction, []).append(KIND_LABEL.get(kind, kind))
    return " · ".join(f"{' + '.join(kinds)}: " + (f"“{text}”" if text else "no instruction")
                      for text, kinds in by_text.items())


def format_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.2f} {unit}"
        n /= 1024
    return f"{n} B"


def figures_markdown(outcome: SearchOutcome) -> str:
    """The live-figures panel as markdown (the app renders it verbatim)."""
    f = outcome.figures
    encode = "cached (0 ms, no re-encode)" if f["query_cached"] else f"{f['query_encode_ms']:.1f} ms"
    trained = "a trained group" if f.get("trained") else \
        f"not a trained group: the model was trained at {', '.join(str(b) for b in TRAINED_GROUPS)}; the nested " \
        "prefixes between them still score, with quality nobody trained for"
    lines = [
        f"**Budget {f['budget']}** ({trained}) · {f['mode']}" + (f" (k′={f['k_prime']})" if f["k_prime"] else "")
        + f" · top-{f['k']} of {f['candidates']:,}",
        "",
        "| figure | value |",
        "|---|---|",
        f"| query encode | {encode} |",
        f"| first stage | {f['first_stage_ms']:.2f} ms |",
        f"| MaxSim | {f['maxsim_ms']:.2f} ms |",
        *[f"| shard {name} | {ms:.2f} ms |" for name, ms in (f.get("per_shard_ms") or {}).items()],
        *([f"| merge (server) | {f['merge_ms']:.2f} ms |"] if f.get("per_shard_ms") else []),
        f"| total | {f['total_ms']:.1f} ms |",
        f"| index stored | {format_bytes(f['bytes_stored']) if f['bytes_stored'] is not None else 'on the server'} |",
        f"| bytes read at this budget | {format_bytes(f['bytes_read'])} |",
        f"| scoring FLOPs | {f['scoring_flops'] / 1e6:,.2f} MFLOP |",
        f"| query encodes this session | {f['query_encodes']} |",
        f"| instruction | {describe_instructions(f['instructions'])} |",
    ]
    if outcome.compared_to:
        lines.append(f"| vs {outcome.compared_to} | {len(outcome.moved_in)} moved in, "
                     f"{len(outcome.moved_out)} moved out |")
    return "\n".join(lines)


def diff_markdown(outcome: SearchOutcome, caption_of: dict[str, str]) -> str:
    """Which items entered / left the top-k versus the previous budget."""
    if not outcome.compared_to:
        return "_Change the budget to see how the ranking moves._"
    if not outcome.moved_in and not outcome.moved_out:
        moved = sum(1 for d in outcome.rank_changes.values() if d)
        return f"Same top-{len(outcome.hits)} set as at {outcome.compared_to}; {moved} item(s) changed rank."
    parts = [f"Versus {outcome.compared_to}:"]
    parts += [f"- ⬆ in: {caption_of.get(i, i)}" for i in outcome.moved_in]
    parts += [f"- ⬇ out: {caption_of.get(i, i)}" for i in outcome.moved_out]
    return "\n".join(parts)
