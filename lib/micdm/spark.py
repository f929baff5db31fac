"""The one place micdm makes a SparkSession.

On Databricks (or under spark-submit, or in a notebook that already has one) the running session is
used as it is. Locally, a session with Delta Lake is built; the Delta jars are resolved once, through
Spark's own resolver or, where that cannot reach the repository, through Maven, and the resolved files
are reused from then on without the network.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from pyspark import SparkConf, SparkContext
from pyspark.sql import SparkSession

from micdm.config import SparkSettings
from micdm.errors import EnvironmentProblem

__all__ = ["DELTA_PACKAGES", "LOCAL_DEFAULTS", "SHALLOW_INLINING", "SUBMIT_CONF", "cache_dir", "check_java",
           "class_archive", "classic_context", "cores", "get_spark", "is_databricks", "is_submitted", "local_conf",
           "make_class_archive", "resolve_delta_jars"]

log = logging.getLogger(__name__)

DELTA_VERSION = "4.0.1"
SCALA_BINARY = "2.13"
#: The Maven coordinates of Delta Lake for this Spark line.
DELTA_PACKAGES = (f"io.delta:delta-spark_{SCALA_BINARY}:{DELTA_VERSION}",)
MIN_JAVA = 17
_JARS_MANIFEST = "delta-jars.txt"


def cache_dir() -> Path:
    """Where resolved jars live: $MICDM_CACHE, else ~/.cache/micdm."""
    return Path(os.environ.get("MICDM_CACHE") or Path.home() / ".cache" / "micdm").expanduser().resolve()


def is_databricks() -> bool:
    return "DATABRICKS_RUNTIME_VERSION" in os.environ


def _java_binary() -> str | None:
    java_home = os.environ.get("JAVA_HOME")
    if java_home and (Path(java_home) / "bin" / "java").exists():
        return str(Path(java_home) / "bin" / "java")
    return shutil.which("java")


def check_java() -> int:
    """Return Java's major version; raise EnvironmentProblem with what to install when it is missing or old."""
    java = _java_binary()
    advice = f"install a Java {MIN_JAVA}+ runtime (e.g. apt-get install openjdk-17-jre-headless) or set JAVA_HOME"
    if java is None:
        raise EnvironmentProblem(f"Java not found: {advice}")
    result = subprocess.run([java, "-version"], capture_output=True, text=True, check=False)
    match = re.search(r'version "(\d+)(?:\.(\d+))?', result.stderr + result.stdout)
    if not match:
        raise EnvironmentProblem(f"could not read the version of {java}: {advice}")
    major = int(match.group(1))
    if major == 1 and match.group(2):
        major = int(match.group(2))
    if major < MIN_JAVA:
        raise EnvironmentProblem(f"Java {major} found at {java}, Spark 4 needs Java {MIN_JAVA}+: {advice}")
    return major


def _cached_jars(cache: Path) -> list[str] | None:
    manifest = cache / _JARS_MANIFEST
    if not manifest.is_file():
        return None
    lines = manifest.read_text(encoding="utf-8").splitlines()
    if not lines or lines[0] != " ".join(DELTA_PACKAGES):
        return None
    jars = lines[1:]
    return jars if jars and all(Path(j).is_file() for j in jars) else None


def _write_manifest(cache: Path, jars: list[Path]) -> list[str]:
    paths = sorted(str(j) for j in jars)
    (cache / _JARS_MANIFEST).write_text("\n".join([" ".join(DELTA_PACKAGES), *paths]) + "\n", encoding="utf-8")
    return paths


def _resolve_with_maven(cache: Path) -> list[str]:
    """Fallback route: let Maven fetch the coordinates and their runtime dependencies into the cache."""
    mvn = shutil.which("mvn")
    if mvn is None:
        raise EnvironmentProblem("Spark could not resolve the Delta jars and Maven (mvn) is not installed")
    target = cache / "maven-jars"
    dependencies = "".join(
        f"<dependency><groupId>{g}</groupId><artifactId>{a}</artifactId><version>{v}</version></dependency>"
        for g, a, v in (coordinate.split(":") for coordinate in DELTA_PACKAGES)
    )
    pom = (
        '<project xmlns="http://maven.apache.org/POM/4.0.0"><modelVersion>4.0.0</modelVersion>'
        "<groupId>micdm</groupId><artifactId>delta-jars</artifactId><version>1</version>"
        f"<dependencies>{dependencies}</dependencies></project>"
    )
    with tempfile.TemporaryDirectory() as work:
        Path(work, "pom.xml").write_text(pom, encoding="utf-8")
        result = subprocess.run(
            [mvn, "-q", "-B", "dependency:copy-dependencies", f"-DoutputDirectory={target}",
             "-DincludeScope=runtime", "-DexcludeGroupIds=org.apache.spark,org.scala-lang"],
            cwd=work, capture_output=True, text=True, check=False,
        )
    if result.returncode != 0:
        raise EnvironmentProblem(f"Maven could not resolve {DELTA_PACKAGES}: {result.stdout[-2000:]}")
    return _write_manifest(cache, list(target.glob("*.jar")))


