"""Table creation: exact schemas, idempotence, and Delta enforcing NOT NULL and VARCHAR lengths."""

from __future__ import annotations

import datetime as dt
from urllib.parse import urlparse

import pyarrow.parquet as pq
import pytest
from pyspark.sql import DataFrame, Row
from pyspark.sql.types import StructType

from micdm import schema
from micdm.schema import TABLES
from micdm.tables import TableLocator, clustering_clause, init_tables, overwrite, read_id_span, read_table


def _occurrence_row(**changes: object) -> Row:
    import datetime as dt

    values = dict(image_occurrence_id=1, person_id=2, procedure_occurrence_id=3, visit_occurrence_id=None,
                  anatomic_site_concept_id=0, wadors_uri=None, local_path="/data/s1",
                  image_occurrence_date=dt.date(2024, 1, 2), image_study_uid="1.2.3", image_series_uid="1.2.3.4",
                  modality="CT")
    values.update(changes)
    return Row(**values)


def test_init_creates_every_table_with_its_schema(spark, settings) -> None:
    locator = TableLocator.of(settings)
    created = init_tables(spark, locator)
    assert set(created) == set(TABLES) and all(created.values())
    for name, table in TABLES.items():
        actual = spark.table(locator.ref(name)).schema  # as Delta keeps it (read_table's columns are nullable)
        assert [(f.name, f.dataType, f.nullable) for f in actual] == [
            (f.name, f.dataType, f.nullable) for f in table.schema.fields], name
    again = init_tables(spark, locator)
    assert not any(again.values()), "a second init must create nothing"


def test_wide_tables_keep_statistics_on_their_keys_only(spark, settings) -> None:
    locator = TableLocator.of(settings)
    init_tables(spark, locator, ["dicom_instance", "image_occurrence"])
    properties = {r.key: r.value for r in spark.sql(f"SHOW TBLPROPERTIES {locator.ref('dicom_instance')}").collect()}
    assert properties["delta.dataSkippingStatsColumns"] == ",".join(TABLES["dicom_instance"].stats_columns)
    assert TABLES["dicom_instance"].stats_columns[0] == "path"
    plain = {r.key for r in spark.sql(f"SHOW TBLPROPERTIES {locator.ref('image_occurrence')}").collect()}
    assert "delta.dataSkippingStatsColumns" not in plain
    with pytest.raises(ValueError, match="statistics on unknown columns"):
        schema.table("broken", "bronze", "path string required", stats_columns=("paht",))


def test_tables_are_clustered_by_their_keys_and_an_overwrite_keeps_it(spark, settings) -> None:
    locator = TableLocator.of(settings)
    init_tables(spark, locator, ["dicom_instance", "image_occurrence", "measurement"])

    def clustering(name: str) -> list[str]:
        return spark.sql(f"DESCRIBE DETAIL {locator.ref(name)}").first()["clusteringColumns"]

    assert clustering("dicom_instance") == ["series_instance_uid"]
    assert clustering("measurement") == ["person_id", "measurement_id"]
    assert clustering("image_occurrence") == ["person_id", "image_occurrence_id"]
    occurrence = TABLES["image_occurrence"].schema
    overwrite(locator, "image_occurrence", spark.createDataFrame([_occurrence_row()], occurrence))
    overwrite(locator, "image_occurrence", spark.createDataFrame([_occurrence_row(image_occurrence_id=2)], occurrence))
    assert clustering("image_occurrence") == ["person_id", "image_occurrence_id"]
    assert [r.image_occurrence_id for r in read_table(spark, locator, "image_occurrence").collect()] == [2]
    with pytest.raises(ValueError, match="cannot cluster by"):
        schema.table("broken", "bronze", "uid varchar(64)", cluster_by=("uid",))


def test_clustering_setting_chooses_the_clause() -> None:
    occurrence = TABLES["image_occurrence"]
    assert clustering_clause("keys", occurrence) == " CLUSTER BY (`person_id`, `image_occurrence_id`)"
    assert clustering_clause("auto", occurrence) == " CLUSTER BY AUTO"
    assert clustering_clause("none", occurrence) == ""
    assert clustering_clause("keys", TABLES["stage_state"]) == ""


def test_values_and_names_written_as_sql_read_back_as_themselves(spark) -> None:
    """Expressions micdm writes as SQL text hold paths, UIDs and codes: quotes, backslashes, braces and
    control characters come back from Spark's own parser as they went in, with their types."""
    from micdm.tables import sql_literal, sql_name

    values = ["it's", "C:\\dicom\\a.dcm", "\\'", "\u0000", "line\nbreak", "ünï", "{rows}", 'say "x"', "",
              0, -7, 2**40, 1.5, float("inf"), True]
    names = [f"v`{index} {{x}}" for index in range(len(values))]
    row = spark.sql("SELECT " + ", ".join(f"{sql_literal(value)} AS {sql_name(name)}"
                                          for value, name in zip(values, names, strict=True))).first()
    assert list(row) == values and [type(value) for value in row] == [type(value) for value in values]
    assert row.__fields__ == names


