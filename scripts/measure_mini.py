"""Measure MetaEmbed-Mini and its two ablations on the five eval sets; write the README's table and chart.

    # full sweep: 3 models x 5 budgets x {tux-t2i, tux-i2t, fmnist-cls, rdocs, tux-scenes} + baseline rows
    python scripts/measure_mini.py baselines          # -> benchmarks/results/baselines.json
    python scripts/measure_mini.py sweep              # -> benchmarks/results/mini-{mmr,no-mmr,single-vector}.json
    python scripts/measure_mini.py report             # -> benchmarks/results/mini.{md,json,png,html}
    # the fixed small subset the quality test re-runs (records assets/metaembed-mini/eval_subset.json)
    python scripts/measure_mini.py subset
    # model / recipe selection: the dev sets only (never the test sets)
    python scripts/measure_mini.py dev --models assets/metaembed-mini runs/other/model

The three models share one frozen EfficientNet, so image features are computed once and reused
(keyed by image path, kept in runs/feature-cache/) across models: a sweep costs one feature pass.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # run as a script from a checkout

from metaembed.budget import TRAINED_GROUPS, Budget  # noqa: E402
from metaembed.eval.harness import evaluate  # noqa: E402
from metaembed.eval.loaders import load_eval_set  # noqa: E402
from metaembed.models import MetaEmbedEncoder, load_encoder  # noqa: E402
from metaembed.models.mini import load_feature_cache, save_feature_cache  # noqa: E402
from metaembed.models.precision import COMPUTE_DTYPES, set_compute_dtype  # noqa: E402

logger = logging.getLogger("measure_mini")

SETS = ("tux-t2i", "tux-i2t", "fmnist-cls", "rdocs", "tux-scenes")
SET_PATHS = {"tux-t2i": "tux-t2i", "tux-i2t": "tux-i2t/tux-i2t.jsonl", "fmnist-cls": "fmnist-cls/fmnist-cls.jsonl",
             "rdocs": "rdocs", "tux-scenes": "tux-scenes", "oca-dev-t2i": "oca-dev-t2i",
             "oca-dev-i2t": "oca-dev-i2t/oca-dev-i2t.jsonl", "oca-dev-scenes": "oca-dev-scenes", "docs-dev": "docs-dev",
             "fmnist-dev": "fmnist-dev/fmnist-dev.jsonl"}
DEV_SETS = ("oca-dev-t2i", "oca-dev-i2t", "oca-dev-scenes", "docs-dev", "fmnist-dev")
#: Text-only baselines apply to the page sets; LiT (image-text) to the others.
TEXT_SETS = ("rdocs", "docs-dev")
TEXT_BASELINES = ("bm25", "minilm", "chunked-minilm")
#: The shipped model and its two ablations, trained identically (configs/mini*.yaml: same data, steps, seed).
MODELS = {"mmr": REPO / "assets" / "metaembed-mini", "no-mmr": REPO / "runs" / "mini-no-mmr" / "model",
          "single-vector": REPO / "runs" / "mini-single-vector" / "model"}
#: The shipped model swept at bfloat16 (``sweep --models mmr --compute-dtype bfloat16``), its serving precision
#: here; the triple itself is compared at float32 (the sweep's default), the precision all three were measured at.
SERVED = "mmr-bfloat16"
LABELS = {"mmr": "mmr (shipped) float32", "no-mmr": "no-mmr float32", "single-vector": "single-vector float32",
          SERVED: "mmr (shipped) bfloat16 (served)"}
#: The quality test's fixed subset: eval sets rebuilt from the Debian data with this builder --limit.
SUBSET_LIMIT = 30
SUBSET_FILE = REPO / "assets" / "metaembed-mini" / "eval_subset.json"
SUBSET_PRECISIONS = ("float32", "bfloat16")


def load_model(path: str | Path | None, compute_dtype: str) -> MetaEmbedEncoder:
    """A model on CPU computing at ``compute_dtype`` (the serving default is "auto": bfloat16 where native)."""
    model = load_encoder(path, device="cpu")
    set_compute_dtype(model, compute_dtype)
    return model


def sweep_file(out: Path, name: str, model: MetaEmbedEncoder) -> Path:
    """``mini-NAME.json`` for a float32 sweep, ``mini-NAME-bfloat16.json`` for a bfloat16 one."""
    return out / (f"mini-{name}.json" if model.precision == "float32" else f"mini-{name}-{model.precision}.json")


def main_metric(report: dict[str, Any]) -> str:
    return report["main_metric"]


def sweep_model(model: MetaEmbedEncoder, data_root: Path, sets: tuple[str, ...] = SETS) -> dict[str, Any]:
    """{set: report dict} over every trained budget the model has (a single-vector model: (1,1) only).

    BEIR sets with page text also record ``text_cut_share``: the share of corpus texts the encoder could
    not read whole (Mini reads up to ``max_windows`` windows of ``text_window`` word pieces).
    """
    budgets = [b for b in TRAINED_GROUPS if b.r_q <= model.num_query_tokens and b.r_c <= model.num_candidate_tokens]
    out = {}
    for name in sets:
        data = load_eval_set(data_root / SET_PATHS[name])
        report = evaluate(model, data, budgets=budgets, batch_size=32)
        out[name] = report.to_dict()
        coverage = getattr(model, "text_coverage", None)
        texts = [c.to_item() for c in getattr(data, "corpus", []) if c.text]
        if coverage is not None and texts:
            out[name]["text_cut_share"] = sum(read < total for read, total in map(coverage, texts)) / len(texts)
        logger.info("%s %s: %s", model.name, name,
                    {r["label"]: round(r["metrics"][report.main_metric], 4) for r in out[name]["results"]})
    return out


def baselines(data_root: Path, cache: Path, sets: tuple[str, ...] = SETS) -> dict[str, dict[str, Any]]:
    """BM25, MiniLM and chunked MiniLM on the page sets, the LiT-style baseline on the others; same splits."""
    from metaembed.baselines.__main__ import run

    rows: dict[str, dict[str, Any]] = {}
    for name in sets:
        # BM25 and (chunked) MiniLM are text-only (they cannot see an image); LiT is the image-text floor.
        for baseline in TEXT_BASELINES if name in TEXT_SETS else ("lit",):
            args = argparse.Namespace(data=str(data_root / SET_PATHS[name]), format=None, limit=None, baseline=baseline,
                                      cache=str(cache), config=None, retrain=False)
            report = run(args)
            rows.setdefault(baseline, {})[name] = report.to_dict() if hasattr(report, "to_dict") else report
    return rows


def write_baselines(data_root: Path, cache: Path, out: Path) -> dict[str, dict[str, Any]]:
    """Run the baselines once and keep them in ``out/baselines.json`` (the sweep reuses the file)."""
    base = baselines(data_root, cache)
    out.mkdir(parents=True, exist_ok=True)
    (out / "baselines.json").write_text(json.dumps(base, indent=1, default=str) + "\n")
    return base


def headline(report: dict[str, Any], budget: Budget | None, label: str | None = None) -> float:
    """The set's main metric at ``budget`` (or the row ``label``; neither = the report's only row), in points."""
    metric = report["main_metric"]
    for row in report["results"]:
        if (label is not None and row.get("label") == label) or (
                label is None and (budget is None or (row["r_q"], row["r_c"]) == (budget.r_q, budget.r_c))):
            return 100.0 * row["metrics"][metric]
    raise KeyError(f"no row for {label or budget} in {report['data']}")


def _row(report: dict[str, Any], budget: Budget) -> dict[str, Any]:
    return next(r for r in report["results"] if (r["r_q"], r["r_c"]) == (budget.r_q, budget.r_c))


def baseline_rows(base: dict[str, dict[str, Any]]) -> list[tuple[str, str, dict[str, float]]]:
    """(name, row label, {set: points}) for every baseline row; chunked MiniLM has one row per r."""
    out = []
    for name, per_set in base.items():
        labels = dict.fromkeys(r.get("label") or "single" for report in per_set.values() for r in report["results"])
        for label in labels:
            out.append((name, label, {s: headline(rep, None, label) for s, rep in per_set.items()
                                      if any((r.get("label") or "single") == label for r in rep["results"])}))
    return out


def markdown_table(results: dict[str, dict[str, Any]], base: dict[str, dict[str, Any]],
                   sets: tuple[str, ...] = SETS) -> str:
    """Rows = model @ budget, columns = eval sets (main metric, in points)."""
    header = "| model | budget | " + " | ".join(f"{s} ({_metric_name(s)})" for s in sets) + " | avg |"
    lines = [header, "|" + "---|" * (len(sets) + 3)]
    for model, per_set in results.items():
        budgets = [Budget(r["r_q"], r["r_c"]) for r in next(iter(per_set.values()))["results"]]
        for budget in budgets:
            vals = [headline(per_set[s], budget) for s in sets]
            lines.append(f"| MetaEmbed-Mini {LABELS.get(model, model)} | {budget} | "
                         + " | ".join(f"{v:.1f}" for v in vals) + f" | {sum(vals) / len(vals):.1f} |")
    for name, label, vals in baseline_rows(base):
        cells = [f"{vals[s]:.1f}" if s in vals else "–" for s in sets]
        lines.append(f"| {name} baseline | {label} | " + " | ".join(cells) + " | |")
    return "\n".join(lines) + "\n"


def spread_table(results: dict[str, dict[str, Any]], sets: tuple[str, ...] = SETS) -> str:
    """Candidate vectors winning >= 1 % of the MaxSim matches (and entropy, bits) per set and budget."""
    lines = ["| model | budget | " + " | ".join(sets) + " |", "|" + "---|" * (len(sets) + 2)]
    for model, per_set in results.items():
        for row in next(iter(per_set.values()))["results"]:
            budget = Budget(row["r_q"], row["r_c"])
            cells = []
            for s in sets:
                spread = _row(per_set[s], budget).get("match_spread") or {}
                cells.append(f"{spread.get('vectors_over_1pct', 0)}/{budget.r_c} ({spread.get('entropy_bits', 0):.2f})")
            lines.append(f"| {LABELS.get(model, model)} | {budget} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _metric_name(name: str) -> str:
    """The set's main metric as the tables print it, from its layout (``SET_PATHS``: an MMEB set is a .jsonl
    file, scored by precision@1; a BEIR set is a folder, scored by nDCG@5; ``eval.harness.MAIN_METRIC``)."""
    return "P@1" if SET_PATHS[name].endswith(".jsonl") else "nDCG@5"


def targets(results: dict[str, dict[str, Any]], base: dict[str, dict[str, Any]],
            previous: dict[str, Any]) -> dict[str, Any]:
    """The model issue's targets 1-6 (7, encoding speed, is benchmarks/bench_encode.py), with figures and flags.

    ``previous`` is the sweep of the model v2 replaces (benchmarks/results/mini-v1-mmr.json).
    """
    mmr, nommr, single = results["mmr"], results["no-mmr"], results["single-vector"]
    full, one = Budget(16, 64), Budget(1, 1)
    chunked = base["chunked-minilm"]["rdocs"]
    rdocs = {"1x1": headline(mmr["rdocs"], one), "16x64": headline(mmr["rdocs"], full),
             "chunked_r1": headline(chunked, None, "r=1"), "chunked_r64": headline(chunked, None, "r=64")}
    scenes = {"1x1": headline(mmr["tux-scenes"], one), "16x64": headline(mmr["tux-scenes"], full),
              "single_vector": headline(single["tux-scenes"], one)}
    curves = {s: [headline(mmr[s], b) for b in TRAINED_GROUPS] for s in SETS}
    monotone = {s: all(v >= max(c[:i + 1]) - 0.5 for i, v in enumerate(c)) for s, c in curves.items()}
    gaps = {s: headline(mmr[s], one) - headline(nommr[s], one) for s in SETS}
    spread = {s: _row(mmr[s], full)["match_spread"]["vectors_over_1pct"] for s in ("rdocs", "tux-scenes")}
    kept = {s: headline(mmr[s], full) - headline(previous[s], full) for s in ("tux-t2i", "tux-i2t", "fmnist-cls")}
    return {
        "1_rdocs_vs_chunked_minilm": {**rdocs, "pass": rdocs["1x1"] >= rdocs["chunked_r1"]
                                      and rdocs["16x64"] >= rdocs["chunked_r64"]
                                      and rdocs["16x64"] - rdocs["1x1"] >= 10},
        "2_tux_scenes_budget_and_single_vector": {**scenes, "pass": scenes["16x64"] - scenes["1x1"] >= 5
                                                  and scenes["16x64"] >= scenes["single_vector"] + 3},
        "3_non_decreasing": {"curves": curves, "per_set": monotone, "pass": all(monotone.values())},
        "4_mmr_vs_nommr_at_1x1": {"gaps": gaps, "avg_gap_points": sum(gaps.values()) / len(gaps),
                                  "pass": sum(gaps.values()) / len(gaps) >= 3.0},
        "5_match_spread_at_16x64": {"vectors_over_1pct": spread, "pass": all(v >= 16 for v in spread.values())},
        "6_image_sets_vs_previous_model_at_16x64": {"differences": kept, "pass": all(v >= -1 for v in kept.values())},
    }


def plot(results: dict[str, dict[str, Any]], base: dict[str, dict[str, Any]], out: Path) -> list[Path]:
    """Quality vs budget, one panel per eval set; ablations and baselines as lines (chunked MiniLM per r)."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    fig = make_subplots(rows=1, cols=len(SETS), subplot_titles=[f"{s} ({_metric_name(s)})" for s in SETS])
    labels = [str(b) for b in TRAINED_GROUPS]
    colors = {"mmr": "#1f77b4", SERVED: "#17becf", "no-mmr": "#ff7f0e", "single-vector": "#2ca02c", "bm25": "#7f7f7f",
              "minilm": "#9467bd", "lit": "#d62728", "chunked-minilm": "#8c564b"}
    rows_of = baseline_rows(base)
    shown: set[str] = set()  # one legend entry per series, even for baselines that appear in one panel only
    for col, name in enumerate(SETS, start=1):
        for model, per_set in results.items():
            rows = per_set[name]["results"]
            y = [headline(per_set[name], Budget(r["r_q"], r["r_c"])) for r in rows]
            x = [f"({r['r_q']},{r['r_c']})" for r in rows] if len(rows) > 1 else labels
            y = y if len(rows) > 1 else y * len(labels)
            fig.add_trace(go.Scatter(x=x, y=y, name=f"Mini {model}", legendgroup=model, showlegend=col == 1,
                                     mode="lines+markers" if len(rows) > 1 else "lines",
                                     line={"color": colors[model], "dash": "solid" if len(rows) > 1 else "dot"}),
                          row=1, col=col)
        for baseline in base:
            values = [vals[name] for b, _, vals in rows_of if b == baseline and name in vals]
            if not values:
                continue
            # chunked MiniLM has one row per candidate budget r_c = 1, 4, 8, 16, 64: drawn against the groups
            y = values if len(values) == len(labels) else values * len(labels)
            fig.add_trace(go.Scatter(x=labels, y=y, name=baseline, legendgroup=baseline,
                                     showlegend=baseline not in shown, mode="lines+markers" if len(values) > 1
                                     else "lines", line={"color": colors[baseline], "dash": "dash"}), row=1, col=col)
            shown.add(baseline)
    fig.update_layout(width=1700, height=420, title="MetaEmbed-Mini: quality vs budget (r_q, r_c)")
    written = []
    html = out.with_suffix(".html")
    fig.write_html(str(html), include_plotlyjs="cdn")
    written.append(html)
    try:
        fig.write_image(str(out.with_suffix(".png")))
        written.append(out.with_suffix(".png"))
    except Exception as err:  # kaleido needs a browser; the HTML chart is still there
        logger.warning("PNG export failed (%s); wrote %s only", err, html)
    return written


