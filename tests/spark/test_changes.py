"""Change feeds between two watermarks name the keys a stage redoes; sync_rows writes only what differs."""

from __future__ import annotations

import datetime as dt
import shutil
from pathlib import Path

from pyspark.sql import functions as F

from micdm import watermark
from micdm.changes import Changes, changed_keys
from micdm.tables import delta_table, read_table, sync_rows, table_properties

_LINK = "image_series_uid string, image_study_uid string, person_id int, procedure_occurrence_id int, " \
        "visit_occurrence_id int, link_rule string, exception_reason string, updated_at timestamp"


def _links(spark, rows: list[tuple[str, int | None]]):
    now = dt.datetime(2026, 1, 1)
    return spark.createDataFrame([(uid, "study", person, None, None, "accession" if person else None,
                                   None if person else "person_not_found", now) for uid, person in rows], _LINK)


def _version(spark, locator, name: str) -> int:
    return delta_table(spark, locator, name).history(1).first()["version"]


def test_only_rows_that_differ_are_written_and_the_feed_names_them(spark, empty) -> None:
    settings, locator = empty
    assert table_properties(spark, locator, "series_link")["delta.enableChangeDataFeed"] == "true"
    assert "delta.enableChangeDataFeed" not in table_properties(spark, locator, "person"), "a CDM table is left as is"
    assert sync_rows(spark, locator, "series_link", _links(spark, [("1.1", 1), ("1.2", 2), ("1.3", 3)]),
                     ["image_series_uid"], ignored=("updated_at",)) == 3
    since = watermark.current(spark, locator, settings, ["series_link", "concept"])
    version = _version(spark, locator, "series_link")
    same = _links(spark, [("1.1", 1), ("1.2", 2), ("1.3", 3)]).withColumn("updated_at", F.current_timestamp())
    assert sync_rows(spark, locator, "series_link", same, ["image_series_uid"], ignored=("updated_at",)) == 0
    assert _version(spark, locator, "series_link") == version, "nothing differed: no commit"

    # 1.2 changes person, 1.3 goes, 1.4 arrives; within a scope of 1.1 and 1.3 only, 1.2 is left alone
    assert sync_rows(spark, locator, "series_link", _links(spark, [("1.1", 1), ("1.2", 7), ("1.4", 4)]),
                     ["image_series_uid"], ignored=("updated_at",)) == 3
    now = watermark.current(spark, locator, settings, ["series_link", "concept"])
    keys = changed_keys(spark, locator, Changes(since, now),
                        {"series_link": lambda feed: feed.select("image_series_uid")})
    assert keys == ["1.2", "1.3", "1.4"], "listed, in one job over the feed"
    scope = spark.createDataFrame([("1.1",), ("1.3",)], "key string")
    assert sync_rows(spark, locator, "series_link", _links(spark, [("1.1", 9)]), ["image_series_uid"],
                     ("image_series_uid", scope), ignored=("updated_at",)) == 1
    stored = {row.image_series_uid: row.person_id for row in read_table(spark, locator, "series_link").collect()}
    assert stored == {"1.1": 9, "1.2": 7, "1.4": 4}


def test_what_the_feed_cannot_key_redoes_everything(spark, empty) -> None:
    settings, locator = empty
    sync_rows(spark, locator, "series_link", _links(spark, [("2.1", 1)]), ["image_series_uid"])
    since = watermark.current(spark, locator, settings, ["series_link", "person"])
    keyed = {"series_link": lambda feed: feed.select("image_series_uid")}
    assert changed_keys(spark, locator, Changes(since, since), keyed) == [], "nothing changed"
    assert changed_keys(spark, locator, None, keyed) is None, "a first run or a full refresh"
    sync_rows(spark, locator, "series_link", _links(spark, [("2.1", 2)]), ["image_series_uid"])
    person = spark.createDataFrame([(1, 8507, 1950, 0, 0, "MRN1")], "person_id int, gender_concept_id int, "
                                   "year_of_birth int, race_concept_id int, ethnicity_concept_id int, "
                                   "person_source_value string")
    person.write.format("delta").mode("append").save(locator.path("person"))
    now = watermark.current(spark, locator, settings, ["series_link", "person"])
    assert changed_keys(spark, locator, Changes(since, now), keyed) is None, "person is not keyed"
    other_settings = watermark.Watermark(since.inputs, "another digest")
    assert changed_keys(spark, locator, Changes(other_settings, since), keyed) is None, "settings changed"
    # the feed's files are gone (as VACUUM leaves them): the stage rebuilds rather than fail
    before = watermark.current(spark, locator, settings, ["series_link"])
    sync_rows(spark, locator, "series_link", _links(spark, [("2.1", 3)]), ["image_series_uid"])
    after = watermark.current(spark, locator, settings, ["series_link"])
    assert changed_keys(spark, locator, Changes(before, after), keyed) == ["2.1"]
    shutil.rmtree(Path(locator.path("series_link")) / "_change_data")
    assert changed_keys(spark, locator, Changes(before, after), keyed) is None


