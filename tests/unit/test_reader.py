"""Header-only reads of the real DICOM corpus in shared/ (MANIFEST.tsv says what each file holds)."""

from __future__ import annotations

import csv
import datetime as dt
import os
from pathlib import Path

import pytest
from pydicom.data import get_testdata_file

from micdm.dicom.reader import Outcome, QuarantineReason, ReadOptions, extract_file
from micdm.transport import opener

ABSENT = ("", "<absent>")


def read(path: Path, **options: object) -> dict:
    return extract_file(opener(str(path), {}), str(path), os.path.getsize(path), ReadOptions(**options))


@pytest.fixture(scope="module")
def manifest(shared: Path) -> list[dict[str, str]]:
    with (shared / "data" / "dicom" / "MANIFEST.tsv").open(encoding="utf-8", newline="") as handle:
        return list(csv.DictReader(handle, delimiter="\t"))


@pytest.fixture(scope="module")
def results(shared: Path, manifest: list[dict[str, str]]) -> dict[str, dict]:
    return {row["file"]: read(shared / "data" / "dicom" / row["file"]) for row in manifest}


def _manifest_date(value: str) -> dt.date | None:
    if value in ABSENT:
        return None
    digits = value.replace(".", "")  # the manifest keeps legacy ACR-NEMA dates as written: 1994.11.05
    return dt.date(int(digits[:4]), int(digits[4:6]), int(digits[6:8]))


def test_every_file_is_accounted_for(manifest, results) -> None:
    assert len(results) == len(manifest) == 151
    assert all(r["outcome"] in (Outcome.INSTANCE.value, Outcome.QUARANTINE.value) for r in results.values())


def test_parsed_files_yield_the_manifest_values(manifest, results) -> None:
    checked = 0
    for row in manifest:
        result = results[row["file"]]
        if result["outcome"] != Outcome.INSTANCE.value:
            continue
        for keyword, column in (("SOPInstanceUID", "sop_instance_uid"), ("SeriesInstanceUID", "series_instance_uid"),
                                ("StudyInstanceUID", "study_instance_uid"), ("Modality", "modality"),
                                ("AccessionNumber", "accession_number")):
            expected = None if row[keyword] in ABSENT else row[keyword]
            assert result[column] == expected, (row["file"], keyword)
        for keyword in ("StudyDate", "SeriesDate"):
            assert result[keyword.replace("Date", "_date").lower()] == _manifest_date(row[keyword]), row["file"]
        checked += 1
    assert checked >= 135


#: PS3.5 9.1, as this test reads it: digits and dots, no empty component, no leading zero, at most 64 characters.
def _valid_uid(value: str) -> bool:
    parts = value.split(".")
    return len(value) <= 64 and all(p.isdigit() and p.isascii() and (p == "0" or p[0] != "0") for p in parts)


def test_instances_are_exactly_the_files_with_their_valid_uids(manifest, results) -> None:
    invalid = 0
    for row in manifest:
        uids = [row[k] for k in ("SOPInstanceUID", "SeriesInstanceUID", "StudyInstanceUID")]
        has_uids = all(uid not in ABSENT for uid in uids)
        valid = has_uids and all(_valid_uid(uid) for uid in uids)
        parsed = row["parse_status"].startswith("ok")
        result = results[row["file"]]
        assert (result["outcome"] == Outcome.INSTANCE.value) == (valid and parsed), row["file"]
        if has_uids and parsed and not valid:
            invalid += 1
            assert result["reason"] == QuarantineReason.INVALID_UID.value and repr(uids[2]) in result["message"]
    assert invalid == 2  # dcm4che's 3gb-bulk-data-truncated ('3gb_native'), pydicom-data's bad_sequence (hex)


def _ct_with(folder: Path, **uids: str) -> Path:
    """CT_small with some of its UIDs replaced, written under ``folder``."""
    from pydicom import dcmread

    ds = dcmread(get_testdata_file("CT_small.dcm"))
    for keyword, value in uids.items():
        setattr(ds, keyword, value)
    path = folder / "ct_with_uids.dcm"
    ds.save_as(path)
    return path


