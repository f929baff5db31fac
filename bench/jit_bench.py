"""What a cold `micdm run` spends on the JIT: micdm's JVM flags against the same flags without the inlining
limits (the JVM's own inlining), and against two ways of compiling less: higher compile thresholds, and the
quick compiler alone.

Reproduce with ``make bench-jit`` (or ``.venv/bin/python bench/jit_bench.py``, after ``micdm setup``).
Figures go to bench/results/jit.json and bench/results/jit.md; nothing here passes or fails a test.

One synthetic archive (headers only); each round runs `micdm run` on an empty warehouse once each way, a
new process each time, the two ways alternating so that the machine's drift falls on both. Per run: wall
seconds, the stages' seconds, and the JVM's CPU seconds by kind of thread (JIT compilers, garbage collector,
Spark tasks, the rest), sampled as pipeline_bench.py samples them.
"""

from __future__ import annotations

import argparse
import shutil
import statistics

from figures import made_class_archive, scratch, stamp, write
from pipeline_bench import REPO, run_cli, stages_total

WAYS = ("micdm's flags", "default inlining", "compile thresholds x4", "quick compiler only")
#: What each way after the first adds to micdm's flags (the first two differ by what they leave out).
_ADDED = {"compile thresholds x4": "-XX:CompileThresholdScaling=4", "quick compiler only": "-XX:TieredStopAtLevel=1"}


def _median(runs: list[dict], figure: str) -> float:
    return round(statistics.median(run[figure] for run in runs), 1)


def _markdown(results: dict) -> str:
    lines = [f"# JIT benchmark ({results['date']})", "",
             f"Command: `{results['command']}`. Machine: {results['machine']}. A fresh `micdm run` on an empty "
             f"warehouse, {results['patients']} synthetic patients ({results['files']} files, headers only), "
             f"{results['repeats']} runs each way, alternating. CPU: seconds of the JVM's threads by kind.", "",
             "| way | wall s | stages s | JIT CPU s | task CPU s | driver CPU s | GC CPU s | runs (wall s) |",
             "|---|---|---|---|---|---|---|---|"]
    for way in WAYS:
        runs = results["runs"][way]
        lines.append(f"| {way} | " + " | ".join(str(_median(runs, figure)) for figure in (
            "wall_seconds", "stage_seconds", "jit", "tasks", "driver", "gc"))
            + f" | {', '.join(str(run['wall_seconds']) for run in runs)} |")
    lines += ["", "Medians. " + "; ".join(f"{way}: `{results['flags'][way]}`" for way in WAYS)
              + " (plus the class archive each way).", ""]
    return "\n".join(lines)


def main() -> None:
    from micdm.config import SparkSettings
    from micdm.spark import LOCAL_DEFAULTS, SHALLOW_INLINING, local_conf

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--patients", type=int, default=4)
    parser.add_argument("--work", default=None, help="scratch folder (default: a folder under the system temp)")
    args = parser.parse_args()
    archive = made_class_archive()
    work = scratch(args.work, "micdm-jit-bench")
    def without_inlining(flags: str) -> str:
        return " ".join(flag for flag in flags.split() if flag not in SHALLOW_INLINING.split())

    key = "spark.driver.extraJavaOptions"
    # given: the flags a local session starts with, the archive's included (local_conf); shown: without the
    # archive, whose path is this machine's
    given = {WAYS[0]: local_conf(SparkSettings(), archive)[key]}
    given[WAYS[1]] = without_inlining(given[WAYS[0]])
    flags = {WAYS[0]: LOCAL_DEFAULTS[key], WAYS[1]: without_inlining(LOCAL_DEFAULTS[key])}
    for way, added in _ADDED.items():
        given[way], flags[way] = f"{given[WAYS[0]]} {added}", f"{flags[WAYS[0]]} {added}"
    common = ["--config", str(REPO / "conf" / "local.yml"), f"synth.out={work / 'export'}",
              f"synth.patients={args.patients}", "synth.pixels=none", f"sources.roots=[{work / 'export' / 'dicom'}]",
              "report.enabled=false"]
    run_cli("synth", *common, f"storage.warehouse={work / 'unused'}", cwd=work)
    runs: dict[str, list[dict]] = {way: [] for way in WAYS}
    for _ in range(args.repeats):
        for way in WAYS:
            warehouse = work / "warehouse"
            shutil.rmtree(warehouse, ignore_errors=True)
            figures = run_cli("run", *common, f"storage.warehouse={warehouse}",
                              f"spark.conf={{{key}: '{given[way]}'}}", cwd=work)
            runs[way].append({"wall_seconds": figures["wall_seconds"],
                              "stage_seconds": stages_total(figures),
                              **figures["jvm_cpu_seconds"], "machine_speed_seconds": figures["machine_speed_seconds"]})
            print(way, runs[way][-1], flush=True)
    files = sum(1 for _ in (work / "export" / "dicom").rglob("*.dcm"))
    results = stamp("python bench/jit_bench.py", patients=args.patients, files=files, repeats=args.repeats,
                    flags=flags, runs=runs)
    write(REPO / "bench" / "results", "jit", results, _markdown)


if __name__ == "__main__":
    main()
