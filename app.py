"""MetaEmbed Explorer: a thin Gradio UI over the ``explorer`` package (all logic lives there).

Run ``python app.py [--host H] [--port P] [--model M] [--gallery DIR]`` (``GRADIO_SERVER_PORT`` /
``GRADIO_SERVER_NAME`` are honoured). Model, gallery, eval set and upload caps come from ``METAEMBED_*``
environment variables (README), and the flags override them. Every event has an ``api_name`` so
``gradio_client`` can drive the app; per-visitor state is kept server-side, keyed by Gradio's session hash,
so visitors never see each other's uploads.
"""

from __future__ import annotations

import os

# This process never contacts a model hub: set before gradio and transformers import huggingface_hub,
# which reads the variable once, at import.
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import argparse  # noqa: E402
import contextlib  # noqa: E402
import logging  # noqa: E402
import threading  # noqa: E402
from collections.abc import Iterator  # noqa: E402
from dataclasses import dataclass  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import gradio as gr  # noqa: E402
import pandas as pd  # noqa: E402
from PIL import Image, UnidentifiedImageError  # noqa: E402

from explorer import scale  # noqa: E402
from explorer.config import ExplorerConfig  # noqa: E402
from explorer.errors import ExplorerError  # noqa: E402
from explorer.search import FIND, MAX_K  # noqa: E402
from explorer.service import DEMO, OWN, Explorer  # noqa: E402
from metaembed.budget import DEFAULT_R_C, DEFAULT_R_Q, TRAINED_GROUPS  # noqa: E402
from metaembed.datasets.build import build as build_eval_sets  # noqa: E402
from metaembed.models import ModelLoadError, token_counts  # noqa: E402

logger = logging.getLogger("metaembed.app")

PRESETS = [f"({b.r_q},{b.r_c})" for b in TRAINED_GROUPS]
INTRO = """# MetaEmbed Explorer
Search pictures and PDF pages by text or image, then choose how much of each item's multi-vector embedding
the search may use (the **budget**) and watch speed, memory read and the ranking change."""
#: One-click examples: (button label, text query, whether the query is a gallery picture).
EXAMPLES = [("a penguin", "a penguin", False), ("how to draw a table in a PDF", "how to draw a table in a PDF", False),
            ("pie chart", "pie chart", False), ("a red car", "a red car", False),
            ("a cat and a dog", "a cat and a dog", False), ("a gallery picture (image query)", "", True)]
#: The query the landing page opens with (and searches): a PDF question, so both kinds show.
LANDING_QUERY = EXAMPLES[1][1]
EXPLAIN = ("**What am I looking at?** Each card: rank · score (higher = closer: for each of the r_q query vectors "
           "its best cosine match among the item's first r_c vectors, summed) · image or PDF page · after a budget "
           "change ↑/↓ = moved up/down, new = entered the top-k. The figures say what this search cost at this "
           "budget: smaller budgets read fewer bytes and score faster.")
#: Result captions on two lines, never cut; the preset radio and slider labels stay compact.
CSS = """
#results .caption-label { white-space: pre-line !important; overflow: visible !important;
  text-overflow: clip !important; max-width: 100% !important; position: static !important;
  font-size: 12px; line-height: 1.3; overflow-wrap: anywhere; }
#results .thumbnail-item { height: auto !important; }
#query-row { align-items: flex-end; }
#search-btn { max-height: 48px; }
#examples { flex-wrap: wrap; gap: 6px; }
#examples button { flex: 0 0 auto; white-space: nowrap; }
#try { flex: 0 0 auto; min-width: 0; width: auto; }
#page-text .page-text { max-height: 260px; overflow-y: auto; padding: 8px; border: 1px solid #ddd;
  font-size: 13px; line-height: 1.5; }
"""


def undecoded_image_passes(component: gr.Image) -> gr.Image:
    """Let an upload that PIL cannot decode through as its file path: the explorer's safe loader then says
    what is wrong in the search's own message (Gradio's decode error inside the search's validator would
    reach API callers as a bare HTTP 400).

    Done on the instance: subclassing gr.Image would make Gradio write an ``app.pyi`` stub next to this file.
    """
    original = component.preprocess

    def preprocess(payload: Any) -> Any:
        try:
            return original(payload)
        except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError):
            return getattr(payload, "path", None)

    component.preprocess = preprocess
    return component


