"""The extract stage on Spark: every discovered file accounted for, duplicates, incremental re-runs."""

from __future__ import annotations

import dataclasses
import os
import shutil
from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.data import get_testdata_file
from pyspark.sql import functions as F

import micdm.extract
from micdm.config import load_settings
from micdm.dicom.reader import ReadOptions, extract_file
from micdm.errors import InvalidInputError
from micdm.extract import PYTHON_WORKERS_GROUP, extract, start_readers
from micdm.inventory import settle
from micdm.series import present_instances
from micdm.tables import TableLocator, read_table
from micdm.transport import opener

from support.warehouse import new_tables

REPO = Path(__file__).resolve().parents[2]


def _settings(tmp_path: Path, root: Path, *extra: str):
    return load_settings(REPO / "conf" / "local.yml", [
        f"storage.warehouse={tmp_path / 'warehouse'}", f"sources.roots=[{root}]", "extract.files_per_partition=64",
        *extra])


def _outcomes(spark, locator) -> dict[str, str]:
    instances = read_table(spark, locator, "dicom_instance").select("path", F.lit("instance").alias("outcome"))
    quarantine = read_table(spark, locator, "dicom_quarantine").select("path", F.col("reason").alias("outcome"))
    rows = instances.unionByName(quarantine).collect()
    outcomes = {r.path: r.outcome for r in rows}
    assert len(outcomes) == len(rows), "a file is in both tables"
    return outcomes


def test_corpus_on_spark_matches_the_pure_reader(spark, shared: Path, tmp_path: Path) -> None:
    root = shared / "data" / "dicom"
    settings = _settings(tmp_path, root, "sources.exclude=[MANIFEST.tsv]")
    locator = TableLocator.of(settings)
    new_tables(spark, locator)
    summary = extract(spark, locator, settings)
    assert summary.discovered == 151
    assert summary.instances + summary.quarantined == 151
    outcomes = _outcomes(spark, locator)
    assert len(outcomes) == 151
    expected = {path: extract_file(opener(path, {}), path, os.path.getsize(path), ReadOptions()) for path in outcomes}
    first_path_of_uid: dict[str, str] = {}
    for path in sorted(expected):
        if expected[path]["outcome"] == "instance":
            first_path_of_uid.setdefault(expected[path]["sop_instance_uid"], path)
    for path, outcome in outcomes.items():
        result = expected[path]
        if result["outcome"] == "quarantine":
            assert outcome == result["reason"], path
        elif first_path_of_uid[result["sop_instance_uid"]] == path:
            assert outcome == "instance", path
        else:  # the same SOPInstanceUID already came from an earlier path
            assert outcome == "duplicate_sop_instance", path
    assert sum(o == "duplicate_sop_instance" for o in outcomes.values()) > 0


def test_duplicates_and_incremental_runs(spark, tmp_path: Path) -> None:
    root = tmp_path / "export"
    root.mkdir()
    source = Path(get_testdata_file("CT_small.dcm"))
    shutil.copy(source, root / "a.dcm")
    shutil.copy(source, root / "b_copy.dcm")
    changed = dcmread(source)
    changed.SeriesDescription = "edited elsewhere"
    changed.save_as(root / "c_changed.dcm")
    shutil.copy(get_testdata_file("MR_small.dcm"), root / "mr.dcm")
    (root / "empty.dcm").write_bytes(b"")
    settings = _settings(tmp_path, root)
    locator = TableLocator.of(settings)
    new_tables(spark, locator)

    first = extract(spark, locator, settings)
    assert (first.discovered, first.instances, first.quarantined) == (5, 2, 3)
    quarantine = {r.path: (r.reason, r.message) for r in read_table(spark, locator, "dicom_quarantine").collect()}
    assert quarantine[str(root / "empty.dcm")][0] == "zero_bytes"
    assert quarantine[str(root / "b_copy.dcm")] == (
        "duplicate_sop_instance", f"SOPInstanceUID also in {root / 'a.dcm'} (identical copy)")
    assert quarantine[str(root / "c_changed.dcm")][1].endswith("(different content)")

    again = extract(spark, locator, settings)
    assert (again.discovered, again.to_read, again.missing) == (5, 0, 0)

    (root / "mr.dcm").unlink()
    (root / "empty.dcm").write_bytes(source.read_bytes()[:900])
    third = extract(spark, locator, settings)
    assert (third.to_read, third.missing) == (1, 1)
    inventory = {r.path: r.missing_since for r in read_table(spark, locator, "file_inventory").collect()}
    assert inventory[str(root / "mr.dcm")] is not None and inventory[str(root / "a.dcm")] is None
    assert _outcomes(spark, locator)[str(root / "empty.dcm")] == "truncated"


