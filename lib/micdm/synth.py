"""A synthetic PACS export and the matching synthetic CDM: the demo data and the linkage ground truth.

Everything derives from one seed through ``random.Random`` instances keyed by patient, so the same
settings always give byte-identical files. Hard linkage cases are placed deterministically by patient
number and written to ``truth.csv`` with the link the pipeline should make.
"""

from __future__ import annotations

import copy
import csv
import datetime as dt
import math
import random
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydicom.dataset import Dataset, FileDataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from micdm.vocab import resource_rows

__all__ = ["PatientPlan", "SeriesPlan", "StudyPlan", "SynthSummary", "generate", "load_site", "plan_patients"]

_SOP_CLASSES = {
    "CT": "1.2.840.10008.5.1.4.1.1.2",
    "MR": "1.2.840.10008.5.1.4.1.1.4",
    "CR": "1.2.840.10008.5.1.4.1.1.1",
    "DX": "1.2.840.10008.5.1.4.1.1.1.1",
    "US": "1.2.840.10008.5.1.4.1.1.6.1",
    "PT": "1.2.840.10008.5.1.4.1.1.128",
    "MG": "1.2.840.10008.5.1.4.1.1.1.2",
}
# modality -> (instances per series, realistic rows/cols, body parts)
_SHAPES = {
    "CT": (40, 512, ("CHEST", "ABDOMEN", "HEAD")),
    "MR": (24, 256, ("BRAIN", "KNEE", "LSPINE")),
    "CR": (1, 2048, ("CHEST",)),
    "DX": (2, 2048, ("CHEST", "HAND")),
    "US": (4, 480, ("ABDOMEN",)),
    "PT": (30, 128, ("WHOLEBODY",)),
    "MG": (4, 2048, ("BREAST",)),
}
#: What linkage should do with each case (with the default settings: same-day window, policy create).
_EXPECTED_RULE = {
    "accession": "accession",
    "no_accession_same_day": "window",
    "two_procedures_same_day": "window",
    "procedure_one_day_off": "created",
    "no_procedure": "created",
    "person_missing": "person_not_found",
}
_PIXEL_SIDES = {"realistic": None, "small": 32, "none": 0}
_PROCEDURE_TYPE = 32817
_VISIT_OUTPATIENT = 9202
_MODALITY_PROCEDURE = {"CT": 4300757, "MR": 4013636, "CR": 4056681, "DX": 4056681, "US": 4037672,
                       "PT": 4305790, "MG": 4324693}


@dataclass
class SeriesPlan:
    modality: str
    series_uid: str
    instances: int
    body_part: str | None
    kind: str = "image"
    """image, or the derived object written from the study's first series: measurement_report,
    dose_report, segmentation (see synth_reports.py)."""


@dataclass
class StudyPlan:
    study_uid: str
    accession: str
    date: dt.date
    modality: str
    series: list[SeriesPlan]
    procedure_id: int | None
    procedure_date: dt.date | None
    procedure_source_value: str | None
    case: str


@dataclass
class PatientPlan:
    index: int
    patient_id: str
    person_id: int | None
    name: str
    birth_date: dt.date
    sex: str
    studies: list[StudyPlan] = field(default_factory=list)


@dataclass(frozen=True)
class SynthSummary:
    out: Path
    patients: int
    studies: int
    series: int
    instances: int
    bytes_written: int


def _uid(seed: object, *parts: object) -> str:
    return generate_uid(entropy_srcs=[str(seed), *map(str, parts)])


def _case_of(index: int) -> str:
    """Which hard linkage case a patient's first study plays (deterministic by patient number)."""
    for modulus, remainder, case in (
        (11, 5, "person_missing"),
        (13, 4, "procedure_one_day_off"),
        (9, 2, "two_procedures_same_day"),
        (7, 3, "no_accession_same_day"),
        (17, 6, "no_procedure"),
    ):
        if index % modulus == remainder:
            return case
    return "accession"