def unchecked(component: Any) -> Any:
    """Pass a value Gradio would refuse (a slider out of range, a preset not among the choices, sent through
    the API) on to the search's validator, which says what is wrong inline (Gradio's own check would stop
    the validator with a bare HTTP 400)."""
    original = component.preprocess

    def preprocess(payload: Any) -> Any:
        try:
            return original(payload)
        except gr.Error:
            return payload

    component.preprocess = preprocess
    return component


def out_of_bounds(slider: gr.Slider, name: str, value: Any) -> str | None:
    """``budget out of range: r_q must be in 1..16, got 99``, or None when ``value`` is within the slider."""
    try:
        inside = slider.minimum <= float(value) <= slider.maximum
    except (TypeError, ValueError):
        inside = False
    if inside:
        return None
    return f"budget out of range: {name} must be in {slider.minimum:g}..{slider.maximum:g}, got {value}"


def user_error(action: str, message: str) -> gr.Error:
    """A visitor's mistake: one log line (no traceback, which is kept for real faults) and a toast."""
    logger.info("user error (%s): %s", action, message)
    return gr.Error(message, print_exception=False)


@contextlib.contextmanager
def friendly(action: str) -> Iterator[None]:
    """Library errors become gr.Error toasts (the message is meant for the visitor); the server stays up."""
    try:
        yield
    except ExplorerError as err:
        raise user_error(action, str(err)) from None


def query_problems(text: str | None, image: Any, k: Any, mode: str, k_prime: Any) -> tuple[str | None, str | None]:
    """What is wrong with a search's query and depth before it runs: (empty query, k′ < k), None when fine.

    Checked inline by the search events' validators, so the results on screen stay; API callers get the
    messages as ``gradio_client.exceptions.ValidationError``.
    """
    empty = None if image is not None or (text or "").strip() else "empty query: type some text or give an image"
    shallow = None
    if mode == "two-stage" and k_prime is not None and k is not None and k_prime < k:
        shallow = f"k′ ({k_prime:g}) must be at least k ({k:g}): the first stage keeps k′ candidates"
    for problem in (empty, shallow):
        if problem:
            logger.info("user error (search): %s", problem)
    return empty, shallow


def _checks(count: int, problems: dict[int, str | None]) -> list[dict[str, Any]]:
    return [gr.validate(not problems.get(i), problems.get(i) or "") for i in range(count)]


def validate_preset(preset, text, image, instruction, k, mode, k_prime, find, thumbnails=True):
    empty, shallow = query_problems(text, image, k, mode, k_prime)
    unknown = None if preset in PRESETS else f"preset {preset!r} is not one of {', '.join(PRESETS)}"
    if unknown:
        logger.info("user error (search): %s", unknown)
    return _checks(9, {0: unknown, 1: empty, 6: shallow})


def _sid(request: gr.Request | None) -> str:
    if request is None or not request.session_hash:
        raise user_error("session", "no session: reload the page")
    return request.session_hash


def default_bounds(model: str) -> tuple[int, int]:
    """(R_q, R_c) of the configured model, read from its config.json: the model itself loads after launch.

    When that cannot be read the paper's 16 / 64 stand in; the first search then says what is wrong.
    """
    try:
        return token_counts(model)
    except ModelLoadError:
        return DEFAULT_R_Q, DEFAULT_R_C


@dataclass
class SearchTab:
    """The Search tab's components that other tabs wire to."""

    r_q: gr.Slider
    r_c: gr.Slider
    results: gr.Gallery
    blurb: gr.Markdown  #: which gallery is searched and what it holds (refreshed after uploads / switches)


