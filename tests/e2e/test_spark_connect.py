"""micdm's reading over Spark Connect (a real local Connect server), as on Databricks serverless compute.

A Connect session has no SparkContext: no accumulators, job groups or status tracker, and a wave of
tasks is sized without defaultParallelism. Delta's Python API over Connect needs Delta's Connect server
plugin, which Databricks runs and Maven Central does not serve for Delta 4.0, so the Delta writes are
not run here; the header reads and the task sizing are.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from pyspark.sql import functions as F

from micdm.config import Settings
from micdm.extract import read_headers

pytestmark = pytest.mark.slow

_OVER_CONNECT = '''
import json, os, sys
from pathlib import Path
os.environ["PYSPARK_PYTHON"] = sys.executable
from pyspark.sql import SparkSession
spark = SparkSession.builder.remote("local[2]").getOrCreate()
from micdm.config import Settings
from micdm.extract import _partitions, read_headers
from micdm.spark import classic_context
paths = json.loads(sys.argv[1])
files = spark.createDataFrame([(p, Path(p).stat().st_size, None, None) for p in paths],
                              "path string, file_size bigint, modification_time timestamp, etag string")
rows = read_headers(files, Settings()).select("path", "outcome", "sop_instance_uid", "header_digest").collect()
print("RESULT", json.dumps({
    "session": type(spark).__module__, "context": classic_context(spark) is None,
    "partitions": _partitions(spark, 10_000, 4096),
    "rows": sorted([r.path, r.outcome, r.sop_instance_uid, r.header_digest] for r in rows)}))
'''


def test_headers_read_over_spark_connect_match_a_classic_session(spark, shared: Path, tmp_path: Path) -> None:
    pytest.importorskip("grpc", reason="Spark Connect needs grpcio (the dev extra)")
    paths = sorted(str(p) for p in (shared / "data" / "dicom").rglob("*.dcm"))[:40]
    result = subprocess.run([sys.executable, "-c", _OVER_CONNECT, json.dumps(paths)], capture_output=True,
                            text=True, timeout=600, cwd=tmp_path, check=False)
    lines = [line for line in result.stdout.splitlines() if line.startswith("RESULT ")]
    assert lines, result.stderr[-3000:]
    found = json.loads(lines[0].removeprefix("RESULT "))
    assert found["session"].startswith("pyspark.sql.connect") and found["context"], "not a Connect session"
    assert found["partitions"] >= 1
    files = spark.createDataFrame([(p, Path(p).stat().st_size, None, None) for p in paths],
                                  "path string, file_size bigint, modification_time timestamp, etag string")
    classic = read_headers(files, Settings()).select("path", "outcome", "sop_instance_uid", "header_digest")
    expected = sorted([r.path, r.outcome, r.sop_instance_uid, r.header_digest] for r in classic.collect())
    assert found["rows"] == expected
    assert classic.where(F.col("outcome") == "instance").count() > 0
