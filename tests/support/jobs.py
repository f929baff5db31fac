"""Counting the Spark jobs a block of test code starts, by a job group of its own."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def jobs_started(spark, group: str) -> Iterator[list[int]]:
    """Run the block in job group ``group``; the list it yields holds the group's job ids once the block ends.
    The group is cleared afterwards, so later jobs of the session are not counted in it."""
    context = spark.sparkContext
    context.setJobGroup(group, group)
    jobs: list[int] = []
    try:
        yield jobs
    finally:
        context.setLocalProperty("spark.jobGroup.id", None)
        context.setLocalProperty("spark.job.description", None)
    jobs.extend(context.statusTracker().getJobIdsForGroup(group))