def test_a_list_written_as_sql_holds_what_isin_holds(spark) -> None:
    from pyspark.sql import functions as F

    from micdm.tables import sql_in

    frame = spark.createDataFrame([("a",), ("b'c",), (None,)], "k string")
    for values in ([], ["b'c"], ["a", "zz"]):
        assert frame.select(F.expr(sql_in("k", values))).collect() == frame.select(F.col("k").isin(values)).collect()


def test_rows_conformed_to_a_table_have_its_columns_and_types(spark) -> None:
    """Every table's columns, in order and of its types, from a frame holding none of them; a carried
    column follows them."""
    from micdm.tables import conform

    unrelated = spark.range(1).withColumnRenamed("id", "_flag")
    for table in TABLES.values():
        conformed = conform(unrelated, table, carry=["_flag"])
        assert [(f.name, f.dataType) for f in conformed.schema.fields][:-1] == \
            [(f.name, f.dataType) for f in table.schema.fields], table.name
        assert conformed.columns[-1] == "_flag"


def test_delta_rejects_null_in_required_column_and_overlong_uid(spark, settings) -> None:
    locator = TableLocator.of(settings)
    init_tables(spark, locator, ["image_occurrence"])
    schema = TABLES["image_occurrence"].schema
    target = locator.path("image_occurrence")

    def append(row: Row) -> None:
        spark.createDataFrame([row], schema=schema.fromJson({**schema.jsonValue(), "fields": [
            {**f, "nullable": True} for f in schema.jsonValue()["fields"]]})).write.format("delta").mode(
            "append").save(target)

    append(_occurrence_row())
    with pytest.raises(Exception, match="NOT NULL constraint violated for column: person_id"):
        append(_occurrence_row(person_id=None))
    with pytest.raises(Exception, match="exceeds char/varchar type length limitation"):
        append(_occurrence_row(image_series_uid="1." + "2" * 249))
    append(_occurrence_row(image_series_uid="1." + "2" * 248))  # exactly 250 is allowed
    assert read_table(spark, locator, "image_occurrence").count() == 2


def test_a_column_a_newer_micdm_appends_is_added_in_place(spark, settings) -> None:
    """An upgrade adds dicom_instance.acquisition_text and the columns after it (header_json_dropped,
    referenced_series, ...) to an existing table: its rows stay."""
    locator = TableLocator.of(settings)
    table = TABLES["dicom_instance"]
    names = table.schema.fieldNames()
    added = names[names.index("acquisition_text"):]
    assert added[:2] == ["acquisition_text", "header_json_dropped"] and "header_digest" in added
    older = schema.TableDef(table.name, table.layer, StructType(table.schema.fields[:len(names) - len(added)]))
    spark.sql(f"CREATE TABLE {locator.ref(table.name)} ({older.ddl_columns()}) USING DELTA")
    spark.sql(f"INSERT INTO {locator.ref(table.name)} (path, extracted_at, run_id) "
              "VALUES ('/data/a.dcm', current_timestamp(), 'r1')")
    assert init_tables(spark, locator, ["dicom_instance"]) == {"dicom_instance": False}
    stored = read_table(spark, locator, "dicom_instance")
    assert stored.columns == table.schema.fieldNames()
    assert [(r.path, *(r[c] for c in added)) for r in stored.collect()] == [("/data/a.dcm", *[None] * len(added))]


def test_a_column_filled_from_the_others_is_filled_in_the_rows_an_older_micdm_stored(spark, settings) -> None:
    """id_map.source, added by an upgrade, is filled in the stored rows as the writer fills it in new ones: a
    feature key's series or report, or the key itself."""
    from micdm.ids import assign_ids

    locator = TableLocator.of(settings)
    table = TABLES["id_map"]
    older = schema.TableDef(table.name, table.layer, StructType(table.schema.fields[:-1]))
    spark.sql(f"CREATE TABLE {locator.ref(table.name)} ({older.ddl_columns()}) USING DELTA")
    spark.sql(f"INSERT INTO {locator.ref(table.name)} VALUES ('image_feature', 'header|1.2.3|00180050', 1, "
              "current_timestamp()), ('image_occurrence', '1.2.4', 1, current_timestamp())")
    assert init_tables(spark, locator, ["id_map"]) == {"id_map": False}
    assign_ids(spark, locator, "image_feature", spark.createDataFrame([("sr|1.2.5|1.1",)], "natural_key string"))
    assert sorted((row.natural_key, row.id, row.source) for row in read_table(spark, locator, "id_map").collect()) \
        == [("1.2.4", 1, "1.2.4"), ("header|1.2.3|00180050", 1, "1.2.3"), ("sr|1.2.5|1.1", 2, "1.2.5")]