def resolve_delta_jars(cache: Path | None = None) -> list[str]:
    """Return local paths of the Delta jars, resolving them once (Spark's resolver first, then Maven)."""
    cache = cache or cache_dir()
    cache.mkdir(parents=True, exist_ok=True)
    cached = _cached_jars(cache)
    if cached:
        return cached
    ivy = cache / "ivy"
    probe = (
        SparkSession.builder.master("local[1]")
        .appName("micdm-resolve-jars")
        .config("spark.ui.enabled", "false")
        .config("spark.jars.packages", ",".join(DELTA_PACKAGES))
        .config("spark.jars.ivy", str(ivy))
    )
    try:
        probe.getOrCreate().stop()
    except Exception as error:  # the JVM refuses to start when Ivy cannot resolve: try Maven instead
        log.warning("Spark's resolver failed (%s); resolving the Delta jars with Maven", type(error).__name__)
        return _resolve_with_maven(cache)
    return _write_manifest(cache, list((ivy / "jars").glob("*.jar")))


def is_submitted() -> bool:
    """True in a driver that spark-submit started: the JVM is already there, with its master and jars."""
    return "PYSPARK_GATEWAY_PORT" in os.environ


_DELTA_SESSION: dict[str, bool | float | int | str | None] = {
    "spark.sql.extensions": "io.delta.sql.DeltaSparkSessionExtension",
    "spark.sql.catalog.spark_catalog": "org.apache.spark.sql.delta.catalog.DeltaCatalog",
    "spark.sql.session.timeZone": "UTC",
}


def classic_context(spark: SparkSession) -> SparkContext | None:
    """The session's SparkContext; None over Spark Connect (Databricks serverless, ``remote``), which has
    no SparkContext, so no accumulators, job groups or status tracker."""
    if type(spark).__module__.startswith("pyspark.sql.connect"):
        return None
    return spark.sparkContext


#: Cores assumed over Spark Connect when the session does not say (serverless scales its workers itself).
_CONNECT_CORES = 8


def cores(spark: SparkSession) -> int:
    """The cores a wave of tasks should fill."""
    context = classic_context(spark)
    if context is not None:
        return max(1, context.defaultParallelism)
    try:
        return max(1, int(spark.conf.get("spark.default.parallelism", str(_CONNECT_CORES)) or _CONNECT_CORES))
    except Exception:  # a serverless session may refuse to read the setting at all
        return _CONNECT_CORES


#: PySpark 4 records, for every Column and DataFrame function called, the Python line that called it, so
#: that an error names it: a walk of the Python stack and several JVM round trips per call, where
#: building a column costs one. micdm builds tens of thousands of columns per run, so it is off in the
#: sessions micdm starts, unless the user's own setting says otherwise. An error still names the query
#: and its plan, not micdm's line.
_ORIGINS = "spark.python.sql.dataFrameDebugging.enabled"

#: Parquet timestamps as 64-bit microseconds, not Spark's default INT96, in the sessions micdm starts: a
#: file's footer holds the lowest and highest value of an INT64 column and none of an INT96 one, and micdm
#: reads its local tables as their Parquet files (tables.read_table), where a filter skips only the files
#: whose footers rule it out. The features stage reads the headers extracted since a time; with
#: statistics it opens the files written since then, not the archive's.
_TIMESTAMPS = "spark.sql.parquet.outputTimestampType"

#: The JIT's inlining limits in a local session. Interpreted expressions, the planner and Delta are deep
#: chains of small virtual calls; C2 inlining them to the JVM's default depth spent more CPU compiling
#: than the compiled code gave back in a run (bench/jit_bench.py).
SHALLOW_INLINING = "-XX:MaxInlineLevel=5 -XX:MaxInlineSize=20 -XX:FreqInlineSize=50 -XX:InlineSmallCode=500"

#: A cold JVM's flags for a micdm run: the throughput collector and shallow inlining (see LOCAL_DEFAULTS).
_RUN_JVM_FLAGS = f"-XX:+UseParallelGC {SHALLOW_INLINING}"

#: What a spark-submit of micdm's jobs should pass (README, "spark-submit"): a submitted driver's JVM is
#: running before micdm's code starts, so micdm cannot set them itself. The application's driver and
#: executors start cold for each run, as a local session does, and spend the same CPU compiling.
SUBMIT_CONF: dict[str, str] = {
    "spark.driver.extraJavaOptions": _RUN_JVM_FLAGS,
    "spark.executor.extraJavaOptions": _RUN_JVM_FLAGS,
}

