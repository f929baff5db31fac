"""micdm's rows in a site table: written once, compared with what the site's table holds."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest

from support.jobs import jobs_started


def _delete_data_files(rows) -> int:
    """Delete the Parquet files ``rows`` (a frame read from a local Delta table) come from; returns how many."""
    from urllib.parse import unquote, urlparse

    from pyspark.sql import functions as F

    files = {row.file for row in rows.select(F.input_file_name().alias("file")).distinct().collect()}
    for file in files:
        Path(unquote(urlparse(file).path)).unlink()
    return len(files)


def test_an_id_the_site_table_holds_twice_is_merged_once(spark, empty) -> None:
    """A reload that copied one of micdm's rows twice leaves its id twice in the table: micdm's next
    write updates both copies (one source row per id) instead of failing its MERGE."""
    from micdm.ownership import write_site_rows
    from micdm.schema import TABLES
    from micdm.tables import append, read_table

    _, locator = empty
    columns = "measurement_id int, person_id int, measurement_concept_id int, measurement_date date, " \
              "measurement_type_concept_id int, value_as_number double"

    def rows(value: float):
        return spark.createDataFrame([(2_000_000_001, 1, 0, dt.date(2026, 1, 2), 32817, value)], columns)

    assert write_site_rows(spark, locator, {"measurement": rows(1.0)}) == 0
    copy = read_table(spark, locator, "measurement").select(*TABLES["measurement"].schema.fieldNames())
    append(locator, "measurement", copy.localCheckpoint())
    assert write_site_rows(spark, locator, {"measurement": rows(2.0)}) == 0
    stored = read_table(spark, locator, "measurement").select("measurement_id", "value_as_number").collect()
    assert sorted(tuple(row) for row in stored) == [(2_000_000_001, 2.0)] * 2


@pytest.mark.parametrize("delta_rs", [True, False], ids=["delta-rs", "spark"])
def test_micdm_reads_none_of_the_site_files_beside_its_rows(spark, empty, monkeypatch, delta_rs: bool) -> None:
    """micdm's rows live in an id block of their own, so writing, checking and removing them opens only the
    files whose statistics can hold those ids. The site's data file is deleted here (standing for the
    billions of rows a site's table holds): every operation on micdm's rows still succeeds, whether
    delta-rs lists the files from the log or Delta reads the table."""
    import sys

    from micdm.ids import MAX_ID
    from micdm.ownership import release_clashing_ids, remove_site_rows, write_site_rows
    from micdm.tables import append, read_id_span, read_table

    _, locator = empty
    columns = "measurement_id int, person_id int, measurement_concept_id int, measurement_date date, " \
              "measurement_type_concept_id int, value_as_number double"
    day = dt.date(2026, 1, 2)
    append(locator, "measurement", spark.createDataFrame([(i, 1, 0, day, 32817, 1.0) for i in (1, 2, 3)], columns))

    def ours(value: float):
        return spark.createDataFrame([(2_000_000_001, 1, 0, day, 32817, value)], columns)

    def micdms():
        return read_id_span(spark, locator, "measurement", (locator.storage.site_id_block("measurement"), MAX_ID))

    assert write_site_rows(spark, locator, {"measurement": ours(1.0)}) == 0
    assert _delete_data_files(read_table(spark, locator, "measurement").where("measurement_id < 10"))
    if not delta_rs:
        monkeypatch.setitem(sys.modules, "deltalake", None)  # as if it were not installed

    assert write_site_rows(spark, locator, {"measurement": ours(2.0)}) == 0
    assert micdms().first().value_as_number == 2.0
    ids = spark.createDataFrame([(2_000_000_001,)], "id long")
    assert release_clashing_ids(spark, locator, {"measurement": ids}) == 0
    assert remove_site_rows(spark, locator, "measurement", ids) == 1
    assert micdms().count() == 0


@pytest.mark.parametrize("delta_rs", [True, False], ids=["delta-rs", "spark"])
def test_the_sites_highest_id_is_read_from_its_tables_statistics(spark, empty, monkeypatch, delta_rs: bool) -> None:
    """Where the site's ids have passed micdm's block, micdm allocates above the site's highest id. delta-rs
    reads it from the Delta log's file statistics, without a Spark job: the site's data files are deleted
    here (standing for a table too large to scan each night) and the floor is still found. Without
    delta-rs, Spark counts it from the rows."""
    import sys

    from micdm.ownership import site_floor
    from micdm.tables import append, read_table

    if not delta_rs:
        monkeypatch.setitem(sys.modules, "deltalake", None)  # as if it were not installed
    _, locator = empty
    block = locator.storage.site_id_block("observation")
    assert site_floor(spark, locator, "observation") == block - 1  # an empty table: the block
    columns = "observation_id int, person_id int, observation_concept_id int, observation_date date, " \
              "observation_type_concept_id int"
    day = dt.date(2026, 1, 2)
    for ids in ((7, block + 40), (block + 12,)):  # two files, the highest in the first
        append(locator, "observation", spark.createDataFrame([(i, 1, 0, day, 32817) for i in ids], columns))
    if delta_rs:
        assert _delete_data_files(read_table(spark, locator, "observation"))
    with jobs_started(spark, f"site-floor-{delta_rs}") as jobs:
        floor = site_floor(spark, locator, "observation")
    assert floor == block + 40
    assert (jobs == []) if delta_rs else (jobs != [])


def test_two_tables_are_recorded_in_one_commit_and_a_clash_releases_only_its_own_id(spark, empty) -> None:
    """measurement and observation rows written in one call: site_row gains one commit holding both tables'
    fingerprints. Then the site takes the observation's id for a row of its own: that id alone is forgotten
    in id_map, and the measurement's is kept."""
    from pyspark.sql import functions as F

    from micdm.ownership import release_clashing_ids, write_site_rows
    from micdm.tables import append, delta_table, read_table

    _, locator = empty
    day = dt.date(2026, 1, 2)
    measurement_id, observation_id = (locator.storage.site_id_block(t) + 1 for t in ("measurement", "observation"))
    measurements = spark.createDataFrame(
        [(measurement_id, 1, 0, day, 32817, 1.5)], "measurement_id int, person_id int, measurement_concept_id int, "
        "measurement_date date, measurement_type_concept_id int, value_as_number double")
    observation_columns = "observation_id int, person_id int, observation_concept_id int, observation_date date, " \
                          "observation_type_concept_id int"
    observations = spark.createDataFrame([(observation_id, 1, 0, day, 32817)], observation_columns)
    commits = len(delta_table(spark, locator, "site_row").history().collect())
    assert write_site_rows(spark, locator, {"measurement": measurements, "observation": observations}) == 0
    assert len(delta_table(spark, locator, "site_row").history().collect()) == commits + 1
    recorded = read_table(spark, locator, "site_row").groupBy("table_name").agg(F.collect_list("id").alias("ids"))
    assert {row.table_name: row.ids for row in recorded.collect()} == \
        {"measurement": [measurement_id], "observation": [observation_id]}
    assert read_table(spark, locator, "measurement").first().value_as_number == 1.5
    assert read_table(spark, locator, "observation").first().observation_id == observation_id

    append(locator, "id_map", spark.createDataFrame(
        [("measurement", "m", measurement_id), ("observation", "o", observation_id)],
        "namespace string, natural_key string, id int").withColumn("assigned_at", F.current_timestamp()))
    site = spark.createDataFrame([(observation_id, 2, 0, day, 32817)], observation_columns)
    delta_table(spark, locator, "observation").delete(f"observation_id = {observation_id}")
    append(locator, "observation", site)  # the site's row at micdm's id
    ids = {table: spark.createDataFrame([(i,)], "id int") for table, i in
           (("measurement", measurement_id), ("observation", observation_id))}
    assert release_clashing_ids(spark, locator, ids) == 1
    assert {(row.namespace, row.id) for row in read_table(spark, locator, "id_map").collect()} == \
        {("measurement", measurement_id)}