def test_the_header_format_decides_the_header_column_and_a_mismatch_says_which(spark, settings) -> None:
    import dataclasses

    from micdm.errors import SchemaMismatchError

    variant = TableLocator(settings.storage, header_format="variant")
    init_tables(spark, variant, ["dicom_instance"])
    stored = dict(read_table(spark, variant, "dicom_instance").dtypes)
    assert stored["header"] == "variant" and "header_json" not in stored
    assert list(stored) == variant.definition("dicom_instance").schema.fieldNames()
    assert TableLocator.of(dataclasses.replace(settings, extract=dataclasses.replace(
        settings.extract, header_format="variant"))) == variant
    with pytest.raises(SchemaMismatchError, match=r"header_json: missing.*set extract\.header_format"):
        init_tables(spark, TableLocator.of(settings), ["dicom_instance"])


@pytest.mark.parametrize("delta_rs", [True, False], ids=["delta-rs", "spark"])
def test_a_local_table_read_without_spark_is_what_spark_reads(spark, empty, monkeypatch, tmp_path,
                                                                delta_rs: bool) -> None:
    """Schemas, properties and small tables read from the Delta log by delta-rs equal Spark's reads; without
    delta-rs installed, Spark reads them."""
    import dataclasses
    import datetime as dt
    import sys

    from micdm.tables import append, row_count, small_table_rows, stored_schema, table_properties

    if not delta_rs:
        monkeypatch.setitem(sys.modules, "deltalake", None)  # as if it were not installed
    _, locator = empty
    append(locator, "stage_state", spark.createDataFrame(
        [("series", "r1", "{}", "abc", "0.1.0", dt.datetime(2026, 1, 2, 3, 4, 5, tzinfo=dt.UTC))],
        TABLES["stage_state"].schema))
    spark_rows = [row.asDict() for row in read_table(spark, locator, "stage_state").collect()]
    assert small_table_rows(spark, locator, "stage_state") == spark_rows and len(spark_rows) == 1
    assert [row_count(spark, locator, name) for name in ("stage_state", "person")] == [1, 0]
    for name in ("dicom_instance", "person", "stage_state"):
        spark_schema = spark.table(locator.ref(name)).schema
        assert [(f.name, f.dataType.simpleString(), f.nullable) for f in stored_schema(spark, locator, name)] == [
            (f.name, f.dataType.simpleString(), f.nullable) for f in spark_schema], name
    shown = {r.key: r.value for r in spark.sql(f"SHOW TBLPROPERTIES {locator.ref('dicom_instance')}").collect()}
    properties = table_properties(spark, locator, "dicom_instance")
    assert properties["delta.enableChangeDataFeed"] == "true"
    assert properties.items() <= shown.items()
    nowhere = dataclasses.replace(locator, storage=dataclasses.replace(locator.storage, warehouse=str(tmp_path)))
    assert stored_schema(spark, nowhere, "person") is None


def test_a_small_table_with_deletion_vectors_is_read_by_spark(spark, empty) -> None:
    """delta-rs reads no deletion vectors through pyarrow: such a table is read and counted with Spark, rows
    intact (its log's statistics still count the deleted row)."""
    import datetime as dt

    from micdm.tables import append, row_count, small_table_rows

    _, locator = empty
    spark.sql(f"ALTER TABLE {locator.ref('stage_state')} SET TBLPROPERTIES ('delta.enableDeletionVectors' = true)")
    append(locator, "stage_state", spark.createDataFrame(
        [(stage, "r1", "{}", "abc", "0.1.0", dt.datetime(2026, 1, 2, tzinfo=dt.UTC)) for stage in ("series", "link")],
        TABLES["stage_state"].schema))
    spark.sql(f"DELETE FROM {locator.ref('stage_state')} WHERE stage = 'link'")
    assert [row["stage"] for row in small_table_rows(spark, locator, "stage_state")] == ["series"]
    assert row_count(spark, locator, "stage_state") == 1


def _finished(spark, *stages: str, run: str = "r1",
              at: dt.datetime = dt.datetime(2026, 1, 2, tzinfo=dt.UTC)) -> DataFrame:
    """stage_state rows of ``stages`` finished by ``run`` at ``at``."""
    return spark.createDataFrame([(stage, run, "{}", "abc", "0.1.0", at) for stage in stages],
                                 TABLES["stage_state"].schema)


