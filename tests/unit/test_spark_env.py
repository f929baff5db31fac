"""The Java check gives one line saying what to install, not a stack trace; a local session's defaults give
way to the user's settings."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from micdm.config import SparkSettings
from micdm.errors import EnvironmentProblem
from micdm.spark import (
    ARCHIVES_KEPT,
    LOCAL_DEFAULTS,
    SHALLOW_INLINING,
    SUBMIT_CONF,
    _archive_path,
    check_java,
    class_archive,
    local_conf,
    prune_class_archives,
)


def _fake_java(home: Path, version_line: str) -> Path:
    java = home / "bin" / "java"
    java.parent.mkdir(parents=True)
    java.write_text(f"#!/bin/sh\necho '{version_line}' >&2\n")
    java.chmod(0o755)
    return home


def test_old_java_is_refused_with_advice(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("JAVA_HOME", str(_fake_java(tmp_path, 'openjdk version "1.8.0_292"')))
    with pytest.raises(EnvironmentProblem, match=r"Java 8 found .* needs Java 17\+: install"):
        check_java()


def test_missing_java_is_named(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("JAVA_HOME", str(tmp_path / "nowhere"))
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(EnvironmentProblem, match=r"^Java not found: install a Java 17\+ runtime"):
        check_java()


def test_current_java_is_accepted(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("JAVA_HOME", str(_fake_java(tmp_path, 'openjdk version "21.0.2" 2024-01-16')))
    assert check_java() == 21


def test_a_users_setting_replaces_the_local_default_of_its_key() -> None:
    flags = "-Xss4m"
    conf = local_conf(SparkSettings(conf={"spark.driver.extraJavaOptions": flags, "spark.sql.shuffle.partitions": "3"}))
    assert conf["spark.driver.extraJavaOptions"] == flags
    assert conf["spark.sql.shuffle.partitions"] == "3"
    assert conf["spark.sql.codegen.factoryMode"] == LOCAL_DEFAULTS["spark.sql.codegen.factoryMode"]
    assert local_conf(SparkSettings())["spark.driver.extraJavaOptions"] == f"-XX:+UseParallelGC {SHALLOW_INLINING}"


def test_the_readmes_spark_submit_example_passes_micdms_submit_settings() -> None:
    """A submitted run's driver and executors take a local session's JVM flags, and the README's example
    command carries them as they are in the code."""
    expected = dict.fromkeys(("spark.driver.extraJavaOptions", "spark.executor.extraJavaOptions"),
                             LOCAL_DEFAULTS["spark.driver.extraJavaOptions"])
    assert expected == SUBMIT_CONF
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text(encoding="utf-8")
    example = readme[readme.index("$SPARK_HOME/bin/spark-submit"):readme.index("jobs/run_pipeline.py --config")]
    for key, value in SUBMIT_CONF.items():
        assert f'--conf "{key}={value}"' in example, key


def test_a_local_session_plans_without_adaptive_execution_and_one_shuffle_partition_per_core() -> None:
    three = local_conf(SparkSettings(master="local[3]"))
    assert three["spark.sql.shuffle.partitions"] == "3"
    assert three["spark.sql.sources.parallelPartitionDiscovery.parallelism"] == "6", "a folder listing's: two per core"
    assert local_conf(SparkSettings(master="local"))["spark.sql.shuffle.partitions"] == "1"
    every_core = local_conf(SparkSettings(master="local[*]"))
    assert every_core["spark.sql.shuffle.partitions"] == str(os.cpu_count() or 1)
    assert every_core["spark.sql.adaptive.enabled"] == "false"
    adaptive = {"spark.sql.adaptive.enabled": "true"}
    assert local_conf(SparkSettings(conf=adaptive))["spark.sql.adaptive.enabled"] == "true", "the user's value wins"


def test_the_class_archive_joins_micdms_flags_only(tmp_path: Path) -> None:
    archive = tmp_path / "classes.jsa"
    flags = local_conf(SparkSettings(), archive)["spark.driver.extraJavaOptions"].split()
    assert flags[0] == "-XX:+UseParallelGC" and f'"-XX:SharedArchiveFile={archive}"' in flags
    assert set(SHALLOW_INLINING.split()) <= set(flags), "the archive joins micdm's flags, it replaces none"
    assert local_conf(SparkSettings(conf={"spark.driver.extraJavaOptions": "-Xss4m"}), archive)[
        "spark.driver.extraJavaOptions"] == "-Xss4m", "a user's flags are theirs: no archive added"


def test_an_archive_for_another_runtime_is_not_offered(tmp_path: Path) -> None:
    """The archive's name carries the Java binary and the jar set: a stale one is not found."""
    (tmp_path / "spark-classes-0000000000000000.jsa").write_bytes(b"made for another Java")
    assert class_archive(tmp_path) is None


def test_pyspark_installed_again_in_place_finds_no_archive(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A new virtualenv at the same path holds the same jars with new modification times, and the JVM
    ignores an archive made with the old ones: it is not offered, so setup makes a new one."""
    import pyspark

    jar = tmp_path / "pyspark" / "jars" / "spark-core.jar"
    jar.parent.mkdir(parents=True)
    jar.write_bytes(b"classes")
    monkeypatch.setattr(pyspark, "__file__", str(jar.parent.parent / "__init__.py"))
    cache = tmp_path / "cache"
    cache.mkdir()
    archive = _archive_path(cache)
    archive.write_bytes(b"an archive")
    os.utime(archive, (1_000_000, 1_000_000))
    assert class_archive(cache) == archive
    assert archive.stat().st_mtime > 1_000_000, "a use marks the archive, so pruning keeps it"
    modified = jar.stat().st_mtime_ns + 1_000_000_000
    os.utime(jar, ns=(modified, modified))
    assert class_archive(cache) is None


def test_only_the_most_recently_used_archives_are_kept(tmp_path: Path) -> None:
    archives = [tmp_path / f"spark-classes-{n:016x}.jsa" for n in range(ARCHIVES_KEPT + 2)]
    for age, archive in enumerate(archives):
        archive.write_bytes(b"an archive")
        os.utime(archive, (1_000_000 - age, 1_000_000 - age))
    (tmp_path / "delta-core.jar").write_bytes(b"not an archive")
    assert prune_class_archives(tmp_path) == archives[ARCHIVES_KEPT:]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        [a.name for a in archives[:ARCHIVES_KEPT]] + ["delta-core.jar"])