def test_a_uid_stays_an_instance_while_one_present_file_holds_it(spark, tmp_path: Path) -> None:
    """Only a file present holds its SOPInstanceUID: a file renamed in the export is the same instance at a
    new path, not a duplicate of its old one; a copy kept as a duplicate becomes the instance when the file
    it duplicated goes, or is sent again as another instance. A full refresh agrees at every step."""
    root = tmp_path / "export"
    root.mkdir()
    for name, source in (("a.dcm", "CT_small.dcm"), ("b.dcm", "MR_small.dcm")):
        shutil.copy(get_testdata_file(source), root / name)
    settings = _settings(tmp_path, root)
    locator = TableLocator.of(settings)
    new_tables(spark, locator)
    extract(spark, locator, settings)

    def outcomes_after(*, refreshed: bool = False) -> dict[str, str]:
        extract(spark, locator, _settings(tmp_path, root, f"extract.full_refresh={str(refreshed).lower()}"))
        present = {Path(r.path).name for r in present_instances(spark, locator).collect()}
        outcomes = {Path(path).name: outcome for path, outcome in _outcomes(spark, locator).items()
                    if Path(path).exists()}
        assert present == {name for name, outcome in outcomes.items() if outcome == "instance"}
        return outcomes

    def both_ways() -> dict[str, str]:
        incremental = outcomes_after()
        assert outcomes_after(refreshed=True) == incremental, "a full refresh decides the same"
        return incremental

    (root / "a.dcm").rename(root / "m_moved.dcm")  # sorts after the old path, which the inventory remembers
    assert both_ways() == {"b.dcm": "instance", "m_moved.dcm": "instance"}
    shutil.copy(root / "m_moved.dcm", root / "x_copy.dcm")
    assert both_ways() == {"b.dcm": "instance", "m_moved.dcm": "instance", "x_copy.dcm": "duplicate_sop_instance"}
    (root / "m_moved.dcm").unlink()
    assert both_ways() == {"b.dcm": "instance", "x_copy.dcm": "instance"}
    shutil.copy(root / "x_copy.dcm", root / "y_copy.dcm")
    assert both_ways() == {"b.dcm": "instance", "x_copy.dcm": "instance", "y_copy.dcm": "duplicate_sop_instance"}
    resent = dcmread(root / "x_copy.dcm")
    resent.SOPInstanceUID = resent.file_meta.MediaStorageSOPInstanceUID = "1.2.826.0.1.3680043.8.498.99"
    resent.save_as(root / "x_copy.dcm")
    assert both_ways() == {"b.dcm": "instance", "x_copy.dcm": "instance", "y_copy.dcm": "instance"}


def test_full_refresh_reads_everything_again(spark, tmp_path: Path) -> None:
    root = tmp_path / "export"
    root.mkdir()
    shutil.copy(get_testdata_file("CT_small.dcm"), root / "a.dcm")
    settings = _settings(tmp_path, root)
    locator = TableLocator.of(settings)
    new_tables(spark, locator)
    extract(spark, locator, settings)
    refreshed = extract(spark, locator, _settings(tmp_path, root, "extract.full_refresh=true"))
    assert refreshed.to_read == 1 and read_table(spark, locator, "dicom_instance").count() == 1


