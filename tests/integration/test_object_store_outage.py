"""The object store (a real SeaweedFS, fake-gcs-server, Azurite) goes away: a clear failure or quarantine,
never silent loss."""

from __future__ import annotations

from pathlib import Path

import pytest

import micdm.extract
from micdm.config import load_settings
from micdm.errors import SourceError
from micdm.extract import extract
from micdm.synth import generate
from micdm.tables import TableLocator, read_table

from support.servers import OBJECT_STORES, ObjectStore
from support.warehouse import new_tables

REPO = Path(__file__).resolve().parents[2]


#: Each client's own retries, bounded so that an outage is seen in seconds: botocore's (one attempt, 2 s to
#: connect), gcsfs's (one try per request), the Azure SDK's for reads (none).
_BOUNDED_RETRIES = {"s3": {"config_kwargs": {"retries": {"max_attempts": 1}, "connect_timeout": 2}},
                    "gs": {"retries": 1}, "abfss": {"retry_total": 0}}

#: Stores whose client retries a failed listing for minutes whatever the options: adlfs hands the Azure SDK
#: no options when it lists, and the SDK retries each of the listing's two requests three times, backing
#: off from 15 s. Their outage before the listing is not waited for here; the outage while reading is.
_LISTING_RETRIES_UNBOUNDED = {"abfss"}


@pytest.fixture(params=list(OBJECT_STORES))
def store(request, tmp_path: Path):
    """An object store of this test's own, which it may stop and start again (same ports, same data)."""
    kind = OBJECT_STORES[request.param]
    if kind.missing:
        pytest.skip(kind.missing)
    server = kind(tmp_path / kind.name).start()
    yield server
    server.stop()


def test_an_outage_is_quarantined_for_retry_and_the_next_run_recovers(spark, store: ObjectStore, tmp_path: Path,
                                                                       monkeypatch, reliability) -> None:
    generate(tmp_path / "export", patients=1, seed=9, pixels="none")
    files = store.put(tmp_path / "export" / "dicom", "export")
    settings = load_settings(REPO / "conf" / "local.yml", [
        f"storage.warehouse={tmp_path / 'warehouse'}", "extract.max_retries=2",
        *store.source_settings("export", **_BOUNDED_RETRIES[store.scheme])])
    locator = TableLocator.of(settings)
    new_tables(spark, locator)

    if store.scheme not in _LISTING_RETRIES_UNBOUNDED:
        store.stop()  # down before the listing: a clear error, and nothing written
        with pytest.raises(SourceError, match=f"cannot list {store.url('export')}"):
            extract(spark, locator, settings)
        assert read_table(spark, locator, "file_inventory").count() == 0
        store.start()

    real_listing = micdm.extract.list_files

    def listing_then_outage(sources):  # down after the listing, while the files are read
        found = list(real_listing(sources))
        store.stop()
        return found

    monkeypatch.setattr(micdm.extract, "list_files", listing_then_outage)
    outage = extract(spark, locator, settings)
    monkeypatch.setattr(micdm.extract, "list_files", real_listing)
    assert (outage.discovered, outage.instances, outage.quarantined) == (len(files), 0, len(files))
    quarantine = read_table(spark, locator, "dicom_quarantine").collect()
    assert {r.reason for r in quarantine} == {"storage_error"} and len(quarantine) == len(files), quarantine[0].message
    assert all("object store" in r.message or "Connect" in r.message for r in quarantine), quarantine[0].message
    leaked = [r.message for r in quarantine
              if (store.secret and store.secret in r.message) or "Signature=" in r.message]
    assert not leaked, "a credential in a message"

    store.start()
    recovered = extract(spark, locator, settings)
    assert (recovered.to_read, recovered.instances, recovered.quarantined) == (len(files), len(files), 0)
    assert read_table(spark, locator, "dicom_quarantine").count() == 0
    assert read_table(spark, locator, "dicom_instance").count() == len(files)
    reliability.record(f"{store.scheme}_outage", inputs_tried=len(files), accounted_for=recovered.instances,
                       outages_survived=1 if store.scheme in _LISTING_RETRIES_UNBOUNDED else 2)
