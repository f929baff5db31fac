"""The schemas in micdm.schema against the specification CSVs, field by field."""

from __future__ import annotations

import csv
import re
from pathlib import Path

import pytest
from pyspark.sql.types import DataType, DateType, DoubleType, IntegerType, StringType, TimestampType

from micdm.schema import CDM_TABLES, PUBLISHED_TABLES, SPEC_TABLES, TableDef, max_length

_TYPES: dict[str, DataType] = {
    "integer": IntegerType(),
    "int": IntegerType(),
    "date": DateType(),
    "datetime": TimestampType(),
    "float": DoubleType(),
}


def expected_field(datatype: str) -> tuple[DataType, int | None]:
    """The Spark type and varchar length a spec datatype calls for (the rule the issue states)."""
    datatype = datatype.strip().lower()
    varchar = re.fullmatch(r"varchar\s*\((\d+|max)\)", datatype)
    if varchar:
        return StringType(), None if varchar.group(1) == "max" else int(varchar.group(1))
    return _TYPES[datatype], None


def compare(table: TableDef, rows: list[dict[str, str]], name_key: str) -> list[str]:
    problems = []
    expected = [(r[name_key].strip().lower(), r) for r in rows]
    actual = table.schema.fields
    if [n for n, _ in expected] != [f.name for f in actual]:
        problems.append(f"{table.name}: columns {[f.name for f in actual]} != {[n for n, _ in expected]}")
        return problems
    for (name, row), field in zip(expected, actual, strict=True):
        spark_type, length = expected_field(row["datatype"] if "datatype" in row else row["cdmDatatype"])
        required = (row.get("required") or row.get("isRequired")).strip().lower() == "yes"
        if field.dataType != spark_type:
            problems.append(f"{table.name}.{name}: {field.dataType} != {spark_type}")
        if max_length(field) != length:
            problems.append(f"{table.name}.{name}: length {max_length(field)} != {length}")
        if field.nullable == required:
            problems.append(f"{table.name}.{name}: nullable={field.nullable} but required={required}")
    return problems


def read_csv(path: Path) -> list[dict[str, str]]:
    with path.open(encoding="utf-8-sig", newline="") as handle:
        return list(csv.DictReader(handle))


@pytest.mark.parametrize("table", SPEC_TABLES, ids=lambda t: t.name)
def test_spec_tables_match_mi_cdm_fields(shared: Path, table: TableDef) -> None:
    rows = [r for r in read_csv(shared / "spec" / "mi_cdm_fields.csv") if r["table"] == table.name]
    assert rows, f"{table.name} missing from mi_cdm_fields.csv"
    assert compare(table, rows, "field") == []


@pytest.mark.parametrize("table", PUBLISHED_TABLES, ids=lambda t: t.name)
def test_published_tables_match_the_working_group_fields(shared: Path, table: TableDef) -> None:
    path = shared / "spec" / "mi-cdm-working-group" / "OMOP_CDM_Medical_Imaging_Ex_Field_Level.csv"
    rows = [r for r in read_csv(path) if r["cdmTableName"].strip().lower() == table.name]
    assert rows, f"{table.name} missing from the published field list"
    assert compare(table, [{k.strip(): v for k, v in r.items()} for r in rows], "cdmFieldName") == []


@pytest.mark.parametrize("table", CDM_TABLES, ids=lambda t: t.name)
def test_cdm_tables_match_omop_54(shared: Path, table: TableDef) -> None:
    rows = [r for r in read_csv(shared / "spec" / "omop-cdm-5.4" / "OMOP_CDMv5.4_Field_Level.csv")
            if r["cdmTableName"].lower() == table.name]
    assert rows, f"{table.name} missing from the OMOP CDM 5.4 field list"
    assert compare(table, rows, "cdmFieldName") == []


def test_comparison_catches_a_changed_type(shared: Path) -> None:
    """The check itself must fail when a column's type drifts from the spec."""
    from dataclasses import replace

    from pyspark.sql.types import LongType, StructField, StructType

    table = SPEC_TABLES[0]
    drifted = StructType([StructField(f.name, LongType(), f.nullable, f.metadata) if f.name == "person_id" else f
                          for f in table.schema.fields])
    rows = [r for r in read_csv(shared / "spec" / "mi_cdm_fields.csv") if r["table"] == table.name]
    assert compare(replace(table, schema=drifted), rows, "field") == [
        "image_occurrence.person_id: LongType() != IntegerType()"]
