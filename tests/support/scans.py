"""Rows a block of test code read from a table's files, from Spark's SQL metrics."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def rows_read(spark, folder: str) -> Iterator[list[int]]:
    """Run the block; the list it yields then holds, per file scan of ``folder`` (a table's folder) in the
    block's queries, the rows it read: those of the files and row groups that no statistics, dictionary or
    bloom filter ruled out."""
    store = spark._jsparkSession.sharedState().statusStore()
    executions = store.executionsList()
    before = max((executions.apply(i).executionId() for i in range(executions.size())), default=-1)
    where = str(Path(folder).resolve())
    scans: list[int] = []
    # A scan's description names its files up to this many characters: enough for the table's folder.
    length, previous = "spark.sql.maxMetadataStringLength", spark.conf.get("spark.sql.maxMetadataStringLength")
    spark.conf.set(length, "10000")
    try:
        yield scans
    finally:
        spark.conf.set(length, previous)
    executions = store.executionsList()
    for index in range(executions.size()):
        execution = executions.apply(index).executionId()
        if execution <= before:
            continue
        values = store.executionMetrics(execution)
        nodes = store.planGraph(execution).allNodes()
        for node in (nodes.apply(i) for i in range(nodes.size())):
            if not node.name().startswith("Scan") or where not in node.desc():
                continue
            metrics = node.metrics()
            for metric in (metrics.apply(i) for i in range(metrics.size())):
                value = values.get(metric.accumulatorId())
                if metric.name() == "number of output rows" and value.isDefined():
                    scans.append(int(value.get().replace(",", "")))