def search_tab(explorer: Explorer, demo: gr.Blocks, max_r_q: int, max_r_c: int) -> SearchTab:
    """Query, budget sliders and presets, top-k and mode -> results, live figures and the ranking change."""

    def do_search(text, image, instruction, r_q, r_c, k, mode, k_prime, find, thumbnails=True,
                  request: gr.Request = None):
        with friendly("search"):
            view = explorer.search(_sid(request), text, image, instruction, r_q, r_c, k, mode == "two-stage",
                                   k_prime, find)
        # The results gallery has no single-image view (a click opens token matches): each search shows a grid.
        # API callers that only want the ranking pass thumbnails=False and get no gallery to transfer.
        return (view.entries if thumbnails else []), view.figures_md, view.diff_md, view.results, view.outcome.figures

    def do_preset(preset, text, image, instruction, k, mode, k_prime, find, thumbnails=True,
                  request: gr.Request = None):
        # validate_preset has checked that ``preset`` is one of PRESETS (the Radio's choices).
        r_q, r_c = (int(v) for v in preset.strip("()").split(","))
        return (r_q, r_c, *do_search(text, image, instruction, r_q, r_c, k, mode, k_prime, find, thumbnails,
                                     request))

    def validate_search(text, image, instruction, r_q, r_c, k, mode, k_prime, find, thumbnails=True):
        empty, shallow = query_problems(text, image, k, mode, k_prime)
        bounds = {3: out_of_bounds(r_q_slider, "r_q", r_q), 4: out_of_bounds(r_c_slider, "r_c", r_c)}
        for problem in bounds.values():
            if problem:
                logger.info("user error (search): %s", problem)
        return _checks(10, {0: empty, 7: shallow, **bounds})

    def do_instructions(text, image, instruction, find, request: gr.Request):
        return "Instruction — " + explorer.active_instructions(_sid(request), text, image is not None, instruction,
                                                                find)

    def do_example(index: int):
        _, query, picture = EXAMPLES[index]
        return query, (explorer.example_image() if picture else None)

    def do_blurb(request: gr.Request):
        return explorer.gallery_blurb(_sid(request))

    with gr.Tab("Search", id="search"):
        blurb = gr.Markdown(elem_id="gallery-blurb")
        with gr.Row():
            with gr.Column(scale=2):
                with gr.Row(elem_id="query-row"):
                    text = gr.Textbox(label="Text query", placeholder="e.g. a red bird on a branch", elem_id="query",
                                      scale=5, value=LANDING_QUERY)
                    search_btn = gr.Button("Search", variant="primary", elem_id="search-btn", scale=1, min_width=90)
                with gr.Row(elem_id="examples"):
                    gr.Markdown("Try:", elem_id="try")
                    example_btns = [gr.Button(label, size="sm", elem_id=f"example-{i}", min_width=0, scale=0)
                                    for i, (label, _, _) in enumerate(EXAMPLES)]
                find = gr.Radio(list(FIND), value="both", label="Find", elem_id="find",
                                info="each kind is searched with its own trained instruction; scores merge")
                active = gr.Markdown(elem_id="active-instruction")
                r_q = r_q_slider = unchecked(gr.Slider(1, max_r_q, value=min(8, max_r_q), step=1,
                                                       label="r_q — query vectors used", elem_id="r_q"))
                r_c = r_c_slider = unchecked(gr.Slider(1, max_r_c, value=min(16, max_r_c), step=1,
                                                       label="r_c — candidate vectors used", elem_id="r_c"))
                preset = unchecked(gr.Radio(PRESETS, label="Trained budgets (one click)", value="(8,16)",
                                            elem_id="preset",
                                            info="the (r_q, r_c) groups the model was trained at; the sliders "
                                                 "reach untrained ones too"))
                image = undecoded_image_passes(gr.Image(label="Image query (optional)", type="filepath", height=140,
                                                        sources=["upload", "clipboard"], elem_id="image-query"))
                with gr.Accordion("Instruction, top-k and scoring", open=False):
                    instruction = gr.Textbox(label="Instruction (optional)",
                                             info="empty = each kind's trained instruction; 'none' = none; "
                                                  "typed = one instruction for every kind",
                                             placeholder="e.g. Find me an everyday image that matches the given "
                                                         "caption.")
                    k = gr.Slider(1, MAX_K, value=10, step=1, label="top-k")
                    mode = gr.Radio(["exhaustive", "two-stage"], value="exhaustive", label="Scoring",
                                    info="two-stage: FAISS on token 0 per kind, then MaxSim on each kind's top k′")
                    k_prime = gr.Slider(1, 1000, value=100, step=1, label="k′ (first-stage shortlist per kind)")
                thumbnails = gr.Checkbox(value=True, visible=False, label="thumbnails")  # API: False = ranking only
            with gr.Column(scale=3):
                results = gr.Gallery(label="Results (click one for its token matches)", columns=4, height=520,
                                     object_fit="contain", elem_id="results", allow_preview=False)
                gr.Markdown(EXPLAIN, elem_id="explain")
                with gr.Row():
                    figures_md = gr.Markdown(label="live figures", elem_id="figures")
                    diff_md = gr.Markdown(label="ranking change", elem_id="diff")
                with gr.Accordion("Raw results and figures (what the API returns)", open=False):
                    results_json = gr.JSON(label="results")
                    figures_json = gr.JSON(label="figures")
    inputs = [text, image, instruction, r_q, r_c, k, mode, k_prime, find, thumbnails]
    outputs = [results, figures_md, diff_md, results_json, figures_json]
    # Sliders re-rank on release (not on every drag step); the cached query vectors are reused.
    gr.on([search_btn.click, text.submit, image.upload, r_q.release, r_c.release, k.release, k_prime.release,
           mode.input, find.input], do_search, inputs, outputs, api_name="search", trigger_mode="always_last",
          validator=validate_search)
    preset.input(do_preset, [preset, text, image, instruction, k, mode, k_prime, find, thumbnails],
                 [r_q, r_c, *outputs], api_name="preset_search", trigger_mode="always_last",
                 validator=validate_preset)
    for i, button in enumerate(example_btns):
        button.click(lambda i=i: do_example(i), None, [text, image], api_visibility="private", queue=False).then(
            do_search, inputs, outputs, api_visibility="private", validator=validate_search)
    # The preset radio names the sliders' budget when it is a trained one, and clears otherwise.
    gr.on([r_q.change, r_c.change], None, [r_q, r_c], [preset], api_visibility="private",
          js=f"(q, c) => {{ const p = `(${{q}},${{c}})`; return {PRESETS!r}.includes(p) ? p : null; }}")
    gr.on([find.change, instruction.change, image.change, demo.load], do_instructions,
          [text, image, instruction, find], [active], api_visibility="private", trigger_mode="always_last",
          queue=False)
    demo.load(do_blurb, None, [blurb], api_visibility="private", queue=False)
    # The landing shows results at once: the query box's example, searched when the page opens.
    demo.load(do_search, inputs, outputs, api_visibility="private")
    return SearchTab(r_q=r_q, r_c=r_c, results=results, blurb=blurb)


