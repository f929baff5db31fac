"""Where a fresh `micdm run` after 1 % new files spends its JVM's time: the Java Flight Recorder's execution
samples of one run, by thread and by the work on each sample's stack, and the processes the JVM started.

Reproduce with ``make bench-run-profile`` (or ``.venv/bin/python bench/run_profile_bench.py``, after
``micdm setup``; it needs the JDK's ``jfr`` tool). Figures go to bench/results/run_profile.{json,md}
(run_profile_<size> for ``--size`` medium or large);
nothing here passes or fails a test.

The archive and the runs are bench/pipeline_bench.py's: ``micdm synth`` with every hundredth patient's folder
held back, a full run, the folders back, then the measured run: a new process as a user starts it, micdm's
JVM flags and class archive, plus the flight recorder (``-XX:StartFlightRecording``, its ``profile``
settings). The recorder samples threads running Java code; the JIT's compiler threads and the garbage
collector run none and are counted apart, in CPU seconds, as pipeline_bench.py samples them.
"""

from __future__ import annotations

import argparse
import collections
import re
import shutil
import subprocess
from pathlib import Path

from figures import made_class_archive, scratch, stamp, write
from pipeline_bench import REPO, SIZES, bring_back, cli_arguments, hold_back, run_cli, stages_total

#: Kinds of thread by name: the driver's threads that run Python's calls (py4j gives them Thread-<n>), the
#: executor's task threads, and Spark's own (scheduler, listeners, block manager, broadcasts).
_THREADS = (("driver (Python's calls)", re.compile(r"Thread-\d+|main$")),
            ("tasks", re.compile(r"Executor task launch worker")))
_OTHER_THREADS = "Spark's own threads"
#: The work a sample was doing, by the first pattern any frame of its stack holds, in this order: the
#: narrower kinds of work come first, since a stack holds the frames of every layer it passed through.
_WORK = (
    ("Hadoop configuration copied into tasks", ("util.SerializableConfiguration", "hadoop.conf.Configuration.write",
                                               "hadoop.conf.Configuration.readFields")),
    ("closure cleaning", ("util.ClosureCleaner",)),
    ("py4j finding what Python called", ("py4j.reflection.ReflectionEngine.get", "py4j.reflection.ReflectionUtil",
                                         "py4j.commands.ReflectionCommand")),
    ("finding classes and resources in jars", ("java.util.zip.", "jdk.internal.loader.", "ClassLoader.loadClass")),
    ("call sites of jobs and RDDs", ("SparkContext.getCallSite",)),
    ("serializing tasks and plans", ("java.io.ObjectOutputStream",)),
    ("deserializing tasks", ("java.io.ObjectInputStream",)),
    ("Parquet reading and writing", ("org.apache.parquet.",)),
    ("Delta: log, snapshots, commits, statistics", ("org.apache.spark.sql.delta.",)),
    ("analysis", ("sql.catalyst.analysis.",)),
    ("optimization", ("sql.catalyst.optimizer.",)),
    ("physical planning", ("sql.execution.SparkStrategies", "sql.catalyst.planning.",
                           "sql.execution.QueryExecution$.prepareForExecution")),
    ("shuffle", ("org.apache.spark.shuffle.",)),
    ("expressions (interpreted)", ("sql.catalyst.expressions.",)),
)
_OTHER_WORK = "other"
_FRAME = re.compile(r"^\s+([\w.$<>/]+)\(", re.M)
_THREAD = re.compile(r'sampledThread = "([^"]*)"')
_COMMAND = re.compile(r'command = "(\S+)')


def _thread_kind(name: str) -> str:
    return next((kind for kind, pattern in _THREADS if pattern.match(name)), _OTHER_THREADS)


def _work(frames: list[str]) -> str:
    return next((work for work, patterns in _WORK if any(p in frame for frame in frames for p in patterns)),
                _OTHER_WORK)


def _events(recording: Path, event: str) -> list[str]:
    """The recording's events of one type as text, each with its whole stack."""
    printed = subprocess.run(["jfr", "print", "--events", event, "--stack-depth", "1024", str(recording)],
                             capture_output=True, text=True, check=True).stdout
    return printed.split(f"{event} {{")[1:]


