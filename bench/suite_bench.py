"""Where the test suite's time goes: each test's wall seconds and the machine's CPU seconds while it ran.

Reproduce with ``make bench-suite`` (or ``.venv/bin/python bench/suite_bench.py``; arguments after ``--``
go to pytest, e.g. ``-- tests/unit``). Figures go to bench/results/suite.{json,md}; nothing here passes or
fails a test. The suite runs in this process as ``make test`` runs it (``python -m pytest`` with the
project's options; the tests find ../shared as they do under ``make test``), and the machine's busy CPU is read from
/proc/stat around each test: every process counts, the session's JVM and the processes a test starts
(``micdm`` runs, a standalone cluster, servers), so the machine should be otherwise idle. The CPU seconds
over the cores give a floor: the suite cannot take less wall time on this machine unless it does less work.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Generator
from pathlib import Path
from typing import Any

import pytest
from figures import machine_speed, stamp, write

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "bench" / "results"
#: Tests listed one by one in the report, the most CPU first.
LISTED = 15


def busy_cpu_seconds() -> float:
    """CPU seconds every core of the machine has spent busy since boot (all but idle and I/O wait)."""
    with open("/proc/stat", encoding="ascii") as stat:
        ticks = [int(field) for field in stat.readline().split()[1:]]
    return (sum(ticks) - ticks[3] - ticks[4]) / os.sysconf("SC_CLK_TCK")


class Recorder:
    """A pytest plugin: each test's wall and busy CPU seconds, setup and teardown included."""

    def __init__(self) -> None:
        self.tests: list[dict[str, Any]] = []

    @pytest.hookimpl(hookwrapper=True)
    def pytest_runtest_protocol(self, item: pytest.Item) -> Generator[None, None, None]:
        cpu, started = busy_cpu_seconds(), time.monotonic()
        yield
        self.tests.append({"test": item.nodeid, "wall_s": round(time.monotonic() - started, 1),
                           "cpu_s": round(busy_cpu_seconds() - cpu, 1)})


def _totals(tests: list[dict[str, Any]]) -> dict[str, float]:
    wall, cpu = sum(t["wall_s"] for t in tests), sum(t["cpu_s"] for t in tests)
    return {"tests": len(tests), "wall_s": round(wall, 1), "cpu_s": round(cpu, 1),
            "cores_busy": round(cpu / wall, 2) if wall else 0.0}


def _by_folder(tests: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    folders: dict[str, list[dict[str, Any]]] = {}
    for test in tests:
        folders.setdefault(test["test"].split("/")[1], []).append(test)
    totals = {name: _totals(found) for name, found in folders.items()}
    return dict(sorted(totals.items(), key=lambda kv: -kv[1]["cpu_s"]))


def _markdown(results: dict[str, Any]) -> str:
    run = results["run"]
    lines = [f"# Test suite: wall and CPU per test ({results['date']})", "",
             f"Command: `{results['command']}`. Machine: {results['machine']}. Speed probe: "
             f"{results['machine_speed_seconds']} s (bench/figures.py). pytest exit code {results['exit_code']}. "
             "CPU: the machine's busy seconds (/proc/stat) while each test ran, setup and teardown included: "
             "the session's JVM and every process a test starts.", "",
             f"The run: {run['wall_s']} s of wall time ({run['wall_s'] / 60:.1f} min), {run['cpu_s']} CPU-seconds, "
             f"{run['cores_busy']} of {results['cores']} cores busy on average. Were every core busy throughout, it "
             f"would still take {results['floor_s']} s ({results['floor_s'] / 60:.1f} min): a shorter suite on this "
             "machine has to do less work.", "",
             "| folder | tests | wall s | CPU s | cores busy |", "|---|---|---|---|---|"]
    lines += [f"| {name} | {t['tests']} | {t['wall_s']} | {t['cpu_s']} | {t['cores_busy']} |"
              for name, t in results["folders"].items()]
    lines += ["", f"The {LISTED} tests that took the most CPU:", "",
              "| test | wall s | CPU s | cores busy |", "|---|---|---|---|"]
    for test in sorted(results["tests"], key=lambda t: -t["cpu_s"])[:LISTED]:
        busy = test["cpu_s"] / test["wall_s"] if test["wall_s"] else 0.0
        lines.append(f"| `{test['test']}` | {test['wall_s']} | {test['cpu_s']} | {busy:.2f} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(RESULTS))
    parser.add_argument("pytest_args", nargs="*", help="passed to pytest (after --)")
    args = parser.parse_args()
    if not Path("/proc/stat").is_file():
        sys.exit("the suite bench reads the machine's CPU from /proc/stat (Linux)")
    speed = machine_speed()
    os.chdir(REPO)
    recorder = Recorder()
    cpu, started = busy_cpu_seconds(), time.monotonic()
    code = pytest.main(list(args.pytest_args), plugins=[recorder])  # pytest adds its ini options to the list
    wall, spent = time.monotonic() - started, busy_cpu_seconds() - cpu
    cores = os.cpu_count() or 1
    command = "python bench/suite_bench.py" + (" -- " + " ".join(args.pytest_args) if args.pytest_args else "")
    run = {"wall_s": round(wall, 1), "cpu_s": round(spent, 1), "cores_busy": round(spent / wall, 2)}
    write(Path(args.out), "suite", stamp(command, machine_speed_seconds=speed, exit_code=int(code), cores=cores,
                                         run=run, floor_s=round(spent / cores, 1), folders=_by_folder(recorder.tests),
                                         tests=recorder.tests), _markdown)


if __name__ == "__main__":
    main()
