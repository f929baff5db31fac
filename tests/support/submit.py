"""spark-submit of micdm as a user runs it on a cluster: micdm zipped for --py-files, Delta's jars, the
settings the README gives. Used by tests/e2e/test_spark_submit.py and bench/submit_bench.py."""

from __future__ import annotations

import os
import sys
import zipfile
from collections.abc import Mapping
from pathlib import Path

from micdm.spark import resolve_delta_jars

from support.servers import SparkStandalone, spark_home

__all__ = ["package_zip", "submit_command"]

REPO = Path(__file__).resolve().parents[2]


def package_zip(target: Path) -> Path:
    """micdm as a zip for --py-files (what a wheel holds: the package and its resources)."""
    with zipfile.ZipFile(target, "w") as archive:
        for path in sorted((REPO / "lib" / "micdm").rglob("*")):
            if path.is_file() and "__pycache__" not in path.parts:
                archive.write(path, path.relative_to(REPO / "lib"))
    return target


def submit_command(cluster: SparkStandalone, package: Path, script: Path, *arguments: str,
                   conf: Mapping[str, str]) -> tuple[list[str], dict[str, str]]:
    """The spark-submit command line of ``script`` on ``cluster``, with ``conf`` added, and its environment."""
    command = [str(spark_home() / "bin" / "spark-submit"), "--master", cluster.url,
               "--jars", ",".join(resolve_delta_jars()), "--py-files", str(package),
               "--conf", f"spark.pyspark.python={sys.executable}", "--conf", "spark.executor.memory=1g",
               "--conf", "spark.driver.memory=1g", "--conf", "spark.sql.shuffle.partitions=4",
               "--conf", "spark.databricks.delta.snapshotPartitions=2",
               *[argument for key, value in conf.items() for argument in ("--conf", f"{key}={value}")],
               str(script), *arguments]
    return command, {**os.environ, "SPARK_HOME": str(spark_home()), "PYSPARK_PYTHON": sys.executable}
