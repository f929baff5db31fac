"""Which stored tables micdm accepts: a site's CDM in its own numeric widths, micdm's own tables exactly."""

from __future__ import annotations

from pyspark.sql.types import FloatType, LongType, StringType, StructField, StructType

from micdm.schema import TABLES
from micdm.tables import schema_problems


def _stored(name: str, **changes: object) -> StructType:
    """The table as micdm declares it, with some columns' types changed (None drops the column)."""
    fields = []
    for field in TABLES[name].schema.fields:
        kind = changes.get(field.name, field.dataType)
        if kind is not None:
            fields.append(StructField(field.name, kind, True))
    return StructType(fields)


def test_a_site_measurement_table_with_float_values_and_bigint_ids_is_accepted() -> None:
    stored = _stored("measurement", value_as_number=FloatType(), range_low=FloatType(), range_high=FloatType(),
                     measurement_id=LongType())
    assert schema_problems(TABLES["measurement"], stored) == []


def test_each_unusable_site_column_is_named() -> None:
    stored = _stored("measurement", value_as_number=StringType(), unit_source_value=None)
    assert schema_problems(TABLES["measurement"], stored) == [
        "unit_source_value: missing (micdm expects string)", "value_as_number: string, micdm expects double"]


def test_micdms_own_tables_must_match_exactly() -> None:
    assert schema_problems(TABLES["id_map"], _stored("id_map", id=LongType())) == ["id: bigint, micdm expects int"]
    extra = StructType([*TABLES["id_map"].schema.fields, StructField("note", StringType())])
    assert schema_problems(TABLES["id_map"], extra) == ["note: not a column micdm knows (string)"]