def test_micdm_tables_are_read_from_the_files_their_version_holds(spark, empty) -> None:
    """Local tables are read as the Parquet files of their current version (no Delta job listing them):
    after an append, a MERGE that rewrote a file and a delete, the rows and files are Delta's own. A table
    whose files no longer hold its rows as they are (deletion vectors) is read by Delta. In a site's table,
    the rows in micdm's block of ids are read from the files whose statistics can hold them."""

    from pyspark.sql import functions as F

    from micdm.tables import append, delete_keys, merge_into

    _, locator = empty

    def rows(frame) -> list[tuple]:
        return sorted(tuple(row) for row in frame.collect())

    assert read_table(spark, locator, "stage_state").count() == 0 and all(
        f.nullable for f in read_table(spark, locator, "stage_state").schema), "an empty table reads as files do"
    append(locator, "stage_state", _finished(spark, "series", "link"))
    append(locator, "stage_state", _finished(spark, "occurrence"))
    merge_into(spark, locator, "stage_state", _finished(spark, "link", run="r2"), ["stage"])
    delete_keys(spark, locator, "stage_state", _finished(spark, "occurrence").select("stage"), ["stage"])
    read, by_delta = read_table(spark, locator, "stage_state"), spark.table(locator.ref("stage_state"))
    assert rows(read) == rows(by_delta) and {r.stage: r.run_id for r in read.collect()} == {"series": "r1",
                                                                                           "link": "r2"}
    assert sorted(f.rsplit("/", 1)[1] for f in read.inputFiles()) == sorted(
        f.rsplit("/", 1)[1] for f in by_delta.inputFiles()), "the files of the current version, no other"
    assert _file_index(read) == "InMemoryFileIndex"
    spark.sql(f"ALTER TABLE {locator.ref('stage_state')} SET TBLPROPERTIES ('delta.enableDeletionVectors' = true)")
    spark.sql(f"DELETE FROM {locator.ref('stage_state')} WHERE stage = 'link'")
    assert [r.stage for r in read_table(spark, locator, "stage_state").collect()] == ["series"]
    persons = "person_id int, gender_concept_id int, year_of_birth int, race_concept_id int, ethnicity_concept_id int"
    append(locator, "person", spark.createDataFrame([(1, 8507, 1950, 0, 0)], persons))
    site = read_table(spark, locator, "person")
    assert site.where(F.col("person_id") == 1).count() == 1
    assert _file_index(site) == "InMemoryFileIndex"
    append(locator, "person", spark.createDataFrame([(50, 8532, 1960, 0, 0)], persons))
    micdms = read_id_span(spark, locator, "person", (40, 60))
    assert [row.person_id for row in micdms.collect()] == [50]
    assert len(micdms.inputFiles()) == 1 and len(read_table(spark, locator, "person").inputFiles()) == 2


def _file_index(frame) -> str:
    """The kind of file index the frame's scan lists its files with (Delta's or plain Parquet's)."""
    import re

    return re.search(r"Location: (\w+)", frame._jdf.queryExecution().executedPlan().toString()).group(1)


def _rows_scanned(frame) -> int:
    """Rows the file scans of the frame's last action read: those of the row groups no footer ruled out."""
    plan = frame._jdf.queryExecution().executedPlan()
    leaves = plan.collectLeaves()
    return sum(leaves.apply(i).metrics().apply("numOutputRows").value() for i in range(leaves.size()))


def test_a_read_filtered_on_a_time_opens_only_the_files_that_can_hold_it(spark, empty) -> None:
    """micdm writes timestamps as 64-bit microseconds, whose Parquet footers hold their lowest and highest
    value (Spark's default INT96 has none), so its local tables, read as their files, skip the files a time
    filter rules out: the features stage asks dicom_instance for the headers extracted since a time."""
    from pyspark.sql import functions as F

    from micdm.tables import append

    _, locator = empty
    append(locator, "stage_state", _finished(spark, "series", "link", "occurrence"))
    append(locator, "stage_state", _finished(spark, "features", at=dt.datetime(2026, 3, 4, tzinfo=dt.UTC)))
    table = read_table(spark, locator, "stage_state")
    for file in table.inputFiles():
        footer = _column_chunk(file, "finished_at")
        assert footer.physical_type == "INT64" and footer.statistics.has_min_max, file
    since = table.where(F.col("finished_at") >= dt.datetime(2026, 2, 1, tzinfo=dt.UTC))
    assert [row.stage for row in since.collect()] == ["features"]
    assert _rows_scanned(since) == 1, "the earlier file's three rows were read"
    every = table.where(F.col("finished_at") >= dt.datetime(2026, 1, 1, tzinfo=dt.UTC))
    assert len(every.collect()) == 4 and _rows_scanned(every) == 4, "a filter both files pass reads both"


def test_a_read_within_listed_keys_skips_the_files_that_hold_none_of_them(spark, empty) -> None:
    """A night's few series are looked up in a large table by their list: the reader checks it against
    each file's dictionary, so a file whose lowest and highest value straddle a key but that holds none is
    not read (a semi-join on the same keys reads every row). Past ``most`` keys, the frame itself serves."""
    from micdm.tables import append, listed, listed_or_kept, within

    _, locator = empty
    stages = [f"stage{index}" for index in range(40)]  # each run's id repeats: the writer keeps a dictionary
    append(locator, "stage_state", _finished(spark, *stages, run="a1").unionByName(
        _finished(spark, *stages, run="a9")).coalesce(1))
    append(locator, "stage_state", _finished(spark, "features", run="a5"))
    table = read_table(spark, locator, "stage_state")
    earlier = [file for file in table.inputFiles() if pq.ParquetFile(urlparse(file).path).metadata.num_rows == 80]
    assert len(table.inputFiles()) == 2 and len(earlier) == 1
    run_ids = _column_chunk(earlier[0], "run_id")
    assert "PLAIN_DICTIONARY" in run_ids.encodings and (run_ids.statistics.min, run_ids.statistics.max) == (
        "a1", "a9"), "the file's statistics alone cannot rule a5 out"
    night = spark.createDataFrame([("a5",), ("a5",), ("a7",), (None,)], "run_id string")
    keys = listed(night)
    assert keys == ["a5", "a7"]
    found = within(table, "run_id", keys)
    assert [row.stage for row in found.collect()] == ["features"]
    assert _rows_scanned(found) == 1, "the file of runs a1 and a9 was read"
    joined = within(table, "run_id", night)
    assert [row.stage for row in joined.collect()] == ["features"]
    assert _rows_scanned(joined) == 81 + 4, "a semi-join reads both files whole (and its four keys)"
    assert listed(night, most=1) is night
    kept = listed_or_kept(night, most=1)  # computed from other tables: checkpointed rather than computed again
    assert kept is not night and sorted(row.run_id or "" for row in kept.collect()) == ["", "a5", "a5", "a7"]
    assert listed_or_kept(night) == ["a5", "a7"]