@pytest.mark.parametrize("value", ["1.2.840.10008.05", "1.2.3.", ".1.2", "1..2", "1.2.a", "1.2.3\n4", "1.2÷3",
                                   "1.2.N3", "REM SAMPLES 1", "1." + "2" * 63])
def test_an_invalid_uid_is_quarantined_unless_validation_ignores_it(tmp_path: Path, value: str) -> None:
    path = _ct_with(tmp_path, SeriesInstanceUID=value)
    warned = read(path)
    assert (warned["outcome"], warned["reason"]) == ("quarantine", QuarantineReason.INVALID_UID.value)
    assert "SeriesInstanceUID" in warned["message"] and repr(value)[:40] in warned["message"]
    kept = read(path, validation="ignore")
    assert kept["outcome"] == "instance" and kept["series_instance_uid"] == value
    assert any(w.startswith("invalid UID: SeriesInstanceUID") for w in kept["parse_warnings"])


def test_valid_uids_pass_with_their_padding_removed(tmp_path: Path) -> None:
    for value in ("0.0", "1.2.840.10008.1.2.1", "2.25." + "9" * 59):
        assert read(_ct_with(tmp_path, SeriesInstanceUID=value))["series_instance_uid"] == value


def test_known_failures_land_in_quarantine_with_their_reason(manifest, results) -> None:
    reasons = {row["file"]: results[row["file"]]["reason"] for row in manifest
               if results[row["file"]]["outcome"] == Outcome.QUARANTINE.value}
    dicomdirs = [f for f in reasons if f.endswith("DICOMDIR")]
    assert len(dicomdirs) == 2 and {reasons[f] for f in dicomdirs} == {QuarantineReason.DICOMDIR.value}
    failed = [row["file"] for row in manifest if row["parse_status"].startswith("fail")]
    assert failed and {reasons[f] for f in failed} == {QuarantineReason.PARSE_ERROR.value}
    assert reasons["fo-dicom/Tests/FO-DICOM.Tests/Test Data/FreezePattern.dcm"] == QuarantineReason.MISSING_UID.value


def test_forced_reads_are_flagged(manifest, results) -> None:
    forced = [row["file"] for row in manifest
              if row["parse_status"] == "ok_force" and results[row["file"]]["outcome"] == Outcome.INSTANCE.value]
    assert forced and all(results[f]["forced_read"] for f in forced)


def test_header_only_reads_stay_within_one_block_of_the_header(manifest, results) -> None:
    over = []
    for row in manifest:
        result = results[row["file"]]
        needed = int(row["header_bytes_needed"] or 0)
        deflated = "deflate" in row["quirks"].lower() and "frame" not in row["quirks"].lower()
        if result["outcome"] == Outcome.INSTANCE.value and not deflated and result["bytes_read"] > needed + 65536:
            over.append((row["file"], result["bytes_read"], needed))
    assert over == []


def test_large_pixel_data_is_not_read(tmp_path: Path) -> None:
    source = Path(get_testdata_file("CT_small.dcm")).read_bytes()
    big = tmp_path / "big.dcm"
    from pydicom import dcmread

    ds = dcmread(get_testdata_file("CT_small.dcm"))
    ds.Rows = ds.Columns = 2048
    ds.PixelData = b"\0" * (2048 * 2048 * 2)
    ds.save_as(big)
    result = read(big)
    assert result["outcome"] == Outcome.INSTANCE.value
    assert result["bytes_read"] <= 65536 < big.stat().st_size
    assert len(source) < big.stat().st_size


@pytest.mark.parametrize(("content", "reason"), [
    (b"", QuarantineReason.ZERO_BYTES),
    (b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 8, QuarantineReason.NOT_DICOM),
])
def test_bad_files_are_quarantined(tmp_path: Path, content: bytes, reason: QuarantineReason) -> None:
    path = tmp_path / "bad.dcm"
    path.write_bytes(content)
    result = read(path)
    assert (result["outcome"], result["reason"]) == (Outcome.QUARANTINE.value, reason.value)


