"""Which tables each stage names while it runs, against the tables micdm says it reads and writes."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from micdm.pipeline import STAGE_TABLES, STAGES
from micdm.tables import TableLocator

__all__ = ["tables_each_stage_names", "unwatched"]


def tables_each_stage_names(monkeypatch: Any) -> dict[str, set[str]]:
    """From now on, every table a stage names while it runs (to read, write or version it), by stage."""
    named: dict[str, set[str]] = {}
    running: list[str] = []

    def watched(stage: str, run: Callable[..., Any]) -> Callable[..., Any]:
        def watched_run(*args: Any, **kwargs: Any) -> Any:
            running.append(stage)
            try:
                return run(*args, **kwargs)
            finally:
                running.pop()
        return watched_run

    for stage, run in list(STAGES.items()):
        monkeypatch.setitem(STAGES, stage, watched(stage, run))

    def spied(real: Callable[[TableLocator, str], Any]) -> Callable[[TableLocator, str], Any]:
        def spy(self: TableLocator, name: str) -> Any:
            if running:
                named.setdefault(running[-1], set()).add(name)
            return real(self, name)
        return spy

    for method in ("path", "ref"):
        monkeypatch.setattr(TableLocator, method, spied(getattr(TableLocator, method)))
    return named


def unwatched(named: dict[str, set[str]]) -> dict[str, set[str]]:
    """The tables a stage named that are neither inputs whose versions it records (a change to one alone
    would leave the stage skipped) nor tables it writes."""
    found = {stage: names - set(STAGE_TABLES[stage][0]) - set(STAGE_TABLES[stage][1]) for stage, names in named.items()}
    return {stage: names for stage, names in found.items() if names}