def test_a_merge_by_list_reads_none_of_the_files_that_hold_none_of_its_keys(spark, empty) -> None:
    """A night's features are compared with image_feature's rows of their listed ids: ids new to the table
    lie above every earlier file's highest, so the comparison reads none of them; a changed row's file is
    read and the row merged. Compared with the whole table, the same new rows read the earlier file."""
    from micdm.tables import append, merge_into

    from support.scans import rows_read

    _, locator = empty
    folder = locator.path("image_feature")

    def features(first: int, count: int, concept: int = 3) -> DataFrame:
        return spark.createDataFrame([(first + index, 1, 1, 1147330, first + index, concept, 32817, None, None,
                                       None, None, None) for index in range(count)],
                                     TABLES["image_feature"].schema).coalesce(1)

    def stored() -> dict[int, int]:
        return {row.image_feature_id: row.image_feature_concept_id for row in
                read_table(spark, locator, "image_feature").collect()}

    append(locator, "image_feature", features(1, 2000))
    with rows_read(spark, folder) as scans:
        assert merge_into(spark, locator, "image_feature", features(2001, 3), ["image_feature_id"],
                          by_list=True) == 3
    assert sum(scans) == 0, f"the earlier file was read: {scans}"
    with rows_read(spark, folder) as scans:
        merge_into(spark, locator, "image_feature", features(5, 1, concept=4).unionByName(features(2004, 1)),
                   ["image_feature_id"], by_list=True)
    assert sum(scans) > 0, "the changed row's file is compared"
    assert len(stored()) == 2004 and stored()[5] == 4 and stored()[6] == 3
    with rows_read(spark, folder) as scans:
        merge_into(spark, locator, "image_feature", features(2005, 3), ["image_feature_id"])
    assert sum(scans) >= 2000, "compared with the whole table, the new rows read every file"


def test_a_scoped_sync_of_a_nights_series_reads_none_of_the_files_written_before(spark, empty) -> None:
    """A stage that redoes a night's series syncs image_occurrence by their list: the stored rows it compares
    and the check that a new series is not filed elsewhere read only row groups whose bloom filter may hold
    one. A series the table holds outside the scope is still found there, and moved, not added twice."""
    from pyspark.sql import functions as F

    from micdm.tables import append, sync_rows

    from support.scans import rows_read

    _, locator = empty
    earlier = [key.split("|")[1] for key in _feature_keys(6, _MANY)]
    append(locator, "image_occurrence", spark.createDataFrame(
        [_occurrence_row(image_occurrence_id=index + 1, image_series_uid=uid) for index, uid in enumerate(earlier)],
        TABLES["image_occurrence"].schema).coalesce(1))
    chunk = _column_chunk(read_table(spark, locator, "image_occurrence").inputFiles()[0], "image_series_uid")
    night = [key.split("|")[1] for key in _feature_keys(7, 3)]
    assert "PLAIN" in chunk.encodings and chunk.statistics.min < min(night) and max(night) < chunk.statistics.max, \
        "neither the dictionary nor the statistics could rule the night's series out"
    rows = spark.createDataFrame([_occurrence_row(image_occurrence_id=_MANY + 1 + index, image_series_uid=uid)
                                  for index, uid in enumerate(night)], TABLES["image_occurrence"].schema)
    with rows_read(spark, locator.path("image_occurrence")) as scans:
        assert sync_rows(spark, locator, "image_occurrence", rows, ["image_series_uid"],
                         ("image_series_uid", night)) == 3
    assert sum(scans) == 0, f"the earlier file was read: {scans}"
    newcomer = spark.createDataFrame([_occurrence_row(image_occurrence_id=_MANY + 4, image_series_uid=night[0] + "9",
                                                      image_study_uid="9.8")], TABLES["image_occurrence"].schema)
    with rows_read(spark, locator.path("image_occurrence")) as scans:  # by study: is it filed under another?
        assert sync_rows(spark, locator, "image_occurrence", newcomer, ["image_series_uid"],
                         ("image_study_uid", ["9.8"])) == 1
    assert sum(scans) == 0, f"the earlier file was read for a series new to the table: {scans}"
    moved = spark.createDataFrame([_occurrence_row(image_occurrence_id=8, image_series_uid=earlier[7],
                                                   image_study_uid="9.9")], TABLES["image_occurrence"].schema)
    with rows_read(spark, locator.path("image_occurrence")) as scans:
        assert sync_rows(spark, locator, "image_occurrence", moved, ["image_series_uid"],
                         ("image_study_uid", ["9.9"])) == 1
    assert sum(scans) >= _MANY, "the series filed under another study is looked for where it is"
    stored = read_table(spark, locator, "image_occurrence")
    assert stored.count() == _MANY + 4
    assert [row.image_study_uid for row in stored.where(F.col("image_series_uid") == earlier[7]).collect()] == ["9.9"]


