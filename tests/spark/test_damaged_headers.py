"""Damaged copies of real files: truncated at random offsets, bytes overwritten in the header, lengths
inflated, zeroed ranges, garbage after 'DICM', preambles removed. Each is quarantined with a reason or read
as an instance whose UIDs are its source's, never a bogus series; on Spark each lands in exactly one table."""

from __future__ import annotations

import io
import random
from collections import Counter
from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.data import get_testdata_file

from micdm.config import load_settings
from micdm.dicom.reader import ReadOptions, extract_file
from micdm.extract import extract
from micdm.tables import TableLocator, read_table
from micdm.transport import opener

from support.warehouse import new_tables

REPO = Path(__file__).resolve().parents[2]
SEED = 18
#: What an overwritten byte becomes: nothing that could continue or pad a UID unnoticed (a digit written
#: over a digit is another valid UID, which no reader can tell from the original).
FOREIGN = bytes(b for b in range(256) if b not in b"0123456789. \x00")
_SHORT_LENGTH_VRS = {"AE", "AS", "AT", "CS", "DA", "DS", "DT", "FL", "FD", "IS", "LO", "LT", "PN", "SH", "SL",
                     "SS", "ST", "TM", "UI", "UL", "US"}
UIDS = ("sop_instance_uid", "series_instance_uid", "study_instance_uid")


def _read(path: Path) -> dict:
    return extract_file(opener(str(path), {}), str(path), path.stat().st_size, ReadOptions())


def _sources(shared: Path) -> list[Path]:
    """Small real files of the shared corpus that read as instances, every third one, and pydicom's CT and MR."""
    corpus = sorted(p for p in (shared / "data" / "dicom").rglob("*")
                    if p.is_file() and p.name != "MANIFEST.tsv" and p.stat().st_size <= 512 * 1024)
    readable = [p for p in corpus if _read(p)["outcome"] == "instance"]
    return readable[::3] + [Path(get_testdata_file(name)) for name in ("CT_small.dcm", "MR_small.dcm")]


def _length_fields(data: bytes) -> list[tuple[int, int]]:
    """(offset, width) of the length field of each top-level element after the file meta."""
    try:
        ds = dcmread(io.BytesIO(data), stop_before_pixels=True, force=True)
    except Exception:
        return []
    implicit = ds.is_implicit_VR
    fields = []
    for raw in ds._dict.values():
        tell, vr = getattr(raw, "value_tell", None), getattr(raw, "VR", None)
        if tell is None or tell < 8:
            continue
        fields.append((tell - 2, 2) if not implicit and vr in _SHORT_LENGTH_VRS else (tell - 4, 4))
    return fields


def _mutants(data: bytes, header_end: int, rng: random.Random) -> dict[str, bytes]:
    marked = data[128:132] == b"DICM"
    start, end = (132 if marked else 0), max(header_end, (132 if marked else 0) + 2)
    mutants = {f"cut-{i}": data[:rng.randrange(start, end)] for i in range(3)}
    for i in range(3):
        damaged = bytearray(data)
        for _ in range(1 + i):
            damaged[rng.randrange(start, end)] = rng.choice(FOREIGN)
        mutants[f"overwritten-{i}"] = bytes(damaged)
    fields = _length_fields(data)
    for i in range(2 if fields else 0):
        offset, width = rng.choice(fields)
        damaged = bytearray(data)
        old = int.from_bytes(damaged[offset:offset + width], "little")
        new = min(old + 2 * rng.randrange(1, 2000), 0xFFFE if width == 2 else 0xFFFFFFFE)
        damaged[offset:offset + width] = new.to_bytes(width, "little")
        mutants[f"inflated-{i}"] = bytes(damaged)
    at = rng.randrange(start, end)
    mutants["zeroed"] = data[:at] + bytes(rng.randrange(4, 64)) + data[at + 64:]
    if marked:
        mutants["garbage-after-dicm"] = data[:132] + rng.randbytes(end - 132) + data[end:]
        mutants["no-preamble"] = data[128:]
        mutants["bare-data-set"] = data[132:]
    return mutants


@pytest.fixture(scope="module")
def damaged(shared: Path, tmp_path_factory) -> tuple[Path, dict[str, tuple[str, ...]]]:
    """The damaged files under one folder, each with its source's UIDs."""
    rng = random.Random(SEED)
    root = tmp_path_factory.mktemp("damaged")
    expected: dict[str, tuple[str, ...]] = {}
    for number, source in enumerate(_sources(shared)):
        original = _read(source)
        for name, content in _mutants(source.read_bytes(), original["header_bytes"], rng).items():
            path = root / f"{number:03d}-{source.stem[:24]}-{name}.dcm"
            path.write_bytes(content)
            expected[str(path)] = tuple(original[c] for c in UIDS)
    return root, expected


def test_no_damaged_file_becomes_an_instance_of_uids_its_source_lacks(damaged, reliability) -> None:
    _, expected = damaged
    assert len(expected) >= 200
    outcomes: Counter[str] = Counter()
    foreign = []
    for path, uids in expected.items():
        row = _read(Path(path))
        outcomes[row.get("reason") or "instance"] += 1
        if row["outcome"] == "instance" and tuple(row[c] for c in UIDS) != uids:
            foreign.append((Path(path).name, tuple(row[c] for c in UIDS)))
    assert foreign == []
    assert outcomes["instance"] > 0 and sum(n for reason, n in outcomes.items() if reason != "instance") > 0
    reliability.record("damaged_headers", details={"outcomes": dict(outcomes)}, inputs_tried=len(expected),
                       instances_checked_against_source=outcomes["instance"],
                       instances_with_foreign_uids=len(foreign))


def test_every_damaged_file_lands_in_exactly_one_table(spark, damaged, tmp_path: Path, reliability) -> None:
    root, expected = damaged
    settings = load_settings(REPO / "conf" / "local.yml", [
        f"storage.warehouse={tmp_path / 'warehouse'}", f"sources.roots=[{root}]", "extract.files_per_partition=64"])
    locator = TableLocator.of(settings)
    new_tables(spark, locator)
    summary = extract(spark, locator, settings)
    instances = {r.path: tuple(r[c] for c in UIDS) for r in read_table(spark, locator, "dicom_instance").collect()}
    quarantined = {r.path for r in read_table(spark, locator, "dicom_quarantine").select("path").collect()}
    assert not instances.keys() & quarantined, "a file in both tables"
    assert instances.keys() | quarantined == set(expected) and summary.discovered == len(expected)
    assert all(expected[path] == uids for path, uids in instances.items())
    reliability.record("damaged_headers_on_spark", accounted_for=len(instances) + len(quarantined))