#: Defaults of a local session, each replaced by the same key in ``spark.conf``. A micdm run is hundreds of
#: small queries, so a cold JVM spends most of its CPU compiling them: expressions are interpreted rather
#: than compiled to Java classes (compiling each new query shape with Janino, then with the JIT, costs
#: more than it saves on the rows a local machine holds, the benchmark's largest archive included), and
#: the throughput collector leaves the second core to the JIT where G1's concurrent threads compete for it.
#: The JIT inlines shallowly (SHALLOW_INLINING).
#: Adaptive query execution is off: it runs each shuffle of a query as a job of its own and plans the rest
#: again after each, driver work that buys nothing on one machine's few partitions. Without it nothing
#: coalesces Spark's 200 shuffle partitions, so local_conf sets one per core of the master: each shuffle is one
#: wave of tasks, and most of a run's shuffles carry a few rows, whose every extra task costs the driver and
#: the cores as much as a task with rows does. It sets two per core for listing folders in parallel, which
#: Spark does in 10,000 tasks: a VACUUM of the smallest Delta table would otherwise schedule that many to
#: list its folder. PySpark's DataFrame debugging context is off (see
#: _ORIGINS). upper() and lower() map case with the JVM, not ICU: Spark's ICU case mapping first builds a
#: title-case table of every Unicode code point, about a second of a cold JVM's CPU, in a task of the
#: first query that changes a string's case; micdm changes the case of DICOM codes, whose characters are
#: ASCII.
LOCAL_DEFAULTS: dict[str, str] = {
    "spark.driver.extraJavaOptions": _RUN_JVM_FLAGS,
    "spark.sql.codegen.wholeStage": "false",
    "spark.sql.codegen.factoryMode": "NO_CODEGEN",
    "spark.sql.icu.caseMappings.enabled": "false",
    "spark.sql.adaptive.enabled": "false",
    "spark.databricks.delta.snapshotPartitions": "2",
    "spark.ui.showConsoleProgress": "false",
    _ORIGINS: "false",
    _TIMESTAMPS: "TIMESTAMP_MICROS",
}


def _local_cores(master: str) -> int:
    """The task threads of a ``local``, ``local[N]``, ``local[*]`` or ``local[N,retries]`` master."""
    found = re.fullmatch(r"local(?:\[(\d+|\*)(?:,\d+)?\])?", master.strip())
    if found is None or found.group(1) == "*":
        return os.cpu_count() or 1
    return int(found.group(1) or 1)


def local_conf(settings: SparkSettings, classes: Path | None = None) -> dict[str, str]:
    """The settings of a local session: micdm's defaults, each replaced by the user's value for its key.

    ``classes`` (class_archive) joins micdm's default JVM flags; flags of the user's own are left as given.
    """
    cores = _local_cores(settings.master)
    defaults = {**LOCAL_DEFAULTS, "spark.sql.shuffle.partitions": str(cores),
                "spark.sql.sources.parallelPartitionDiscovery.parallelism": str(2 * cores)}
    if classes is not None:
        defaults[_JVM_FLAGS] += f' "-XX:SharedArchiveFile={classes}" -Xlog:cds*=off'
    return {**defaults, **settings.conf}


_JVM_FLAGS = "spark.driver.extraJavaOptions"
_ARCHIVE_PREFIX = "spark-classes-"


def class_archive(cache: Path | None = None) -> Path | None:
    """The archive of Spark's loaded classes that make_class_archive left for this Java and these Spark
    jars, None when there is none.

    A local session started from it maps the classes a run loads instead of reading, parsing and
    verifying them from the jars again: seconds of every process's start (the JVM's class data sharing).
    The name carries the Java runtime and the jar set it was made with, so a new Java or a new pyspark
    finds no archive rather than one the JVM would refuse.
    """
    archive = _archive_path(cache or cache_dir())
    if not archive.is_file():
        return None
    with contextlib.suppress(OSError):  # marks it in use, so pruning keeps it; a read-only cache is fine
        os.utime(archive)
    return archive


def _archive_path(cache: Path) -> Path:
    """Where the archive for this runtime goes: named by a digest of the Java binary, the jars on a local
    driver's class path and the Delta release."""
    import pyspark

    java = _java_binary()
    jars = Path(pyspark.__file__).parent / "jars"
    # The JVM maps an archive only for the class path it was made with, each jar at the same path, size and
    # modification time: pyspark installed again at the same place (a new virtualenv) needs a new archive.
    parts = [str(jars.resolve()), *sorted(_file_identity(jar) for jar in jars.glob("*.jar")), *DELTA_PACKAGES]
    if java:
        binary = Path(java).resolve()
        parts += [str(binary), _file_identity(binary)]
    digest = hashlib.sha256("\n".join(parts).encode()).hexdigest()[:16]
    return cache / f"{_ARCHIVE_PREFIX}{digest}.jsa"