def _id_map_rows(spark, keys: list[str], first_id: int = 1) -> DataFrame:
    at = dt.datetime(2026, 1, 2, tzinfo=dt.UTC)
    return spark.createDataFrame([("image_feature", key, first_id + index, at, key.split("|")[1])
                                  for index, key in enumerate(keys)], TABLES["id_map"].schema)


def _feature_keys(seed: int, count: int) -> list[str]:
    """Natural keys as the features stage writes them: a random series UID each, none repeated."""
    import random

    draw = random.Random(seed)
    return [f"header|2.25.{draw.randrange(10**55, 10**56)}|00180050" for _ in range(count)]


#: More distinct keys than a column chunk's dictionary holds (1 MB): the writer falls back to plain pages,
#: so the reader has no dictionary to rule a key out and needs the bloom filter.
_MANY = 16_000


def test_a_lookup_by_listed_natural_keys_skips_the_row_groups_their_bloom_filters_rule_out(spark, empty) -> None:
    """Natural keys and their sources are held once each, so no dictionary or statistics tell which file holds
    one: id_map keeps a bloom filter of each per row group, and a night's keys or the series they were made
    from, looked up by their list (a thousand here), skip the files written before those were first seen."""
    from micdm.ids import assign_ids
    from micdm.tables import listed, within

    _, locator = empty
    earlier, night = _feature_keys(1, _MANY), _feature_keys(2, 1000)
    for keys in (earlier, night):  # as the features stage allocates them: each night's ids in one file
        requested = spark.createDataFrame([(key,) for key in keys], "natural_key string")
        assign_ids(spark, locator, "image_feature", requested)
    table = read_table(spark, locator, "id_map")
    earlier_file = next(f for f in table.inputFiles() if pq.ParquetFile(urlparse(f).path).metadata.num_rows == _MANY)
    series = [key.split("|")[1] for key in night]
    for column, values in (("natural_key", night), ("source", series)):
        chunk = _column_chunk(earlier_file, column)
        assert "PLAIN" in chunk.encodings, f"{column}: the dictionary, not the bloom filter, would skip"
        assert chunk.statistics.min < min(values) and max(values) < chunk.statistics.max, "statistics cannot rule out"
    keys = listed(spark.createDataFrame([(key,) for key in night], "natural_key string"))
    found = within(table, "natural_key", keys)
    assert sorted(row.id for row in found.collect()) == list(range(_MANY + 1, _MANY + 1001))
    assert _rows_scanned(found) == 1000, "the earlier file was read"
    made = within(table, "source", listed(spark.createDataFrame([(uid,) for uid in series], "source string")))
    assert sorted(row.natural_key for row in made.collect()) == sorted(night)
    assert _rows_scanned(made) == 1000, "the earlier file was read for the night's series"
    present = within(table, "natural_key", [earlier[7]])
    assert [row.source for row in present.collect()] == [earlier[7].split("|")[1]]
    assert 0 < _rows_scanned(present) <= _MANY, "a key the earlier file holds reads it"


def test_a_table_made_before_bloom_filters_gains_them_when_compacted(spark, empty, monkeypatch) -> None:
    """A table an older micdm created has no bloom filter properties: the compaction that rewrites its files
    sets them first, so the files it writes carry the filters."""
    from micdm.tables import append, bloom_filter_properties, compact_small_files, table_properties, within

    _, locator = empty
    made = bloom_filter_properties(locator.definition("id_map"))
    spark.sql(f"ALTER TABLE {locator.ref('id_map')} UNSET TBLPROPERTIES ({', '.join(map(repr, made))})")
    earlier = _feature_keys(3, _MANY)
    append(locator, "id_map", _id_map_rows(spark, earlier).coalesce(1))
    for index, key in enumerate(_feature_keys(4, 2)):
        append(locator, "id_map", _id_map_rows(spark, [key], first_id=_MANY + 1 + index))
    absent = _feature_keys(5, 3)
    before = within(read_table(spark, locator, "id_map"), "natural_key", absent)
    assert before.collect() == [] and _rows_scanned(before) == _MANY, "without bloom filters the large file is read"
    monkeypatch.setattr("micdm.tables.COMPACT_ABOVE_FILES", 2)
    assert compact_small_files(spark, locator, ["id_map"]) == ["id_map"]
    assert made.items() <= table_properties(spark, locator, "id_map").items()
    after = within(read_table(spark, locator, "id_map"), "natural_key", absent)
    assert len(after.inputFiles()) == 1 and after.collect() == []
    assert _rows_scanned(after) == 0, "the compacted file's bloom filter rules the keys out"