def test_removing_a_row_the_site_has_taken_leaves_it_and_forgets_its_id(spark, empty) -> None:
    """micdm drops a feature the night the site's reload put a row of its own at the feature's id (micdm's row,
    edited): the site's row stays and its id leaves id_map, so nothing of micdm's claims the row any more (the
    quality stage would check it as micdm's). micdm's other row at the same call is removed, its id kept for
    a feature that comes back."""
    from pyspark.sql import functions as F

    from micdm.ownership import remove_site_rows, write_site_rows
    from micdm.tables import append, delta_table, read_table

    _, locator = empty
    block = locator.storage.site_id_block("measurement")
    columns = "measurement_id int, person_id int, measurement_concept_id int, measurement_date date, " \
              "measurement_type_concept_id int, value_as_number double"
    day = dt.date(2026, 1, 2)
    taken, dropped = block + 1, block + 2
    write_site_rows(spark, locator, {"measurement": spark.createDataFrame(
        [(taken, 1, 0, day, 32817, 1.5), (dropped, 1, 0, day, 32817, 2.5)], columns)})
    append(locator, "id_map", spark.createDataFrame(
        [("measurement", "a", taken), ("measurement", "b", dropped)],
        "namespace string, natural_key string, id int").withColumn("assigned_at", F.current_timestamp()))
    delta_table(spark, locator, "measurement").update(f"measurement_id = {taken}", {"value_as_number": "9.0"})

    ids = spark.createDataFrame([(taken,), (dropped,)], "id int")
    assert remove_site_rows(spark, locator, "measurement", ids) == 1
    assert [(row.measurement_id, row.value_as_number) for row in read_table(spark, locator, "measurement").collect()] \
        == [(taken, 9.0)]
    assert [row.id for row in read_table(spark, locator, "id_map").collect()] == [dropped]
    assert remove_site_rows(spark, locator, "measurement", ids) == 0  # nothing more to remove or forget
    assert read_table(spark, locator, "measurement").count() == 1
