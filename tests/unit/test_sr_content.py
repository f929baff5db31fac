"""Every structured report of the shared corpus keeps its whole content tree at extract, item for item as
pydicom counted it (MANIFEST.tsv), whatever its header's size or private elements."""

from __future__ import annotations

import csv
import json
from collections import Counter
from pathlib import Path

from micdm.dicom.reader import ReadOptions, extract_file
from micdm.transport import opener


def _reports(shared: Path) -> list[dict[str, str]]:
    with (shared / "data" / "dicom" / "MANIFEST.tsv").open(newline="", encoding="utf-8") as handle:
        return [row for row in csv.DictReader(handle, delimiter="\t") if row["sr_content_items"]]


def test_every_report_of_the_corpus_keeps_every_content_item(shared: Path) -> None:
    reports = _reports(shared)
    assert len(reports) >= 5
    for report in reports:
        path = shared / "data" / "dicom" / report["file"]
        row = extract_file(opener(str(path), {}), str(path), path.stat().st_size,
                           ReadOptions(header_json_max_bytes=4096))
        assert row["outcome"] == "instance" and row.get("sr_content_reason") is None, report["file"]
        items = json.loads(row["sr_content"])
        below_root = Counter(item["value_type"] for item in items if item["position"] != "1")
        expected = Counter({kind: int(count) for kind, count in
                            (part.split("=") for part in report["sr_content_items"].split(";"))})
        assert below_root == expected, report["file"]
        assert max(item["position"].count(".") for item in items) == int(report["sr_tree_depth"]), report["file"]
        if report["sr_template"]:
            assert items[0]["template_id"] == report["sr_template"].removeprefix("TID ").strip(), report["file"]


def test_a_capped_header_says_what_it_dropped_and_the_content_stays(shared: Path) -> None:
    """Siemens' PhoenixZIPReport SR, with its private protocol elements."""
    phoenix = next(r for r in _reports(shared) if "PHOENIXZIPREPORT" in r["file"])
    path = shared / "data" / "dicom" / phoenix["file"]

    def extracted(cap: int) -> dict:
        return extract_file(opener(str(path), {}), str(path), path.stat().st_size,
                            ReadOptions(header_json_max_bytes=cap))

    whole = extracted(10**8)
    assert whole["header_json_dropped"] is None
    size = len(whole["header_json"].encode())
    for cap, dropped in ((size, None), (size - 1, "private"), (64, "all")):
        row = extracted(cap)
        assert row["header_json_dropped"] == dropped and row["header_json_truncated"] == (dropped is not None)
        assert row["sr_content"] == whole["sr_content"], "the content never depends on the cap"
