"""kill -9 of `micdm run` at several points, then a re-run: the tables equal an uninterrupted run's.

Each killed run is a real process group (the Python driver, its JVM and Python workers) sent SIGKILL
when its log shows it reached a point, optionally some seconds later, so the kill lands inside that
step. While one run is alive a second `micdm run` on the same warehouse is started: it must refuse.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from micdm.concurrency import run_concurrently
from micdm.config import load_settings
from micdm.pipeline import run_pipeline
from micdm.synth import generate, load_site
from micdm.tables import TableLocator, read_table

from support.snapshots import COMPARED, difference
from support.warehouse import new_tables

REPO = Path(__file__).resolve().parents[2]

#: (log line that arms the kill, seconds after it, where the kill lands)
KILLS = [
    (r"extract: \d+ files listed", 1.0, "mid-extract, while files are read"),
    (r"extract: writing", 0.3, "mid-write of dicom_instance / dicom_quarantine"),
    (r"series starting", 0.0, "between extract and series"),
    (r"link starting", 3.0, "mid-link (procedure_occurrence, id_map, series_link MERGEs)"),
    (r"occurrence starting", 1.5, "mid-MERGE of image_occurrence"),
    (r"features starting", 3.0, "mid-features (measurement, observation, image_feature)"),
]

def _cli(*args: str, **popen: object) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "micdm.cli", *args], text=True, start_new_session=True,
                            stdout=subprocess.DEVNULL, **popen)  # type: ignore[call-overload]


def _run_until_killed(args: list[str], pattern: str, delay: float, on_armed=None) -> tuple[int, str]:
    """Start `micdm run`, SIGKILL its process group ``delay`` s after a log line matches; returns (code, last line)."""
    process = _cli(*args, stderr=subprocess.PIPE)
    last = ""
    assert process.stderr is not None
    for line in process.stderr:
        if " micdm" in line:
            last = line.strip()
        if re.search(pattern, line):
            if on_armed is not None:
                on_armed()
            time.sleep(delay)
            os.killpg(process.pid, signal.SIGKILL)
            break
    process.stderr.close()
    return process.wait(timeout=120), last


def test_killed_runs_then_a_rerun_equal_an_uninterrupted_run(spark, tmp_path: Path, reliability) -> None:
    generate(tmp_path / "export", patients=4, seed=21, pixels="none")
    roots = f"sources.roots=[{tmp_path / 'export' / 'dicom'}]"

    def prepared(name: str):
        settings = load_settings(REPO / "conf" / "local.yml", [f"storage.warehouse={tmp_path / name}", roots])
        locator = TableLocator.of(settings)
        new_tables(spark, locator)
        load_site(spark, locator, tmp_path / "export")
        return settings, locator

    baseline_settings, baseline = prepared("uninterrupted")
    crashed_settings, crashed = prepared("crashed")

    args = ["run", "--config", str(REPO / "conf" / "local.yml"), f"storage.warehouse={tmp_path / 'crashed'}", roots]
    refused: list[subprocess.CompletedProcess[str]] = []

    def second_run() -> None:  # while a killed-to-be run holds the warehouse
        refused.append(subprocess.run([sys.executable, "-m", "micdm.cli", *args], capture_output=True, text=True,
                                      timeout=120, check=False))

    def killed_runs() -> list[tuple[str, str, float]]:
        landed = []
        for pattern, delay, where in KILLS:
            started = time.monotonic()
            code, last = _run_until_killed(args, pattern, delay,
                                           on_armed=second_run if where.startswith("mid-link") else None)
            assert code == -signal.SIGKILL, f"the run ended ({code}) before the kill {where}"
            landed.append((where, last, round(time.monotonic() - started, 1)))
        return landed

    # The uninterrupted run goes on in this session while the killed ones run in processes of their own: a
    # kill lands a set time after a log line of its run, so a slower run is still killed within its step.
    _, landed = run_concurrently(lambda: run_pipeline(spark, baseline_settings), killed_runs)

    assert len(refused) == 1 and refused[0].returncode == 2
    assert "another micdm run is writing to" in refused[0].stderr

    run_pipeline(spark, crashed_settings)  # the re-run after the last kill
    differences = {name: difference(read_table(spark, baseline, name), read_table(spark, crashed, name), name)
                   for name in COMPARED}
    assert {name: found for name, found in differences.items() if any(found)} == {}, \
        "(rows missing, extra, duplicated) after the kills"
    duplicates = sum(duplicated for _, _, duplicated in differences.values())
    occurrences = read_table(spark, crashed, "image_occurrence")
    assert occurrences.count() == read_table(spark, crashed, "series_link").where("exception_reason IS NULL").count()
    assert occurrences.join(read_table(spark, crashed, "image_feature"), "image_occurrence_id", "left_anti").count() \
        == 0, "every occurrence has its features after the kills"
    reliability.record("kill_recovery", kills_survived=len(landed), duplicates_found=duplicates,
                       concurrent_runs_refused=len(refused))
    print("kills landed:", *(f"{where} after {seconds}s: last log line {last!r}" for where, last, seconds in landed),
          sep="\n  ")


def test_a_stage_refuses_while_a_run_holds_the_warehouse(tmp_path: Path) -> None:
    """The lock is taken before Spark starts: the refusal names the holder and starts no JVM."""
    from micdm.errors import RunInProgressError
    from micdm.runlock import exclusive_run

    warehouse = tmp_path / "warehouse"
    settings = load_settings(REPO / "conf" / "local.yml", [f"storage.warehouse={warehouse}"])
    with exclusive_run(settings.storage):
        result = subprocess.run([sys.executable, "-m", "micdm.cli", "extract", f"storage.warehouse={warehouse}"],
                                capture_output=True, text=True, timeout=60, check=False)
        with pytest.raises(RunInProgressError), exclusive_run(settings.storage):  # taken once, by the entry point
            pass
    assert result.returncode == 2 and f"another micdm run is writing to {warehouse}" in result.stderr
    assert f"pid {os.getpid()}" in result.stderr
    assert not (warehouse / "micdm").exists(), "the refused run created no table"
    with exclusive_run(settings.storage):  # released on exit
        pass