def tokens_tab(explorer: Explorer, results: gr.Gallery, tabs: gr.Tabs) -> None:
    """Heatmap of a result's Meta-Token matches and the attention overlay; clicking a result opens it."""

    def do_tokens(rank, query_token, request: gr.Request):
        with friendly("token matches"):
            return explorer.token_matches(_sid(request), rank, query_token)

    def do_select(query_token, evt: gr.SelectData, request: gr.Request):
        rank = int(evt.index) + 1
        return (rank, *do_tokens(rank, query_token, request), gr.Tabs(selected="tokens"))

    with gr.Tab("Token matches", id="tokens", elem_id="tokens-tab"):
        gr.Markdown("Which candidate Meta Token each query Meta Token matches (circled) and what it adds to the "
                    "MaxSim score, for a result of the last search (click a result card, or pick its rank); the "
                    "share of matches each candidate vector wins; where the matched tokens look in the picture "
                    "and, for a PDF page, which words of its text they attend to.")
        with gr.Row():
            rank = gr.Number(value=1, precision=0, label="result rank", minimum=1)
            query_token = gr.Number(value=0, precision=0, minimum=0, label="overlay: query token (0 = all)")
            tokens_btn = gr.Button("Show token matches", elem_id="tokens-btn")
        with gr.Row():
            heatmap = gr.Plot(label="similarity heatmap", elem_id="heatmap")
            with gr.Column():
                overlay = gr.Image(label="attention overlay (red = where the matched tokens look)", type="pil",
                                   interactive=False, height=520, elem_id="overlay")
                overlay_note = gr.Markdown(label="overlay note", elem_id="overlay-note")
        page_text = gr.HTML(elem_id="page-text")
        tokens_json = gr.JSON(label="token matches (data)", visible=False)
    outputs = [heatmap, overlay, overlay_note, page_text, tokens_json]
    tokens_btn.click(do_tokens, [rank, query_token], outputs, api_name="token_matches")
    # Choosing another query token redraws the overlay and the highlight for that token's match.
    query_token.submit(do_tokens, [rank, query_token], outputs, api_visibility="private", trigger_mode="always_last")
    query_token.input(do_tokens, [rank, query_token], outputs, api_visibility="private", trigger_mode="always_last")
    results.select(do_select, [query_token], [rank, *outputs, tabs], api_name="select_result")


