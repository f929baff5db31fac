"""A run that stops at a chosen Delta commit, in the test's own session: what a crash leaves behind.

Every commit micdm makes goes through a MERGE, a DataFrameWriter save or an OPTIMIZE; the n-th of them
raises instead of committing. ``dies`` says what follows: a killed process commits nothing more (not even
the watermarks of the stages that had finished, which the pipeline records on its way out), while a stage
that fails with an error lets the pipeline record them. A kill -9 of a real process is in
tests/e2e/test_kill_recovery.py; this one can stop any run of a long sequence at any commit, cheaply.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from delta.tables import DeltaMergeBuilder, DeltaOptimizeBuilder
from pyspark.sql.readwriter import DataFrameWriter

__all__ = ["SimulatedCrash", "Stop", "stopping_at"]

#: The calls that commit to a Delta table (a method of each class).
_COMMITTING = ((DeltaMergeBuilder, "execute"), (DeltaOptimizeBuilder, "executeCompaction"),
               (DataFrameWriter, "save"), (DataFrameWriter, "saveAsTable"))


class SimulatedCrash(RuntimeError):
    """Raised in place of a commit."""


@dataclass
class Stop:
    """Where a run stops: before its ``commit``-th commit (from 1), and whether the process dies there."""

    commit: int
    dies: bool
    commits: int = 0
    """Commits attempted so far, the refused ones included."""

    @property
    def stopped(self) -> bool:
        return self.commits >= self.commit


@contextlib.contextmanager
def stopping_at(stop: Stop) -> Iterator[Stop]:
    """Within the block, the commits counted by ``stop`` and the chosen one refused (all later ones too
    when the process dies)."""
    lock = threading.Lock()

    def refusing(real: Callable[..., Any]) -> Callable[..., Any]:
        def commit(*args: Any, **kwargs: Any) -> Any:
            with lock:
                stop.commits += 1
                refused = stop.commits == stop.commit or (stop.dies and stop.commits > stop.commit)
            if refused:
                raise SimulatedCrash(f"stopped at commit {stop.commit}" if stop.commits == stop.commit
                                     else f"commit {stop.commits} refused: the process died at commit {stop.commit}")
            return real(*args, **kwargs)
        return commit

    with pytest.MonkeyPatch.context() as patch:
        for owner, name in _COMMITTING:
            patch.setattr(owner, name, refusing(getattr(owner, name)))
        yield stop
