"""What a `micdm` process pays before its first row: starting Spark, with and without the class archive.

Reproduce with ``make bench-startup`` (or ``.venv/bin/python bench/startup_bench.py``, after ``micdm setup``
has made the archive). Figures go to bench/results/startup.json and bench/results/startup.md; nothing here
passes or fails a test.

Two measures, each a new process, the two ways alternating so that a machine's drift falls on both:
a session started and one Delta table counted (``session``), and ``micdm run`` on a small warehouse where
nothing is new (``nothing new``: Spark's start, the listing and the stage watermarks, no Spark job).
Without the archive means micdm's JVM flags given as the user's own (``spark.driver.extraJavaOptions``
= ``LOCAL_DEFAULTS``' flags), so nothing else differs.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

from figures import made_class_archive, scratch

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "bench" / "results"
MICDM = [sys.executable, "-m", "micdm.cli"]
#: A session started and one Delta table counted: argv is the table, the settings file, then overrides.
_SESSION = """
import sys
from micdm.config import load_settings
from micdm.spark import get_spark
get_spark(load_settings(sys.argv[2], sys.argv[3:]).spark).read.format("delta").load(sys.argv[1]).count()
"""


def _seconds(command: list[str]) -> float:
    started = time.monotonic()
    subprocess.run(command, check=True, capture_output=True, text=True)
    return round(time.monotonic() - started, 2)


def main() -> None:
    from micdm.spark import LOCAL_DEFAULTS

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--work", default=None, help="scratch folder (default: a folder under the system temp)")
    args = parser.parse_args()
    archive = made_class_archive()
    work = scratch(args.work, "micdm-startup-bench")
    common = ["--config", str(REPO / "conf" / "local.yml"), f"storage.warehouse={work / 'warehouse'}",
              f"synth.out={work / 'export'}", "synth.patients=4", "synth.pixels=none",
              f"sources.roots=[{work / 'export' / 'dicom'}]", "report.enabled=false"]
    subprocess.run([*MICDM, "synth", *common], check=True, capture_output=True)
    subprocess.run([*MICDM, "run", *common], check=True, capture_output=True)
    person = str(work / "warehouse" / "micdm" / "person")
    session = [sys.executable, "-c", _SESSION, person, str(REPO / "conf" / "local.yml")]
    flags = LOCAL_DEFAULTS["spark.driver.extraJavaOptions"]
    without_archive = f"spark.conf={{spark.driver.extraJavaOptions: '{flags}'}}"
    measures = {"session": session, "nothing new": [*MICDM, "run", *common]}
    figures: dict[str, dict[str, list[float]]] = {name: {"with archive": [], "without": []} for name in measures}
    for _ in range(args.repeats):
        for name, command in measures.items():
            figures[name]["with archive"].append(_seconds(command))
            figures[name]["without"].append(_seconds([*command, without_archive]))
    results = {"date": dt.date.today().isoformat(), "command": "python bench/startup_bench.py",
               "machine": f"{os.cpu_count()} cores, {platform.system()} {platform.machine()}",
               "archive_mb": round(archive.stat().st_size / 2**20), "seconds": figures}
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "startup.json").write_text(json.dumps(results, indent=2) + "\n")
    lines = [f"# Start-up benchmark ({results['date']})", "",
             f"Command: `{results['command']}`. Machine: {results['machine']}. Class archive: "
             f"{results['archive_mb']} MB. Seconds of wall time per new process, {args.repeats} of each, "
             "alternating.", "",
             "| measure | with archive, median | without, median | saved | runs with | runs without |",
             "|---|---|---|---|---|---|"]
    for name, runs in figures.items():
        with_archive, without = statistics.median(runs["with archive"]), statistics.median(runs["without"])
        lines.append(f"| {name} | {with_archive:.2f} | {without:.2f} | {without - with_archive:.2f} | "
                     f"{', '.join(map(str, runs['with archive']))} | {', '.join(map(str, runs['without']))} |")
    (RESULTS / "startup.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