def gallery_tab(explorer: Explorer, demo: gr.Blocks, blurb: gr.Markdown) -> None:
    """Private uploads (build / extend), demo <-> own, and the gallery status shown on page load."""
    caps = explorer.config.caps

    def do_upload(files, request: gr.Request, progress=gr.Progress()):  # noqa: B008 (Gradio's injection idiom)
        with friendly("upload"):
            report = explorer.upload(_sid(request), files, lambda f, d: progress(f, desc=d))
            status = explorer.gallery_status(_sid(request))
        return report, report["summary"], status, OWN if status.get("gallery") == OWN else DEMO

    def do_use_gallery(choice, request: gr.Request):
        with friendly("gallery"):
            return explorer.use_gallery(_sid(request), choice)

    def do_status(request: gr.Request):
        return explorer.gallery_status(_sid(request))

    def do_blurb(request: gr.Request):
        return explorer.gallery_blurb(_sid(request))

    def do_own(report, request: gr.Request):
        rows = report.get("files", []) if isinstance(report, dict) else []
        return pd.DataFrame(rows, columns=["file", "result", "reason"]), explorer.own_cards(_sid(request))

    with gr.Tab("Gallery", id="gallery"):
        gr.Markdown(f"**Your own gallery** — {caps.describe()} Images (PNG, JPEG, GIF, BMP, TIFF, WebP) "
                    "and PDFs (one item per page). Adding files extends your gallery; the Search tab then "
                    "searches it (switch back below).")
        files = gr.File(file_count="multiple", label="Images and PDFs", file_types=["image", ".pdf"])
        build_btn = gr.Button("Build / extend my gallery", variant="primary")
        build_summary = gr.Markdown(label="upload summary", elem_id="upload-summary")
        file_table = gr.Dataframe(headers=["file", "result", "reason"], label="this upload, file by file",
                                  interactive=False, wrap=True, elem_id="upload-table")
        with gr.Row():
            which = gr.Radio([DEMO, OWN], value=DEMO, label="Search which gallery")
            refresh_btn = gr.Button("Refresh status")
        own_gallery = gr.Gallery(label="your gallery", columns=8, height=260, allow_preview=False,
                                 elem_id="own-gallery")
        with gr.Accordion("Raw upload report and gallery status (what the API returns)", open=False):
            build_report = gr.JSON(label="last upload report")
            status = gr.JSON(label="gallery in use")
    build_btn.click(do_upload, [files], [build_report, build_summary, status, which], api_name="upload").then(
        do_blurb, None, [blurb], api_visibility="private").then(
        do_own, [build_report], [file_table, own_gallery], api_visibility="private")
    which.input(do_use_gallery, [which], [status], api_name="use_gallery").then(
        do_blurb, None, [blurb], api_visibility="private")
    refresh_btn.click(do_status, None, [status], api_name="gallery_status")
    demo.load(do_status, None, [status], api_name="session_start")


