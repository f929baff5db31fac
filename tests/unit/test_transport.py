"""Transport: reading first blocks ahead, every file gets its bytes or its own error, later ranges still work."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from micdm import transport
from micdm.dicom.reader import PERMANENT_ERRORS
from micdm.transport import opener, read_first_blocks, with_first_block


@pytest.fixture
def three_files(tmp_path: Path) -> tuple[list[str], list[int]]:
    small, large = tmp_path / "small.bin", tmp_path / "large.bin"
    small.write_bytes(b"abc")
    large.write_bytes(bytes(range(256)) * 10)
    return [str(large), str(tmp_path / "gone.bin"), str(small)], [2560, 100, 3]


def test_first_blocks_on_a_network_mount_are_read_in_order_with_errors_in_place(
        three_files: tuple[list[str], list[int]], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(transport, "on_network_mount", lambda folder: True)
    paths, sizes = three_files
    blocks = read_first_blocks(paths, sizes, 1000, {}, 4)
    assert blocks[0] == Path(paths[0]).read_bytes()[:1000]
    assert isinstance(blocks[1], FileNotFoundError)
    assert blocks[2] == b"abc"


def test_first_blocks_on_a_local_disk_are_left_to_the_reader_but_errors_are_not(
        three_files: tuple[list[str], list[int]]) -> None:
    paths, sizes = three_files
    blocks = read_first_blocks(paths, sizes, 1000, {}, 4)
    assert blocks[0] is None and blocks[2] is None
    assert isinstance(blocks[1], FileNotFoundError)
    assert opener(paths[0], {})(0, 1000) == Path(paths[0]).read_bytes()[:1000]


def test_network_mounts_are_told_from_local_disks_by_the_mount_table() -> None:
    mounts = transport.parse_mounts(
        "rootfs / ext4 rw 0 0\n"
        "fuse-daemon /Volumes fuse rw 0 0\n"
        "nas:/export /pacs/archive nfs4 rw 0 0\n"
        "scratch /pacs/archive/local\\040disk xfs rw 0 0\n")
    assert transport.on_network_mount("/Volumes/main/imaging/raw", mounts)
    assert transport.on_network_mount("/pacs/archive/2024", mounts)
    assert not transport.on_network_mount("/pacs/archive/local disk/2024", mounts)
    assert not transport.on_network_mount("/pacs/archive2", mounts)
    assert not transport.on_network_mount("/data/dicom", mounts)


def test_with_first_block_serves_the_start_once_then_reads(tmp_path: Path) -> None:
    path = tmp_path / "f.bin"
    path.write_bytes(bytes(range(200)))
    calls: list[tuple[int, int]] = []
    base = opener(str(path), {})

    def counting(start: int, end: int) -> bytes:
        calls.append((start, end))
        return base(start, end)

    fetch = with_first_block(path.read_bytes()[:100], counting)
    assert fetch(0, 100) == bytes(range(100)) and calls == []
    assert fetch(100, 150) == bytes(range(100, 150)) and calls == [(100, 150)]
    again = with_first_block(path.read_bytes()[:100], counting)
    assert again(0, 120) == bytes(range(120)) and calls[-1] == (100, 120)


def test_with_first_block_raises_the_stored_error_then_retries() -> None:
    fetch = with_first_block(ConnectionError("reset"), lambda start, end: b"x" * (end - start))
    with pytest.raises(ConnectionError):
        fetch(0, 4)
    assert fetch(0, 4) == b"xxxx"  # the reader's retry goes to the storage


def test_an_object_store_clients_connection_error_is_a_storage_error() -> None:
    """The Azure SDK's connection error is no OSError: it must still reach the reader as one, which retries
    it and quarantines the file as storage_error (re-read next run), not as a damaged file."""
    from azure.core.exceptions import ServiceRequestError

    error = transport._as_storage_error(ServiceRequestError("Cannot connect to host 127.0.0.1:1"))
    assert isinstance(error, OSError) and not isinstance(error, PERMANENT_ERRORS)
    assert str(error).startswith("ServiceRequestError: Cannot connect")
    missing = FileNotFoundError("gone")
    assert transport._as_storage_error(missing) is missing


def test_a_chunk_whose_every_first_block_failed_finds_the_store_down() -> None:
    from micdm.extract import _OutageBreaker

    down = OSError("ServiceRequestError: Cannot connect")
    tried: list[str] = []

    def read_one(row: dict, first: object) -> dict:
        tried.append(row["path"])
        return {**row, "reason": "storage_error"}

    local = _OutageBreaker()
    local.see_first_blocks(["/data/a.dcm", "/data/b.dcm"], [down, down])
    local.read(read_one, {"path": "/data/a.dcm"}, down)
    assert tried == ["/data/a.dcm"], "a local file's error is the reader's to judge"

    remote = _OutageBreaker()
    remote.see_first_blocks(["abfss://c@a.dfs.core.windows.net/a.dcm", "gs://b/b.dcm"], [down, b"DICM"])
    assert remote.failing == 0, "one first block came back: the store is up"
    remote.see_first_blocks(["abfss://c@a.dfs.core.windows.net/a.dcm"], [down])
    verdict = remote.read(read_one, {"path": "abfss://c@a.dfs.core.windows.net/a.dcm"}, down)
    assert tried == ["/data/a.dcm"], "the store is down: no file is retried"
    assert verdict["reason"] == "storage_error" and "read again next run" in verdict["message"]


def test_the_azure_sdks_retry_settings_reach_every_read() -> None:
    """adlfs takes retry_total among its options but hands it to no request: micdm adds it to each read's."""
    pytest.importorskip("adlfs", reason="the azure extra (adlfs) is not installed")
    from micdm.sources import open_filesystem

    connection = ("DefaultEndpointsProtocol=http;AccountName=micdmunit;AccountKey=a2V5;"
                  "BlobEndpoint=http://127.0.0.1:9/micdmunit;")
    fs, path = open_filesystem("abfs://dicom/export/0001.dcm", {"connection_string": connection, "retry_total": 0})
    assert path == "dicom/export/0001.dcm"
    assert fs._timeout_kwargs["retry_total"] == 0
    plain, _ = open_filesystem("abfs://dicom/x.dcm", {"connection_string": connection})
    assert "retry_total" not in plain._timeout_kwargs


def test_a_gcs_source_tries_each_request_as_often_as_its_retries_option_says() -> None:
    """gcsfs fixes six tries per request (about 30 s of backing off); ``retries`` bounds them."""
    pytest.importorskip("gcsfs", reason="the gcs extra (gcsfs) is not installed")
    from micdm.sources import open_filesystem

    closed = {"endpoint_url": "http://127.0.0.1:9", "token": "anon"}  # nothing listens on the discard port
    fs, _ = open_filesystem("gs://bucket/export/0001.dcm", {**closed, "retries": 1})
    started = time.monotonic()
    with pytest.raises(OSError):
        fs.info("gs://bucket/export/0001.dcm")
    assert time.monotonic() - started < 1.0, "one try, no backing off"
    plain, _ = open_filesystem("gs://bucket/export/0001.dcm", closed)
    assert "_request" not in vars(plain), "without the option, gcsfs's own six tries"
