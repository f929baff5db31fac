"""The demo's run, stage by stage, each a new process: micdm's local session against Spark's own defaults.

Reproduce with ``make bench-demo`` (or ``.venv/bin/python bench/demo_bench.py``). Figures go to
bench/results/demo.json and bench/results/demo.md; nothing here passes or fails a test. ``--size large``
(a size of bench/pipeline_bench.py; ``make bench-settings-large``) does the same on that archive instead of
the demo's, to tell whether a default chosen on the demo holds at size; figures to
bench/results/settings_large.{json,md}.

The demo's archive and site CDM (``micdm synth`` with conf/local.yml, as ``make demo`` makes them) are made
once; each run is ``micdm run`` on a fresh copy of that warehouse, the demo's first run. The settings
alternate so that a machine's drift falls on each. "Code generation" gives back Spark's own values of the
two settings by which a local micdm session interprets expressions (whole-stage code generation, generated
expression classes), "adaptive execution" Spark's adaptive query execution, "call-site capture" PySpark's
DataFrame debugging context, "two shuffle partitions per core" the count micdm set before one per core,
and nothing else.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
from pathlib import Path
from typing import Any

from figures import stamp, write
from pipeline_bench import REPO, RESULTS, SIZES, run_cli

from micdm.config import load_settings
from micdm.spark import local_conf

#: Twice the shuffle partitions micdm's local session sets for conf/local.yml's master (one per core).
_TWO_PER_CORE = 2 * int(local_conf(load_settings(REPO / "conf" / "local.yml").spark)["spark.sql.shuffle.partitions"])

SETTINGS = {
    "micdm's defaults": [],
    "code generation": ["spark.conf={spark.sql.codegen.wholeStage: 'true', spark.sql.codegen.factoryMode: FALLBACK}"],
    "adaptive execution": ["spark.conf={spark.sql.adaptive.enabled: 'true'}"],
    "call-site capture": ["spark.conf={spark.python.sql.dataFrameDebugging.enabled: 'true'}"],
    "two shuffle partitions per core": [f"spark.conf={{spark.sql.shuffle.partitions: '{_TWO_PER_CORE}'}}"],
}
#: Stages before the ones the demo's target counts: the vocabulary load and reading the files.
_BEFORE = ("vocabulary", "extract")


def _after_extract(run: dict[str, Any]) -> float:
    return round(sum(s["seconds"] for name, s in run["stages"].items() if name not in _BEFORE), 1)


def _markdown(results: dict[str, Any]) -> str:
    stages = list(next(iter(results["runs"].values()))[0]["stages"])
    lines = [f"# Settings benchmark, {results['size']} archive ({results['date']})", "",
             f"Command: `{results['command']}`. Machine: {results['machine']}. {results['files']:,} files; "
             f"each run a new `micdm run` process on a copy of the warehouse `micdm synth` left, {results['repeats']} "
             "of each setting, alternating. Medians, seconds. Speed probe: seconds one core took for a fixed Python "
             "loop just before the run (bench/figures.py), to tell the machine's drift from the code's.", "",
             "| setting | wall | " + " | ".join(stages) + " | after extract | after extract, each run | speed probe, "
             "each run |",
             "|---|---|" + "---|" * len(stages) + "---|---|---|"]
    for name, runs in results["runs"].items():
        cells = [f"{statistics.median(r['stages'][s]['seconds'] for r in runs):.1f}" for s in stages]
        after = [_after_extract(r) for r in runs]
        lines.append(f"| {name} | {statistics.median(r['wall_seconds'] for r in runs):.1f} | " + " | ".join(cells)
                     + f" | {statistics.median(after):.1f} | {', '.join(map(str, after))} | "
                     + ", ".join(str(r.get("machine_speed_seconds", "")) for r in runs) + " |")
    kinds = list(next(iter(results["runs"].values()))[0]["jvm_cpu_seconds"])
    lines += ["", "Where the JVM's CPU went, medians of CPU seconds by kind of thread (jit: the C1 and C2 "
              "compilers; tasks: Spark's task threads; driver: planning, py4j and the rest), against the wall:", "",
              "| setting | wall | " + " | ".join(kinds) + " | JVM CPU | share of the cores |",
              "|---|---|" + "---|" * len(kinds) + "---|---|"]
    for name, runs in results["runs"].items():
        cpu = {kind: statistics.median(r["jvm_cpu_seconds"][kind] for r in runs) for kind in kinds}
        wall = statistics.median(r["wall_seconds"] for r in runs)
        total = statistics.median(sum(r["jvm_cpu_seconds"].values()) for r in runs)
        lines.append(f"| {name} | {wall:.1f} | " + " | ".join(f"{cpu[k]:.1f}" for k in kinds)
                     + f" | {total:.1f} | {total / ((os.cpu_count() or 1) * wall):.0%} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--size", choices=list(SIZES), default=None,
                        help="a synthetic archive of bench/pipeline_bench.py instead of the demo's")
    parser.add_argument("--work", default=None, help="scratch folder (default: a folder under the system temp)")
    args = parser.parse_args()
    work = Path(args.work or Path(os.environ.get("TMPDIR", "/tmp")) / "micdm-demo-bench")
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    template, copy = work / "template", work / "warehouse"
    archive = [] if args.size is None else [f"synth.patients={SIZES[args.size][0]}", "synth.pixels=none",
                                             f"synth.max_instances_per_series={SIZES[args.size][1]}"]
    common = ["--config", str(REPO / "conf" / "local.yml"), f"synth.out={work / 'export'}",
              f"sources.roots=[{work / 'export' / 'dicom'}]", f"report.folder={work / 'reports'}", *archive]
    run_cli("synth", *common, f"storage.warehouse={template}", cwd=work)
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in SETTINGS}
    for _ in range(args.repeats):
        for name, overrides in SETTINGS.items():
            shutil.rmtree(copy, ignore_errors=True)
            shutil.copytree(template, copy)
            runs[name].append(run_cli("run", *common, f"storage.warehouse={copy}", *overrides, cwd=work))
    files = sum(1 for _ in (work / "export" / "dicom").rglob("*.dcm"))
    name = "demo" if args.size is None else f"settings_{args.size}"
    command = " ".join(["python bench/demo_bench.py", *(["--size", args.size] if args.size else []),
                        *(["--repeats", str(args.repeats)] if args.repeats != 3 else [])])
    write(RESULTS, name, stamp(command, size=args.size or "demo", files=files, repeats=args.repeats, runs=runs),
          _markdown)


if __name__ == "__main__":
    main()
