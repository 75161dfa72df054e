"""Budget sweeps for the Trade-off tab: quality vs scoring latency vs bytes read, Pareto front.

Three sources, one row format (:class:`metaembed.eval.harness.BudgetResult`), one loop:
- an eval set in BEIR layout (the bundled one, or a visitor's zip): the eval harness does it all;
- a CSV / JSONL of ``query,relevant_item`` against the visitor's current gallery, whose items are
  already encoded: only the queries are encoded, then the harness's own BEIR loop
  (:func:`metaembed.eval.harness.evaluate_index`) searches the gallery index at each budget.
"""

from __future__ import annotations

import csv
import io
import statistics
import zipfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import plotly.graph_objects as go

from explorer.errors import ExplorerError
from explorer.search import format_bytes
from index_builder import Gallery
from metaembed.budget import Budget
from metaembed.eval.harness import BudgetResult, EvalReport, encode_records, evaluate, evaluate_index
from metaembed.eval.loaders import EvalDataError, Record, load_eval_set
from metaembed.io import JsonlError, read_jsonl
from metaembed.models import MetaEmbedEncoder

MAX_PAIRS = 500
#: Passes over the queries whose median is a gallery sweep's scoring latency (one pass is noisy at these ms).
LATENCY_PASSES = 5


def pareto(points: Sequence[tuple[float, float]]) -> list[bool]:
    """Flags for (quality ↑, cost ↓) points no other point beats on both (ties are not domination)."""
    flags = []
    for i, (q_i, c_i) in enumerate(points):
        dominated = any(q_j >= q_i and c_j <= c_i and (q_j > q_i or c_j < c_i)
                        for j, (q_j, c_j) in enumerate(points) if j != i)
        flags.append(not dominated)
    return flags


def read_pairs(path: Path) -> list[tuple[str, str]]:
    """``query,relevant_item`` rows from a CSV (with header) or JSONL file; errors name the line."""
    pairs: list[tuple[str, str]] = []
    if path.suffix.lower() in (".jsonl", ".json"):
        try:
            for line_no, row in read_jsonl(path):
                if not isinstance(row, dict) or not isinstance(row.get("query"), str) or not row.get("relevant_item"):
                    raise ExplorerError(f"{path.name}, line {line_no}: need string fields 'query' and 'relevant_item'")
                pairs.append((row["query"], str(row["relevant_item"])))
        except JsonlError as err:
            raise ExplorerError(f"{path.name}, line {err.line}: not valid JSON ({err.msg})") from err
    else:
        reader = csv.DictReader(io.StringIO(path.read_text(encoding="utf-8", errors="strict")))
        if not reader.fieldnames or not {"query", "relevant_item"} <= set(reader.fieldnames):
            raise ExplorerError(f"{path.name}, line 1: the header must name the columns query,relevant_item")
        for line_no, row in enumerate(reader, start=2):
            if not (row.get("query") or "").strip() or not (row.get("relevant_item") or "").strip():
                raise ExplorerError(f"{path.name}, line {line_no}: empty query or relevant_item")
            pairs.append((row["query"].strip(), row["relevant_item"].strip()))
    if not pairs:
        raise ExplorerError(f"{path.name}: no query,relevant_item rows")
    if len(pairs) > MAX_PAIRS:
        raise ExplorerError(f"{path.name}: {len(pairs)} rows; at most {MAX_PAIRS} queries per sweep")
    return pairs


def _resolver(gallery: Gallery) -> dict[str, set[str]]:
    """Names a user may give for an item: its id, its source path or file name, ``file#page``."""
    names: dict[str, set[str]] = {}
    for item_id in gallery.index.ids:
        record = gallery.item(item_id)
        keys = {item_id}
        if record.source:
            for base in {record.source, Path(record.source).name}:
                keys.add(base)
                if record.page:
                    keys |= {f"{base}#{record.page}", f"{base} p. {record.page}", f"{base}:{record.page}"}
        for key in keys:
            names.setdefault(key, set()).add(item_id)
    return names


def sweep_gallery(encoder: MetaEmbedEncoder, gallery: Gallery, pairs_file: Path, budgets: Sequence[Budget],
                  first_stage: int | None = None) -> EvalReport:
    """Sweep ``budgets`` on the current gallery with a visitor's ``query,relevant_item`` file."""
    names = _resolver(gallery)
    queries: dict[str, str] = {}
    qrels: dict[str, dict[str, int]] = {}
    for line, (query, relevant) in enumerate(read_pairs(pairs_file), start=1):
        matched = names.get(relevant)
        if not matched:
            raise ExplorerError(f"{pairs_file.name}, row {line}: relevant_item {relevant!r} is not in the current "
                                "gallery (use an item id, a file name, or file.pdf#page)")
        qid = queries.setdefault(query, f"q{len(queries)}")
        qrels.setdefault(qid, {}).update({i: 1 for i in matched})
    records = [Record(id=qid, text=text) for text, qid in queries.items()]
    encoded = encode_records(encoder, records, "query", desc="encoding queries")
    vectors = [(r.id, encoded.vectors[row]) for r, row in zip(records, encoded.rows, strict=True)]
    passes = [evaluate_index(gallery.index, vectors, qrels, budgets, first_stage, encoded.ms_per_item)
              for _ in range(LATENCY_PASSES)]
    results = passes[0]
    for i, row in enumerate(results):
        row.scoring_ms_per_query = statistics.median(run[i].scoring_ms_per_query for run in passes)
    return EvalReport(model=encoder.name, data=pairs_file.name, format="beir", results=results,
                      encoding={"queries": len(records), "latency": f"median of {LATENCY_PASSES} passes"})


