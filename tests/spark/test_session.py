"""The local session micdm builds runs with its defaults: they are what the demo's and the suite's times rest on."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from micdm.spark import SHALLOW_INLINING, class_archive


def test_the_local_session_runs_the_parallel_collector(spark: Any) -> None:
    beans = spark._jvm.java.lang.management.ManagementFactory.getGarbageCollectorMXBeans()
    collectors = {bean.getName() for bean in beans}
    assert collectors == {"PS Scavenge", "PS MarkSweep"}, collectors


def test_the_local_session_inlines_shallowly(spark: Any) -> None:
    """The running JVM reports the inlining limits of SHALLOW_INLINING, not its own defaults."""
    jvm = spark._jvm
    bean = jvm.java.lang.management.ManagementFactory.getPlatformMXBean(
        jvm.java.lang.Class.forName("com.sun.management.HotSpotDiagnosticMXBean"))
    wanted = dict(flag.removeprefix("-XX:").split("=") for flag in SHALLOW_INLINING.split())
    assert {name: bean.getVMOption(name).getValue() for name in wanted} == wanted


#: Lower-case letters of Unicode 14 (Glagolitic, Latin): ICU upper-cases them, a JVM whose Unicode tables
#: are older leaves them as they are.
_NEWER_LETTERS = ("\u2c5f", "\ua7c1", "\ua7d1")


def test_the_local_session_maps_case_as_the_jvm_does_not_as_icu(spark: Any) -> None:
    """upper() gives the JVM's mapping where the JVM's and ICU's differ: the session does not build ICU's
    title-case table of every code point that Spark's default way costs a cold JVM. ASCII and Latin-1, the
    characters of DICOM codes, map alike either way."""
    from pyspark.sql import functions as F

    jvm = spark._jvm

    def by_the_jvm(word: str) -> str:  # Spark's own mapping without ICU
        return str(jvm.org.apache.spark.unsafe.types.UTF8String.fromString(word).toUpperCase().toString())

    telling = [c for c in _NEWER_LETTERS if by_the_jvm(c) != jvm.com.ibm.icu.lang.UCharacter.toUpperCase(c)]
    if not telling:
        pytest.skip("this JVM's Unicode tables upper-case the probe letters as ICU does: nothing tells them apart")
    words = [*telling, "ct abdomen", "tête"]
    row = spark.createDataFrame([(w,) for w in words], "word string").agg(
        F.collect_list(F.upper("word")).alias("upper")).first()
    assert row is not None
    assert row.upper == [by_the_jvm(w) for w in words]
    assert row.upper[-2:] == ["CT ABDOMEN", "TÊTE"]


def _compiled_by(spark: Any, workload: Callable[[], object]) -> int:
    """Classes Janino compiled while ``workload`` ran (Spark's own count of code generation)."""
    compilations = spark._jvm.org.apache.spark.metrics.source.CodegenMetrics.METRIC_COMPILATION_TIME()
    before = compilations.getCount()
    workload()
    return int(compilations.getCount() - before)


def test_the_local_session_interprets_queries_instead_of_compiling_them(spark: Any, tmp_path: Path) -> None:
    """A filter, a join, an aggregate, a sort and a Delta MERGE compile next to nothing under micdm's
    defaults, and dozens of classes under Spark's (set for this test only, then put back)."""
    from delta.tables import DeltaTable
    from pyspark.sql import functions as F

    left = spark.range(500).withColumn("word", F.concat(F.lit("w"), (F.col("id") % 17).cast("string")))
    right = spark.range(0, 500, 3).withColumnRenamed("id", "key").withColumn("half", F.col("key") / 2)
    path = str(tmp_path / "merged")
    left.write.format("delta").save(path)
    results: list[object] = []

    def workload() -> None:
        joined = left.join(right, left.id == right.key).where(F.col("half") > 7.25)
        results.append(len(joined.groupBy("word").agg(F.sum("half").alias("total")).orderBy("total").collect()))
        (DeltaTable.forPath(spark, path).alias("t").merge(right.alias("s"), "t.id = s.key")
         .whenMatchedUpdate(set={"word": F.upper("t.word")}).execute())
        results.append(spark.read.format("delta").load(path).where(F.col("word").startswith("W")).count())

    interpreted = _compiled_by(spark, workload)
    spark_defaults = {"spark.sql.codegen.wholeStage": "true", "spark.sql.codegen.factoryMode": "FALLBACK"}
    ours = {key: spark.conf.get(key) for key in spark_defaults}
    try:
        for key, value in spark_defaults.items():
            spark.conf.set(key, value)
        compiled = _compiled_by(spark, workload)
    finally:
        for key, value in ours.items():
            spark.conf.set(key, value)
    assert results == [17, 167, 17, 167]
    assert interpreted * 5 < compiled, (interpreted, compiled)


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


def test_building_a_column_does_not_record_its_python_call_site(spark: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """PySpark's DataFrame debugging context walks the Python stack and calls the JVM several times for
    every column function; micdm's session turns it off, so a column costs about one round trip per part."""
    import threading

    import py4j.clientserver
    from pyspark.sql import functions as F

    sent: list[str] = []
    original = py4j.clientserver.JavaClient.send_command
    caller = threading.get_ident()

    def counted(self: Any, command: str, *args: Any, **kwargs: Any) -> Any:
        # py4j's finalizer thread frees Java objects other tests left, a command each, whenever it wakes:
        # only the commands of the thread building the column are its round trips.
        if threading.get_ident() == caller:
            sent.append(command)
        return original(self, command, *args, **kwargs)

    F.when(F.col("a").isNull(), F.lit(1)).otherwise(F.col("b")).alias("c")  # functions resolved once
    monkeypatch.setattr(py4j.clientserver.JavaClient, "send_command", counted)
    F.when(F.col("a").isNull(), F.lit(1)).otherwise(F.col("b")).alias("c")
    monkeypatch.undo()
    assert not any("PySparkCurrentOrigin" in command for command in sent), "a call site was recorded"
    assert 0 < len(sent) <= 20, len(sent)
    assert spark.conf.get("spark.python.sql.dataFrameDebugging.enabled") == "false"