def test_an_unchanged_listing_is_settled_without_planning(spark, tmp_path: Path, monkeypatch) -> None:
    root = tmp_path / "export"
    root.mkdir()
    for name in ("a.dcm", "b.dcm"):
        shutil.copy(get_testdata_file("CT_small.dcm" if name == "a.dcm" else "MR_small.dcm"), root / name)
    settings = _settings(tmp_path, root)
    locator = TableLocator.of(settings)
    new_tables(spark, locator)
    real_listing = micdm.extract.list_files

    def listing_then_vanish(sources):  # b.dcm disappears after the listing, before its read
        found = list(real_listing(sources))
        (root / "b.dcm").rename(tmp_path / "b.away")
        return found

    monkeypatch.setattr(micdm.extract, "list_files", listing_then_vanish)
    first = extract(spark, locator, settings)
    monkeypatch.setattr(micdm.extract, "list_files", real_listing)
    (tmp_path / "b.away").rename(root / "b.dcm")  # back, same size and mtime: the listing is the same
    assert (first.instances, first.quarantined) == (1, 1)
    assert _outcomes(spark, locator)[str(root / "b.dcm")] == "unreadable"

    retried = extract(spark, locator, settings)  # a failure worth retrying keeps the listing unsettled
    assert (retried.to_read, retried.instances) == (1, 1)
    assert _outcomes(spark, locator)[str(root / "b.dcm")] == "instance"

    settled = extract(spark, locator, settings)
    assert (settled.discovered, settled.to_read) == (2, 0) and "read" not in settled.phase_seconds
    os.utime(root / "a.dcm", (1_000_000_000, 1_000_000_000))
    touched = extract(spark, locator, settings)
    assert (touched.to_read, touched.instances) == (1, 1)
    assert read_table(spark, locator, "dicom_instance").count() == 2


def test_files_new_again_after_a_crash_replace_their_rows_and_new_files_after_a_completed_run_append(
        spark, tmp_path: Path, monkeypatch) -> None:
    """A run killed after its writes, before the inventory's record, leaves rows of files the next run finds
    new again: it replaces them, a report's content items included. New files after a completed run are
    appended without looking for rows of theirs (no MERGE, no delete)."""
    from micdm import inventory, synth

    export = tmp_path / "synth"
    synth.generate(export, patients=3, pixels="none", max_instances=4)
    root, held = export / "dicom", tmp_path / "held"
    held.mkdir()
    for patient in sorted(root.iterdir())[1:]:
        shutil.move(patient, held / patient.name)
    settings = _settings(tmp_path, root)
    locator = TableLocator.of(settings)
    new_tables(spark, locator)
    extract(spark, locator, settings)
    looked: list[str] = []
    for name in ("merge_or_delete", "delete_keys"):
        real = getattr(micdm.extract, name)
        monkeypatch.setattr(micdm.extract, name,
                            lambda *args, _real=real, **kwargs: looked.append(args[2]) or _real(*args, **kwargs))

    def stored() -> tuple[int, int, int, int]:
        instances = read_table(spark, locator, "dicom_instance")
        items = read_table(spark, locator, "sr_content_item")
        return (instances.count(), instances.select("path").distinct().count(), items.count(),
                items.select("path", "position").distinct().count())

    with_report = sorted(held.iterdir())[-1]  # the synthetic archive's third patient has a structured report
    shutil.move(with_report, root / with_report.name)
    real_record = inventory.record
    monkeypatch.setattr(inventory, "record", lambda *args, **kwargs: (_ for _ in ()).throw(RuntimeError("killed")))
    with pytest.raises(RuntimeError, match="killed"):
        extract(spark, locator, settings)
    monkeypatch.setattr(inventory, "record", real_record)
    crashed = stored()
    assert crashed[2] > 0, "the killed run wrote the report's content items"
    assert not looked, "the killed run's files were new after a completed run"
    again = extract(spark, locator, settings)
    assert again.to_read == again.instances > 0
    assert stored() == crashed, "the files read again replaced their rows"
    assert looked == ["sr_content_item", "dicom_instance", "dicom_quarantine"]

    looked.clear()
    last = sorted(held.iterdir())[-1]
    shutil.move(last, root / last.name)
    arrived = extract(spark, locator, settings)
    assert arrived.to_read == arrived.instances > 0 and not looked
    count, paths, items, positions = stored()
    assert count == paths == crashed[0] + arrived.instances and items == positions == crashed[2]