def plan_patients(patients: int, seed: int, max_instances: int | None = None) -> list[PatientPlan]:
    """The whole export as plans: who, which studies and series, and what the CDM holds for them.

    ``max_instances`` caps the instances per series (linkage tests need many series, not many files);
    it changes nothing else.
    """
    plans = []
    next_procedure = 5001
    for index in range(patients):
        rng = random.Random(f"{seed}:{index}")
        case = _case_of(index)
        plan = PatientPlan(
            index=index,
            patient_id=f"MRN{index:06d}",
            person_id=None if case == "person_missing" else 1001 + index,
            name=f"SYNTH^PATIENT{index:04d}",
            birth_date=dt.date(1930 + rng.randrange(70), 1 + rng.randrange(12), 1 + rng.randrange(28)),
            sex=rng.choice("MF"),
        )
        base_date = dt.date(2018, 1, 1) + dt.timedelta(days=rng.randrange(1800))
        study_count = 2 if case == "two_procedures_same_day" else 1 + rng.randrange(3)
        for number in range(study_count):
            modality = ("CT", "MR")[number] if case == "two_procedures_same_day" else rng.choice(list(_SHAPES))
            date = base_date if case == "two_procedures_same_day" else base_date + dt.timedelta(days=40 * number)
            study_case = case if number == 0 or case in ("two_procedures_same_day", "person_missing") else "accession"
            accession = f"ACC{index:06d}{number:02d}"
            count, _side, parts = _SHAPES[modality]
            count = min(count, max_instances or count)
            series = [
                SeriesPlan(modality, _uid(seed, index, number, s), count, rng.choice(parts))
                for s in range(1 + (rng.random() < 0.3))
            ]
            measured = rng.random() < 0.15 or (modality == "CT" and index % 3 == 0)
            if case == "person_missing":  # its series have no image_occurrence for reports to land on
                measured = False
            elif modality == "CT":  # scanners send a dose report with every study
                series.append(SeriesPlan("SR", _uid(seed, index, number, "dose"), 1, None, "dose_report"))
                if measured:
                    series.append(SeriesPlan("SEG", _uid(seed, index, number, "seg"), 1, None, "segmentation"))
            if measured:
                series.append(SeriesPlan("SR", _uid(seed, index, number, "sr"), 1, None, "measurement_report"))
            has_procedure = study_case not in ("no_procedure",)
            procedure_date = date + dt.timedelta(days=1) if study_case == "procedure_one_day_off" else date
            source_value = accession if study_case in ("accession", "person_missing") else None
            plan.studies.append(StudyPlan(
                study_uid=_uid(seed, index, number),
                accession=accession,
                date=date,
                modality=modality,
                series=series,
                procedure_id=next_procedure if has_procedure else None,
                procedure_date=procedure_date if has_procedure else None,
                procedure_source_value=source_value,
                case=study_case,
            ))
            if has_procedure:
                next_procedure += 1
        plans.append(plan)
    return plans


def _pixel_side(modality: str, pixels: str) -> int:
    side = _PIXEL_SIDES[pixels]
    return _SHAPES[modality][1] if side is None else side


