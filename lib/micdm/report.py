"""The run report: one self-contained HTML file per pipeline run, charts drawn as inline SVG.

Everything that comes from the data (header strings, reasons, table names) is escaped: real DICOM
headers carry markup-like strings, and the report is opened in a browser.
"""

from __future__ import annotations

import datetime as dt
import html
import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from micdm.concurrency import run_concurrently
from micdm.inventory import present
from micdm.tables import TableLocator, read_table

__all__ = ["FIGURE_TABLES", "RunFigures", "bar_chart", "cached_figures", "latest_run_rows", "read_figures",
           "render_report", "value_distributions", "write_report"]

log = logging.getLogger(__name__)

_STYLE = """
body { font-family: system-ui, sans-serif; margin: 2rem; color: #222; }
h1 { font-size: 1.4rem; } h2 { font-size: 1.1rem; margin-top: 2rem; }
table { border-collapse: collapse; } td, th { padding: 0.2rem 0.8rem; border-bottom: 1px solid #ddd; text-align: left; }
td.n { text-align: right; } .fail { color: #b00020; font-weight: bold; } .ok { color: #1b5e20; }
svg text { font-size: 12px; }
"""


def bar_chart(title: str, bars: Sequence[tuple[str, float]], width: int = 560) -> str:
    """A horizontal bar chart as inline SVG; labels and the title are escaped."""
    if not bars:
        return f"<p>{html.escape(title)}: nothing to show.</p>"
    row, label_width = 22, 220
    highest = max(value for _, value in bars) or 1
    height = row * len(bars) + 30
    parts = [f'<svg role="img" width="{width}" height="{height}" aria-label="{html.escape(title, quote=True)}">',
             f'<text x="0" y="14" font-weight="bold">{html.escape(title)}</text>']
    for index, (label, value) in enumerate(bars):
        y = 24 + index * row
        length = (width - label_width - 60) * value / highest
        parts.append(f'<text x="0" y="{y + 14}">{html.escape(str(label))[:40]}</text>')
        parts.append(f'<rect x="{label_width}" y="{y + 3}" width="{length:.1f}" height="{row - 6}" fill="#3f6fb5"/>')
        parts.append(f'<text x="{label_width + length + 6:.1f}" y="{y + 14}">{value:g}</text>')
    parts.append("</svg>")
    return "".join(parts)


def _table(header: Sequence[str], rows: Sequence[Sequence[Any]], classes: Sequence[str] | None = None) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = []
    for index, row in enumerate(rows):
        cells = "".join(f'<td class="n">{v}</td>' if isinstance(v, (int, float)) else f"<td>{html.escape(str(v))}</td>"
                        for v in row)
        css = f' class="{classes[index]}"' if classes else ""
        body.append(f"<tr{css}>{cells}</tr>")
    return f"<table><tr>{head}</tr>{''.join(body)}</table>"


def render_report(run_id: str, stages: Sequence[tuple[str, float, dict[str, Any]]], quarantine: Sequence[tuple],
                  linkage: Sequence[tuple], quality: Sequence[tuple], distributions: Mapping[str, Sequence[tuple]]
                  ) -> str:
    """The report's HTML from plain rows (kept apart from Spark so it is tested on its own)."""
    created = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
    failed = [q for q in quality if q[-1] == "failed"]
    unevaluated = [q for q in quality if q[-1] == "not_evaluated"]
    sections = [
        f"<h1>micdm run {html.escape(run_id)}</h1><p>{html.escape(created)}; "
        f"{len(quality)} quality checks, {len(failed)} failed, {len(unevaluated)} not evaluated.</p>",
        "<h2>Stages</h2>",
        _table(("stage", "seconds", "counts"), [(s, round(t, 1), ", ".join(f"{k}={v}" for k, v in c.items()))
                                                 for s, t, c in stages]),
        bar_chart("seconds per stage", [(s, round(t, 1)) for s, t, _ in stages]),
        "<h2>Files quarantined, by reason</h2>",
        bar_chart("files", [(reason, count) for reason, count in quarantine]),
        "<h2>Linkage</h2>",
        bar_chart("series per rule or exception", [(f"{kind}: {name}", series) for kind, name, series, _ in linkage]),
        "<h2>What was ingested</h2>",
        *[bar_chart(f"instances by {column}", rows) for column, rows in distributions.items()],
        "<h2>Quality checks</h2>",
        _table(("check", "table", "field", "violated", "checked", "threshold %", "severity", "status"),
               [(c, t, f or "", v, n, th, sev, st) for c, t, f, v, n, th, sev, st in _failures_first(quality)],
               ["fail" if q[-1] == "failed" else "ok" for q in _failures_first(quality)]),
    ]
    return (f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>micdm run '
            f'{html.escape(run_id)}</title><style>{_STYLE}</style></head><body>{"".join(sections)}</body></html>')