def extract_beir_zip(zip_path: Path, dest: Path, max_bytes: int) -> Path:
    """Unpack a BEIR-layout zip safely (no paths outside ``dest``, bounded size); return the set's folder."""
    try:
        with zipfile.ZipFile(zip_path) as archive:
            members = archive.infolist()
            total = sum(m.file_size for m in members)
            if total > max_bytes:
                raise ExplorerError(f"{zip_path.name}: unpacks to {total / 2**20:.0f} MB, over the "
                                    f"{max_bytes / 2**20:.0f} MB cap")
            root = dest.resolve()
            for member in members:
                target = (root / member.filename).resolve()
                if not target.is_relative_to(root):
                    raise ExplorerError(f"{zip_path.name}: member {member.filename!r} points outside the archive")
            archive.extractall(root)
    except zipfile.BadZipFile as err:
        raise ExplorerError(f"{zip_path.name}: not a valid zip file ({err})") from err
    found = sorted(p.parent for p in dest.rglob("corpus.jsonl"))
    if not found:
        raise ExplorerError(f"{zip_path.name}: no corpus.jsonl inside (BEIR layout: corpus.jsonl, queries.jsonl, "
                            "qrels/test.tsv)")
    return found[0]


def sweep_eval_set(encoder: MetaEmbedEncoder, folder: Path, budgets: Sequence[Budget], max_corpus: int,
                   first_stage: int | None = None, limit: int | None = 200) -> EvalReport:
    """Sweep an eval set (BEIR folder or MMEB .jsonl) through the eval harness, corpus size capped."""
    try:
        data = load_eval_set(folder, limit=limit)
    except EvalDataError as err:
        raise ExplorerError(str(err)) from err
    size = len(getattr(data, "corpus", None) or [c for row in getattr(data, "rows", []) for c in row.candidates])
    if size > max_corpus:
        raise ExplorerError(f"{Path(folder).name}: {size} candidates; the explorer encodes at most {max_corpus} "
                            "(run `python -m metaembed.eval` for bigger sets)")
    return evaluate(encoder, data, budgets, first_stage=first_stage)


def query_count(report: EvalReport) -> int | None:
    """How many queries a sweep averaged over (the harness's encoding summary, or the pairs file's)."""
    count = report.encoding.get("queries")
    return int(count) if count is not None else None


def table_rows(report: EvalReport, cost: str = "bytes_read") -> tuple[list[str], list[list[Any]]]:
    """Header and rows for the UI table: budget, the main metric first, the others, cost, Pareto flag under
    (quality, ``cost``) as plotted."""
    metric = report.main_metric
    flags = pareto_flags(report, cost)
    keys = [metric, *sorted({k for r in report.results for k in r.metrics} - {metric})]
    header = ["budget", *keys, "scoring ms/query", "bytes read/query", "Pareto"]
    rows = [[f"({r.r_q},{r.r_c})", *[round(r.metrics[k], 3) for k in keys], round(r.scoring_ms_per_query, 2),
             format_bytes(r.bytes_read or 0), "★" if flag else ""]
            for r, flag in zip(report.results, flags, strict=True)]
    return header, rows


def pareto_flags(report: EvalReport, cost: str) -> list[bool]:
    """Pareto flags on the plotted axes: quality and ``cost`` as shown (3 decimals, 0.01 ms, whole bytes), so
    differences below what the table can show never decide the front."""
    metric = report.main_metric
    return pareto([(round(r.metrics[metric], 3), _cost(r, cost)) for r in report.results])


def _cost(row: BudgetResult, cost: str) -> float:
    if cost == "latency":
        return round(row.scoring_ms_per_query, 2)
    return float(row.bytes_read or 0)


def tradeoff_figure(report: EvalReport, cost: str = "bytes_read") -> go.Figure:
    """Quality vs the chosen cost (the Pareto front is computed on exactly these axes), Pareto budgets joined;
    hover gives both costs."""
    metric = report.main_metric
    rows = report.results
    flags = pareto_flags(report, cost)
    latency = cost == "latency"
    fig = go.Figure()
    for on_front, name, color in ((False, "dominated", "#9aa0a6"), (True, "Pareto-optimal", "#d62728")):
        pts = [r for r, f in zip(rows, flags, strict=True) if f == on_front]
        if not pts:
            continue
        fig.add_trace(go.Scatter(
            x=[_x(r, latency) for r in pts], y=[r.metrics[metric] for r in pts],
            mode="markers+text", name=name, text=[f"({r.r_q},{r.r_c})" for r in pts], textposition="top center",
            marker={"size": 12, "color": color},
            customdata=[[format_bytes(r.bytes_read or 0), r.scoring_ms_per_query] for r in pts],
            hovertemplate="%{text}<br>%{y:.3f}<br>%{customdata[1]:.2f} ms<br>%{customdata[0]} read<extra></extra>"))
    front = sorted((r for r, f in zip(rows, flags, strict=True) if f), key=lambda r: _cost(r, cost))
    if len(front) > 1:
        fig.add_trace(go.Scatter(x=[_x(r, latency) for r in front], y=[r.metrics[metric] for r in front],
                                 mode="lines", line={"color": "#d62728", "dash": "dot"}, showlegend=False,
                                 hoverinfo="skip"))
    axis = "scoring ms / query (median)" if latency else "KiB read / query"
    fig.update_layout(title=f"{metric} vs {'scoring latency' if latency else 'bytes read'} (Pareto front dotted)",
                      xaxis_title=axis, yaxis_title=metric, height=420, margin={"l": 10, "r": 10, "t": 50, "b": 10})
    return fig


def _x(row: BudgetResult, latency: bool) -> float:
    return round(row.scoring_ms_per_query, 2) if latency else float(row.bytes_read or 0) / 1024
