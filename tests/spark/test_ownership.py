"""micdm's rows in a site table: written once, compared with what the site's table holds."""

from __future__ import annotations

import datetime as dt


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

    assert write_site_rows(spark, locator, "measurement", rows(1.0)) == 0
    copy = read_table(spark, locator, "measurement").select(*TABLES["measurement"].schema.fieldNames())
    append(locator, "measurement", copy.localCheckpoint())
    assert write_site_rows(spark, locator, "measurement", rows(2.0)) == 0
    stored = read_table(spark, locator, "measurement").select("measurement_id", "value_as_number").collect()
    assert sorted(tuple(row) for row in stored) == [(2_000_000_001, 2.0)] * 2