def test_a_table_written_before_with_int96_times_reads_as_delta_reads_it(spark, empty) -> None:
    """A warehouse from before micdm wrote 64-bit times holds INT96 files; its later files hold the new
    kind. Read as files or by Delta, filtered on the time, or merged into, the table gives the same rows."""
    from pyspark.sql import functions as F

    from micdm.tables import append, merge_into

    _, locator = empty
    earlier, later = dt.datetime(2026, 1, 2, 3, 4, 5, 678901), dt.datetime(2026, 3, 4, 5, 6, 7, 123456)
    setting = "spark.sql.parquet.outputTimestampType"
    ours = spark.conf.get(setting)
    spark.conf.set(setting, "INT96")
    try:
        for stage in ("series", "link"):  # a file each: the MERGE below rewrites the first, the second stays
            append(locator, "stage_state", _finished(spark, stage, at=earlier))
    finally:
        spark.conf.set(setting, ours)
    append(locator, "stage_state", _finished(spark, "features", at=later))
    merge_into(spark, locator, "stage_state", _finished(spark, "series", run="r2", at=earlier), ["stage"])
    as_files, by_delta = read_table(spark, locator, "stage_state"), spark.table(locator.ref("stage_state"))
    assert {_column_chunk(file, "finished_at").physical_type for file in as_files.inputFiles()} == {"INT96", "INT64"}
    assert sorted(map(tuple, as_files.collect())) == sorted(map(tuple, by_delta.collect()))
    assert {(r.stage, r.run_id, r.finished_at) for r in as_files.collect()} == {
        ("series", "r2", earlier), ("link", "r1", earlier), ("features", "r1", later)}
    since = as_files.where(F.col("finished_at") > dt.datetime(2026, 2, 1))
    assert [r.stage for r in since.collect()] == ["features"]


def _column_chunk(file: str, column: str) -> pq.ColumnChunkMetaData:
    """What the footer of a data file records of one of its columns (first row group)."""
    group = pq.ParquetFile(urlparse(file).path).metadata.row_group(0)
    return next(group.column(i) for i in range(group.num_columns) if group.column(i).path_in_schema == column)


_READ_AND_EXIT = """
import sys
from micdm.config import StorageSettings
from micdm.tables import TableLocator, small_table_rows
rows = small_table_rows(None, TableLocator(StorageSettings(warehouse=sys.argv[1])), "stage_state")
print(len(rows))
"""