def test_validation_raise_stops_before_writing_and_warn_quarantines(spark, tmp_path: Path) -> None:
    root = tmp_path / "export"
    root.mkdir()
    ds = dcmread(get_testdata_file("CT_small.dcm"))
    ds.save_as(root / "good.dcm")
    ds.SOPInstanceUID, ds.SeriesInstanceUID = ds.SOPInstanceUID + ".9", "1.2.840.10008.05"
    ds.save_as(root / "bad.dcm")
    strict = _settings(tmp_path, root, "validation=raise")
    locator = TableLocator(strict.storage)
    new_tables(spark, locator)
    with pytest.raises(InvalidInputError, match=r"bad\.dcm"):
        extract(spark, locator, strict)
    assert read_table(spark, locator, "dicom_instance").count() == 0
    assert read_table(spark, locator, "file_inventory").count() == 0, "the next run reads the files again"
    summary = extract(spark, locator, _settings(tmp_path, root))
    assert (summary.instances, summary.quarantined) == (1, 1)
    assert _outcomes(spark, locator) == {str(root / "good.dcm"): "instance", str(root / "bad.dcm"): "invalid_uid"}


def test_a_listing_split_by_folder_finds_what_the_driver_finds(spark, tmp_path: Path) -> None:
    """Folders two levels down are listed by Spark tasks, files above them by the driver; the same files,
    the same globs, settled when nothing changed, and a folder that cannot be listed is a SourceError."""
    from micdm import inventory
    from micdm.errors import SourceError
    from micdm.sources import list_files

    root = tmp_path / "export"
    for patient, study, series in (("P1", "S1", "CT"), ("P1", "S2", "MR"), ("P2", "S3", "CT")):
        folder = root / patient / study / series
        folder.mkdir(parents=True)
        shutil.copy(get_testdata_file("CT_small.dcm" if series == "CT" else "MR_small.dcm"), folder / "1.dcm")
        (folder / "notes.txt").write_text("not DICOM")
    shutil.copy(get_testdata_file("MR_small.dcm"), root / "top.dcm")  # above the split: the driver's
    (root / "P2" / "loose.dcm").write_bytes(b"")
    settings = _settings(tmp_path, root, "sources.exclude=['*.txt']", "sources.listing=split",
                         "sources.listing_depth=2")
    driver = sorted((f.path, f.file_size) for f in list_files(settings.sources))
    split = inventory.split_listing(spark, settings.sources)
    assert sorted((r.path, r.file_size) for r in split.frame().collect()) == driver and split.files == len(driver) == 5

    locator = TableLocator.of(settings)
    new_tables(spark, locator)
    first = extract(spark, locator, settings)
    assert (first.discovered, first.instances, first.quarantined) == (5, 2, 3)  # two copies, an empty file
    again = extract(spark, locator, settings)
    assert (again.discovered, again.to_read) == (5, 0) and "plan" in again.phase_seconds
    assert "read" not in again.phase_seconds

    shutil.rmtree(root / "P2" / "S3")
    (root / "P2" / "S3").write_bytes(b"")  # a folder become a file: still listed, by the driver now
    gone = extract(spark, locator, settings)
    assert (gone.discovered, gone.missing) == (5, 1)
    with pytest.raises(SourceError, match="cannot list"):
        inventory.split_listing(spark, dataclasses.replace(settings.sources, roots=(str(tmp_path / "absent"),)))