def cmd_sweep(args: argparse.Namespace) -> int:
    """Evaluate each named model on the five sets; one JSON per model (runs can happen as models finish)."""
    data_root, out = Path(args.data), Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    cache_file = Path(args.feature_cache)
    cache = load_feature_cache(cache_file)
    for name in args.models:
        model = load_model(MODELS[name], args.compute_dtype)
        model.enable_feature_cache(cache)  # same frozen EfficientNet settings for all three models
        results = sweep_model(model, data_root)
        sweep_file(out, name, model).write_text(json.dumps(results, indent=1, default=str) + "\n")
        cache_file.parent.mkdir(parents=True, exist_ok=True)
        save_feature_cache(cache, cache_file)
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    """Tables, chart and the targets from the per-model JSONs, baselines.json and the previous model's sweep."""
    out = Path(args.out)
    results = {name: json.loads((out / f"mini-{name}.json").read_text()) for name in MODELS}
    base = json.loads((out / "baselines.json").read_text())
    previous = json.loads((out / "mini-v1-mmr.json").read_text())
    summary = {"commands": ["python scripts/measure_mini.py baselines",
                            "python scripts/measure_mini.py sweep --models mmr no-mmr single-vector "
                            "--compute-dtype float32",
                            "python scripts/measure_mini.py sweep --models mmr --compute-dtype bfloat16",
                            "python scripts/measure_mini.py report"],
               "targets": targets(results, base, previous),
               "text_cut_share": {s: results["mmr"][s].get("text_cut_share") for s in SETS
                                  if "text_cut_share" in results["mmr"][s]}}
    served = out / f"mini-{SERVED}.json"
    if served.is_file():
        results[SERVED] = json.loads(served.read_text())
        summary[f"targets_{SERVED}"] = targets({**results, "mmr": results[SERVED]}, base, previous)
    (out / "mini.json").write_text(json.dumps(summary, indent=1, default=str) + "\n")
    table = markdown_table(results, base) + "\n" + spread_table(results)
    (out / "mini.md").write_text(table)
    plot(results, base, out / "mini")
    print(table)
    print(json.dumps(summary, default=str))
    return 0