def test_header_cut_before_its_uids_is_truncated(tmp_path: Path) -> None:
    path = tmp_path / "cut.dcm"
    path.write_bytes(Path(get_testdata_file("CT_small.dcm")).read_bytes()[:900])
    result = read(path)
    assert (result["outcome"], result["reason"]) == (Outcome.QUARANTINE.value, QuarantineReason.TRUNCATED.value)


def test_vanished_file_is_unreadable(tmp_path: Path) -> None:
    path = tmp_path / "gone.dcm"
    result = extract_file(opener(str(path), {}), str(path), 1000, ReadOptions())
    assert (result["outcome"], result["reason"]) == (Outcome.QUARANTINE.value, QuarantineReason.UNREADABLE.value)


def test_pydicom_bundled_files_all_end_somewhere() -> None:
    """pydicom's own test files: every one is an instance or a named quarantine reason, never an error."""
    import pydicom

    # The files shipped inside the package (get_testdata_files would also try to download more).
    bundled = Path(pydicom.__file__).parent / "data" / "test_files"
    paths = sorted(p for p in bundled.rglob("*") if p.is_file() and p.suffix not in (".py", ".json", ".txt"))
    assert len(paths) > 50
    reasons = {r.value for r in QuarantineReason}
    outcomes = {}
    for path in paths:
        result = read(path)
        assert result["outcome"] in (Outcome.INSTANCE.value, Outcome.QUARANTINE.value), path
        if result["outcome"] == Outcome.QUARANTINE.value:
            assert result["reason"] in reasons and result["message"], path
        outcomes[path.name] = result
    ct = outcomes["CT_small.dcm"]
    assert (ct["outcome"], ct["modality"], ct["rows"]) == ("instance", "CT", 128)
    assert outcomes["DICOMDIR"]["reason"] == QuarantineReason.DICOMDIR.value


def _big_endian_files(shared: Path) -> list[Path]:
    import pydicom.data

    files = sorted((Path(pydicom.data.__file__).parent / "test_files").glob("*big*endian*.dcm"))
    with (shared / "data" / "dicom" / "MANIFEST.tsv").open(newline="", encoding="utf-8") as handle:
        files += [shared / "data" / "dicom" / row["file"] for row in csv.DictReader(handle, delimiter="\t")
                  if row["transfer_syntax"] == "1.2.840.10008.1.2.2"]
    return files


def test_big_endian_pixel_data_lengths_are_read_in_the_files_byte_order(shared: Path) -> None:
    files = _big_endian_files(shared)
    assert len(files) >= 3
    for path in files:
        row = extract_file(opener(str(path), {}), str(path), path.stat().st_size, ReadOptions())
        assert row["outcome"] == "instance", path.name
        assert not [w for w in row["parse_warnings"] or [] if "PixelData" in w], path.name


def test_copies_are_told_apart_by_their_header_bytes_not_their_json(tmp_path: Path) -> None:
    """Two encodings of one header that DICOM JSON cannot tell apart (a value padded with a space, then
    with a NUL) have the same size and JSON, and different digests."""
    from pydicom import dcmread

    source = Path(get_testdata_file("MR_small.dcm"))
    data = bytearray(source.read_bytes())
    padded = next(element for element in dcmread(source, stop_before_pixels=True).iterall()
                  if element.VR in ("CS", "LO", "SH") and isinstance(element.value, str)
                  and len(element.value) % 2 == 1)
    raw = data.index(padded.value.encode("ascii") + b" ")
    data[raw + len(padded.value)] = 0
    copy = tmp_path / "copy.dcm"
    copy.write_bytes(bytes(data))
    rows = [extract_file(opener(str(p), {}), str(p), p.stat().st_size, ReadOptions()) for p in (source, copy)]
    assert rows[0]["file_size"] == rows[1]["file_size"] and rows[0]["header_json"] == rows[1]["header_json"]
    assert rows[0]["header_digest"] != rows[1]["header_digest"]
    again = extract_file(opener(str(source), {}), str(source), source.stat().st_size, ReadOptions())
    assert again["header_digest"] == rows[0]["header_digest"]