def test_a_streamed_discovery_reads_what_arrived_and_loses_nothing(spark, tmp_path: Path, monkeypatch) -> None:
    """sources.listing=autoloader, run here on Spark's own file stream (`binaryFile`): Databricks' Auto
    Loader (`cloudFiles`) is the same stream API with file events, and cannot run outside Databricks."""
    from micdm import inventory

    root = tmp_path / "export"
    (root / "a").mkdir(parents=True)
    shutil.copy(get_testdata_file("CT_small.dcm"), root / "a" / "ct.dcm")
    (root / "a" / "notes.txt").write_text("not DICOM")
    settings = _settings(tmp_path, root, "sources.listing=autoloader", "sources.autoloader_format=binaryFile",
                         "sources.exclude=['*.txt']", "sources.autoloader_options={recursiveFileLookup: 'true'}")
    locator = TableLocator.of(settings)
    new_tables(spark, locator)
    first = extract(spark, locator, settings)
    assert (first.discovered, first.instances, first.quarantined) == (1, 1, 0)
    assert read_table(spark, locator, "file_discovery").count() == 0, "recorded files leave the staging table"
    assert [r.path for r in read_table(spark, locator, "file_inventory").collect()] == [str(root / "a" / "ct.dcm")]

    nothing = extract(spark, locator, settings)  # nothing arrived: nothing listed, nothing missing
    assert (nothing.discovered, nothing.to_read, nothing.missing) == (0, 0, 0)

    (root / "b").mkdir()
    shutil.copy(get_testdata_file("MR_small.dcm"), root / "b" / "mr.dcm")
    real_record = inventory.record

    def crash(*args, **kwargs):
        raise RuntimeError("killed before the inventory was written")

    monkeypatch.setattr(inventory, "record", crash)
    with pytest.raises(RuntimeError, match="killed"):
        extract(spark, locator, settings)
    monkeypatch.setattr(inventory, "record", real_record)
    assert read_table(spark, locator, "file_discovery").count() == 1, "the stream moved on; the file waits here"
    after_crash = extract(spark, locator, settings)
    assert (after_crash.discovered, after_crash.instances) == (1, 1)
    assert read_table(spark, locator, "dicom_instance").count() == 2
    assert read_table(spark, locator, "file_discovery").count() == 0
    assert sorted(r.path for r in read_table(spark, locator, "file_inventory").collect()) == [
        str(root / "a" / "ct.dcm"), str(root / "b" / "mr.dcm")], "a new file is recorded once"


def test_python_workers_are_started_ahead_one_per_core_unless_the_listing_is_settled(spark, tmp_path: Path) -> None:
    settings = _settings(tmp_path, tmp_path / "export")
    locator = TableLocator.of(settings)
    tracker = spark.sparkContext.statusTracker()
    before = set(tracker.getJobIdsForGroup(PYTHON_WORKERS_GROUP))
    thread = start_readers(spark, locator)
    assert thread is not None, "a first load starts its workers ahead"
    thread.join(timeout=300)
    assert not thread.is_alive()
    (job,) = set(tracker.getJobIdsForGroup(PYTHON_WORKERS_GROUP)) - before
    info = tracker.getJobInfo(job)
    assert info is not None and info.status == "SUCCEEDED"
    (stage,) = (tracker.getStageInfo(s) for s in info.stageIds)
    assert stage is not None and stage.numCompletedTasks == stage.numTasks == spark.sparkContext.defaultParallelism

    new_tables(spark, locator)
    settle(spark, locator, "a listing read in full")
    assert start_readers(spark, locator) is None, "a run that may find nothing new starts no job"
    settled = start_readers(spark, locator, full_refresh=True)
    assert settled is not None, "a full refresh reads every file again"
    settled.join(timeout=300)

    (tmp_path / "export").mkdir()
    shutil.copy(get_testdata_file("CT_small.dcm"), tmp_path / "export" / "ct.dcm")
    started = set(tracker.getJobIdsForGroup(PYTHON_WORKERS_GROUP))
    assert extract(spark, locator, settings).instances == 1
    assert len(set(tracker.getJobIdsForGroup(PYTHON_WORKERS_GROUP)) - started) == 1, \
        "a listing that differs from the settled one starts them while the plan is made"
    started = set(tracker.getJobIdsForGroup(PYTHON_WORKERS_GROUP))
    assert extract(spark, locator, settings).to_read == 0
    assert set(tracker.getJobIdsForGroup(PYTHON_WORKERS_GROUP)) == started, "the same listing again: none"