def points(reports: dict[str, Any]) -> dict[str, dict[str, float]]:
    """Main metric per set and budget, in points, from ``sweep_model``'s reports."""
    return {name: {f"{r['r_q']}x{r['r_c']}": 100.0 * r["metrics"][report["main_metric"]] for r in report["results"]}
            for name, report in reports.items()}


def measure_subset(model: MetaEmbedEncoder, root: Path) -> dict[str, dict[str, float]]:
    """Main metric per set and budget (points) on the fixed subset under ``root`` (built with SUBSET_LIMIT)."""
    return points(sweep_model(model, root))


def build_subset(root: Path) -> Path:
    """The eval sets rebuilt from the Debian packages with the builders' --limit (what the test re-runs)."""
    from metaembed.datasets.build import build

    build(root, only=SETS, limit=SUBSET_LIMIT)
    return root


def cmd_subset(args: argparse.Namespace) -> int:
    """Both precisions: the test checks the one "auto" serves on the machine it runs on."""
    model = load_model(args.model, "float32")
    figures = {}
    with tempfile.TemporaryDirectory() as tmp:
        root = build_subset(Path(tmp))
        for dtype in SUBSET_PRECISIONS:
            set_compute_dtype(model, dtype)
            figures[dtype] = measure_subset(model, root)
    record = {"model_fingerprint": model.fingerprint(), "builder_limit": SUBSET_LIMIT,
              "command": "python scripts/measure_mini.py subset", "points": figures}
    path = Path(args.output)
    path.write_text(json.dumps(record, indent=1, sort_keys=True) + "\n")
    print(json.dumps(record))
    return 0


