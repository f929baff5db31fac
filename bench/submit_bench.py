"""What micdm's spark-submit settings (micdm.spark.SUBMIT_CONF) save a submitted run: the whole pipeline
(jobs/run_pipeline.py) on a Spark standalone cluster on this machine, with them and without.

Reproduce with ``make bench-submit`` (or ``.venv/bin/python bench/submit_bench.py``).
Figures go to bench/results/submit.json and bench/results/submit.md; nothing here passes or fails a test.

One synthetic archive (headers only) and the site's synthetic CDM, loaded once into a warehouse that each
run starts from a copy of. A master and one worker with two cores on 127.0.0.1, started as the tests start
them (tests/support/servers.py), and the submit command the tests use (tests/support/submit.py). Each round
submits once each way, the two ways alternating so that the machine's drift falls on both; per run, the
wall seconds of spark-submit.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import time

from figures import machine_speed, scratch, stamp, write
from pipeline_bench import REPO, run_cli

WAYS = ("micdm's settings", "Spark's defaults")


def _markdown(results: dict) -> str:
    lines = [f"# spark-submit benchmark ({results['date']})", "",
             f"Command: `{results['command']}`. Machine: {results['machine']}. `jobs/run_pipeline.py` submitted to a "
             f"standalone master and one two-core worker on this machine, {results['patients']} synthetic patients "
             f"({results['files']} files, headers only), a copy of the same loaded warehouse each time, "
             f"{results['repeats']} runs each way, alternating.", "",
             "| way | median wall s | runs (wall s) |", "|---|---|---|"]
    for way in WAYS:
        walls = [run["wall_seconds"] for run in results["runs"][way]]
        lines.append(f"| {way} | {round(statistics.median(walls), 1)} | {', '.join(map(str, walls))} |")
    lines += ["", f"micdm's settings: `{results['settings']}` (driver and executors).", ""]
    return "\n".join(lines)


def main() -> None:
    from micdm.spark import SUBMIT_CONF

    sys.path.insert(0, str(REPO / "tests"))  # the test cluster and submit command are not part of the package
    from support.servers import SparkStandalone
    from support.submit import package_zip, submit_command

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--patients", type=int, default=6)
    parser.add_argument("--work", default=None, help="scratch folder (default: a folder under the system temp)")
    args = parser.parse_args()
    work = scratch(args.work, "micdm-submit-bench")
    config = ["--config", str(REPO / "conf" / "local.yml")]
    roots = f"sources.roots=[{work / 'export' / 'dicom'}]"
    run_cli("synth", *config, f"synth.out={work / 'export'}", f"synth.patients={args.patients}", "synth.pixels=none",
            f"storage.warehouse={work / 'loaded'}", cwd=work)
    package = package_zip(work / "micdm.zip")
    runs: dict[str, list[dict]] = {way: [] for way in WAYS}
    with SparkStandalone(work / "cluster") as cluster:
        for _ in range(args.repeats):
            for way in WAYS:
                warehouse = work / "warehouse"
                shutil.rmtree(warehouse, ignore_errors=True)
                shutil.copytree(work / "loaded", warehouse)
                command, environment = submit_command(
                    cluster, package, REPO / "jobs" / "run_pipeline.py", *config, f"storage.warehouse={warehouse}",
                    roots, "report.enabled=false", conf=SUBMIT_CONF if way == WAYS[0] else {})
                speed, started = machine_speed(), time.monotonic()
                done = subprocess.run(command, env=environment, cwd=work, capture_output=True, text=True, check=False)
                if done.returncode != 0:
                    raise RuntimeError(f"spark-submit failed ({done.returncode}):\n{done.stderr[-3000:]}")
                runs[way].append({"wall_seconds": round(time.monotonic() - started, 1),
                                  "machine_speed_seconds": speed})
                print(way, runs[way][-1], flush=True)
    files = sum(1 for _ in (work / "export" / "dicom").rglob("*.dcm"))
    settings = SUBMIT_CONF["spark.driver.extraJavaOptions"]
    assert SUBMIT_CONF["spark.executor.extraJavaOptions"] == settings
    results = stamp("python bench/submit_bench.py", patients=args.patients, files=files, repeats=args.repeats,
                    settings=settings, runs=runs)
    write(REPO / "bench" / "results", "submit", results, _markdown)


if __name__ == "__main__":
    main()
