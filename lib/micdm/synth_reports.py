"""Structured reports, segmentations and algorithm results for the synthetic export, built with highdicom.

What a new user should see the features stage do: TID 1500 measurement reports whose groups are planar
ROIs (a SCOORD selected from one image) and a volumetric ROI on a segmentation, CT radiation dose
reports (TID 10011) with one group per irradiation event, the segmentation itself, and a CSV of results
as an AI product would deliver them. Every UID and date derives from the images given, so the same seed
gives the same bytes.
"""

from __future__ import annotations

import copy
import datetime as dt
import logging
import random
from collections.abc import Sequence

import highdicom as hd
import numpy as np
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes
from pydicom.uid import generate_uid

__all__ = [
    "ALGORITHM",
    "DOSE_REPORT_CLASS",
    "algorithm_result_rows",
    "dose_report",
    "measurement_report",
    "segmentation",
]

# highdicom reports every attribute it copies at INFO: a demo's log would hold little else.
logging.getLogger("highdicom").setLevel(logging.WARNING)

#: X-Ray Radiation Dose SR Storage.
DOSE_REPORT_CLASS = "1.2.840.10008.5.1.4.1.1.88.67"
#: The algorithm the synthetic reports and segmentations name (image_feature.alg_system).
_ALGORITHM_NAME, _ALGORITHM_VERSION = "micdm synthetic nodule CAD", "1.0"
ALGORITHM = hd.sr.AlgorithmIdentification(name=_ALGORITHM_NAME, version=_ALGORITHM_VERSION)
_MEAN_CTDIVOL = hd.sr.CodedConcept("113830", "DCM", "Mean CTDIvol")
_LUNG_NODULE = (codes.SCT.Nodule, codes.SCT.Lung)
_MANUFACTURER = "micdm synth"


def _uid(*parts: object) -> str:
    return generate_uid(entropy_srcs=[str(p) for p in parts])


def _dated(ds: Dataset, images: Sequence[Dataset]) -> Dataset:
    """The document dated like its images (highdicom writes the time of creation)."""
    ds.ContentDate = ds.InstanceCreationDate = images[0].StudyDate
    ds.ContentTime = ds.InstanceCreationTime = images[0].StudyTime
    ds.SeriesDate, ds.SeriesTime = ds.ContentDate, ds.ContentTime
    for equipment in ds.get("ContributingEquipmentSequence", []):
        if "ContributionDateTime" in equipment:
            equipment.ContributionDateTime = f"{ds.ContentDate}{ds.ContentTime}"
    return ds


def _context(seed: str) -> hd.sr.ObservationContext:
    device = hd.sr.DeviceObserverIdentifyingAttributes(uid=_uid(seed, "device"), name="synthetic CAD")
    return hd.sr.ObservationContext(observer_device_context=hd.sr.ObserverContext(
        observer_type=codes.DCM.Device, observer_identifying_attributes=device))


def _planar_group(image: Dataset, number: int, rng: random.Random, seed: str
                  ) -> hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations:
    """A nodule outlined on one image: its diameter (maximum and mean) and area."""
    centre = [float(rng.randrange(8, max(int(image.Columns) - 8, 9))),
              float(rng.randrange(8, max(int(image.Rows) - 8, 9)))]
    radius = float(rng.randrange(2, 6))
    region = hd.sr.ImageRegion(graphic_type=hd.sr.GraphicTypeValues.CIRCLE,
                               graphic_data=np.array([centre, [centre[0] + radius, centre[1]]]),
                               source_image=hd.sr.SourceImageForRegion.from_source_image(image))
    diameter = round(2 * radius * float(image.PixelSpacing[0]), 2)
    finding, site = _LUNG_NODULE
    return hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(uid=_uid(seed, "nodule", number), identifier=f"Nodule {number}"),
        referenced_region=region, finding_type=finding, algorithm_id=ALGORITHM,
        finding_sites=[hd.sr.FindingSite(site, laterality=rng.choice([codes.SCT.Right, codes.SCT.Left]))],
        measurements=[
            hd.sr.Measurement(name=codes.SCT.Diameter, value=diameter, unit=codes.UCUM.Millimeter,
                              derivation=codes.SCT.Maximum),
            hd.sr.Measurement(name=codes.SCT.Diameter, value=round(diameter * 0.8, 2), unit=codes.UCUM.Millimeter,
                              derivation=codes.SCT.Mean),
            hd.sr.Measurement(name=codes.SCT.Area, value=round(np.pi * (diameter / 2) ** 2, 1),
                              unit=codes.UCUM.SquareMillimeter),
        ])


