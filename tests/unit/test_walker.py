"""The in-memory header walk against pydicom: the same row for every real file it accepts."""

from __future__ import annotations

import os
from pathlib import Path

import pydicom
import pytest

from micdm.dicom import reader
from micdm.dicom.walker import NeedMoreBytes, NotWalkable, walk_header
from micdm.transport import opener


def _corpus(shared: Path) -> list[Path]:
    real = [p for p in (shared / "data" / "dicom").rglob("*") if p.is_file() and p.name != "MANIFEST.tsv"]
    bundled = Path(pydicom.__file__).parent / "data" / "test_files"
    return sorted(real) + sorted(p for p in bundled.rglob("*") if p.is_file() and p.suffix not in (".py", ".json"))


def _row(path: Path) -> dict:
    return reader.extract_file(opener(str(path), {}), str(path), os.path.getsize(path), reader.ReadOptions())


def test_walked_rows_equal_pydicom_rows(shared: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every column of every file (typed values, warnings, DICOM JSON, verdict) is the same either way."""
    paths = _corpus(shared)
    walked = {p: _row(p) for p in paths}
    monkeypatch.setattr(reader, "_walk", lambda *_: None)
    taken = 0
    for path in paths:
        expected = _row(path)
        actual = walked[path]
        assert {k: v for k, v in actual.items() if k != "bytes_read"} == {
            k: v for k, v in expected.items() if k != "bytes_read"}, path.name
        taken += actual["outcome"] == "instance"
    assert taken > 250  # most real files take the fast path


def test_walk_accepts_most_real_files(shared: Path) -> None:
    accepted = 0
    for path in _corpus(shared):
        data = path.read_bytes()
        try:
            walk_header(data, len(data))
        except NotWalkable:
            continue
        accepted += 1
    assert accepted > 250


def test_walk_asks_for_more_bytes_until_the_pixel_data() -> None:
    path = pydicom.data.get_testdata_file("CT_small.dcm")
    data = Path(path).read_bytes()
    whole = walk_header(data, len(data))
    with pytest.raises(NeedMoreBytes) as asked:
        walk_header(data[:600], len(data))
    assert 600 < asked.value.end <= whole.header_end + 12
    assert whole.header_end == data.index(b"\xe0\x7f\x10\x00")
    assert whole.pixel_data_end == whole.header_end + 12 + 128 * 128 * 2  # explicit VR OW, 128x128x16 bits
    assert whole.dataset.SOPInstanceUID == pydicom.dcmread(path).SOPInstanceUID


@pytest.mark.parametrize("damage", ["no_preamble", "truncated", "bad_vr"])
def test_walk_leaves_odd_files_to_pydicom(damage: str) -> None:
    data = bytearray(Path(pydicom.data.get_testdata_file("CT_small.dcm")).read_bytes())
    if damage == "no_preamble":
        data = data[132:]
    elif damage == "truncated":
        data = data[:900]
    else:
        first = data.index(b"\x08\x00\x08\x00") + 4  # ImageType's VR
        data[first:first + 2] = b"\x01\x02"
    with pytest.raises(NotWalkable):
        walk_header(bytes(data), len(data))
