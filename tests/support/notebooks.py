"""Runs a Databricks notebook (a ``.py`` source file with ``# COMMAND ----------`` cells) on local Spark,
with ``dbutils.widgets`` and ``display`` standing in for the workspace's."""

from __future__ import annotations

import types
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["NotebookRun", "run_notebook"]


@dataclass
class NotebookRun:
    """What a notebook displayed: DataFrames as pandas frames, figures as PNG files."""

    tables: list[Any] = field(default_factory=list)
    figures: list[Path] = field(default_factory=list)


class _Widgets:
    """dbutils.widgets as a notebook sees it: declared with defaults, read back with get()."""

    def __init__(self, values: dict[str, str]) -> None:
        self._given = values
        self._values: dict[str, str] = {}

    def text(self, name: str, default: str, label: str | None = None) -> None:
        self._values[name] = self._given.get(name, default)

    def dropdown(self, name: str, default: str, choices: list[str], label: str | None = None) -> None:
        value = self._given.get(name, default)
        if value not in choices:
            raise ValueError(f"widget {name}: {value!r} is not one of {choices}")
        self._values[name] = value

    def get(self, name: str) -> str:
        return self._values[name]


def run_notebook(path: Path, spark: Any, out: Path, widgets: dict[str, str] | None = None) -> NotebookRun:
    """Run a Databricks source-format notebook top to bottom on ``spark``, as the workspace would.

    Markdown cells are skipped; ``display`` keeps DataFrames (as pandas) and saves figures under ``out``.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.figure
    from pyspark.sql import DataFrame

    run = NotebookRun()
    out.mkdir(parents=True, exist_ok=True)

    def display(value: Any) -> None:
        if isinstance(value, DataFrame):
            run.tables.append(value.toPandas())
        elif isinstance(value, matplotlib.figure.Figure):
            target = out / f"{path.stem}-{len(run.figures) + 1}.png"
            value.savefig(target)
            run.figures.append(target)
        else:
            run.tables.append(value)

    namespace: dict[str, Any] = {"spark": spark, "display": display,
                                 "dbutils": types.SimpleNamespace(widgets=_Widgets(widgets or {}))}
    text = path.read_text(encoding="utf-8")
    if not text.startswith("# Databricks notebook source"):
        raise ValueError(f"{path} is not a Databricks source-format notebook")
    for number, cell in enumerate(text.split("\n# COMMAND ----------\n")):
        lines = [line for line in cell.splitlines() if line.strip() and line != "# Databricks notebook source"]
        if lines and all(line.startswith("# MAGIC") for line in lines):
            continue
        exec(compile(cell, f"{path.name}[cell {number}]", "exec"), namespace)
    return run