def _series_dataset(patient: PatientPlan, study: StudyPlan, series: SeriesPlan, number: int,
                    pixels: str, rng: random.Random) -> FileDataset:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = _SOP_CLASSES[series.modality]
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset("", {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.SOPClassUID = meta.MediaStorageSOPClassUID
    ds.StudyDate = ds.SeriesDate = ds.ContentDate = ds.AcquisitionDate = study.date.strftime("%Y%m%d")
    ds.StudyTime = f"{8 + number:02d}{rng.randrange(60):02d}00"
    ds.SeriesTime = ds.StudyTime
    ds.AccessionNumber = study.accession
    ds.Modality = series.modality
    ds.Manufacturer = rng.choice(["SIEMENS", "GE MEDICAL SYSTEMS", "Philips", "CANON_MEC"])
    ds.ManufacturerModelName = rng.choice(["Model A", "Model B", "Model C"])
    ds.StudyDescription = f"{series.modality} {series.body_part or 'REPORT'}"
    ds.SeriesDescription = f"{series.modality} series {number + 1}"
    ds.PatientName = patient.name
    ds.PatientID = patient.patient_id
    ds.IssuerOfPatientID = "SYNTH_HOSPITAL"
    ds.PatientBirthDate = patient.birth_date.strftime("%Y%m%d")
    ds.PatientSex = patient.sex
    ds.StudyInstanceUID = study.study_uid
    ds.SeriesInstanceUID = series.series_uid
    ds.StudyID = study.accession[-6:]
    ds.SeriesNumber = number + 1
    if series.body_part:
        ds.BodyPartExamined = series.body_part
    _acquisition(ds, series.modality, rng)
    ds.FrameOfReferenceUID = _uid(series.series_uid, "frame")
    ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    side = _pixel_side(series.modality, pixels)
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows = ds.Columns = side
    ds.BitsAllocated = ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 0
    ds.PixelSpacing = [0.7, 0.7]
    if series.modality in ("MR", "CT") and rng.random() < 0.5:
        # Vendor-style private block (like Siemens CSA headers): tens of KB before the pixels.
        block = ds.private_block(0x0029, "SYNTH CSA HEADER", create=True)
        block.add_new(0x10, "OB", bytes(rng.getrandbits(8) for _ in range(256)) * (40 + rng.randrange(80)))
    if side:
        ds.PixelData = bytes(range(256)) * (side * side * 2 // 256) + b"\0" * (side * side * 2 % 256)
    return ds


def _acquisition(ds: FileDataset, modality: str, rng: random.Random) -> None:
    if modality == "CT":
        ds.SliceThickness = rng.choice(["0.625", "1.0", "1.25", "2.5", "5.0"])
        ds.KVP = rng.choice(["100", "120", "140"])
        ds.XRayTubeCurrent = 150 + rng.randrange(300)
        ds.ExposureTime = 500 + rng.randrange(500)
        ds.ConvolutionKernel = rng.choice(["B30f", "STANDARD", "LUNG"])
    elif modality == "MR":
        ds.SliceThickness = rng.choice(["1.0", "3.0", "5.0"])
        ds.MagneticFieldStrength = rng.choice(["1.5", "3"])
        ds.RepetitionTime = str(400 + rng.randrange(4000))
        ds.EchoTime = str(10 + rng.randrange(90))
        ds.FlipAngle = rng.choice(["90", "150", "15"])
        ds.SpacingBetweenSlices = "4.0"
    elif modality in ("CR", "DX", "MG"):
        ds.KVP = str(28 + rng.randrange(90))
        ds.Exposure = 2 + rng.randrange(20)
    elif modality == "PT":
        ds.SliceThickness = "3.27"
    elif modality == "US":
        ds.Manufacturer = "ACME ULTRASOUND"


def _per_instance(ds: FileDataset, modality: str, dual_echo: bool) -> Callable[[int], None]:
    """What changes from one instance of a series to the next: a CT's tube current follows the patient's
    width (dose modulation); about half the MR series are dual-echo, their two echo times alternating."""
    if modality == "CT":
        base = int(ds.XRayTubeCurrent)

        def modulate(instance: int) -> None:
            ds.XRayTubeCurrent = round(base * (0.6 + 0.8 * abs(math.sin(instance / 4))))
        return modulate
    if modality == "MR" and dual_echo:
        first = int(ds.EchoTime)

        def alternate(instance: int) -> None:
            ds.EchoTime = str(first + 80 * (instance % 2))
        return alternate
    return lambda instance: None


def _instances(plans: list[PatientPlan]) -> Iterator[tuple[PatientPlan, StudyPlan, SeriesPlan, int]]:
    for patient in plans:
        for study in patient.studies:
            for number, series in enumerate(study.series):
                yield patient, study, series, number


def _derived(series: SeriesPlan, images: list[Dataset], segmentations: dict[str, Dataset], seed: str
             ) -> Dataset:
    """A report or segmentation of the study's first series (highdicom builds it; imported only here)."""
    try:
        from micdm import synth_reports
    except ImportError as missing:
        raise ImportError("micdm synth writes its reports with highdicom: pip install 'micdm[synth]'") from missing

    uid = _uid(seed, series.series_uid, 0)
    if series.kind == "segmentation":
        segmentations[images[0].StudyInstanceUID] = built = synth_reports.segmentation(
            images, series.series_uid, uid, seed)
    elif series.kind == "dose_report":
        built = synth_reports.dose_report(images, series.series_uid, uid, 1 + len(seed) % 3, seed)
    else:
        built = synth_reports.measurement_report(images, series.series_uid, uid,
                                                 segmentations.get(images[0].StudyInstanceUID), seed)
    return built


def _write_dicom(out: Path, plans: list[PatientPlan], seed: int, pixels: str) -> tuple[int, int]:
    instances = written = 0
    images: dict[str, list[Dataset]] = {}  # per study: copies of the first series' first and last instances
    segmentations: dict[str, Dataset] = {}
    for patient, study, series, number in _instances(plans):
        folder = out / "dicom" / patient.patient_id / study.accession / f"{number + 1:03d}_{series.modality}"
        folder.mkdir(parents=True, exist_ok=True)
        if series.kind != "image":
            path = folder / "0001.dcm"
            _derived(series, images[study.study_uid], segmentations, f"{seed}:{series.series_uid}").save_as(
                path, enforce_file_format=True)
            instances, written = instances + 1, written + path.stat().st_size
            continue
        rng = random.Random(f"{seed}:{series.series_uid}")
        ds = _series_dataset(patient, study, series, number, pixels, rng)
        vary = _per_instance(ds, series.modality, dual_echo=series.series_uid[-1] in "13579")
        for instance in range(series.instances):
            uid = _uid(seed, series.series_uid, instance)
            ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = uid
            ds.InstanceNumber = instance + 1
            vary(instance)
            ds.ImagePositionPatient = [0.0, 0.0, float(instance) * 2.5]
            path = folder / f"{instance + 1:04d}.dcm"
            ds.save_as(path, enforce_file_format=True)
            if instance in (0, series.instances - 1) and len(images.setdefault(study.study_uid, [])) < 2 \
                    and number == 0:
                images[study.study_uid].append(copy.deepcopy(ds))
            instances += 1
            written += path.stat().st_size
    return instances, written


def _write_csv(path: Path, header: list[str], rows: Sequence[Sequence[object]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(["" if v is None else v for v in row] for row in rows)


def _write_cdm(out: Path, plans: list[PatientPlan]) -> None:
    person: list[list[Any]] = []
    visit: list[list[Any]] = []
    procedure: list[list[Any]] = []
    truth: list[list[Any]] = []
    for patient in plans:
        if patient.person_id is not None:
            person.append([patient.person_id, 8507 if patient.sex == "M" else 8532, patient.birth_date.year,
                           0, 0, patient.patient_id])
        for study in patient.studies:
            visit_id = None
            if patient.person_id is not None:
                visit_id = 30000 + len(visit) + 1
                visit.append([visit_id, patient.person_id, _VISIT_OUTPATIENT, study.date, study.date, 32817])
            if study.procedure_id is not None and patient.person_id is not None:
                procedure.append([study.procedure_id, patient.person_id, _MODALITY_PROCEDURE[study.modality],
                                  study.procedure_date, _PROCEDURE_TYPE, visit_id, study.procedure_source_value])
            rule = _EXPECTED_RULE[study.case]
            for series in study.series:
                expected = study.procedure_id if rule in ("accession", "window") else None
                truth.append([series.series_uid, study.study_uid, patient.patient_id, patient.person_id,
                              expected, visit_id, study.case, rule])
    _write_csv(out / "cdm" / "person.csv",
               ["person_id", "gender_concept_id", "year_of_birth", "race_concept_id", "ethnicity_concept_id",
                "person_source_value"], person)
    _write_csv(out / "cdm" / "visit_occurrence.csv",
               ["visit_occurrence_id", "person_id", "visit_concept_id", "visit_start_date", "visit_end_date",
                "visit_type_concept_id"], visit)
    _write_csv(out / "cdm" / "procedure_occurrence.csv",
               ["procedure_occurrence_id", "person_id", "procedure_concept_id", "procedure_date",
                "procedure_type_concept_id", "visit_occurrence_id", "procedure_source_value"], procedure)
    concepts = resource_rows("demo_concepts.csv")
    _write_csv(out / "cdm" / "concept.csv", list(concepts[0]), [
        [_iso_date(v) if k.startswith("valid_") else v for k, v in row.items()] for row in concepts])
    _write_csv(out / "truth.csv",
               ["series_instance_uid", "study_instance_uid", "patient_id", "expected_person_id",
                "expected_procedure_occurrence_id", "expected_visit_occurrence_id", "case", "expected_rule"], truth)


#: A series no export holds: the demo's AI results name it once, so that the quarantine has a row to show.
UNKNOWN_SERIES = "2.25.1"
ALGORITHM_RESULTS = "ai_results.csv"


def _write_algorithm_results(out: Path, plans: list[PatientPlan], seed: int) -> None:
    """What an AI product delivers for every study with a measurement report, plus one row for a series
    that is not in the export (the demo's one planted quarantine row)."""
    from micdm.features import ALGORITHM_RESULT_COLUMNS
    from micdm.synth_reports import algorithm_result_rows

    rows = [row for patient in plans for study in patient.studies
            if any(s.kind == "measurement_report" for s in study.series)
            for row in algorithm_result_rows(study.series[0].series_uid, f"{seed}:{study.study_uid}", study.date)]
    rows += algorithm_result_rows(UNKNOWN_SERIES, f"{seed}:unknown", plans[0].studies[0].date)[:1]
    _write_csv(out / ALGORITHM_RESULTS, list(ALGORITHM_RESULT_COLUMNS), rows)


def _iso_date(yyyymmdd: str) -> str:
    return f"{yyyymmdd[:4]}-{yyyymmdd[4:6]}-{yyyymmdd[6:]}"


#: The synthetic site's CDM tables, written under <out>/cdm. Its vocabulary is a subset with Athena's ids,
#: domains and classes for every concept its rows and micdm's output name (units, procedures, anatomy,
#: gender, visit, type and table concepts); names and codes of the few concepts outside the shared
#: vocabulary subsets are descriptive.
SITE_TABLES = ("person", "visit_occurrence", "procedure_occurrence", "concept")


def load_site(spark: Any, locator: Any, out: str | Path) -> dict[str, int]:
    """Create every table, then load the synthetic site's CDM tables from ``out``; returns rows per table."""
    from micdm.tables import init_tables, load_csv

    init_tables(spark, locator)
    return {name: load_csv(spark, locator, name, str((Path(out) / "cdm" / f"{name}.csv").resolve()))
            for name in SITE_TABLES}


def generate(out: str | Path, patients: int = 24, seed: int = 7, pixels: str = "small",
             max_instances: int | None = None) -> SynthSummary:
    """Write the DICOM export under ``out/dicom``, the CDM CSVs under ``out/cdm`` and ``out/truth.csv``."""
    if pixels not in _PIXEL_SIDES:
        raise ValueError(f"pixels must be one of {sorted(_PIXEL_SIDES)}, got {pixels!r}")
    out = Path(out)
    plans = plan_patients(patients, seed, max_instances)
    instances, written = _write_dicom(out, plans, seed, pixels)
    _write_cdm(out, plans)
    _write_algorithm_results(out, plans, seed)
    studies = sum(len(p.studies) for p in plans)
    series = sum(len(s.series) for p in plans for s in p.studies)
    return SynthSummary(out, patients, studies, series, instances, written)
