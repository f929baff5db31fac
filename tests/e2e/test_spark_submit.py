"""spark-submit on a real Spark standalone cluster (master + worker on 127.0.0.1), micdm shipped as a zip."""

from __future__ import annotations

import csv
import subprocess
from pathlib import Path

import pytest

from micdm.spark import SUBMIT_CONF
from micdm.synth import generate
from micdm.tables import TableLocator, load_csv, read_table

from support.servers import SparkStandalone
from support.submit import package_zip, submit_command
from support.warehouse import new_tables

REPO = Path(__file__).resolve().parents[2]

_PROBE = '''
from pyspark.sql import SparkSession
spark = SparkSession.builder.getOrCreate()
print("EXECUTOR_MICDM", spark.sparkContext.parallelize([0], 1).map(lambda _: __import__("micdm").__file__).first())
print("DRIVER_JVM", " ".join(spark.sparkContext._jvm.java.lang.management.ManagementFactory.getRuntimeMXBean()
                                 .getInputArguments()))
'''


def _submit(cluster: SparkStandalone, package: Path, script: Path, *arguments: str) -> str:
    command, environment = submit_command(cluster, package, script, *arguments, conf=SUBMIT_CONF)
    done = subprocess.run(command, capture_output=True, text=True, timeout=900, env=environment, check=False)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done.stdout


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    with SparkStandalone(tmp_path_factory.mktemp("cluster")) as running:
        yield running


def test_micdm_runs_from_the_shipped_package_on_the_executors(cluster, tmp_path: Path) -> None:
    probe = tmp_path / "probe.py"
    probe.write_text(_PROBE, encoding="utf-8")
    output = _submit(cluster, package_zip(tmp_path / "micdm.zip"), probe)
    location = next(line.split(" ", 1)[1] for line in output.splitlines() if line.startswith("EXECUTOR_MICDM"))
    assert "micdm.zip" in location, location
    # the README's settings reach both JVMs: the driver's own arguments, the worker's launch of the executor
    driver = next(line for line in output.splitlines() if line.startswith("DRIVER_JVM"))
    assert set(SUBMIT_CONF["spark.driver.extraJavaOptions"].split()) <= set(driver.split()), driver
    executor_flags = SUBMIT_CONF["spark.executor.extraJavaOptions"].split()
    launched = [path.read_text(errors="replace") for path in (cluster.data / "worker" / "work").rglob("stderr")]
    assert any(all(flag in text for flag in executor_flags) for text in launched), "executor flags"


def test_whole_pipeline_on_a_standalone_cluster(spark, cluster, tmp_path: Path) -> None:
    export = tmp_path / "export"
    generate(export, patients=6, seed=4, pixels="none")
    from micdm.config import load_settings

    overrides = [f"storage.warehouse={tmp_path / 'warehouse'}", f"sources.roots=[{export / 'dicom'}]"]
    settings = load_settings(REPO / "conf" / "local.yml", overrides)
    locator = TableLocator.of(settings)
    new_tables(spark, locator)
    for name in ("person", "visit_occurrence", "procedure_occurrence"):
        load_csv(spark, locator, name, str(export / "cdm" / f"{name}.csv"))

    output = _submit(cluster, package_zip(tmp_path / "micdm.zip"), REPO / "jobs" / "run_pipeline.py",
                     "--config", str(REPO / "conf" / "local.yml"), *overrides)
    assert "image_occurrence" in output

    files = list((export / "dicom").rglob("*.dcm"))
    with (export / "truth.csv").open(newline="") as handle:
        truth = list(csv.DictReader(handle))
    linked = {row["series_instance_uid"] for row in truth if row["expected_rule"] != "person_not_found"}
    assert read_table(spark, locator, "dicom_instance").count() == len(files)
    occurrences = {r.image_series_uid for r in read_table(spark, locator, "image_occurrence").collect()}
    assert occurrences == linked
    featureless = read_table(spark, locator, "image_occurrence").join(
        read_table(spark, locator, "image_feature"), "image_occurrence_id", "left_anti")
    assert featureless.count() == 0, "every occurrence has its header features"
