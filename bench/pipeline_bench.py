"""The whole pipeline on synthetic archives of three sizes, each run as a user runs it: a fresh `micdm run`.

Reproduce with ``make bench-pipeline`` (or ``.venv/bin/python bench/pipeline_bench.py``; ``--sizes small``
for one size). Figures go to bench/results/pipeline.json and bench/results/pipeline.md after each size;
nothing here passes or fails a test.

Sizes measured in an earlier run stay in the results until measured again. Per size: ``micdm synth``
(headers only, ``synth.pixels=none``, ``max_instances_per_series`` to get many series cheaply) with 1 %
of the patients' folders held back, then five runs, each a new process: full (first run on an empty
warehouse), nothing new, 1 % new files (the held-back folders arrive), 1 % of the site's procedures changed
(their date moved by a day, as a site reload would), and a reload of the site's visit_occurrence,
measurement and observation (each written again whole: 1 % of the visits three days wider, 1 % of the rows
micdm wrote in the other two gone, as an ETL that truncates and inserts drops them). For each run: seconds
and Spark jobs per stage (from the CLI's stage table), wall time of the process, and the peak resident
memory of the JVM (driver and local executor) and of the largest Python worker, and the JVM's CPU seconds
by kind of thread, sampled from /proc every half second (Linux only).

Beside the fresh processes, the 1 % run is replayed in one process, twice, each time on a copy of the
warehouse as it was before that run: the second replay's stage seconds are the work a warm JVM still does,
and their difference from the fresh process's is what the cold JVM costs that run.

The report ends with how each run's stages grow from one measured size to the next: the ratio, and the
seconds added per 10,000 files, whose share of what the full run adds is the run's share of a full run
at an archive large enough that no fixed cost counts.
"""

from __future__ import annotations

import argparse
import datetime as dt
import itertools
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from figures import machine_speed

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "bench" / "results"
MICDM = [sys.executable, "-m", "micdm.cli"]
#: name -> (patients, max_instances_per_series)
SIZES = {"small": (300, 16), "medium": (1000, 24), "large": (3000, 24)}
RUNS = ("full", "nothing new", "1% new files", "1% procedures changed", "site reload")
#: The 1 % run replayed in a warm process (replay_warm): no wall time or memory of its own.
_WARM = "1% new files, warm process"
_STAGE_LINE = re.compile(r"^(\w+)\s+([\d.]+)s\s+(\d+)\s")


#: JVM threads by what they do, from the names the JVM gives them (/proc/<pid>/task/<tid>/comm, 15 characters).
_THREAD_KINDS = (("jit", re.compile(r"^C[12] CompilerThre")), ("gc", re.compile(r"^(GC Thread|VM Thread|G1 )")),
                 ("tasks", re.compile(r"^Executor task")))


def _thread_kind(name: str) -> str:
    return next((kind for kind, pattern in _THREAD_KINDS if pattern.match(name)), "driver")