def _volumetric_group(seg: Dataset, images: Sequence[Dataset], rng: random.Random, seed: str
                      ) -> hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations:
    """The segmented lesion: its volume, on the segmentation and the series it was drawn on."""
    segment = hd.sr.ReferencedSegment(
        sop_class_uid=seg.SOPClassUID, sop_instance_uid=seg.SOPInstanceUID, segment_number=1,
        source_series=hd.sr.SourceSeriesForSegmentation(images[0].SeriesInstanceUID))
    return hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(uid=_uid(seed, "lesion"), identifier="Lesion 1"),
        referenced_segment=segment, finding_type=codes.SCT.Neoplasm, algorithm_id=ALGORITHM,
        finding_sites=[hd.sr.FindingSite(codes.SCT.Lung)],
        measurements=[hd.sr.Measurement(name=codes.SCT.Volume, value=float(rng.randrange(400, 9000)),
                                        unit=codes.UCUM.CubicMillimeter)])


def measurement_report(images: Sequence[Dataset], series_uid: str, sop_uid: str, seg: Dataset | None,
                       seed: str) -> Dataset:
    """A TID 1500 report: two planar nodule ROIs on images of the series, and the volume of the segment
    of ``seg`` when one is given."""
    rng = random.Random(seed)
    groups: list[hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations
                 | hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations] = [
        _planar_group(images[0], 1, rng, seed), _planar_group(images[-1], 2, rng, seed)]
    if seg is not None:
        groups.append(_volumetric_group(seg, images, rng, seed))
    report = hd.sr.MeasurementReport(observation_context=_context(seed),
                                     procedure_reported=codes.LN.CTUnspecifiedBodyRegion,
                                     imaging_measurements=groups)
    document = hd.sr.Comprehensive3DSR(
        evidence=[*images, *([seg] if seg is not None else [])], content=report[0], series_instance_uid=series_uid,
        series_number=90, sop_instance_uid=sop_uid, instance_number=1, manufacturer=_MANUFACTURER,
        is_complete=True, series_description="CAD measurements")
    return _dated(document, images)


def _num(name: hd.sr.CodedConcept, value: float, unit: str) -> hd.sr.NumContentItem:
    return hd.sr.NumContentItem(name=name, value=value, unit=hd.sr.CodedConcept(unit, "UCUM", unit),
                                relationship_type=hd.sr.RelationshipTypeValues.CONTAINS)


def _event(number: int, rng: random.Random, seed: str) -> hd.sr.ContainerContentItem:
    """One CT irradiation event (TID 10013): protocol, region, UID, parameters and dose."""
    contains = hd.sr.RelationshipTypeValues.CONTAINS
    parameters = hd.sr.ContainerContentItem(name=codes.DCM.CTAcquisitionParameters, relationship_type=contains)
    parameters.ContentSequence = [_num(codes.DCM.ExposureTime, round(rng.uniform(2, 20), 2), "s"),
                                  _num(codes.DCM.ScanningLength, float(rng.randrange(150, 600)), "mm")]
    dose = hd.sr.ContainerContentItem(name=codes.DCM.CTDose, relationship_type=contains)
    ctdi = round(rng.uniform(2, 25), 2)
    dose.ContentSequence = [_num(_MEAN_CTDIVOL, ctdi, "mGy"), _num(codes.DCM.DLP, round(ctdi * 35, 1), "mGy.cm")]
    event = hd.sr.ContainerContentItem(name=codes.DCM.CTAcquisition, relationship_type=contains)
    event.ContentSequence = [
        hd.sr.TextContentItem(name=codes.DCM.AcquisitionProtocol, value=f"Chest routine {number}",
                              relationship_type=contains),
        hd.sr.CodeContentItem(name=codes.DCM.TargetRegion, value=codes.SCT.Chest, relationship_type=contains),
        hd.sr.UIDRefContentItem(name=codes.DCM.IrradiationEventUID, value=_uid(seed, "event", number),
                                relationship_type=contains),
        parameters, dose]
    return event