def _file_identity(path: Path) -> str:
    stat = path.stat()
    return f"{path.name}:{stat.st_size}:{stat.st_mtime_ns}"


def make_class_archive(cache: Path | None = None) -> Path | None:
    """Make class_archive's file, once: a fresh JVM runs a few Delta queries and writes the classes they
    loaded as it exits. Returns the archive, or None (with a warning) when the JVM did not write one; a
    session then starts as before, reading its classes from the jars."""
    target = _archive_path(cache or cache_dir())
    if target.is_file():
        return target
    partial = target.with_suffix(".partial")
    partial.unlink(missing_ok=True)
    script = f"from micdm.spark import _load_classes_and_exit; _load_classes_and_exit({str(partial)!r})"
    started = time.monotonic()
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=False,
                            timeout=600)
    if not partial.is_file():
        log.warning("no class archive was made (%s); local sessions read their classes from the jars",
                    (result.stderr.strip().splitlines() or ["the JVM wrote none"])[-1])
        return None
    partial.replace(target)
    log.info("class archive made in %.0fs: %s", time.monotonic() - started, target)
    prune_class_archives(target.parent)
    return target


#: Archives kept in the cache folder, the most recently used: each is ~180 MB, and a new Java, a new
#: pyspark or a new virtualenv each leave one that nothing will use again.
ARCHIVES_KEPT = 3


def prune_class_archives(cache: Path) -> list[Path]:
    """Delete all but the ARCHIVES_KEPT most recently used archives (class_archive marks its use); returns
    those deleted."""
    archives = sorted(cache.glob(f"{_ARCHIVE_PREFIX}*.jsa"), key=lambda p: p.stat().st_mtime, reverse=True)
    for stale in archives[ARCHIVES_KEPT:]:
        stale.unlink(missing_ok=True)
    return archives[ARCHIVES_KEPT:]


def _load_classes_and_exit(archive: str) -> None:
    """What make_class_archive's JVM runs: the kinds of queries a stage makes (Delta writes, a MERGE,
    joins, aggregates), then System.exit, the exit at which the JVM writes the archive."""
    from delta.tables import DeltaTable

    spark = get_spark(SparkSettings(master="local[2]", conf={
        _JVM_FLAGS: f'{LOCAL_DEFAULTS[_JVM_FLAGS]} "-XX:ArchiveClassesAtExit={archive}"'}), "micdm-class-archive")
    with tempfile.TemporaryDirectory() as folder:
        table = str(Path(folder) / "table")
        spark.range(200).selectExpr("id", "CAST(id % 7 AS STRING) AS kind", "current_timestamp() AS at") \
            .write.format("delta").save(table)
        updates = spark.range(100, 300).selectExpr("id", "'new' AS kind", "current_timestamp() AS at")
        (DeltaTable.forPath(spark, table).alias("t").merge(updates.alias("s"), "t.id = s.id")
         .whenMatchedUpdateAll().whenNotMatchedInsertAll().execute())
        stored = spark.read.format("delta").load(table)
        stored.groupBy("kind").count().join(stored, "kind", "left").localCheckpoint().count()
        spark.sql(f"SELECT kind, max(at) FROM delta.`{table}` GROUP BY kind").collect()
    spark.sparkContext._jvm.System.exit(0)  # type: ignore[union-attr]


def get_spark(settings: SparkSettings | None = None, app_name: str = "micdm") -> SparkSession:
    """The running session if there is one (Databricks, notebooks), else one for spark-submit (its master,
    its jars, Delta's SQL settings) or a local Delta session."""
    active = SparkSession.getActiveSession()
    if active is not None:
        return active
    if is_databricks():
        return SparkSession.builder.getOrCreate()
    if is_submitted():
        # Set before the context starts (Spark refuses the first later); a --conf of the user's own stays.
        given = SparkConf()
        ours = {key: LOCAL_DEFAULTS[key] for key in (_ORIGINS, _TIMESTAMPS) if not given.contains(key)}
        return SparkSession.builder.appName(app_name).config(map={**_DELTA_SESSION, **ours}).getOrCreate()
    settings = settings or SparkSettings()
    check_java()
    jars = resolve_delta_jars()
    # Python workers must run the interpreter that has micdm and its dependencies.
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    builder = (
        SparkSession.builder.master(settings.master)
        .appName(app_name)
        .config("spark.jars", ",".join(jars))
        .config(map=_DELTA_SESSION)
    )
    for key, value in local_conf(settings, class_archive()).items():
        builder = builder.config(key, value)
    spark = builder.getOrCreate()
    spark.sparkContext.setLogLevel("ERROR")
    return spark
