"""A corpus of bad inputs through the extract stage on Spark: each file lands in one table, with its reason."""

from __future__ import annotations

import io
import random
import shutil
import struct
from pathlib import Path

from pydicom import dcmread
from pydicom.data import get_testdata_file
from pyspark.sql import functions as F

import micdm.extract
from micdm.config import load_settings
from micdm.extract import extract
from micdm.tables import TableLocator, read_table

from support.warehouse import new_tables

REPO = Path(__file__).resolve().parents[2]
CT = Path(get_testdata_file("CT_small.dcm"))


NESTED_SOP_UID = "1.2.826.0.1.3680043.8.498.72"


def _deeply_nested(depth: int) -> bytes:
    """CT_small (its own SOP instance UID) with a private sequence nested ``depth`` items deep (undefined
    lengths) just before its pixels."""
    source = dcmread(CT)
    assert source.file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.1"  # explicit VR little endian
    source.SOPInstanceUID = source.file_meta.MediaStorageSOPInstanceUID = NESTED_SOP_UID
    buffer = io.BytesIO()
    source.save_as(buffer)
    data = buffer.getvalue()
    pixels_at = data.index(b"\xe0\x7f\x10\x00")
    creator = b"\xdf\x7f\x10\x00LO\x08\x00NESTING "
    level = b"\xdf\x7f\x00\x10SQ\0\0\xff\xff\xff\xff" + b"\xfe\xff\x00\xe0\xff\xff\xff\xff"
    unwind = b"\xfe\xff\x0d\xe0\0\0\0\0" + b"\xfe\xff\xdd\xe0\0\0\0\0"
    return data[:pixels_at] + creator + level * depth + unwind * depth + data[pixels_at:]


def _write_corpus(root: Path) -> dict[str, str]:
    """Bad (and a few good) files under ``root``; returns each name's expected outcome."""
    expected: dict[str, str] = {}
    source = CT.read_bytes()

    def put(name: str, content: bytes, outcome: str) -> None:
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content)
        expected[name] = outcome

    put("good/ct.dcm", source, "instance")
    shutil.copy(get_testdata_file("MR_small.dcm"), root / "good" / "mr.dcm")
    expected["good/mr.dcm"] = "instance"
    put("empty.dcm", b"", "zero_bytes")
    put("random.bin", random.Random(7).randbytes(20_000), "not_dicom")
    for cut in (60, 132, 700, 1200):
        put(f"truncated/at-{cut}.dcm", source[:cut], "not_dicom" if cut < 132 else "truncated")
    nifti = struct.pack("<i", 348) + bytes(340) + b"n+1\0" + random.Random(3).randbytes(4000)
    put("scan.nii", nifti, "not_dicom")
    put("DICOMDIR", Path(get_testdata_file("DICOMDIR")).read_bytes(), "dicomdir")
    put("nested.dcm", _deeply_nested(5000), "instance")  # a DICOM server's test suite holds one like it
    no_uid = dcmread(CT)
    del no_uid.SOPInstanceUID
    no_uid.save_as(root / "no-sop-uid.dcm")
    expected["no-sop-uid.dcm"] = "missing_uid"
    bad_date = dcmread(CT)
    bad_date.StudyDate, bad_date.SOPInstanceUID = "20231345", "1.2.826.0.1.3680043.8.498.70"
    bad_date.save_as(root / "bad-date.dcm")
    expected["bad-date.dcm"] = "instance"
    put("dicm-at-128.raw", bytes(128) + b"DICM" + random.Random(5).randbytes(3000), "not_dicom")
    huge = dcmread(CT)
    huge.SOPInstanceUID = "1.2.826.0.1.3680043.8.498.71"
    block = huge.private_block(0x0011, "MICDM TEST", create=True)
    block.add_new(0x01, "OB", b"\x5a" * (8 * 2**20))
    huge.save_as(root / "huge-private.dcm")
    expected["huge-private.dcm"] = "instance"
    twin = dcmread(CT)
    twin.SeriesDescription = "same SOP UID, other content"
    twin.save_as(root / "good" / "zz-twin.dcm")
    expected["good/zz-twin.dcm"] = "duplicate_sop_instance"
    (root / "dangling.dcm").symlink_to(root / "no-such-target.dcm")
    expected["dangling.dcm"] = "unreadable"
    (root / "linked.dcm").symlink_to(root / "good" / "ct.dcm")  # read through the link: a copy of ct.dcm
    expected["linked.dcm"] = "duplicate_sop_instance"
    (root / "linked-folder").symlink_to(root / "good", target_is_directory=True)  # listed, not followed
    expected["linked-folder"] = "unreadable"
    put("vanishes.dcm", source, "unreadable")  # deleted between listing and reading, below
    return expected


def test_bad_input_corpus_is_fully_accounted_for(spark, tmp_path: Path, monkeypatch, reliability) -> None:
    root = tmp_path / "export"
    expected = _write_corpus(root)
    settings = load_settings(REPO / "conf" / "local.yml", [
        f"storage.warehouse={tmp_path / 'warehouse'}", f"sources.roots=[{root}]", "extract.files_per_partition=8"])
    locator = TableLocator.of(settings)
    new_tables(spark, locator)
    real_listing = micdm.extract.list_files

    def listing_then_delete(sources):
        found = list(real_listing(sources))
        (root / "vanishes.dcm").unlink()
        return found

    monkeypatch.setattr(micdm.extract, "list_files", listing_then_delete)
    summary = extract(spark, locator, settings)

    instances = read_table(spark, locator, "dicom_instance")
    quarantine = read_table(spark, locator, "dicom_quarantine")
    outcomes = {r.path: "instance" for r in instances.select("path").collect()}
    reasons = {r.path: r.reason for r in quarantine.select("path", "reason").collect()}
    assert not outcomes.keys() & reasons.keys(), "a file is in both tables"
    outcomes.update(reasons)
    assert summary.discovered == len(expected) == summary.instances + summary.quarantined == len(outcomes)
    assert {str(Path(p).relative_to(root)): o for p, o in outcomes.items()} == expected

    rows = {Path(r.path).name: r for r in instances.collect()}
    assert rows["bad-date.dcm"].study_date is None
    assert any("StudyDate" in w for w in rows["bad-date.dcm"].parse_warnings)
    assert rows["nested.dcm"].sop_instance_uid == NESTED_SOP_UID, "read on a deeper stack, with its own UIDs"
    huge = rows["huge-private.dcm"]  # an instance whose 8 MiB private value stays out of the header JSON
    assert huge.header_json is not None and len(huge.header_json) < 65536 and not huge.header_json_truncated
    messages = {Path(r.path).name: r.message for r in quarantine.collect()}
    assert "different content" in messages["zz-twin.dcm"]
    assert "identical copy" in messages["linked.dcm"] and "IsADirectoryError" in messages["linked-folder"]
    assert "FileNotFoundError" in messages["vanishes.dcm"] and "FileNotFoundError" in messages["dangling.dcm"]
    duplicates = instances.groupBy("sop_instance_uid").count().where(F.col("count") > 1).count()
    assert duplicates == 0
    reliability.record("bad_input_corpus", inputs_tried=len(expected), accounted_for=len(outcomes),
                       duplicates_found=duplicates)