def cmd_dev(args: argparse.Namespace) -> int:
    """Recipe choices are made here, on the dev sets (held-out Open Clip Art clips, a held-out train
    manual, held-out Fashion-MNIST train images), never on the test sets. Prints the main metric and the
    match spread per set and budget."""
    cache_file = Path(args.feature_cache)
    cache = load_feature_cache(cache_file)
    sets = tuple(args.sets)
    results, figures = {}, {}
    for path in args.models:
        model = load_model(path, args.compute_dtype)
        model.enable_feature_cache(cache)
        results[path] = sweep_model(model, Path(args.data), sets)
        figures[path] = points(results[path])
        cache_file.parent.mkdir(parents=True, exist_ok=True)
        save_feature_cache(cache, cache_file)
    base = baselines(Path(args.data), Path(args.cache), sets) if args.baselines else {}
    print(markdown_table(results, base, sets) + "\n" + spread_table(results, sets))
    print(json.dumps(figures))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    sweep = sub.add_parser("sweep", help="5 budgets x 5 sets for the named models (one JSON each)")
    sweep.add_argument("--models", nargs="+", choices=list(MODELS), default=list(MODELS))
    sweep.add_argument("--data", default=str(REPO / "data" / "eval"), help="from python -m metaembed.datasets build")
    sweep.add_argument("--out", default=str(REPO / "benchmarks" / "results"))
    sweep.add_argument("--feature-cache", default=str(REPO / "runs" / "feature-cache" / "eval-192-g6.safetensors"),
                       help="frozen EfficientNet features of the eval images, shared by the three models")
    report = sub.add_parser("report", help="table + chart + targets from the sweep's JSON files")
    report.add_argument("--out", default=str(REPO / "benchmarks" / "results"))
    base = sub.add_parser("baselines", help="baseline rows only (benchmarks/results/baselines.json)")
    base.add_argument("--data", default=str(REPO / "data" / "eval"))
    base.add_argument("--out", default=str(REPO / "benchmarks" / "results"))
    base.add_argument("--cache", default=os.environ.get("METAEMBED_CACHE", "data/cache"), help="LiT baseline cache")
    subset = sub.add_parser("subset", help="record the quality test's subset figures for the shipped model")
    subset.add_argument("--model", default=None)
    subset.add_argument("--output", default=str(SUBSET_FILE))
    dev = sub.add_parser("dev", help="main metric and match spread per budget on the dev sets")
    dev.add_argument("--models", nargs="+", required=True, help="model folders (safetensors + JSON config)")
    dev.add_argument("--sets", nargs="+", choices=DEV_SETS, default=list(DEV_SETS))
    dev.add_argument("--baselines", action="store_true", help="also the baseline rows on these dev sets")
    dev.add_argument("--data", default=str(REPO / "data" / "eval"))
    dev.add_argument("--cache", default=os.environ.get("METAEMBED_CACHE", "data/cache"), help="LiT baseline cache")
    dev.add_argument("--feature-cache", default=str(REPO / "runs" / "feature-cache" / "dev-192-g6.safetensors"))
    for command, default in ((sweep, "float32"), (dev, "auto")):
        command.add_argument("--compute-dtype", choices=COMPUTE_DTYPES, default=default,
                             help=f"precision to encode in (default {default}; auto: bfloat16 where it is native)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    torch.manual_seed(0)
    if args.command == "baselines":
        write_baselines(Path(args.data), Path(args.cache), Path(args.out))
        return 0
    return {"sweep": cmd_sweep, "report": cmd_report, "subset": cmd_subset, "dev": cmd_dev}[args.command](args)


if __name__ == "__main__":
    sys.exit(main())