def test_sequences_nested_beyond_the_setting_are_a_parse_error(tmp_path: Path) -> None:
    """Within extract.max_nesting a deep header is read (tests/spark/test_bad_input.py, 5,000 levels); past it,
    the file is quarantined with the limit in its message, and the next file reads as usual."""
    source = Path(get_testdata_file("CT_small.dcm")).read_bytes()
    pixels_at = source.index(b"\xe0\x7f\x10\x00")
    level = b"\xdf\x7f\x00\x10SQ\0\0\xff\xff\xff\xff" + b"\xfe\xff\x00\xe0\xff\xff\xff\xff"
    unwind = b"\xfe\xff\x0d\xe0\0\0\0\0" + b"\xfe\xff\xdd\xe0\0\0\0\0"
    nested = tmp_path / "nested.dcm"
    nested.write_bytes(source[:pixels_at] + b"\xdf\x7f\x10\x00LO\x08\x00NESTING " + level * 3000 + unwind * 3000
                       + source[pixels_at:])
    refused = read(nested, max_nesting=50)
    assert (refused["outcome"], refused["reason"]) == ("quarantine", QuarantineReason.PARSE_ERROR.value)
    assert "deeper than 50 levels" in refused["message"]
    assert read(nested)["outcome"] == "instance"
    assert read(Path(get_testdata_file("CT_small.dcm")))["outcome"] == "instance"


def test_a_cut_inside_an_element_micdm_reads_is_truncated_a_cut_after_them_an_instance(shared: Path,
                                                                                       tmp_path: Path) -> None:
    # fo-dicom's GH179A ends inside PixelPaddingValue, after every element micdm reads
    tail = shared / "data" / "dicom" / "fo-dicom" / "Tests" / "FO-DICOM.Tests" / "Test Data" / "GH179A.dcm"
    row = read(tail)
    assert row["outcome"] == "instance" and "00280120" not in row["header_json"]
    assert row["parse_warnings"] == [f"truncated_tail: data set ends inside (0028,0120) at byte {tail.stat().st_size}; "
                                     "that element is left out"]
    # CT_small cut in the middle of its SeriesInstanceUID: a shorter UID must never become a series
    source = Path(get_testdata_file("CT_small.dcm"))
    data = source.read_bytes()
    from pydicom import dcmread

    series_uid = dcmread(source).SeriesInstanceUID.encode()
    cut = tmp_path / "cut.dcm"
    cut.write_bytes(data[:data.index(series_uid) + len(series_uid) // 2])
    row = read(cut)
    assert (row["outcome"], row["reason"]) == ("quarantine", QuarantineReason.TRUNCATED.value)
    assert "(0020,000E)" in row["message"]


@pytest.mark.parametrize("raw", ["1.2\x003.4", "1.2.3\x00\x00", "1.2.34\x00\x00\x00"])
def test_a_uid_shortened_or_split_by_nuls_is_invalid(tmp_path: Path, raw: str) -> None:
    """Zeroed bytes at the end or inside a UID: removing them as padding would give another valid UID."""
    row = read(_ct_with(tmp_path, SOPInstanceUID=raw))
    assert (row["outcome"], row["reason"]) == ("quarantine", QuarantineReason.INVALID_UID.value)
    assert row["message"].startswith("SOPInstanceUID ")


def test_pydicom_settings_are_restored_after_a_read() -> None:
    """Reading quiets pydicom only while it reads: validation mode, logger level and warning filters return."""
    import logging
    import warnings

    from pydicom import config as pydicom_config

    from micdm.dicom.reader import quiet_pydicom

    before = (pydicom_config.settings.reading_validation_mode, logging.getLogger("pydicom").level,
              list(warnings.filters))
    with quiet_pydicom(), quiet_pydicom():
        assert pydicom_config.settings.reading_validation_mode == pydicom_config.IGNORE
        assert logging.getLogger("pydicom").level == logging.ERROR
    path = get_testdata_file("CT_small.dcm")
    assert extract_file(opener(path, {}), path, os.path.getsize(path), ReadOptions())["outcome"] == "instance"
    after = (pydicom_config.settings.reading_validation_mode, logging.getLogger("pydicom").level,
             list(warnings.filters))
    assert after == before
