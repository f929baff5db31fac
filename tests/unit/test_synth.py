"""The demo generator: deterministic, real Part-10 files, and the hard linkage cases present."""

from __future__ import annotations

import csv
import hashlib
from collections import Counter
from pathlib import Path

from pydicom import dcmread

from micdm.synth import generate


def _digest(folder: Path) -> str:
    digest = hashlib.sha256()
    for path in sorted(folder.rglob("*")):
        if path.is_file():
            digest.update(str(path.relative_to(folder)).encode() + path.read_bytes())
    return digest.hexdigest()


def test_same_seed_same_bytes(tmp_path: Path) -> None:
    one = generate(tmp_path / "a", patients=6, seed=3, pixels="none")
    two = generate(tmp_path / "b", patients=6, seed=3, pixels="none")
    assert one.instances == two.instances > 0
    assert _digest(tmp_path / "a") == _digest(tmp_path / "b")
    generate(tmp_path / "c", patients=6, seed=4, pixels="none")
    assert _digest(tmp_path / "c") != _digest(tmp_path / "a"), "another seed, other UIDs and values"


def test_files_are_part10_with_pixels_of_the_requested_size(tmp_path: Path) -> None:
    generate(tmp_path, patients=4, seed=1, pixels="realistic")
    ct = [p for p in (tmp_path / "dicom").rglob("*.dcm") if "_CT" in p.parent.name]
    assert ct, "seed 1 with 4 patients should hold a CT series"
    ds = dcmread(ct[0])
    assert ds.preamble is not None and ds.file_meta.TransferSyntaxUID
    assert (ds.Rows, ds.Columns) == (512, 512) and len(ds.PixelData) == 512 * 512 * 2


def test_truth_covers_the_hard_cases(tmp_path: Path) -> None:
    generate(tmp_path, patients=40, seed=7, pixels="none")
    with (tmp_path / "truth.csv").open(newline="") as handle:
        truth = list(csv.DictReader(handle))
    cases = Counter(row["case"] for row in truth)
    for case in ("accession", "person_missing", "procedure_one_day_off", "two_procedures_same_day",
                 "no_accession_same_day", "no_procedure"):
        assert cases[case] > 0, case
    with (tmp_path / "cdm" / "person.csv").open(newline="") as handle:
        persons = {row["person_source_value"] for row in csv.DictReader(handle)}
    missing = {row["patient_id"] for row in truth if row["case"] == "person_missing"}
    assert missing and not missing & persons