def test_a_process_that_read_a_small_table_exits_cleanly(spark, empty) -> None:
    """A process that read micdm's bookkeeping with delta-rs ends with its own exit code. Read through a
    Python file system, arrow threads outlive the interpreter and abort about one process in two at exit;
    eight processes all ending cleanly by chance would happen less than once in a hundred."""
    import datetime as dt
    import subprocess
    import sys

    from micdm.tables import append

    _, locator = empty
    for stage in ("series", "link", "occurrence", "features"):  # a file each: a scan reads ahead of the next one
        append(locator, "stage_state", spark.createDataFrame(
            [(stage, "r1", "{}", "abc", "0.1.0", dt.datetime(2026, 1, 2, tzinfo=dt.UTC))],
            TABLES["stage_state"].schema))
    processes = [subprocess.Popen([sys.executable, "-c", _READ_AND_EXIT, locator.storage.warehouse],
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(8)]
    ended = [(p.communicate(timeout=120), p.returncode) for p in processes]
    assert [(code, out.strip()) for (out, _), code in ended] == [(0, "4")] * 8, [err[-300:] for (_, err), _ in ended]


def test_rows_for_new_keys_are_appended_and_a_changed_row_is_merged(spark, empty) -> None:
    """A write of rows whose keys the table lacks is one append (no MERGE reading the table for matches);
    a changed or vanished row needs the MERGE. Either way the table ends holding what was written."""
    from micdm.tables import delta_table, merge_into, sync_rows

    _, locator = empty
    occurrence = TABLES["image_occurrence"].schema

    def rows(*values: Row) -> object:
        return spark.createDataFrame(list(values), occurrence)

    def last_operation() -> str:
        return delta_table(spark, locator, "image_occurrence").history(1).first()["operation"]

    def stored() -> dict[str, str]:
        return {r.image_series_uid: r.modality for r in read_table(spark, locator, "image_occurrence").collect()}

    first, second = _occurrence_row(), _occurrence_row(image_occurrence_id=2, image_series_uid="1.2.3.5")
    third = _occurrence_row(image_occurrence_id=3, image_series_uid="1.2.3.6", modality="MR")
    key = ["image_series_uid"]
    assert sync_rows(spark, locator, "image_occurrence", rows(first, second), key) == 2
    assert sync_rows(spark, locator, "image_occurrence", rows(first, second, third), key) == 1
    assert last_operation() == "WRITE" and stored() == {"1.2.3.4": "CT", "1.2.3.5": "CT", "1.2.3.6": "MR"}
    assert sync_rows(spark, locator, "image_occurrence", rows(first, third), key) == 1  # the second vanished
    assert last_operation() == "MERGE" and stored() == {"1.2.3.4": "CT", "1.2.3.6": "MR"}
    assert sync_rows(spark, locator, "image_occurrence", rows(first, _occurrence_row(
        image_occurrence_id=3, image_series_uid="1.2.3.6", modality="PT")), key) == 1
    assert last_operation() == "MERGE" and stored() == {"1.2.3.4": "CT", "1.2.3.6": "PT"}

    assert merge_into(spark, locator, "image_occurrence", rows(first, second), key) == 1
    assert last_operation() == "WRITE" and stored() == {"1.2.3.4": "CT", "1.2.3.5": "CT", "1.2.3.6": "PT"}
    assert merge_into(spark, locator, "image_occurrence", rows(_occurrence_row(modality="MG")), key) == 0
    assert last_operation() == "MERGE" and stored() == {"1.2.3.4": "MG", "1.2.3.5": "CT", "1.2.3.6": "PT"}
    versions = delta_table(spark, locator, "image_occurrence").history().count()
    assert merge_into(spark, locator, "image_occurrence", rows(first, second), key, update_existing=False) == 0
    assert delta_table(spark, locator, "image_occurrence").history().count() == versions, "nothing new, no commit"
    # A series new to the scope but stored under another study is moved, not added a second time.
    moved = _occurrence_row(image_occurrence_id=2, image_series_uid="1.2.3.5", image_study_uid="9.9")
    scope = ("image_study_uid", spark.createDataFrame([("9.9",)], "uid string"))
    assert sync_rows(spark, locator, "image_occurrence", rows(moved), key, scope) == 1
    assert last_operation() == "MERGE" and sorted(
        (r.image_series_uid, r.image_study_uid) for r in read_table(spark, locator, "image_occurrence").collect()) == [
        ("1.2.3.4", "1.2.3"), ("1.2.3.5", "9.9"), ("1.2.3.6", "1.2.3")]


def test_micdm_tables_are_compacted_past_the_threshold_and_the_sites_never(spark, empty, monkeypatch) -> None:
    """One of micdm's tables holding more small files than the threshold is compacted in a commit that
    changes no row: the change feed holds each appended row once. One at the threshold, one whose files are
    all too large for OPTIMIZE to rewrite, and a table of the site's whatever its files, are left as written."""
    from micdm.tables import append, compact_small_files, delta_table

    _, locator = empty
    monkeypatch.setattr("micdm.tables.COMPACT_ABOVE_FILES", 3)
    occurrence = TABLES["image_occurrence"].schema
    person = "person_id int, gender_concept_id int, year_of_birth int, race_concept_id int, " \
             "ethnicity_concept_id int, person_source_value string"

    def files(name: str) -> int:
        return spark.sql(f"DESCRIBE DETAIL {locator.ref(name)}").first()["numFiles"]

    def versions(name: str) -> int:
        return delta_table(spark, locator, name).history().count()

    for number in range(1, 5):
        append(locator, "image_occurrence", spark.createDataFrame(
            [_occurrence_row(image_occurrence_id=number, image_series_uid=f"1.2.3.{number}")], occurrence))
        append(locator, "person", spark.createDataFrame([(number, 8507, 1950, 0, 0, f"P{number}")], person))
        if number == 3:
            assert compact_small_files(spark, locator, ["image_occurrence", "person"]) == []
    kept = {name: versions(name) for name in ("image_occurrence", "person")}
    assert (files("image_occurrence"), files("person")) == (4, 4)
    smallest = "spark.databricks.delta.optimize.minFileSize"
    spark.conf.set(smallest, "1")  # no file is small enough for OPTIMIZE to rewrite: none counts
    try:
        assert compact_small_files(spark, locator, ["image_occurrence"]) == []
    finally:
        spark.conf.unset(smallest)
    assert compact_small_files(spark, locator, ["image_occurrence", "person"]) == ["image_occurrence"]
    assert (files("image_occurrence"), files("person")) == (1, 4)
    assert versions("image_occurrence") == kept["image_occurrence"] + 1 and versions("person") == kept["person"]
    assert delta_table(spark, locator, "image_occurrence").history(1).first()["operation"] == "OPTIMIZE"
    assert sorted(r.image_occurrence_id for r in read_table(spark, locator, "image_occurrence").collect()) == \
        [1, 2, 3, 4]
    feed = spark.read.format("delta").option("readChangeFeed", "true").option("startingVersion", 1) \
        .load(locator.path("image_occurrence"))
    assert sorted((r.image_occurrence_id, r._change_type) for r in feed.collect()) == \
        [(number, "insert") for number in range(1, 5)]