def tradeoff_tab(explorer: Explorer) -> None:
    """Budget sweeps (chart, table, Pareto front) and the scale calculator."""

    def do_sweep(source, file, budgets, cost, two_stage, k_prime, request: gr.Request):
        with friendly("sweep"):
            fig, header, rows, summary = explorer.sweep(_sid(request), source, file, budgets,
                                                        "latency" if cost == "scoring latency" else "bytes_read",
                                                        two_stage, k_prime)
        return fig, pd.DataFrame(rows, columns=header), summary

    def do_scale(model, dtype, n, r_q, r_c, device, device_gib):
        with friendly("calculator"):
            rows, verdict = explorer.scale(model, dtype, n, r_q, r_c, device, device_gib)
        return rows, verdict

    with gr.Tab("Trade-off", id="tradeoff"):
        gr.Markdown("Sweep budgets on an eval set: the bundled one, a BEIR-layout **zip** (corpus.jsonl, "
                    "queries.jsonl, qrels/test.tsv), or a **CSV/JSONL** of `query,relevant_item` for the "
                    "current gallery (relevant_item = item id, file name, or `file.pdf#page`).")
        with gr.Row():
            source = gr.Radio(["bundled", "upload"], value="bundled", label="eval set")
            eval_file = gr.File(label="your eval file", file_types=[".zip", ".csv", ".jsonl", ".json"])
        with gr.Row():
            budgets = gr.Textbox(value="1x1,2x4,4x8,8x16,16x64,16x16,4x64", label="budgets (RQxRC, comma-separated)")
            cost = gr.Radio(["bytes read", "scoring latency"], value="bytes read", label="cost (the x axis)",
                            info="the Pareto front is computed on the plotted axes")
            sweep_two_stage = gr.Checkbox(label="two-stage", value=False)
            sweep_k_prime = gr.Number(value=100, precision=0, minimum=1, label="k′")
        sweep_btn = gr.Button("Run sweep", variant="primary")
        sweep_plot = gr.Plot(label="quality vs cost")
        sweep_summary = gr.Markdown(label="sweep summary")
        sweep_table = gr.Dataframe(label="sweep (★ = Pareto-optimal)", interactive=False,
                                   headers=["budget", "metrics…", "scoring ms/query", "bytes read/query", "Pareto"])
        gr.Markdown("### Scale calculator\nIndex memory `N·r_c·D·bytes` and scoring FLOPs `2·r_q·r_c·D·N` per "
                    "query. Qwen2.5-VL 7B, bf16, N=100,000 gives the paper's rows.")
        with gr.Row():
            calc_model = gr.Dropdown(list(scale.MODEL_DIMS), value="Qwen2.5-VL 7B", label="model (D)")
            calc_dtype = gr.Radio(list(scale.DTYPES), value="bf16", label="dtype")
            calc_n = gr.Number(value=100_000, precision=0, minimum=1, label="N candidates")
            calc_rq = gr.Number(value=8, precision=0, minimum=1, label="r_q")
            calc_rc = gr.Number(value=16, precision=0, minimum=1, label="r_c")
        with gr.Row():
            calc_device = gr.Dropdown(list(scale.DEVICES_GIB), value="A100 / H100 (80 GiB)", label="device")
            calc_gib = gr.Number(value=0, minimum=0, label="or memory in GiB (0 = the device's)")
            calc_btn = gr.Button("Calculate")
        calc_table = gr.Dataframe(headers=["budget", "GFLOPs / query", "index GiB", "fits"], interactive=False)
        calc_verdict = gr.Markdown(label="verdict")
    sweep_btn.click(do_sweep, [source, eval_file, budgets, cost, sweep_two_stage, sweep_k_prime],
                    [sweep_plot, sweep_table, sweep_summary], api_name="sweep")
    calc_btn.click(do_scale, [calc_model, calc_dtype, calc_n, calc_rq, calc_rc, calc_device, calc_gib],
                   [calc_table, calc_verdict], api_name="scale")