def test_a_site_table_is_compared_between_its_versions_and_a_vacuumed_one_redoes_everything(spark, empty) -> None:
    """The site's tables keep no change feed: the rows one version holds and the other does not are the
    change, however the site wrote them (here a reload that rewrites every row and changes one)."""
    settings, locator = empty
    schema = "person_id int, gender_concept_id int, year_of_birth int, race_concept_id int, " \
             "ethnicity_concept_id int, person_source_value string"
    path = locator.path("person")

    def load(rows: list[tuple[int, int, str]]) -> watermark.Watermark:
        spark.createDataFrame([(i, 8507, year, 0, 0, mrn) for i, year, mrn in rows], schema) \
            .write.format("delta").mode("overwrite").save(path)
        return watermark.current(spark, locator, settings, ["person"])

    keyed = {"person": lambda rows: rows.select(F.col("person_id").cast("string"))}
    since = load([(1, 1950, "MRN1"), (2, 1960, "MRN2"), (3, 1970, "MRN3")])
    now = load([(1, 1950, "MRN1"), (2, 1961, "MRN2"), (4, 1980, "MRN4")])  # 2 corrected, 3 gone, 4 new
    assert changed_keys(spark, locator, Changes(since, now), keyed) == ["2", "3", "4"]
    assert "delta.enableChangeDataFeed" not in table_properties(spark, locator, "person"), "the site's, untouched"
    spark.sql(f"ALTER TABLE delta.`{path}` SET TBLPROPERTIES ('delta.logRetentionDuration' = 'interval 0 hours', "
              "'delta.deletedFileRetentionDuration' = 'interval 0 hours')")  # only for the vacuum below
    spark.conf.set("spark.databricks.delta.retentionDurationCheck.enabled", "false")
    try:
        spark.sql(f"VACUUM delta.`{path}` RETAIN 0 HOURS")
    finally:
        spark.conf.unset("spark.databricks.delta.retentionDurationCheck.enabled")
    assert changed_keys(spark, locator, Changes(since, now), keyed) is None, "the old version's files are gone"


def test_a_table_from_an_older_micdm_gets_its_feed_when_first_needed(spark, empty) -> None:
    settings, locator = empty
    spark.sql(f"ALTER TABLE {locator.ref('series_link')} SET TBLPROPERTIES ('delta.enableChangeDataFeed' = 'false')")
    keyed = {"series_link": lambda feed: feed.select("image_series_uid")}
    since = watermark.current(spark, locator, settings, ["series_link"])
    sync_rows(spark, locator, "series_link", _links(spark, [("3.1", 1)]), ["image_series_uid"])
    now = watermark.current(spark, locator, settings, ["series_link"])
    assert changed_keys(spark, locator, Changes(since, now), keyed) is None, "no feed: the stage rebuilds"
    assert table_properties(spark, locator, "series_link")["delta.enableChangeDataFeed"] == "true"
    # the next run reads from the version its watermark holds, before the feed was turned on
    sync_rows(spark, locator, "series_link", _links(spark, [("3.1", 1), ("3.2", 2)]), ["image_series_uid"])
    later = watermark.current(spark, locator, settings, ["series_link"])
    assert changed_keys(spark, locator, Changes(now, later), keyed) == ["3.2"]


def test_a_table_without_a_key_is_synced_by_all_its_columns_duplicates_included(spark, empty) -> None:
    _, locator = empty
    schema = "path string, sop_instance_uid string, series_instance_uid string, reason string, message string"
    twice = spark.createDataFrame([("r.csv", None, "1.1", "bad_value", "feature X:1")] * 2, schema)
    other = spark.createDataFrame([("r.csv", None, "1.2", "bad_value", "feature X:2")], schema)

    def sync(rows) -> int:
        return sync_rows(spark, locator, "feature_quarantine", rows.withColumn("quarantined_at", F.current_timestamp()),
                         None, ignored=("quarantined_at",))

    assert sync(twice.unionByName(other)) == 3
    assert sync(twice.unionByName(other)) == 0, "the same rows again: nothing written"
    assert sync(other) == 1, "the repeated row goes, both copies"
    assert [row.series_instance_uid for row in read_table(spark, locator, "feature_quarantine").collect()] == ["1.2"]


def test_a_site_tables_change_is_read_from_the_files_its_commits_name(spark, empty) -> None:
    """A site's ETL appends, deletes and updates: only the data files those commits removed or added are
    read, and the rows found are those a comparison of the whole versions finds. Where deletion vectors
    hide rows inside a file, the whole versions are compared."""
    settings, locator = empty
    path = locator.path("person")
    schema = "person_id int, gender_concept_id int, year_of_birth int, race_concept_id int, " \
             "ethnicity_concept_id int, person_source_value string"

    def append_persons(*persons: tuple[int, int]) -> None:
        spark.createDataFrame([(i, 8507, year, 0, 0, f"MRN{i}") for i, year in persons], schema).coalesce(1) \
            .write.format("delta").mode("append").save(path)

    def changed_since(since: watermark.Watermark) -> tuple[list[tuple[int, int]], set[str]]:
        append_persons((5, 1990))
        spark.sql(f"DELETE FROM delta.`{path}` WHERE person_id = 3")
        spark.sql(f"UPDATE delta.`{path}` SET year_of_birth = 1999 WHERE person_id = 4")
        rows = Changes(since, watermark.current(spark, locator, settings, ["person"])).rows(spark, locator, "person")
        assert rows is not None
        return sorted((row.person_id, row.year_of_birth) for row in rows.collect()), set(rows.inputFiles())

    for persons in [(1, 1950), (2, 1960)], [(3, 1970)], [(4, 1980)]:
        append_persons(*persons)
    untouched = spark.read.format("delta").load(path).where("person_id = 1").select(F.input_file_name()).first()[0]
    expected = [(3, 1970), (4, 1980), (4, 1999), (5, 1990)]
    found, read = changed_since(watermark.current(spark, locator, settings, ["person"]))
    assert found == expected
    assert untouched not in read and read, "only the files of the commits in between are read"

    spark.sql(f"DELETE FROM delta.`{path}` WHERE person_id >= 3")
    append_persons((3, 1970), (4, 1980))
    spark.sql(f"ALTER TABLE delta.`{path}` SET TBLPROPERTIES ('delta.enableDeletionVectors' = 'true')")
    found, read = changed_since(watermark.current(spark, locator, settings, ["person"]))
    assert found == expected
    assert untouched in read, "deletion vectors: the two versions are compared whole"
