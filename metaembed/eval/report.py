"""Present a sweep: a plain-text table for the terminal and a plotly figure (HTML + PNG).

Quality is shown in percent in the table (JSON keeps the raw fractions the metrics code returns).
"""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path
from typing import Any

from metaembed.io import atomic_write, atomic_write_json

from .harness import EvalReport

logger = logging.getLogger(__name__)

#: kaleido 1.x drives a Chrome through choreographer, which reads this variable for the browser path.
BROWSER_ENV = "BROWSER_PATH"
BROWSER_CANDIDATES = ("chromium", "chromium-browser", "google-chrome", "chrome")


def human_bytes(n: int | None) -> str:
    if n is None:
        return "-"
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} GiB"


def format_table(report: EvalReport | dict[str, Any]) -> str:
    """One row per budget: metrics (%), encode ms/item, scoring ms/query, index bytes read per query."""
    data = report.to_dict() if isinstance(report, EvalReport) else report
    rows = data["results"]
    metric_names = list(rows[0]["metrics"]) if rows else []
    header = ["budget", *metric_names, "encode ms/item", "score ms/query", "bytes read/query",
              "vectors >=1%", "match entropy"]
    lines = [[r.get("label") or f"{r['r_q']}x{r['r_c']}",
              *(f"{100 * r['metrics'][m]:.1f}" for m in metric_names),
              f"{r['encode_ms_per_item']:.2f}" if r.get("encode_ms_per_item") is not None else "-",
              f"{r['scoring_ms_per_query']:.3f}", human_bytes(r.get("bytes_read")), *_spread_cells(r)] for r in rows]
    widths = [max(len(str(c)) for c in col) for col in zip(header, *lines, strict=True)]
    title = f"model: {data['model']}   data: {data['data']}   (metrics in %)"
    fmt = "  ".join(("{:<%d}" if i == 0 else "{:>%d}") % w for i, w in enumerate(widths))
    body = [fmt.format(*header), fmt.format(*("-" * w for w in widths))] + [fmt.format(*line) for line in lines]
    return "\n".join([title, *body])


def _spread_cells(row: dict[str, Any]) -> list[str]:
    """Match-spread columns: candidate vectors winning >= 1 % of the matches (of r_c), entropy in bits."""
    spread = row.get("match_spread")
    if not spread:
        return ["-", "-"]
    return [f"{spread['vectors_over_1pct']}/{row['r_c']}", f"{spread['entropy_bits']:.2f}"]


def write_json(report: EvalReport | dict[str, Any], path: str | Path) -> None:
    """Write the report dict atomically (:func:`metaembed.io.atomic_write_json`)."""
    atomic_write_json(path, report.to_dict() if isinstance(report, EvalReport) else report)


def publish(report: EvalReport | dict[str, Any], json_path: str | Path | None = None) -> None:
    """What every eval CLI ends with: the table on stdout and, if asked, the JSON report."""
    print(format_table(report))  # the CLI's result output, not a log line
    if json_path:
        write_json(report, json_path)
        logger.info("wrote %s", json_path)


def build_figure(report: EvalReport | dict[str, Any]):
    """Quality against budget (left) and against scoring latency (right); marker size ~ bytes read."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    data = report.to_dict() if isinstance(report, EvalReport) else report
    metric = data.get("main_metric") or next(iter(data["results"][0]["metrics"]))
    rows = data["results"]
    labels = [r.get("label") or f"{r['r_q']}x{r['r_c']}" for r in rows]
    quality = [100 * r["metrics"][metric] for r in rows]
    latency = [r["scoring_ms_per_query"] for r in rows]
    read = [r.get("bytes_read") or 0 for r in rows]
    biggest = max(read) or 1
    sizes = [10 + 30 * (b / biggest) ** 0.5 for b in read]
    hover = [f"{lab}<br>{metric} {q:.1f}%<br>{ms:.3f} ms/query<br>{human_bytes(b)} read"
             for lab, q, ms, b in zip(labels, quality, latency, read, strict=True)]
    fig = make_subplots(rows=1, cols=2, subplot_titles=(f"{metric} vs budget", f"{metric} vs scoring latency"))
    fig.add_trace(go.Scatter(x=labels, y=quality, mode="lines+markers", marker={"size": sizes},
                             hovertext=hover, hoverinfo="text", name="quality"), row=1, col=1)
    fig.add_trace(go.Scatter(x=latency, y=quality, mode="lines+markers+text", text=labels, textposition="top center",
                             marker={"size": sizes}, hovertext=hover, hoverinfo="text", name="latency"), row=1, col=2)
    fig.update_xaxes(title_text="budget (r_q x r_c)", type="category", row=1, col=1)
    fig.update_xaxes(title_text="scoring ms / query", row=1, col=2)
    fig.update_yaxes(title_text=f"{metric} (%)")
    fig.update_layout(title=f"{data['model']} on {Path(data['data']).name} (marker size ~ bytes read)",
                      showlegend=False, width=1100, height=480)
    return fig


def _ensure_browser() -> None:
    if os.environ.get(BROWSER_ENV):
        return
    for name in BROWSER_CANDIDATES:
        found = shutil.which(name)
        if found:
            os.environ[BROWSER_ENV] = found
            return


def save_figure(report: EvalReport | dict[str, Any], prefix: str | Path) -> list[Path]:
    """Write ``PREFIX.html`` and, if a Chrome is available to kaleido, ``PREFIX.png``; return what was written."""
    prefix = Path(prefix)
    fig = build_figure(report)
    html = prefix.with_name(prefix.name + ".html")
    atomic_write(html, fig.to_html(include_plotlyjs=True, full_html=True).encode())
    written = [html]
    png = prefix.with_name(prefix.name + ".png")
    _ensure_browser()
    try:
        atomic_write(png, fig.to_image(format="png", scale=2))
        written.append(png)
    except Exception as err:  # kaleido/Chrome failures come in many types; the HTML is still useful
        logger.warning("PNG export failed (%s); wrote %s only. Set %s to a Chrome/Chromium binary.",
                       err, html, BROWSER_ENV)
    return written
