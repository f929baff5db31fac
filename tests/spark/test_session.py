"""The local session micdm builds runs with its defaults: they are what the demo's and the suite's times rest on."""

from __future__ import annotations

import re
from typing import Any

import pytest

from micdm.spark import LOCAL_DEFAULTS, class_archive


def test_the_local_session_runs_the_parallel_collector_and_a_larger_codegen_cache(spark: Any) -> None:
    beans = spark._jvm.java.lang.management.ManagementFactory.getGarbageCollectorMXBeans()
    collectors = {bean.getName() for bean in beans}
    assert collectors == {"PS Scavenge", "PS MarkSweep"}, collectors
    maximum = spark.conf.get("spark.sql.codegen.cache.maxEntries")
    assert maximum == LOCAL_DEFAULTS["spark.sql.codegen.cache.maxEntries"] != "100"


def _vm_info(spark: Any) -> str:
    """What `jcmd <pid> VM.info` prints, asked of the session's JVM through its diagnostic-command bean
    (in every JRE, where the jcmd tool comes with a JDK only). The bean server's class is not public, so
    its method is called through the public interface that declares it."""
    jvm, gateway = spark._jvm, spark.sparkContext._gateway
    server = jvm.java.lang.management.ManagementFactory.getPlatformMBeanServer()
    types = gateway.new_array(jvm.java.lang.Class, 4)
    for index, name in enumerate(("javax.management.ObjectName", "java.lang.String", "[Ljava.lang.Object;",
                                  "[Ljava.lang.String;")):
        types[index] = jvm.java.lang.Class.forName(name)
    invoke = jvm.java.lang.Class.forName("javax.management.MBeanServer").getMethod("invoke", types)
    arguments = gateway.new_array(jvm.java.lang.Object, 1)
    arguments[0] = gateway.new_array(jvm.java.lang.String, 0)
    signature = gateway.new_array(jvm.java.lang.String, 1)
    signature[0] = "[Ljava.lang.String;"
    call = gateway.new_array(jvm.java.lang.Object, 4)
    for index, value in enumerate((jvm.javax.management.ObjectName("com.sun.management:type=DiagnosticCommand"),
                                   "vmInfo", arguments, signature)):
        call[index] = value
    return str(invoke.invoke(server, call))


def test_the_local_session_maps_the_class_archive_setup_made(spark: Any) -> None:
    archive = class_archive()
    if archive is None:
        pytest.skip("no class archive for this Java and pyspark: `micdm setup` (run by `make test`) makes it")
    info = _vm_info(spark)
    assert f"-XX:SharedArchiveFile={archive}" in info
    mapped = re.search(r"CDS archive\(s\) mapped at: \[[^]]*\), size (\d+)", info)
    assert mapped is not None, "class data sharing is off"
    # The JDK's own archive alone maps ~12 MB; with micdm's on top the mapping is larger than micdm's file.
    assert int(mapped.group(1)) > archive.stat().st_size, "the JVM ignored micdm's archive"
