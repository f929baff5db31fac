"""Independent Spark actions run side by side.

Much of a small run's time is the driver planning a query and committing to a Delta log while the cores
wait; actions on different tables do not depend on each other, so running them from a few threads
overlaps that work. Each thread inherits the caller's job group, so a stage's jobs are still its own.
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from pyspark import inheritable_thread_target
from pyspark.sql import SparkSession

__all__ = ["run_concurrently"]

#: Threads at most: enough to overlap one query's planning with another's execution on a small cluster.
MAX_THREADS = 4


def run_concurrently(*calls: Callable[[], Any]) -> list[Any]:
    """Each call's result, in order; the first call that raised re-raises here, after all have finished."""
    if len(calls) <= 1:
        return [call() for call in calls]
    with ThreadPoolExecutor(max_workers=min(MAX_THREADS, len(calls)), thread_name_prefix="micdm") as pool:
        futures = [pool.submit(_inheriting(call)) for call in calls]
        return [future.result() for future in futures]


def _inheriting(call: Callable[[], Any]) -> Callable[[], Any]:
    """``call`` wrapped to carry the caller's job group and session tags (Spark Connect included)."""
    return inheritable_thread_target(SparkSession.active())(call)