def profile(recording: Path) -> dict:
    """Execution samples by kind of thread and work; processes started, by their program."""
    samples: dict[str, collections.Counter[str]] = collections.defaultdict(collections.Counter)
    for event in _events(recording, "jdk.ExecutionSample"):
        thread = _THREAD.search(event)
        samples[_thread_kind(thread.group(1) if thread else "")][_work(_FRAME.findall(event))] += 1
    started = collections.Counter(Path(found.group(1)).name for event in _events(recording, "jdk.ProcessStart")
                                  if (found := _COMMAND.search(event)))
    return {"samples": {kind: dict(counts.most_common()) for kind, counts in samples.items()},
            "processes_started": dict(started.most_common())}


def _markdown(results: dict) -> str:
    run, samples = results["run"], results["samples"]
    total = sum(sum(counts.values()) for counts in samples.values())
    lines = [f"# Where a fresh run after 1 % new files spends its time ({results['date']})", "",
             f"Command: `{results['command']}`. Machine: {results['machine']}. Archive: {results['size']} "
             f"({results['files']:,} files, {results['files_arriving']:,} arriving). The measured run: a new "
             f"`micdm run` process, {run['wall_seconds']} s wall, {results['stage_seconds']} s of stages, speed "
             f"probe {run['machine_speed_seconds']} s; the JVM's CPU seconds by kind of thread: "
             + ", ".join(f"{kind} {seconds}" for kind, seconds in run["jvm_cpu_seconds"].items()) + ".", "",
             f"The flight recorder's {total:,} execution samples (threads running Java code), by thread and by "
             "the first kind of work, in the order below, that a frame of the sample's stack belongs to:", "",
             "| thread | work | samples | share of the thread's | share of all |", "|---|---|---|---|---|"]
    for kind, counts in samples.items():
        of_kind = sum(counts.values())
        for work, count in counts.items():
            lines.append(f"| {kind} | {work} | {count} | {count / of_kind:.0%} | {count / total:.0%} |")
    started = results["processes_started"]
    lines += ["", f"Processes the JVM started: {sum(started.values())} ("
              + ", ".join(f"{program} {count}" for program, count in started.items()) + ").", ""]
    return "\n".join(lines)


def main() -> None:
    from micdm.config import SparkSettings
    from micdm.spark import local_conf

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", default="small", choices=list(SIZES))
    parser.add_argument("--work", default=None, help="scratch folder (default: a folder under the system temp)")
    parser.add_argument("--out", default=str(REPO / "bench" / "results"))
    args = parser.parse_args()
    if shutil.which("jfr") is None:
        raise SystemExit("the JDK's jfr tool is not on PATH")
    archive = made_class_archive()
    folder = scratch(args.work, "micdm-run-profile-bench")
    common = cli_arguments(folder, *SIZES[args.size])
    run_cli("synth", *common, cwd=folder)
    held = hold_back(folder)
    run_cli("run", *common, cwd=folder)
    arriving = bring_back(folder, held)
    key = "spark.driver.extraJavaOptions"
    recording = folder / "run.jfr"
    recorder = f"-XX:StartFlightRecording=filename={recording},settings=profile"
    flags = f"{local_conf(SparkSettings(), archive)[key]} {recorder}"
    measured = run_cli("run", *common, f"spark.conf={{{key}: '{flags}'}}", cwd=folder)
    files = sum(1 for _ in (folder / "export" / "dicom").rglob("*.dcm"))
    command = "python bench/run_profile_bench.py" + (f" --size {args.size}" if args.size != "small" else "")
    results = stamp(command, size=args.size, files=files, files_arriving=arriving, run=measured,
                    stage_seconds=stages_total(measured),
                    **profile(recording))
    write(Path(args.out), "run_profile" if args.size == "small" else f"run_profile_{args.size}", results, _markdown)
    shutil.rmtree(folder)


if __name__ == "__main__":
    main()
