"""Rebuild micdm's shipped DICOM concepts (lib/micdm/resources/concept.csv, concept_relationship.csv) from
the DICOM vocabulary's release files.

micdm ships every attribute concept (so that any attribute a site selects has its source concept) and
every value-set concept an attribute 'Maps to value', with those relationships and the value sets'
'Maps to' standard concepts.

    python tools/ship_dicom_vocabulary.py <folder holding omop_table_staging_v5.csv and cs_values_*.csv>
"""

from __future__ import annotations

import csv
import sys
from pathlib import Path

RESOURCES = Path(__file__).resolve().parents[1] / "lib" / "micdm" / "resources"


def _rows(path: Path) -> list[dict[str, str]]:
    with path.open(encoding="utf-8-sig", newline="") as handle:
        return list(csv.DictReader(handle))


def _write(path: Path, columns: list[str], rows: list[dict[str, str]]) -> None:
    with path.open("w", encoding="utf-8", newline="") as handle:
        writer = csv.DictWriter(handle, columns, lineterminator="\n")
        writer.writeheader()
        writer.writerows({c: row[c] for c in columns} for row in rows)


def main(release: Path) -> None:
    concepts = _rows(release / "omop_table_staging_v5.csv")
    maps_to_value = _rows(release / "cs_values_maps_to_value.csv")
    maps_to = _rows(release / "cs_values_maps_to.csv")
    values = {r["concept_id_2"] for r in maps_to_value}
    shipped = [c for c in concepts if c["concept_class_id"] == "DICOM Attributes" or c["concept_id"] in values]
    shipped.sort(key=lambda c: int(c["concept_id"]))
    relationships = sorted([*maps_to_value, *[r for r in maps_to if r["concept_id_1"] in values]],
                           key=lambda r: (r["relationship_id"], int(r["concept_id_1"]), int(r["concept_id_2"])))
    _write(RESOURCES / "concept.csv", list(concepts[0]), shipped)
    _write(RESOURCES / "concept_relationship.csv", ["concept_id_1", "concept_id_2", "relationship_id"],
           relationships)
    print(f"concept.csv: {len(shipped)} rows; concept_relationship.csv: {len(relationships)} rows")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
