"""wadors_uri resolves: the demo files in a real Orthanc (DICOMweb plugin), each URI fetched back."""

from __future__ import annotations

import json
import urllib.request
from pathlib import Path

import pytest

from micdm.config import load_settings
from micdm.pipeline import run_pipeline
from micdm.synth import generate
from micdm.tables import TableLocator, load_csv, read_table

from support.servers import Orthanc, orthanc_binary
from support.warehouse import new_tables

REPO = Path(__file__).resolve().parents[2]
SERIES_UID_TAG = "0020000E"


def _get(url: str, accept: str) -> tuple[int, str, bytes]:
    request = urllib.request.Request(url, headers={"Accept": accept})
    with urllib.request.urlopen(request, timeout=30) as answer:
        return answer.status, answer.headers.get("Content-Type", ""), answer.read()


@pytest.fixture(scope="module")
def orthanc(tmp_path_factory):
    if orthanc_binary() is None:
        pytest.skip("Orthanc with its DICOMweb plugin is not installed: apt-get install orthanc orthanc-dicomweb "
                    "(.ci/run does)")
    with Orthanc(tmp_path_factory.mktemp("orthanc")) as server:
        yield server


def test_every_wadors_uri_resolves(spark, orthanc, tmp_path: Path) -> None:
    export = tmp_path / "export"
    generate(export, patients=4, seed=2, pixels="small")
    files = sorted((export / "dicom").rglob("*.dcm"))
    for path in files:
        assert orthanc.upload(path)["Status"] in ("Success", "AlreadyStored")
    settings = load_settings(REPO / "conf" / "local.yml", [
        f"storage.warehouse={tmp_path / 'warehouse'}", f"sources.roots=[{export / 'dicom'}]",
        f"occurrence.wadors_root={orthanc.dicomweb_root}/"])
    locator = TableLocator.of(settings)
    new_tables(spark, locator)
    for name in ("person", "visit_occurrence", "procedure_occurrence"):
        load_csv(spark, locator, name, str(export / "cdm" / f"{name}.csv"))
    run_pipeline(spark, settings)

    occurrences = read_table(spark, locator, "image_occurrence").collect()
    counts = {r.series_instance_uid: r.instance_count for r in read_table(spark, locator, "dicom_series").collect()}
    assert len(occurrences) >= 4
    for row in occurrences:
        assert row.wadors_uri == f"{orthanc.dicomweb_root}/studies/{row.image_study_uid}"
        status, content_type, body = _get(row.wadors_uri, 'multipart/related; type="application/dicom"')
        assert status == 200 and content_type.startswith("multipart/related") and row.image_series_uid.encode() in body
        status, _, body = _get(f"{row.wadors_uri}/series/{row.image_series_uid}/metadata", "application/dicom+json")
        instances = json.loads(body)
        assert status == 200 and len(instances) == counts[row.image_series_uid]
        assert {i[SERIES_UID_TAG]["Value"][0] for i in instances} == {row.image_series_uid}
