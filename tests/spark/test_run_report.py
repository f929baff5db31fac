"""The run report's value distributions agree with a count made in Python over the same rows."""

from __future__ import annotations

from collections import Counter
from typing import Any

from micdm.report import value_distributions


def test_each_columns_most_common_values_come_from_one_scan(spark: Any) -> None:
    rows = [("CT", "ACME", "CHEST"), ("CT", "ACME", None), ("MR", "Imaging Co", "HEAD"), ("CT", None, "CHEST"),
            ("MR", "ACME", None), ("US", "ACME", None), ("PT", "Imaging Co", "CHEST")]
    columns = ("modality", "manufacturer", "body_part_examined")
    frame = spark.createDataFrame(rows, "modality string, manufacturer string, body_part_examined string")
    found = value_distributions(frame, columns, top=2)
    for index, column in enumerate(columns):
        counts = Counter("(none)" if row[index] is None else row[index] for row in rows)
        expected = sorted(counts.items(), key=lambda item: (-item[1], item[0]))[:2]
        assert found[column] == expected, column
    assert found["modality"] == [("CT", 3), ("MR", 2)]
    assert found["body_part_examined"] == [("(none)", 3), ("CHEST", 3)]
