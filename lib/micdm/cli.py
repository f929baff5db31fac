"""``micdm``: the command line. Every stage, the whole pipeline, table creation and the demo data."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import NoReturn

from micdm.config import Settings, load_settings
from micdm.errors import MicdmError

__all__ = ["main", "run_job"]

log = logging.getLogger("micdm")

_SUMMARY_TABLES = ("dicom_instance", "dicom_quarantine", "dicom_series", "image_occurrence", "image_feature",
                   "measurement", "observation", "procedure_occurrence", "sr_measurement_group", "sr_quantitative",
                   "sr_qualitative", "feature_quarantine")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="micdm", description="DICOM archives to OMOP CDM imaging tables.")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--config", "-c", help="YAML settings file (see conf/default.yml)")
    common.add_argument("overrides", nargs="*", metavar="key=value",
                        help="setting overrides, e.g. extract.block_size=131072")
    common.add_argument("--dry-run", action="store_true",
                        help="print what would be read and written, and change nothing")
    common.add_argument("--summary", action="store_true",
                        help="also print the rows of each table micdm writes (a scan per table; demo always does)")
    common.add_argument("--full-refresh", action="store_true",
                        help="rebuild from every input, even where nothing changed since the last run")
    commands = parser.add_subparsers(dest="command", required=True, metavar="command")
    commands.add_parser("setup", parents=[common],
                        help="check Java, resolve the Delta jars and archive Spark's classes, once (cached)")
    commands.add_parser("init", parents=[common], help="create every table (idempotent)")
    synth = commands.add_parser("synth", parents=[common], help="write the synthetic PACS export and CDM")
    synth.add_argument("--no-load", action="store_true", help="write files only; do not load the CDM tables")
    for stage, text in (
        ("vocabulary", "add micdm's DICOM concepts to the site's vocabulary tables (only rows it lacks)"),
        ("extract", "read DICOM headers into dicom_instance / dicom_quarantine"),
        ("series", "group instances into dicom_series"),
        ("link", "link series to person, procedure and visit"),
        ("occurrence", "write image_occurrence"),
        ("features", "write measurement + image_feature rows"),
        ("publish", "offer the spec tables under the published MI-CDM 1.0 names (publish.mode)"),
        ("quality", "the DataQualityDashboard's checks into dq_result; exit 2 when a fatal one fails"),
    ):
        command = commands.add_parser(stage, parents=[common], help=text)
    command.add_argument("--export-dqd", metavar="DIR",
                         help="write the imaging tables' checks as DataQualityDashboard threshold CSVs and stop")
    commands.add_parser("run", parents=[common], help="run every stage in order")
    commands.add_parser("demo", parents=[common], help="synth + run, then print where the tables are")
    return parser


def _print_table(rows: Sequence[tuple[str, ...]], header: tuple[str, ...]) -> None:
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    for row in [header, tuple("-" * w for w in widths), *rows]:
        print("  ".join(str(v).ljust(w) for v, w in zip(row, widths, strict=True)).rstrip())


def _summary(spark: object, settings: Settings, rows: bool) -> None:
    """The last linkage report and, with ``rows``, the rows of every table micdm writes (a scan each: a
    scheduled run's log has the stage counts, which say what changed)."""
    from micdm.pipeline import latest_link_report, table_counts

    if rows:
        counts = table_counts(spark, settings, _SUMMARY_TABLES)  # type: ignore[arg-type]
        print()
        _print_table([(name, str(n), where) for name, (n, where) in counts.items()], ("table", "rows", "location"))
    report = latest_link_report(spark, settings)  # type: ignore[arg-type]
    links = [row for row in report if row[0] != "warning"]
    if links:
        print()
        _print_table([(kind, name, str(series), str(studies)) for kind, name, series, studies in links],
                     ("linkage", "rule / reason", "series", "studies"))
    for _, _, _, studies in (row for row in report if row[0] == "warning"):
        print(f"\nwarning: {studies} procedure(s) created on a day the site has a procedure for the same person. "
              "If those are the imaging procedures, name their concepts in occurrence.procedure_concepts "
              "(or occurrence.imaging_procedure_roots) so that the window rule links to them.")


def _synth(spark: object, settings: Settings, load: bool) -> None:
    from micdm.synth import generate, load_site
    from micdm.tables import TableLocator

    cfg = settings.synth
    summary = generate(cfg.out, cfg.patients, cfg.seed, cfg.pixels, cfg.max_instances_per_series)
    print(f"synth: {summary.patients} patients, {summary.studies} studies, {summary.series} series, "
          f"{summary.instances} instances ({summary.bytes_written / 1e6:.1f} MB) in {summary.out}/dicom")
    if load:
        locator = TableLocator.of(settings)
        for name, rows in load_site(spark, locator, cfg.out).items():
            print(f"synth: loaded {rows} rows into {locator.where(name)}")


def _dry_run(settings: Settings, stages: list[str]) -> None:
    """What the stages would read and write; the only work done is listing the source files."""
    from micdm.pipeline import STAGE_TABLES
    from micdm.sources import list_files
    from micdm.tables import TableLocator

    locator = TableLocator.of(settings)
    print(f"dry run: {', '.join(stages)}; nothing is written")
    if "extract" in stages:
        files = list(list_files(settings.sources))
        print(f"extract would list {len(files)} files ({sum(f.file_size or 0 for f in files) / 1e6:.1f} MB) under "
              f"{', '.join(settings.sources.roots)}; unchanged ones are skipped unless extract.full_refresh=true")
    print(f"tables: {locator.where('dicom_instance').rsplit('dicom_instance', 1)[0]}<table> "
          f"(the site's CDM tables: {locator.where('person').rsplit('person', 1)[0]}<table>)")
    rows = [(stage, ", ".join(STAGE_TABLES[stage][0]) or "-", ", ".join(STAGE_TABLES[stage][1]) or "-")
            for stage in stages]
    if "publish" in stages and settings.publish.mode != "none":
        rows[-1] = (rows[-1][0], rows[-1][1], f"image_occurrence, image_feature in {settings.publish.schema} "
                                              f"({settings.publish.mode})")
    _print_table(rows, ("stage", "reads", "writes"))
    from micdm.errors import SchemaMismatchError
    from micdm.spark import get_spark
    from micdm.tables import table_problems

    problems = table_problems(get_spark(settings.spark), locator)
    if problems:
        raise SchemaMismatchError("\n".join(problems))
    print("tables: every existing table can be used as it is")


def _run(args: argparse.Namespace) -> None:
    settings = load_settings(args.config, args.overrides)
    from micdm.pipeline import STAGES

    if getattr(args, "export_dqd", None):
        from micdm.quality import export_dqd_thresholds

        for path in export_dqd_thresholds(args.export_dqd):
            print(f"quality: wrote {path}")
        return
    if args.dry_run:
        if args.command not in (*STAGES, "run"):
            raise MicdmError(f"--dry-run applies to run and the stages ({', '.join(STAGES)}), not {args.command}")
        _dry_run(settings, list(STAGES) if args.command == "run" else [args.command])
        return
    from micdm.runlock import exclusive_run
    from micdm.spark import check_java, make_class_archive, resolve_delta_jars

    if args.command == "setup":
        print(f"setup: Java {check_java()}; Delta jars: {', '.join(resolve_delta_jars())}")
        print(f"setup: class archive: {make_class_archive() or 'none (sessions read classes from the jars)'}")
        return
    with exclusive_run(settings.storage):  # before Spark starts: a second run fails in a second, not a minute
        _run_with_spark(args, settings)


def _run_with_spark(args: argparse.Namespace, settings: Settings) -> None:
    from micdm.pipeline import run_pipeline, run_stage
    from micdm.spark import get_spark
    from micdm.tables import TableLocator, init_tables

    spark = get_spark(settings.spark)
    if args.command == "init":
        created = init_tables(spark, TableLocator.of(settings))
        print(f"init: {sum(created.values())} created, {len(created) - sum(created.values())} already there")
        return
    if args.command in ("synth", "demo"):
        _synth(spark, settings, load=args.command == "demo" or not args.no_load)
        if args.command == "synth":
            return
        if not settings.features.algorithm_results:  # the demo imports the AI results synth wrote
            from micdm.synth import ALGORITHM_RESULTS

            results = str((Path(settings.synth.out) / ALGORITHM_RESULTS).resolve())
            settings = replace(settings, features=replace(settings.features, algorithm_results=results))
    refresh = args.full_refresh
    stages = run_pipeline(spark, settings, refresh) if args.command in ("run", "demo") else [
        run_stage(spark, settings, args.command, full_refresh=refresh)]
    _print_table([(r.stage, f"{r.seconds:.1f}s", "-" if r.spark_jobs is None else str(r.spark_jobs),
                   ", ".join(f"{k}={v}" for k, v in r.counts.items())) for r in stages],
                 ("stage", "time", "jobs", "counts"))
    _summary(spark, settings, rows=args.command == "demo" or args.summary)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``micdm`` console script; returns the process exit code."""
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("py4j").setLevel(logging.WARNING)
    try:
        _run(args)
    except MicdmError as error:
        print(f"micdm: {error}", file=sys.stderr)
        return 2
    return 0


def run_job(command: str) -> NoReturn:
    """A spark-submit entry point in jobs/: ``micdm <command>`` with the job's own arguments."""
    sys.exit(main([command, *sys.argv[1:]]))


if __name__ == "__main__":
    sys.exit(main())
