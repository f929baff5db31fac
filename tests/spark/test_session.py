"""The local session micdm builds runs with its defaults: they are what the demo's and the suite's times rest on."""

from __future__ import annotations

from typing import Any

from micdm.spark import LOCAL_DEFAULTS


def test_the_local_session_runs_the_parallel_collector_and_a_larger_codegen_cache(spark: Any) -> None:
    beans = spark._jvm.java.lang.management.ManagementFactory.getGarbageCollectorMXBeans()
    collectors = {bean.getName() for bean in beans}
    assert collectors == {"PS Scavenge", "PS MarkSweep"}, collectors
    maximum = spark.conf.get("spark.sql.codegen.cache.maxEntries")
    assert maximum == LOCAL_DEFAULTS["spark.sql.codegen.cache.maxEntries"] != "100"