def dose_report(images: Sequence[Dataset], series_uid: str, sop_uid: str, events: int, seed: str) -> Dataset:
    """A CT radiation dose report (TID 10011): the accumulated dose and ``events`` irradiation events."""
    rng = random.Random(seed)
    contains = hd.sr.RelationshipTypeValues.CONTAINS
    acquisitions = [_event(number, rng, seed) for number in range(1, events + 1)]
    total = sum(float(e.ContentSequence[4].ContentSequence[1].MeasuredValueSequence[0].NumericValue)
                for e in acquisitions)
    accumulated = hd.sr.ContainerContentItem(name=codes.DCM.CTAccumulatedDoseData, relationship_type=contains)
    accumulated.ContentSequence = [
        hd.sr.NumContentItem(name=codes.DCM.TotalNumberOfIrradiationEvents, value=events,
                             unit=hd.sr.CodedConcept("{events}", "UCUM", "events"), relationship_type=contains),
        _num(codes.DCM.CTDoseLengthProductTotal, round(total, 1), "mGy.cm")]
    root = hd.sr.ContainerContentItem(name=codes.DCM.XRayRadiationDoseReport, template_id="10011")
    root.ContentSequence = [accumulated, *acquisitions]
    document = hd.sr.ComprehensiveSR(
        evidence=images, content=root, series_instance_uid=series_uid, series_number=91, sop_instance_uid=sop_uid,
        instance_number=1, manufacturer=_MANUFACTURER, is_complete=True, series_description="Dose report")
    document.SOPClassUID = document.file_meta.MediaStorageSOPClassUID = DOSE_REPORT_CLASS
    return _dated(document, images)


def segmentation(images: Sequence[Dataset], series_uid: str, sop_uid: str, seed: str) -> Dataset:
    """A binary segmentation of one lesion on the series, made by the synthetic CAD."""
    sources = [copy.deepcopy(image) for image in images]
    for source in sources:
        source.Rows = source.Columns = max(int(source.Rows or 0), 8)
    mask = np.zeros((len(sources), int(sources[0].Rows), int(sources[0].Columns)), dtype=np.uint8)
    mask[:, 2:6, 2:6] = 1
    description = hd.seg.SegmentDescription(
        segment_number=1, segment_label="Lesion 1",
        segmented_property_category=codes.SCT.MorphologicallyAbnormalStructure,
        segmented_property_type=codes.SCT.Neoplasm, algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
        algorithm_identification=hd.AlgorithmIdentificationSequence(
            name=_ALGORITHM_NAME, family=codes.DCM.ArtificialIntelligence, version=_ALGORITHM_VERSION),
        anatomic_regions=[codes.SCT.Lung])
    seg = hd.seg.Segmentation(
        source_images=sources, pixel_array=mask, segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=[description], series_instance_uid=series_uid, series_number=92,
        sop_instance_uid=sop_uid, instance_number=1, manufacturer=_MANUFACTURER,
        manufacturer_model_name="synthetic CAD", software_versions=_ALGORITHM_VERSION, device_serial_number="0")
    seg.DimensionOrganizationSequence[0].DimensionOrganizationUID = _uid(seed, "dimensions")
    for index in seg.DimensionIndexSequence:
        index.DimensionOrganizationUID = seg.DimensionOrganizationSequence[0].DimensionOrganizationUID
    return _dated(seg, images)


def algorithm_result_rows(series_uid: str, seed: str, day: dt.date) -> list[list[object]]:
    """An AI product's results for one series (see features.algorithm_results): a finding with its size,
    computed the day the images were taken."""
    rng = random.Random(seed)
    when = f"{day.isoformat()}T23:00:00"
    finding = f"{seed}-1"
    system = "urn:example:synthetic-lung-ai:2.0"
    return [[series_uid, "SNOMED", "81827009", round(rng.uniform(3, 30), 1), "", "", "mm", finding, system, when],
            [series_uid, "SNOMED", "27925004", "", "SNOMED", "27925004", "", finding, system, when]]
