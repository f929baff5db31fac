"""Stage watermarks: a stage runs again exactly when something it reads changed, or when asked to."""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path

from micdm import watermark
from micdm.pipeline import run_stage
from micdm.tables import append, delta_table

from support.jobs import jobs_started


def _ran(spark, settings, stage: str, **options) -> bool:
    return "skipped" not in run_stage(spark, settings, stage, init=False, **options).counts


def test_a_stage_runs_again_only_when_an_input_changed(spark, empty) -> None:
    settings, locator = empty
    assert _ran(spark, settings, "series") and _ran(spark, settings, "link"), "no earlier run"
    assert not _ran(spark, settings, "link")
    assert _ran(spark, settings, "link", full_refresh=True)
    assert not _ran(spark, settings, "link")
    append(locator, "person", spark.createDataFrame(
        [(1, 8507, 1950, 0, 0, "MRN1")], "person_id int, gender_concept_id int, year_of_birth int, "
        "race_concept_id int, ethnicity_concept_id int, person_source_value string"))
    assert _ran(spark, settings, "link"), "the site's person table changed"
    assert not _ran(spark, settings, "series"), "series does not read person"
    changed = dataclasses.replace(settings, occurrence=dataclasses.replace(settings.occurrence,
                                                                          link_window_days=3))
    assert _ran(spark, changed, "link"), "a setting changed"
    assert not _ran(spark, changed, "link")
    stored = watermark.stored(spark, locator)
    assert set(stored) == {"link", "series"}
    assert stored["link"][0].inputs["person"] == "v1" and "id_map" not in stored["link"][0].inputs


def test_the_algorithm_results_file_is_an_input(spark, empty, tmp_path: Path) -> None:
    settings, locator = empty
    results = tmp_path / "results.csv"
    results.write_text("a,b\n1,2\n")
    before = watermark.current(spark, locator, settings, ["image_occurrence"], files=[str(results)])
    results.write_text("a,b\n1,2\n3,4\n")
    after = watermark.current(spark, locator, settings, ["image_occurrence"], files=[str(results)])
    assert after.changes_from(before) == [f"file:{results}"]
    assert after.changes_from(after) == []
    assert after.changes_from(None) == ["no earlier run"]


def test_a_local_table_version_read_from_its_log_is_the_one_delta_reports(spark, empty) -> None:
    settings, locator = empty
    append(locator, "person", spark.createDataFrame(
        [(2, 8532, 1960, 0, 0, "MRN2")], "person_id int, gender_concept_id int, year_of_birth int, "
        "race_concept_id int, ethnicity_concept_id int, person_source_value string"))
    from_log = watermark.current(spark, locator, settings, ["person", "image_occurrence"]).inputs
    history = {name: delta_table(spark, locator, name).history(1).first()["version"]
               for name in ("person", "image_occurrence")}
    assert from_log == {name: f"v{version}" for name, version in history.items()}
    assert history["person"] == 1


def test_a_local_results_folder_is_versioned_from_the_file_system(spark, empty, tmp_path: Path) -> None:
    """A file added in a subfolder is a change, and telling so starts no Spark job."""
    settings, locator = empty
    folder = tmp_path / "results"
    (folder / "day1").mkdir(parents=True)
    (folder / "day1" / "a.csv").write_text("a,b\n1,2\n")
    with jobs_started(spark, "watermark-of-local-files") as jobs:
        before = watermark.current(spark, locator, settings, ["image_occurrence"], files=[str(folder)])
        (folder / "day2").mkdir()
        (folder / "day2" / "b.csv").write_text("a,b\n3,4\n")
        after = watermark.current(spark, locator, settings, ["image_occurrence"], files=[str(folder)])
    assert after.changes_from(before) == [f"file:{folder}"]
    assert jobs == []
    missing = watermark.current(spark, locator, settings, [], files=[str(tmp_path / "nowhere")])
    assert missing.inputs == {f"file:{tmp_path / 'nowhere'}": "absent"}


def test_a_moved_warehouse_keeps_its_watermarks_but_publishes_again(spark, empty, tmp_path: Path) -> None:
    """stage_state travels with the warehouse and describes its own tables; only publish, whose views name
    the warehouse's folder, runs again in the new place."""
    settings, _ = empty
    assert _ran(spark, settings, "series") and _ran(spark, settings, "link") and _ran(spark, settings, "publish")
    moved = tmp_path / "moved"
    shutil.copytree(settings.storage.warehouse, moved)
    elsewhere = dataclasses.replace(settings, storage=dataclasses.replace(settings.storage, warehouse=str(moved)))
    assert not _ran(spark, elsewhere, "series") and not _ran(spark, elsewhere, "link")
    assert _ran(spark, elsewhere, "publish"), "publish's views would still name the old folder"
    assert not _ran(spark, elsewhere, "publish")