class _ProcessSampler(threading.Thread):
    """Largest resident set of the JVM and of one Python worker under a process, and the JVMs' CPU seconds
    by kind of thread (JIT compilers, garbage collector, Spark tasks, the rest: the driver's planning and
    py4j), sampled from /proc every half second (the last half second of a thread is not seen)."""

    def __init__(self, root: int) -> None:
        super().__init__(daemon=True)
        self.root, self.jvm, self.worker = root, 0, 0
        self.threads: dict[tuple[int, str], tuple[str, float]] = {}
        self.running = True
        self._tick = os.sysconf("SC_CLK_TCK")

    def _tree(self) -> list[int]:
        parents: dict[int, int] = {}
        for entry in os.listdir("/proc"):
            if entry.isdigit():
                try:
                    stat = Path(f"/proc/{entry}/stat").read_text()
                    parents[int(entry)] = int(stat.rsplit(")", 1)[1].split()[1])
                except (OSError, ValueError, IndexError):
                    continue
        found, frontier = [], [self.root]
        while frontier:
            pid = frontier.pop()
            found.append(pid)
            frontier.extend(child for child, parent in parents.items() if parent == pid)
        return found

    def _sample_threads(self, pid: int) -> None:
        try:
            tasks = os.listdir(f"/proc/{pid}/task")
        except OSError:
            return
        for task in tasks:
            try:
                name = Path(f"/proc/{pid}/task/{task}/comm").read_text().strip()
                fields = Path(f"/proc/{pid}/task/{task}/stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            self.threads[(pid, task)] = (name, (int(fields[11]) + int(fields[12])) / self._tick)

    def jvm_cpu(self) -> dict[str, float]:
        """CPU seconds of the JVMs' threads by kind."""
        totals = dict.fromkeys((*(kind for kind, _ in _THREAD_KINDS), "driver"), 0.0)
        for name, seconds in self.threads.values():
            totals[_thread_kind(name)] += seconds
        return {kind: round(seconds, 1) for kind, seconds in totals.items()}

    def run(self) -> None:
        while self.running:
            for pid in self._tree():
                if pid == self.root:
                    continue
                try:
                    command = Path(f"/proc/{pid}/cmdline").read_bytes()
                    status = Path(f"/proc/{pid}/status").read_text()
                except OSError:
                    continue
                rss = next((int(line.split()[1]) * 1024 for line in status.splitlines()
                            if line.startswith("VmRSS:")), 0)
                if b"java" in command.split(b"\0")[0]:
                    self.jvm = max(self.jvm, rss)
                    self._sample_threads(pid)
                elif b"python" in command:
                    self.worker = max(self.worker, rss)
            time.sleep(0.5)


def run_cli(*args: str, cwd: Path) -> dict:
    """Run the CLI in a new process; its wall time, stage table, peak memory and JVM CPU by kind of thread,
    with the machine's speed just before it (figures.machine_speed)."""
    speed = machine_speed()
    started = time.monotonic()
    process = subprocess.Popen([*MICDM, *args], cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    sampler = _ProcessSampler(process.pid)
    sampler.start()
    out, err = process.communicate()
    sampler.running = False
    sampler.join()
    if process.returncode != 0:
        raise RuntimeError(f"micdm {' '.join(args)} failed ({process.returncode}):\n{err[-3000:]}")
    stages = {m.group(1): {"seconds": float(m.group(2)), "jobs": int(m.group(3))}
              for m in map(_STAGE_LINE.match, out.splitlines()) if m}
    return {"wall_seconds": round(time.monotonic() - started, 1), "stages": stages,
            "jvm_peak_mb": round(sampler.jvm / 2**20), "python_worker_peak_mb": round(sampler.worker / 2**20),
            "jvm_cpu_seconds": sampler.jvm_cpu(), "machine_speed_seconds": speed}


def stages_total(figures: dict) -> float:
    """A run's seconds over all its stages (run_cli's ``stages``), to a tenth."""
    return round(sum(stage["seconds"] for stage in figures["stages"].values()), 1)


def shift_procedures(warehouse: str) -> int:
    """Move 1 % of the site's procedures (every hundredth id below micdm's block) by a day, as the site's
    ETL would; returns how many moved. micdm's own rows stay as micdm wrote them."""
    from micdm.config import load_settings
    from micdm.spark import get_spark
    from micdm.tables import TableLocator, delta_table

    settings = load_settings(REPO / "conf" / "local.yml", [f"storage.warehouse={warehouse}"])
    spark = get_spark(settings.spark)
    table = delta_table(spark, TableLocator.of(settings), "procedure_occurrence")
    block = settings.storage.site_id_block("procedure_occurrence")
    condition = f"procedure_occurrence_id % 100 = 0 AND procedure_occurrence_id < {block}"
    moved = table.toDF().where(condition).count()
    table.update(condition, {"procedure_date": "date_add(procedure_date, 1)"})
    return moved


def widen_visits(spark: Any, locator: Any) -> int:
    """Write the site's visit_occurrence again whole, as a site's ETL reloads it, with every hundredth visit
    (by id) three days wider on each side; returns how many."""
    from pyspark.sql import functions as F

    from micdm.tables import overwrite, read_table

    visits = read_table(spark, locator, "visit_occurrence").localCheckpoint()
    wider = F.col("visit_occurrence_id") % 100 == 0
    overwrite(locator, "visit_occurrence", visits.withColumns({
        "visit_start_date": F.when(wider, F.date_sub("visit_start_date", 3)).otherwise(F.col("visit_start_date")),
        "visit_end_date": F.when(wider, F.date_add("visit_end_date", 3)).otherwise(F.col("visit_end_date"))}))
    return visits.where(wider).count()


def reload_site(warehouse: str) -> str:
    """Write the site's visit_occurrence, measurement and observation again whole, as a site's ETL reloads
    them: every hundredth visit three days wider, every hundredth row micdm wrote in the other two gone (by
    id); returns how many of each, as JSON."""
    from pyspark.sql import functions as F

    from micdm.config import load_settings
    from micdm.ids import allocated_ids
    from micdm.spark import get_spark
    from micdm.tables import TableLocator, overwrite, read_table

    settings = load_settings(REPO / "conf" / "local.yml", [f"storage.warehouse={warehouse}"])
    spark = get_spark(settings.spark)
    locator = TableLocator.of(settings)
    changed = {"visits_widened": widen_visits(spark, locator)}
    for table in ("measurement", "observation"):
        key = f"{table}_id"
        rows = read_table(spark, locator, table).localCheckpoint()
        gone = allocated_ids(spark, locator, table, key).where(F.col(key) % 100 == 0)
        overwrite(locator, table, rows.join(gone, key, "left_anti"))
        changed[f"{table}_rows_dropped"] = rows.join(gone, key, "left_semi").count()
    return json.dumps(changed)


def replay_warm(folder: str) -> dict:
    """The 1 % run again, twice in this process, each on a copy of the warehouse saved before it
    (``before_new``); the second run's stages, as the CLI's table gives them."""
    from micdm.config import load_settings
    from micdm.pipeline import run_pipeline
    from micdm.spark import get_spark

    base = Path(folder)
    replay = base / "replay"
    settings = load_settings(REPO / "conf" / "local.yml", [
        f"storage.warehouse={replay}", f"sources.roots=[{base / 'export' / 'dicom'}]", "report.enabled=false"])
    spark = get_spark(settings.spark)
    for _ in range(2):
        shutil.rmtree(replay, ignore_errors=True)
        shutil.copytree(base / "before_new", replay)
        stages = run_pipeline(spark, settings)
    shutil.rmtree(replay)
    return {"stages": {r.stage: {"seconds": round(r.seconds, 1), "jobs": r.spark_jobs} for r in stages}}


def _helper(*args: str) -> str:
    """The last line this script prints when run as a helper process with ``args``."""
    done = subprocess.run([sys.executable, __file__, *args], capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{Path(__file__).name} {' '.join(args)} failed ({done.returncode}):\n{done.stderr[-3000:]}")
    return done.stdout.strip().splitlines()[-1]


def cli_arguments(folder: Path, patients: int, cap: int) -> list[str]:
    """The CLI's arguments for a size's synthetic export, warehouse and reports, all under ``folder``."""
    return ["--config", str(REPO / "conf" / "local.yml"), f"storage.warehouse={folder / 'warehouse'}",
            f"synth.out={folder / 'export'}", f"synth.patients={patients}", "synth.pixels=none",
            f"synth.max_instances_per_series={cap}", f"sources.roots=[{folder / 'export' / 'dicom'}]",
            f"report.folder={folder / 'reports'}"]


def hold_back(folder: Path) -> list[Path]:
    """Move every hundredth patient's folder out of the export under ``folder``, beside it; their places."""
    held = sorted((folder / "export" / "dicom").iterdir())[::100]
    for path in held:
        shutil.move(path, folder / path.name)
    return held


def bring_back(folder: Path, held: list[Path]) -> int:
    """Return the folders hold_back moved to their places; the files they bring."""
    arriving = sum(1 for path in held for _ in (folder / path.name).rglob("*.dcm"))
    for path in held:
        shutil.move(folder / path.name, path)
    return arriving


def _size(name: str, patients: int, cap: int, work: Path) -> dict:
    folder = work / name
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    common = cli_arguments(folder, patients, cap)
    started = time.monotonic()
    run_cli("synth", *common, cwd=folder)
    synth_seconds = time.monotonic() - started
    held = hold_back(folder)
    files = sum(1 for _ in (folder / "export" / "dicom").rglob("*.dcm"))
    runs = {"full": run_cli("run", *common, cwd=folder), "nothing new": run_cli("run", *common, cwd=folder)}
    arriving = bring_back(folder, held)
    shutil.copytree(folder / "warehouse", folder / "before_new")
    runs["1% new files"] = run_cli("run", *common, cwd=folder)
    replayed = _helper("--warm-replay", str(folder))
    shutil.rmtree(folder / "before_new")
    moved = _helper("--shift-procedures", str(folder / "warehouse"))
    runs["1% procedures changed"] = run_cli("run", *common, cwd=folder)
    reloaded = json.loads(_helper("--reload-site", str(folder / "warehouse")))
    runs["site reload"] = run_cli("run", *common, cwd=folder)
    return {"date": dt.date.today().isoformat(), "patients": patients, "max_instances_per_series": cap,
            "files_first_run": files,
            "files_arriving": arriving, "procedures_moved": int(moved), **reloaded,
            "synth_seconds": round(synth_seconds, 1),
            "runs": runs, _WARM: json.loads(replayed)}


def _markdown(results: dict) -> str:
    lines = [f"# Pipeline benchmark ({results['date']}: the last size measured)", "",
             f"Command: `{results['command']}`. Machine: {results['machine']}. Every run is a fresh `micdm run` "
             "process; seconds per stage as the CLI prints them (jobs: Spark jobs the stage started); speed probe: "
             "seconds one core took for a fixed Python loop just before the run (bench/figures.py). "
             f"{_WARM}: the 1 % run again in one process after the same run on a copy of the same warehouse, "
             "so the JVM is warm: what a run costs without the cold JVM's toll.", ""]
    stages = ("vocabulary", "extract", "series", "link", "occurrence", "features", "publish", "quality")
    for name, size in results["sizes"].items():
        lines += [f"## {name}: {size['files_first_run'] + size['files_arriving']:,} files, {size['patients']:,} "
                  f"patients (max {size['max_instances_per_series']} instances per series), measured {size['date']}",
                  "",
                  "| run | wall s | " + " | ".join(stages)
                  + " | stages s | JVM peak MB | worker peak MB | speed probe s |",
                  "|---|---|" + "---|" * len(stages) + "---|---|---|---|"]
        if "visits_widened" in size:
            lines[-2:-2] = [f"Site reload: {size['visits_widened']:,} visits wider, "
                            f"{size['measurement_rows_dropped']:,} measurement and "
                            f"{size['observation_rows_dropped']:,} observation rows of micdm's gone.", ""]
        runs = _runs_of(size)
        for run, figures in runs.items():
            cells = [f"{figures['stages'][s]['seconds']:.1f} ({figures['stages'][s]['jobs']})"
                     if s in figures["stages"] else "-" for s in stages]
            measured = [figures.get(key, "-") for key in ("jvm_peak_mb", "python_worker_peak_mb",
                                                           "machine_speed_seconds")]
            lines.append(f"| {run} | {figures.get('wall_seconds', '-')} | " + " | ".join(cells)
                         + f" | {stages_total(figures):.1f} | " + " | ".join(map(str, measured)) + " |")
        full = sum(_stage_seconds(size, "full").values())
        shares = ", ".join(f"{run}: {sum(_stage_seconds(size, run).values()) / full:.0%}"
                           for run in (*RUNS[1:], _WARM) if run in runs)
        lines += ["", f"Share of the full run's stage seconds: {shares}.", ""]
    return "\n".join(lines + _growth(results["sizes"])) + "\n"


def _runs_of(size: dict) -> dict[str, dict]:
    """A size's runs by name, the warm replay (stored beside them) last."""
    return {**size["runs"], **({_WARM: size[_WARM]} if _WARM in size else {})}


def _stage_seconds(size: dict, run: str) -> dict[str, float]:
    return {stage: values["seconds"] for stage, values in _runs_of(size)[run]["stages"].items()}


def _growth(sizes: dict) -> list[str]:
    """How each run's stages grow from one measured size to the next, against the files: the issue's linear
    growth, and the seconds a run adds per 10,000 files, which decide its share of a full run at a site's
    scale, where the fixed cost no longer counts."""
    lines: list[str] = []
    measured = [name for name in SIZES if name in sizes]
    for smaller, larger in itertools.pairwise(measured):
        low, high = sizes[smaller], sizes[larger]
        files = [size["files_first_run"] + size["files_arriving"] for size in (low, high)]
        runs = [run for run in (*RUNS, _WARM) if all(run in _runs_of(size) for size in (low, high))]
        stages = [stage for stage in _stage_seconds(high, "full") if any(
            _stage_seconds(size, run).get(stage) for size in (low, high) for run in runs)]
        lines += [f"## Growth from {smaller} to {larger}: {files[1] / files[0]:.2f}x the files "
                  f"({files[0]:,} to {files[1]:,})", "",
                  "Each cell: the larger size's seconds over the smaller's, and the seconds added per 10,000 more "
                  "files.", "",
                  "| run | " + " | ".join(stages) + " | stages | share of the full run's added seconds |",
                  "|---|" + "---|" * (len(stages) + 2)]
        added_by_full = sum(_stage_seconds(high, "full").values()) - sum(_stage_seconds(low, "full").values())
        for run in runs:
            before, after = _stage_seconds(low, run), _stage_seconds(high, run)
            cells = [_grown(before.get(stage, 0.0), after.get(stage, 0.0), files) for stage in stages]
            total = _grown(sum(before.values()), sum(after.values()), files)
            added = sum(after.values()) - sum(before.values())
            share = f"{added / added_by_full:.0%}" if added_by_full > 0 else "-"
            lines.append(f"| {run} | " + " | ".join(cells) + f" | {total} | {share} |")
        lines.append("")
    return lines


def _grown(before: float, after: float, files: list[int]) -> str:
    per_ten_thousand = (after - before) / (files[1] - files[0]) * 10_000
    ratio = f"{after / before:.2f}x" if before else "-"
    return f"{ratio}, {per_ten_thousand:+.1f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default=",".join(SIZES), help=f"comma-separated, of {', '.join(SIZES)}")
    parser.add_argument("--work", default=None, help="scratch folder (default: a folder under the system temp)")
    parser.add_argument("--shift-procedures", metavar="WAREHOUSE", help=argparse.SUPPRESS)
    parser.add_argument("--warm-replay", metavar="FOLDER", help=argparse.SUPPRESS)
    parser.add_argument("--reload-site", metavar="WAREHOUSE", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.shift_procedures:
        print(shift_procedures(args.shift_procedures))
        return
    if args.reload_site:
        print(reload_site(args.reload_site))
        return
    if args.warm_replay:
        print(json.dumps(replay_warm(args.warm_replay)))
        return
    work = Path(args.work or Path(os.environ.get("TMPDIR", "/tmp")) / "micdm-pipeline-bench")
    stored = RESULTS / "pipeline.json"
    earlier = json.loads(stored.read_text())["sizes"] if stored.exists() else {}
    results: dict = {"date": dt.date.today().isoformat(), "command": "python bench/pipeline_bench.py [--sizes ...]",
                     "machine": f"{os.cpu_count()} cores, {platform.system()} {platform.machine()}",
                     "sizes": {name: earlier[name] for name in SIZES if name in earlier}}
    RESULTS.mkdir(parents=True, exist_ok=True)
    for name in args.sizes.split(","):
        results["sizes"][name] = _size(name, *SIZES[name], work)
        results["sizes"] = {size: results["sizes"][size] for size in SIZES if size in results["sizes"]}
        (RESULTS / "pipeline.json").write_text(json.dumps(results, indent=2) + "\n")
        (RESULTS / "pipeline.md").write_text(_markdown(results))
        print(_markdown(results))


if __name__ == "__main__":
    main()