def _failures_first(quality: Sequence[tuple]) -> list[tuple]:
    """Failed checks first (fatal ones leading), then the ones not evaluated, then the rest."""
    order = {"failed": 0, "not_evaluated": 1}
    return sorted(quality, key=lambda q: (order.get(q[-1], 2), q[-2] != "fatal", q[0], q[1], q[2] or ""))


def latest_run_rows(results: DataFrame, at: str) -> DataFrame:
    """The rows of the last run that wrote any: this run's, or an earlier one's when this run skipped the
    stage because nothing had changed."""
    latest = results.orderBy(F.col(at).desc()).select("run_id").limit(1)
    return results.join(latest, "run_id", "left_semi")


def value_distributions(frame: DataFrame, columns: Sequence[str], top: int = 12) -> dict[str, list[tuple[str, int]]]:
    """The ``top`` most common values of each column (NULL as "(none)", ties by value), in one scan."""
    value = {c: F.coalesce(F.col(c).cast("string"), F.lit("(none)")) for c in columns}
    pairs = F.explode(F.array(*[F.struct(F.lit(c).alias("column"), value[c].alias("value")) for c in columns]))
    counted = frame.select(pairs.alias("p")).groupBy("p.column", "p.value").count().collect()
    ranked = sorted(counted, key=lambda r: (-r["count"], r["value"]))
    return {c: [(r["value"], r["count"]) for r in ranked if r["column"] == c][:top] for c in columns}


@dataclass(frozen=True)
class RunFigures:
    """What a report shows besides its run's stages, read from the tables."""

    quarantine: list[tuple[str, int]]
    linkage: list[tuple[str, str, int, int]]
    quality: list[tuple[Any, ...]]
    distributions: dict[str, list[tuple[str, int]]]


#: The tables a report's figures come from (file_inventory: which files are still there).
FIGURE_TABLES = ("dicom_quarantine", "link_report", "dq_result", "dicom_instance", "file_inventory")


def read_figures(spark: SparkSession, locator: TableLocator) -> RunFigures:
    """The report's figures, each table's read at the same time as the others' (their queries are small); the
    instances and quarantined files are those of the files the last listing found."""
    def quarantine() -> list[tuple[str, int]]:
        quarantined = present(spark, locator, read_table(spark, locator, "dicom_quarantine"))
        counted = quarantined.groupBy("reason").count().orderBy(F.desc("count"))
        return [(r["reason"], r["count"]) for r in counted.collect()]

    def linkage() -> list[tuple[str, str, int, int]]:
        report = latest_run_rows(read_table(spark, locator, "link_report"), "reported_at")
        return [(r["kind"], r["name"], r["series"], r["studies"]) for r in report.orderBy("kind", "name").collect()]

    def quality() -> list[tuple[Any, ...]]:
        checks = latest_run_rows(read_table(spark, locator, "dq_result"), "checked_at")
        return [(r["check_name"], r["table_name"], r["field_name"], r["rows_violated"], r["rows_checked"],
                 r["threshold"], r["severity"], r["status"]) for r in checks.collect()]

    def distributions() -> dict[str, list[tuple[str, int]]]:
        return value_distributions(present(spark, locator, read_table(spark, locator, "dicom_instance")),
                                   ("modality", "manufacturer", "body_part_examined"))

    return RunFigures(*run_concurrently(quarantine, linkage, quality, distributions))


def cached_figures(spark: SparkSession, locator: TableLocator, cache: Path, state: Mapping[str, Any]) -> RunFigures:
    """The figures, read from the tables only when ``state`` (what they depend on: the versions of
    FIGURE_TABLES and the runs that left the tables as they are) differs from the state ``cache`` was
    written in. A run that changed nothing then reports without a Spark query."""
    try:
        cached = json.loads(cache.read_text(encoding="utf-8"))
        if cached["state"] == state:
            found = cached["figures"]
            return RunFigures([tuple(r) for r in found["quarantine"]], [tuple(r) for r in found["linkage"]],
                              [tuple(r) for r in found["quality"]],
                              {c: [tuple(r) for r in rows] for c, rows in found["distributions"].items()})
    except (OSError, ValueError, KeyError, TypeError):
        pass  # no cache yet, or one an older micdm wrote: read the tables
    figures = read_figures(spark, locator)
    try:
        cache.parent.mkdir(parents=True, exist_ok=True)
        cache.write_text(json.dumps({"state": state, "figures": asdict(figures)}), encoding="utf-8")
    except OSError as error:  # the figures are still right; the next report reads the tables again
        log.warning("run report: figures not kept in %s: %s", cache, error)
    return figures


def write_report(run_id: str, stages: Sequence[tuple[str, float, dict[str, Any]]], figures: RunFigures,
                 folder: str | Path) -> Path:
    """Write ``<folder>/micdm-run-<run_id>.html``."""
    target = Path(folder) / f"micdm-run-{run_id}.html"
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(render_report(run_id, stages, figures.quarantine, figures.linkage, figures.quality,
                                    figures.distributions), encoding="utf-8")
    return target
