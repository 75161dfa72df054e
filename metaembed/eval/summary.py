"""``python -m metaembed.eval.summary REPORT.json ...``: one markdown table from many ``--json`` reports.

Model sweeps and baselines write the same report shape, so the README's results table is generated
from the files rather than copied by hand.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from .report import human_bytes

#: Metrics shown per format, main metric first.
COLUMNS = {"beir": ("ndcg@5", "ndcg@10", "recall@1", "recall@10", "mrr@10"), "mmeb": ("precision@1",)}


def markdown_table(reports: list[dict[str, Any]]) -> str:
    """Rows grouped by eval set: set, model, budget, metrics (%), scoring ms/query, bytes read/query."""
    lines = []
    for fmt, names in COLUMNS.items():
        rows = [(r, row) for r in reports if r.get("format") == fmt for row in r["results"]]
        if not rows:
            continue
        header = ["set", "model", "budget", *names, "score ms/query", "bytes read/query"]
        lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        for report, row in sorted(rows, key=lambda x: (Path(x[0]["data"]).name, x[0]["model"])):
            metrics = [f"{100 * row['metrics'][m]:.1f}" if m in row["metrics"] else "-" for m in names]
            cells = [Path(report["data"]).stem, report["model"], row.get("label") or f"{row['r_q']}x{row['r_c']}",
                     *metrics, f"{row['scoring_ms_per_query']:.3f}", human_bytes(row.get("bytes_read"))]
            lines.append("| " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m metaembed.eval.summary", description=__doc__)
    parser.add_argument("reports", nargs="+", help="JSON files written by --json")
    args = parser.parse_args(argv)
    reports = []
    for path in args.reports:
        try:
            reports.append(json.loads(Path(path).read_text()))
        except (OSError, json.JSONDecodeError) as err:
            print(f"error: {path}: {err}", file=sys.stderr)
            return 2
    print(markdown_table(reports))
    return 0


if __name__ == "__main__":
    sys.exit(main())