def model_tab(explorer: Explorer, demo: gr.Blocks, r_q: gr.Slider, r_c: gr.Slider) -> None:
    """Which model this session uses and how it runs here; switch it, and the budget sliders then span the
    loaded model's R_q and R_c."""

    def do_model(name, request: gr.Request):
        with friendly("model"):
            return explorer.select_model(_sid(request), name)

    def do_model_status(request: gr.Request):
        with friendly("model"):
            return explorer.model_status(_sid(request))

    def do_bounds(current_r_q, current_r_c, request: gr.Request):
        with friendly("model"):
            max_r_q, max_r_c = explorer.budget_bounds(_sid(request))
        return (gr.Slider(maximum=max_r_q, value=min(int(current_r_q), max_r_q)),
                gr.Slider(maximum=max_r_c, value=min(int(current_r_c), max_r_c)))

    with gr.Tab("Model", id="model"):
        gr.Markdown("`mini` = the bundled MetaEmbed-Mini; or the path of a MetaEmbed checkpoint directory "
                    "on this machine (config.json + .safetensors). A gallery only answers the model that "
                    "built it.")
        model_name = gr.Textbox(value=explorer.config.model, label="model")
        model_btn = gr.Button("Load model")
        model_status = gr.Markdown(label="model status")
    model_btn.click(do_model, [model_name], [model_status], api_name="select_model").success(
        do_bounds, [r_q, r_c], [r_q, r_c], api_visibility="private")
    demo.load(do_model_status, None, [model_status], api_name="model_status")


def build_app(explorer: Explorer) -> gr.Blocks:
    """The five tabs, each laid out and wired by its own function (every action has an ``api_name``)."""

    def on_unload(request: gr.Request):
        explorer.close_session(request.session_hash)

    max_r_q, max_r_c = default_bounds(explorer.config.model)
    # Query uploads, overlays and plots pass through Gradio's cache: purge files older than an hour.
    with gr.Blocks(title="MetaEmbed Explorer", delete_cache=(1800, 3600)) as demo:
        gr.Markdown(INTRO)
        with gr.Tabs() as tabs:
            search = search_tab(explorer, demo, max_r_q, max_r_c)
            tokens_tab(explorer, search.results, tabs)
            gallery_tab(explorer, demo, search.blurb)
            tradeoff_tab(explorer)
            model_tab(explorer, demo, search.r_q, search.r_c)
        demo.unload(on_unload)
    return demo


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default=None, help="bind address (default: GRADIO_SERVER_NAME or 127.0.0.1)")
    parser.add_argument("--port", type=int, default=None, help="port (default: GRADIO_SERVER_PORT or 7860)")
    parser.add_argument("--model", default=None, help="model name or checkpoint dir (overrides METAEMBED_MODEL)")
    parser.add_argument("--gallery", type=Path, default=None, help="demo gallery dir (overrides METAEMBED_GALLERY)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=os.environ.get("METAEMBED_LOG", "INFO"),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    config = ExplorerConfig.from_env(model=args.model, gallery=args.gallery)
    explorer = Explorer(config, build_eval_sets=build_eval_sets)
    demo = build_app(explorer)
    # One model, two cores: encodes are serialised by the explorer's lock anyway, and 2 workers let a search
    # be scored and sent while another encodes (benchmarks/bench_app.py, 8 visitors: 2 workers beat 1 and 4).
    demo.queue(default_concurrency_limit=2)
    # Result thumbnails are served as static files straight from the gallery folders (session folders have
    # unguessable names): Gradio neither hashes nor copies them into its cache on each search.
    served = [str(p) for p in (config.gallery, config.session_root) if p is not None]
    gr.set_static_paths(served)
    demo.launch(server_name=args.host, server_port=args.port, max_file_size=config.caps.max_bytes,
                footer_links=["api", "gradio"], allowed_paths=served, prevent_thread_lock=True, css=CSS)
    # Load the model and demo gallery once the server answers, so startup stays within seconds.
    threading.Thread(target=explorer.warm_up, name="warm-up", daemon=True).start()
    demo.block_thread()


if __name__ == "__main__":
    main()
