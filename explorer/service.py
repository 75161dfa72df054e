"""The explorer's single entry point: one :class:`Explorer` per process, shared by all visitors,
with per-visitor :class:`~explorer.session.Session` state looked up by session id.

Every public method takes the session id first and returns plain data (lists, dicts, PIL images,
plotly figures); every user mistake raises :class:`ExplorerError` with a message to show as-is.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import plotly.graph_objects as go
from PIL import Image

from explorer import attention, scale, tradeoff, uploads
from explorer.config import ExplorerConfig
from explorer.errors import ExplorerError
from explorer.gallery import (
    DemoGallery,
    check_match,
    display_image,
    display_title,
    encoded_item,
    gallery_blurb,
    gallery_stats,
    text_card,
)
from explorer.models import ModelCache, fingerprint, load_model
from explorer.search import (
    Query,
    SearchOutcome,
    card_caption,
    check_bounds,
    check_budget,
    describe_instructions,
    diff_markdown,
    figures_markdown,
    find_kinds,
    kind_split,
    plan_queries,
    rank_marker,
    run_search,
    run_served_search,
)
from explorer.served import ServedGallery
from explorer.session import Session, SessionStore
from explorer.tokens import heatmap_figure, match_shares, token_view
from index_builder import Gallery
from metaembed import fused_maxsim
from metaembed.budget import TRAINED_GROUPS, Budget, BudgetError, parse_budgets
from metaembed.images import ImageError, load_image
from metaembed.models import AttentionUnsupported, MetaEmbedEncoder

logger = logging.getLogger(__name__)

DEMO, OWN = "demo", "own"
#: Builds named public eval sets under a folder: ``(out, names, limit)``, as ``metaembed.datasets.build.build``.
EvalSetBuilder = Callable[[Path, list[str], int], Any]
#: The eval set the Trade-off tab sweeps by default: caption -> photo on the Tux Paint test split.
BUNDLED_SET = "tux-t2i"


@dataclass
class SearchView:
    """What the Search tab shows: gallery entries, figures (dict + markdown) and the ranking diff."""

    outcome: SearchOutcome
    entries: list[tuple[Path | Image.Image, str]]  # thumbnail file (or text card), caption
    figures_md: str
    diff_md: str
    results: list[dict[str, Any]]  # rank, id, score, source, file, page, kind (what the API returns)


class Explorer:
    """Shared model/gallery resources plus the per-session state of every visitor."""

    def __init__(self, config: ExplorerConfig, load_model: Callable[[str], MetaEmbedEncoder] = load_model,
                 build_eval_sets: EvalSetBuilder | None = None) -> None:
        """``load_model`` turns a model name into an encoder (notebooks and tests serve in-memory ones);
        ``build_eval_sets`` (``metaembed.datasets.build.build``, passed by app.py) builds the bundled
        Trade-off set from Debian data when ``config.eval_set`` is unset: without it that set is unavailable."""
        self.config = config
        self.models = ModelCache(config.model, config.allow_model_paths, load_model)
        self._build_eval_sets = build_eval_sets
        self.demo = DemoGallery(self.config.gallery)
        self.sessions = SessionStore(self.config.session_root, self.config.session_ttl_s)
        # Encoders are shared by every session, and a forward is not thread-safe: MetaEmbed-Mini folds its
        # LoRA weights into the base weights in place on first use and changes torch's process-wide thread
        # count while it encodes one short text. So one forward (encode, gallery build, attention) at a time;
        # on a 2-core Space that is also what keeps each one fast.
        self._encode_lock = threading.Lock()
        self.served = ServedGallery(config.serve_url) if config.serve_url else None
        self._eval_cache: dict[tuple[str, str], Any] = {}

    # ------------------------------------------------------------------ resources
    def warm_up(self) -> None:
        """Load the default model and demo gallery and compile the scoring kernels (in a background thread
        after launch)."""
        for step in (lambda: self.models.get(None), self.demo.get, fused_maxsim.warm_up):
            try:
                step()
            except ExplorerError as err:
                logger.warning("warm-up: %s", err)

    def session(self, session_id: str | None) -> Session:
        return self.sessions.get(session_id)

    def close_session(self, session_id: str | None) -> None:
        self.sessions.close(session_id)

    def _encoder(self, session: Session) -> MetaEmbedEncoder:
        return self.models.get(session.model_name)

    def _gallery(self, session: Session) -> tuple[Gallery, str]:
        if session.gallery_choice == OWN:
            if session.own_gallery is None:
                raise ExplorerError("your own gallery is empty: upload images or PDFs in the Gallery tab first")
            return session.own_gallery, "your"
        return self.demo.get(), "demo"

    def _context(self, session: Session) -> tuple[MetaEmbedEncoder, Gallery]:
        encoder = self._encoder(session)
        gallery, label = self._gallery(session)
        check_match(gallery, encoder, label)
        return encoder, gallery

    def budget_bounds(self, session_id: str) -> tuple[int, int]:
        """(R_q, R_c) of this session's model: the largest r_q and r_c a budget may ask for."""
        encoder = self._encoder(self.session(session_id))
        return encoder.num_query_tokens, encoder.num_candidate_tokens

    # ------------------------------------------------------------------ model / gallery selection
    def select_model(self, session_id: str, name_or_path: str | None) -> str:
        """Switch this session's model; says plainly if the current gallery does not match it."""
        session = self.session(session_id)
        self.models.get(name_or_path)  # loads it, or says why it cannot, before the session switches
        with session.lock:
            session.model_name = (name_or_path or "").strip() or None
            session.last = None
        return self.model_status(session_id)

    def model_status(self, session_id: str) -> str:
        """What this session's model is and how it runs here (device, precision), and whether the current
        gallery matches it: the Model tab shows it on arrival, before anyone switches."""
        session = self.session(session_id)
        if self.served is not None and session.gallery_choice == DEMO:  # the server encodes these queries
            info = self.served.info()
            return (f"Model: {info.get('model')} (fingerprint {info.get('model_fingerprint')}), encoding on the "
                    f"search server {self.served.url}; your own gallery uses this machine's model.")
        encoder = self._encoder(session)
        message = (f"Model: {encoder.name} (backend {encoder.backend}, D={encoder.dim}, "
                   f"R_q={encoder.num_query_tokens}, R_c={encoder.num_candidate_tokens}, "
                   f"fingerprint {fingerprint(encoder)}), encoding on {encoder.device.type} in "
                   f"{encoder.precision}.")
        try:
            gallery, label = self._gallery(session)
            check_match(gallery, encoder, label)
        except ExplorerError as err:
            return f"{message} ⚠ {err}"
        return message

    def use_gallery(self, session_id: str, choice: str) -> dict[str, Any]:
        """Search the demo gallery or this session's own uploads."""
        if choice not in (DEMO, OWN):
            raise ExplorerError(f"gallery must be '{DEMO}' or '{OWN}', got {choice!r}")
        session = self.session(session_id)
        with session.lock:
            if choice == OWN and session.own_gallery is None:
                raise ExplorerError("you have no gallery yet: upload images or PDFs first")
            session.gallery_choice = choice
            session.last = None
        return self.gallery_status(session_id)

    def example_image(self) -> str | None:
        """A picture of the demo gallery (its first image whose file is here), for the one-click image example."""
        try:
            gallery = self.demo.get()
        except ExplorerError:
            return None
        for item_id in gallery.index.ids:
            source = gallery.source(item_id)
            if not gallery.item(item_id).is_page and source is not None and source.is_file():
                return str(source)
        return None

    def gallery_blurb(self, session_id: str) -> str:
        """One line on what the session's gallery holds (the landing's first line, the Search tab's badge)."""
        session = self.session(session_id)
        if self.served is not None and session.gallery_choice == DEMO:
            info = self.served.info()
            return f"Searching **the served gallery** at {self.served.url}: {int(info['count']):,} items."
        try:
            gallery, label = self._gallery(session)
        except ExplorerError as err:
            return f"⚠ {err}"
        return gallery_blurb(gallery, label)

    def gallery_status(self, session_id: str) -> dict[str, Any]:
        """Counts and bytes of the gallery this session searches."""
        session = self.session(session_id)
        try:
            gallery, label = self._gallery(session)
        except ExplorerError as err:
            return {"gallery": session.gallery_choice, "error": str(err)}
        return {"gallery": session.gallery_choice, "label": label, **gallery_stats(gallery)}

    # ------------------------------------------------------------------ search
    def active_instructions(self, session_id: str, text: str | None, has_image: bool, instruction: str | None,
                            find: str | None = "both") -> str:
        """The instruction(s) a search with these inputs would encode the query with, for the query box."""
        session = self.session(session_id)
        try:
            _, gallery = self._context(session)
            kinds = find_kinds(find, list(kind_split(gallery).positions))
        except ExplorerError as err:
            return f"⚠ {err}"
        picture = Image.new("RGB", (1, 1)) if has_image else None
        groups = plan_queries(text if (text or "").strip() else "text", picture, instruction, kinds)
        return describe_instructions({kind: q.instruction for q, group in groups for kind in group})

    def search(self, session_id: str, text: str | None, image: str | Path | Image.Image | None,
               instruction: str | None, r_q: Any, r_c: Any, k: Any = 10, two_stage: bool = False,
               k_prime: Any = 100, find: str | None = "both") -> SearchView:
        """Rank the session's gallery for the kinds ``find`` names (images, pages or both); the query is
        encoded once per distinct instruction those kinds need, and only a new query is encoded."""
        session = self.session(session_id)
        picture = _open_query_image(image)
        if self.served is not None and session.gallery_choice == DEMO:
            return self._served_search(session, text, picture, instruction, r_q, r_c, k, two_stage, k_prime)
        with session.lock:
            encoder, gallery = self._context(session)
            budget = check_budget(r_q, r_c, encoder, gallery.index)
            kinds = find_kinds(find, list(kind_split(gallery).positions))
            groups = plan_queries(text, picture, instruction, kinds)
            with self._encode_lock:
                outcome = run_search(session, encoder, gallery, groups, budget, k, bool(two_stage), k_prime)
        titles = self.demo.titles if session.gallery_choice == DEMO else {}
        names = {i: display_title(gallery, i, titles) for i in [*[h.id for h in outcome.hits], *outcome.moved_out]}
        entries = [(display_image(gallery, h.id), card_caption(h, outcome, names[h.id])) for h in outcome.hits]
        results = []
        for h in outcome.hits:
            record = gallery.item(h.id)
            results.append({"rank": h.rank, "id": h.id, "score": h.score, "title": names[h.id], "source": h.caption,
                            "file": record.source, "page": record.page, "kind": record.kind,
                            "marker": rank_marker(outcome, h.id)})
        return SearchView(outcome, entries, figures_markdown(outcome), diff_markdown(outcome, names), results)

    def _served_search(self, session: Session, text: str | None, picture: Image.Image | None,
                       instruction: str | None, r_q: Any, r_c: Any, k: Any, two_stage: bool,
                       k_prime: Any) -> SearchView:
        """The demo choice when METAEMBED_SERVE_URL is set: the served gallery, searched over HTTP."""
        served = self.served
        info = served.info()
        with session.lock:
            budget = check_bounds(r_q, r_c, int(info["r_q"]), int(info["r_c"]))
            given = (instruction or "").strip()
            query = Query(text=text, image=picture, instruction=None if given.lower() == "none" else given or None)
            outcome, hits = run_served_search(session, served, query, budget, k, bool(two_stage), k_prime)
        entries = [(served.thumbnail(h) or text_card(c.caption), card_caption(c, outcome, c.caption))
                   for h, c in zip(hits, outcome.hits, strict=True)]
        results = [{"rank": c.rank, "id": c.id, "score": c.score, "source": c.caption, "file": h.get("source"),
                    "page": h.get("page"), "kind": h.get("kind"), "shard": h.get("shard")}
                   for h, c in zip(hits, outcome.hits, strict=True)]
        captions = {c.id: c.caption for c in outcome.hits}
        return SearchView(outcome, entries, figures_markdown(outcome), diff_markdown(outcome, captions), results)

    def token_matches(self, session_id: str, rank: Any, query_token: Any = 0) -> tuple[go.Figure, Image.Image | None,
                                                                                      str, str, dict[str, Any]]:
        """Heatmap for result ``rank`` of the last search, the share of the MaxSim matches each candidate vector
        wins and, for image and page candidates, where the matched candidate tokens (all rows' matches, or only
        query token ``query_token``'s when > 0) attend: an overlay on the picture and, for a page, its text with
        the words they attend to marked. Returns (figure, overlay, note, page-text HTML, data)."""
        session = self.session(session_id)
        with session.lock:
            last = session.last
            if last is None:
                raise ExplorerError("search first, then pick a result to see its token matches")
            if last.served:
                raise ExplorerError("token matches need the candidate vectors, which stay on the search server "
                                    "for a served gallery: switch to your own gallery to see them")
            try:
                position = int(rank) - 1
            except (TypeError, ValueError) as err:
                raise ExplorerError(f"rank must be a whole number, got {rank!r}") from err
            if not 0 <= position < len(last.ids):
                raise ExplorerError(f"rank must be between 1 and {len(last.ids)}, got {rank}")
            encoder, gallery = self._context(session)
            item_id = last.ids[position]
            vectors = session.cached_query(last.model_fp, last.kind_keys[gallery.item(item_id).kind])
            if vectors is None:
                raise ExplorerError("the query is no longer cached: search again")
            budget = last.budget
        try:
            q_tok = int(query_token or 0)
        except (TypeError, ValueError) as err:
            raise ExplorerError(f"query token must be a whole number, got {query_token!r}") from err
        if not 0 <= q_tok <= budget.r_q:
            raise ExplorerError(f"query token must be 0 (all) or 1..{budget.r_q}, got {q_tok}")
        view = token_view(vectors, gallery.index.get_vectors(item_id), budget)
        titles = self.demo.titles if session.gallery_choice == DEMO else {}
        caption = display_title(gallery, item_id, titles)
        fig = heatmap_figure(view, f"#{position + 1} {caption}: score {view.score:.3f} at {budget}")
        tokens = sorted(set(view.best)) if q_tok == 0 else [view.best[q_tok - 1]]
        shares = match_shares(view.best)
        whose = "all query tokens" if q_tok == 0 else f"query token q{q_tok} (its match: c{tokens[0] + 1})"
        lines = [f"**Matches won** ({len(view.best)} query tokens): "
                 + ", ".join(f"c{j + 1} {count} ({share:.0%})" for j, count, share in shares)]
        overlay_img, page_html = None, ""
        item = encoded_item(gallery, item_id)
        if item is None:
            lines.append("Text-only candidate: no image to overlay.")
        else:
            try:
                with self._encode_lock:
                    weights = encoder.candidate_attention(item)
            except AttentionUnsupported as err:
                lines.append(f"{str(err)[:1].upper()}{str(err)[1:]}.")
            else:
                overlay_img = attention.overlay(weights, tokens)
                rows, cols = weights.visual.shape[1:]
                lines.append(f"Overlay: attention of {', '.join(f'c{t + 1}' for t in tokens)} — the candidate "
                             f"token(s) matched by {whose} — over the {rows}x{cols} visual tokens (last layer, heads "
                             "averaged).")
                if gallery.item(item_id).is_page and item.text:
                    page_html = attention.text_highlight(weights, item.text, tokens)
                    lines.append("Below: the page's text, the words those tokens attend to most marked.")
        data = {"id": item_id, "source": caption, **view.to_dict(), "overlay_tokens": tokens,
                "shares": {f"c{j + 1}": share for j, _, share in shares}}
        return fig, overlay_img, "\n\n".join(lines), page_html, data

    # ------------------------------------------------------------------ gallery uploads
    def upload(self, session_id: str, files: Sequence[str | Path] | None,
               progress: Callable[[float, str], None] | None = None) -> dict[str, Any]:
        """Add files to this session's private gallery (build or extend) and switch to it."""
        session = self.session(session_id)
        with session.lock:
            report, admitted = uploads.admit(session, list(files or []), self.config.caps)
            if admitted:
                encoder = self._encoder(session)
                with self._encode_lock:
                    session.own_gallery = uploads.build_session_gallery(session, encoder, admitted, report, progress)
                session.gallery_choice = OWN
                session.last = None
            if session.own_gallery is not None:
                report.gallery = gallery_stats(session.own_gallery)
            report.left = uploads.caps_left(session, self.config.caps)
        logger.info("upload: %d file(s) accepted, %d item(s) indexed, %d skipped; own gallery %d item(s)",
                    len(report.accepted), report.indexed, len(report.skipped), report.gallery.get("items", 0))
        return report.to_dict()

    def own_cards(self, session_id: str) -> list[tuple[Path | Image.Image, str]]:
        """Thumbnails and titles of this session's own gallery (empty before the first upload)."""
        session = self.session(session_id)
        gallery = session.own_gallery
        if gallery is None:
            return []
        return [(display_image(gallery, i), display_title(gallery, i, {})) for i in gallery.index.ids]

    # ------------------------------------------------------------------ trade-off
    def sweep(self, session_id: str, source: str, file: str | Path | None, budgets_text: str,
              cost: str = "bytes_read", two_stage: bool = False, k_prime: Any = 100
              ) -> tuple[go.Figure, list[str], list[list[Any]], str]:
        """Sweep budgets on the bundled eval set, an uploaded BEIR zip, or a pairs file for the gallery."""
        session = self.session(session_id)
        try:
            budgets = parse_budgets(budgets_text) if budgets_text and budgets_text.strip() else list(TRAINED_GROUPS)
        except BudgetError as err:
            raise ExplorerError(f"budgets: {err}") from err
        encoder = self._encoder(session)
        first_stage = int(k_prime) if two_stage else None
        with session.lock, self._encode_lock:
            try:  # the harness checks the budgets against the model and the index (once, before encoding)
                if source == "bundled":
                    report = self._bundled_sweep(encoder, budgets, first_stage)
                elif source == "upload":
                    report = self._upload_sweep(session, encoder, file, budgets, first_stage)
                else:
                    raise ExplorerError(f"source must be 'bundled' or 'upload', got {source!r}")
            except BudgetError as err:
                raise ExplorerError(f"budget out of range: {err}") from err
        header, rows = tradeoff.table_rows(report, cost)
        front = [r[0] for r in rows if r[-1]]
        queries = tradeoff.query_count(report)
        latency = report.encoding.get("latency", "mean over the queries, one pass")
        summary = (f"**{Path(report.data).name}**: {queries if queries is not None else '?'} queries, "
                   f"{len(report.results)} budgets, main metric {report.main_metric}; scoring latency: {latency}. "
                   f"Pareto-optimal on {'latency' if cost == 'latency' else 'bytes read'}: {', '.join(front)}")
        return tradeoff.tradeoff_figure(report, cost), header, rows, summary

    def _bundled_sweep(self, encoder: MetaEmbedEncoder, budgets: list[Budget], first_stage: int | None) -> Any:
        """METAEMBED_EVAL_SET when set, else a small Tux Paint caption -> photo set built once from Debian data."""
        path = self.config.eval_set
        if path is None:
            path = self._build_bundled_set()
        elif not Path(path).exists():
            raise ExplorerError(f"the bundled eval set is not available at {path} (METAEMBED_EVAL_SET); upload a "
                                "BEIR zip or a query,relevant_item file instead")
        key = (fingerprint(encoder), f"{path}|{budgets}|{first_stage}")
        if key not in self._eval_cache:
            self._eval_cache[key] = tradeoff.sweep_eval_set(encoder, Path(path), budgets,
                                                            self.config.max_eval_corpus, first_stage)
        return self._eval_cache[key]

    def _build_bundled_set(self) -> Path:
        out = self.config.session_root / "eval-cache"
        target = out / BUNDLED_SET
        if not (target / "info.json").is_file():
            if self._build_eval_sets is None:
                raise ExplorerError("no bundled eval set in this deployment: upload a BEIR zip or a "
                                    "query,relevant_item file instead (or set METAEMBED_EVAL_SET)")
            try:
                self._build_eval_sets(out, [BUNDLED_SET], self.config.bundled_eval_limit)
            except (ValueError, OSError) as err:  # a missing Debian package is a FileNotFoundError
                raise ExplorerError(f"the bundled eval set cannot be built: {err}. Upload a BEIR zip or a "
                                    "query,relevant_item file instead (or set METAEMBED_EVAL_SET)") from err
        return target

    def _upload_sweep(self, session: Session, encoder: MetaEmbedEncoder, file: str | Path | None,
                      budgets: list[Budget], first_stage: int | None) -> Any:
        if not file:
            raise ExplorerError("upload a BEIR zip or a CSV/JSONL of query,relevant_item first")
        path = Path(file)
        if path.suffix.lower() == ".zip":
            dest = session.workdir / "eval" / path.stem
            folder = tradeoff.extract_beir_zip(path, dest, self.config.caps.max_bytes)
            return tradeoff.sweep_eval_set(encoder, folder, budgets, self.config.max_eval_corpus, first_stage)
        if path.suffix.lower() in (".csv", ".jsonl", ".json", ".tsv", ".txt"):
            gallery, label = self._gallery(session)
            check_match(gallery, encoder, label)
            return tradeoff.sweep_gallery(encoder, gallery, path, budgets, first_stage)
        raise ExplorerError(f"{path.name}: expected a .zip (BEIR layout) or a .csv/.jsonl of query,relevant_item")

    # ------------------------------------------------------------------ scale calculator
    @staticmethod
    def scale(model: str, dtype: str, n: Any, r_q: Any, r_c: Any, device: str,
              device_gib: Any = None) -> tuple[list[list[Any]], str]:
        """Table over the trained groups plus the chosen budget, and a fits-in-memory verdict."""
        try:
            dim = scale.MODEL_DIMS[model]
            n_int = int(n)
            chosen = Budget(int(r_q), int(r_c))
            gib = float(device_gib) if device_gib not in (None, "", 0) else None
            rows = scale.table(list(TRAINED_GROUPS), n_int, dim, dtype, device, gib, chosen=chosen)
            verdict = scale.estimate(chosen, n_int, dim, dtype, device, gib).verdict()
        except (KeyError, ValueError, TypeError, BudgetError) as err:
            raise ExplorerError(f"scale calculator: {err}") from err
        return rows, verdict


def _open_query_image(image: str | Path | Image.Image | None) -> Image.Image | None:
    """Decode a query image with the ingestion's safe loader; a bad file is a friendly error."""
    if image is None or image == "":
        return None
    if isinstance(image, Image.Image):
        return image.convert("RGB")
    try:
        return load_image(Path(image))
    except ImageError as err:
        raise ExplorerError(f"the query image cannot be used: {err}") from err
    except OSError as err:
        raise ExplorerError(f"the query image cannot be read: {err}") from err
