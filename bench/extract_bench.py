"""Extract-stage benchmark: micdm against the parse ceiling and the naive Spark approach.

Reproduce with ``make bench`` (or ``.venv/bin/python bench/extract_bench.py --instances 20000``). Figures
go to bench/results/extract.json and bench/results/extract.md; nothing here passes or fails a test.

Measured on the same synthetic export of realistic size (512x512x16-bit CT slices, 2048x2048 CR/DX/MG):
- ceiling: one process, ``pydicom.dcmread(path, stop_before_pixels=True)`` over every file, with a cold
  page cache and again with a warm one;
- naive: Spark ``binaryFile`` (whole content) + a full ``dcmread`` per file;
- micdm extract on local disk (cold and warm page cache), its no-op incremental re-run, and micdm extract
  from SeaweedFS (s3://, a fresh server storing objects in 1 MiB chunks, on the same cores);
- peak RSS of the Python workers, before and after adding a 1 GB multi-frame file.

Each timed measure runs ``--repeats`` times (3 by default) and the run of median time counts: on a
shared 2-core machine one run can be a third slower than the next.

"Cold" runs start right after the kernel's page cache is dropped (root only; the results say whether it
was). The Spark session is warmed up with one small extract and its re-run first: starting the JVM, the
first Delta commit and the first compilation of each query are fixed costs of a run, not costs per file.
"""

from __future__ import annotations

import argparse
import datetime as dt
import io
import json
import os
import platform
import shutil
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def realistic_export(work: Path, instances: int, seed: int) -> Path:
    """Generate (or reuse) a realistic export with at least ``instances`` files."""
    from micdm.synth import generate, plan_patients

    patients = 8
    while sum(s.instances for p in plan_patients(patients, seed) for st in p.studies for s in st.series) < instances:
        patients = int(patients * 1.25) + 1
    out = work / f"export-{patients}-{seed}"
    marker = out / ".complete"
    if not marker.exists():
        shutil.rmtree(out, ignore_errors=True)
        started = time.monotonic()
        summary = generate(out, patients=patients, seed=seed, pixels="realistic")
        marker.write_text(json.dumps({"instances": summary.instances, "bytes": summary.bytes_written,
                                      "seconds": time.monotonic() - started}))
    return out / "dicom"


def files_under(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file())


def drop_page_cache() -> bool:
    """Empty the kernel's page cache so the next run reads from disk; False when not allowed (not root)."""
    os.sync()
    try:
        Path("/proc/sys/vm/drop_caches").write_text("1\n")
    except OSError:
        return False
    return True


def _repeated(measure: Callable[[], dict], repeats: int) -> dict:
    """The run of median time among ``repeats`` runs, with every run's seconds: this machine's speed varies."""
    runs = sorted((measure() for _ in range(repeats)), key=lambda run: run["seconds"])
    return {**runs[len(runs) // 2], "runs_seconds": [round(run["seconds"], 2) for run in runs]}


def _ceiling(files: list[Path], cold: bool) -> dict[str, float]:
    from pydicom import dcmread

    if cold:
        drop_page_cache()
    started = time.monotonic()
    for path in files:
        dcmread(path, stop_before_pixels=True)
    seconds = time.monotonic() - started
    return {"files": len(files), "seconds": seconds, "files_per_s": len(files) / seconds}


def _naive(spark, root: Path) -> dict[str, float]:
    """What a first attempt does: read whole files into Spark, then parse everything."""
    import pyarrow as pa
    from pydicom import dcmread

    def parse(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        for batch in batches:
            uids = [str(dcmread(io.BytesIO(content)).SOPInstanceUID) for content in batch.column("content").to_pylist()]
            yield pa.RecordBatch.from_pydict({"sop_instance_uid": uids})

    started = time.monotonic()
    frame = spark.read.format("binaryFile").option("recursiveFileLookup", "true").load(str(root))
    count = frame.select("content").mapInArrow(parse, "sop_instance_uid string").count()
    seconds = time.monotonic() - started
    return {"files": count, "seconds": seconds, "files_per_s": count / seconds}


def _worker_peak_rss(spark) -> list[int]:
    """Peak RSS (KiB) of each reused Python worker, asked through a tiny job."""
    import resource

    import pyarrow as pa

    def probe(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        for _ in batches:
            pass
        usage = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        yield pa.RecordBatch.from_pydict({"pid": [os.getpid()], "peak_kib": [usage]})

    parallelism = spark.sparkContext.defaultParallelism
    rows = spark.range(parallelism * 4, numPartitions=parallelism * 4).mapInArrow(
        probe, "pid long, peak_kib long").collect()
    return sorted({r.pid: r.peak_kib for r in rows}.values())


def _extract(spark, settings, cold: bool = False) -> dict[str, float]:
    from micdm.extract import extract
    from micdm.tables import TableLocator, init_tables, read_table

    locator = TableLocator.of(settings)
    init_tables(spark, locator)
    dropped = drop_page_cache() if cold else False
    summary = extract(spark, locator, settings)
    instances = read_table(spark, locator, "dicom_instance")
    within = instances.where("bytes_read <= header_bytes + 65536").count()
    header_bytes = instances.groupBy().sum("header_bytes").first()[0] or 0
    return {
        "files": summary.to_read,
        "instances": summary.instances,
        "quarantined": summary.quarantined,
        "seconds": summary.seconds,
        "read_seconds": summary.read_seconds,
        "files_per_s": summary.to_read / summary.seconds,
        "read_files_per_s": summary.to_read / summary.read_seconds if summary.read_seconds else 0.0,
        "mb_read_per_s": summary.bytes_read / 1e6 / summary.seconds,
        "file_mb_covered_per_s": summary.file_bytes / 1e6 / summary.seconds,
        "bytes_read": summary.bytes_read,
        "file_bytes": summary.file_bytes,
        "bytes_read_over_header_bytes": summary.bytes_read / header_bytes if header_bytes else 0.0,
        "share_within_header_plus_64k": within / max(summary.instances, 1),
        "page_cache_dropped": dropped,
        "phase_seconds": summary.phase_seconds,
    }


def _big_multiframe(path: Path, size_gb: float) -> None:
    from pydicom import dcmread
    from pydicom.data import get_testdata_file
    from pydicom.uid import ExplicitVRLittleEndian

    ds = dcmread(get_testdata_file("CT_small.dcm"))
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    frames = int(size_gb * 2**30 // (512 * 512 * 2))
    ds.NumberOfFrames, ds.Rows, ds.Columns = frames, 512, 512
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = "1.2.826.0.1.3680043.8.498.42"
    ds.PixelData = b""
    ds.save_as(path, enforce_file_format=True)
    # Write the pixel data element by hand so a 1 GB value never sits in this process's memory.
    with path.open("r+b") as handle:
        handle.seek(0, os.SEEK_END)
        handle.seek(handle.tell() - 12)  # (7FE0,0010) OW 0000 + 4-byte length 0
        length = frames * 512 * 512 * 2
        handle.write(b"\xe0\x7f\x10\x00OW\x00\x00" + length.to_bytes(4, "little"))
        chunk = b"\x00\x01" * (2**20 // 2)
        for _ in range(length // len(chunk)):
            handle.write(chunk)
        handle.write(b"\x00" * (length % len(chunk)))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--instances", type=int, default=20000)
    parser.add_argument("--seed", type=int, default=3)
    parser.add_argument("--work", type=Path, default=REPO / ".micdm" / "bench")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results")
    parser.add_argument("--skip-s3", action="store_true", help="leave out the SeaweedFS run")
    parser.add_argument("--repeats", type=int, default=3, help="runs of each timed measure; the median counts")
    args = parser.parse_args(argv)

    from micdm.config import SparkSettings, load_settings
    from micdm.spark import get_spark

    sys.path.insert(0, str(REPO / "tests"))  # the test servers are not part of the package
    from support.servers import SeaweedFS

    args.work.mkdir(parents=True, exist_ok=True)
    root = realistic_export(args.work, args.instances, args.seed)
    files = files_under(root)
    cores = os.cpu_count() or 1
    results: dict[str, object] = {
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        # What shapes the figures, not where files went: folders given on the command line are machine paths.
        "command": " ".join(["python", "bench/extract_bench.py", f"--instances {args.instances}", f"--seed {args.seed}",
                             f"--repeats {args.repeats}", *(["--skip-s3"] if args.skip_s3 else [])]),
        "machine": {"cores": cores, "python": platform.python_version(), "platform": platform.platform()},
        "export": {"files": len(files), "bytes": sum(p.stat().st_size for p in files)},
    }
    print(f"bench: {len(files)} files, {results['export']['bytes'] / 1e9:.1f} GB")  # type: ignore[index]
    results["page_cache_dropped"] = drop_page_cache()
    results["repeats"] = args.repeats
    results["ceiling"] = _repeated(lambda: _ceiling(files, cold=True), args.repeats)
    results["ceiling_warm"] = _repeated(lambda: _ceiling(files, cold=False), args.repeats)
    print(f"bench: ceiling cold {results['ceiling']}, warm {results['ceiling_warm']}")

    spark = get_spark(SparkSettings(master=f"local[{cores}]", conf={"spark.sql.shuffle.partitions": str(cores * 2),
                                                                    "spark.driver.memory": "3g"}))
    warehouse = args.work / "warehouse"

    def settings_for(name: str, *overrides: str, fresh: bool = True):
        if fresh:
            shutil.rmtree(warehouse / name, ignore_errors=True)
        return load_settings(REPO / "conf" / "local.yml", [f"storage.warehouse={warehouse / name}", *overrides])

    # Warm-up: a first load and its re-run on one patient, so that no measured run pays the JVM's
    # first-time compilation of the paths it takes.
    warmup = f"sources.roots=[{next(root.iterdir())}]"
    _extract(spark, settings_for("warmup", warmup))
    _extract(spark, settings_for("warmup", warmup, fresh=False))
    results["micdm_local"] = _repeated(
        lambda: _extract(spark, settings_for("local", f"sources.roots=[{root}]"), cold=True), args.repeats)
    print(f"bench: micdm local {results['micdm_local']}")
    results["micdm_local_warm"] = _repeated(
        lambda: _extract(spark, settings_for("local-warm", f"sources.roots=[{root}]")), args.repeats)
    print(f"bench: micdm local, warm page cache {results['micdm_local_warm']}")
    results["micdm_noop_rerun"] = _extract(spark, settings_for("local", f"sources.roots=[{root}]", fresh=False))
    results["worker_peak_rss_kib_before_1gb"] = _worker_peak_rss(spark)

    big_root = args.work / "bigfile"
    big_root.mkdir(exist_ok=True)
    big = big_root / "multiframe-1gb.dcm"
    if not big.exists():
        _big_multiframe(big, 1.0)
    big_settings = settings_for("big", f"sources.roots=[{big_root}]")
    results["micdm_1gb_file"] = _extract(spark, big_settings)
    results["worker_peak_rss_kib_after_1gb"] = _worker_peak_rss(spark)

    drop_page_cache()
    results["naive_spark"] = _naive(spark, root)
    print(f"bench: naive {results['naive_spark']}")

    if not args.skip_s3:
        shutil.rmtree(args.work / "seaweedfs", ignore_errors=True)  # a restarted server forgets its objects
        # 1 MiB chunks: for each ranged GET the server loads the object's whole first chunk, on the same cores.
        with SeaweedFS(args.work / "seaweedfs", chunk_mb=1) as server:
            fs = server.filesystem()
            started = time.monotonic()
            fs.put([str(p) for p in files], [f"{server.bucket}/export/{p.relative_to(root)}" for p in files])
            upload = time.monotonic() - started
            storage = ", ".join(f"{k}: '{v}'" for k, v in server.storage_options.items())
            s3 = (f"sources.roots=[s3://{server.bucket}/export]", f"sources.storage_options={{{storage}}}",
                  "extract.threads_per_task=32")
            results["micdm_seaweedfs"] = {
                **_repeated(lambda: _extract(spark, settings_for("s3", *s3), cold=True), args.repeats),
                "upload_seconds": upload}
        print(f"bench: micdm seaweedfs {results['micdm_seaweedfs']}")

    results["ratios"] = _ratios(results, cores)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "extract.json").write_text(json.dumps(results, indent=2) + "\n")
    (args.out / "extract.md").write_text(_markdown(results))
    print((args.out / "extract.md").read_text())
    return 0


def _ratios(results: dict, cores: int) -> dict[str, object]:
    local, warm = results["micdm_local"], results["micdm_local_warm"]
    ceiling, ceiling_warm = results["ceiling"]["files_per_s"] * cores, results["ceiling_warm"]["files_per_s"] * cores
    ratios = {
        "local_vs_ceiling_x_cores": local["files_per_s"] / ceiling,
        "local_read_phase_vs_ceiling_x_cores": local["read_files_per_s"] / ceiling,
        "warm_local_vs_warm_ceiling_x_cores": warm["files_per_s"] / ceiling_warm,
        "warm_local_read_phase_vs_warm_ceiling_x_cores": warm["read_files_per_s"] / ceiling_warm,
        "local_vs_naive": local["files_per_s"] / results["naive_spark"]["files_per_s"],
        "noop_rerun_time_share": results["micdm_noop_rerun"]["seconds"] / local["seconds"],
        "peak_rss_growth_kib_with_1gb_file": max(results["worker_peak_rss_kib_after_1gb"])
        - max(results["worker_peak_rss_kib_before_1gb"]),
    }
    if "micdm_seaweedfs" in results:
        ratios["seaweedfs_vs_local"] = results["micdm_seaweedfs"]["files_per_s"] / local["files_per_s"]
    return ratios


def _markdown(results: dict) -> str:
    r = results["ratios"]
    lines = [
        "# Extract benchmark",
        "",
        f"`{results['command']}` on {results['machine']['cores']} cores, {results['date']}; "
        f"{results['export']['files']} files, {results['export']['bytes'] / 1e9:.2f} GB. Cold runs start with an "
        f"empty page cache: {'yes' if results['page_cache_dropped'] else 'no (not root), so every run is warm'}. "
        f"Each measure ran {results['repeats']} times; the run of median time counts.",
        "",
        "| run | files | seconds | files/s | every run (s) |",
        "|---|---|---|---|---|",
    ]
    for name in ("ceiling", "ceiling_warm", "naive_spark", "micdm_local", "micdm_local_warm", "micdm_noop_rerun",
                 "micdm_seaweedfs"):
        if name in results:
            run = results[name]
            every = ", ".join(f"{seconds:.1f}" for seconds in run.get("runs_seconds", [run["seconds"]]))
            lines.append(f"| {name} | {run['files']} | {run['seconds']:.1f} | {run['files_per_s']:.1f} | {every} |")
    local = results["micdm_local"]
    lines += [
        "",
        f"- micdm local, read phase alone: {local['read_files_per_s']:.1f} files/s; "
        f"{local['mb_read_per_s']:.1f} MB/s read, {local['file_mb_covered_per_s']:.1f} MB/s of files covered",
        f"- bytes read / header bytes: {local['bytes_read_over_header_bytes']:.2f}; files within header + 64 KiB: "
        f"{100 * local['share_within_header_plus_64k']:.1f}%",
        f"- micdm local / (ceiling x cores), cold page cache: {r['local_vs_ceiling_x_cores']:.2f} whole stage "
        f"(target >= 0.7), {r['local_read_phase_vs_ceiling_x_cores']:.2f} read phase",
        f"- the same, warm page cache: {r['warm_local_vs_warm_ceiling_x_cores']:.2f} whole stage, "
        f"{r['warm_local_read_phase_vs_warm_ceiling_x_cores']:.2f} read phase",
        f"- micdm local / naive Spark: {r['local_vs_naive']:.1f}x (target >= 5)",
        f"- no-op incremental re-run: {100 * r['noop_rerun_time_share']:.0f}% of the full run (target <= 10%)",
        f"- worker peak RSS (KiB) before / after a 1 GB multi-frame file: "
        f"{results['worker_peak_rss_kib_before_1gb']} / {results['worker_peak_rss_kib_after_1gb']} "
        f"(growth {r['peak_rss_growth_kib_with_1gb_file']} KiB); bytes read of the 1 GB file: "
        f"{results['micdm_1gb_file']['bytes_read']}",
    ]
    phases = ", ".join(f"{name} {seconds:.1f}" for name, seconds in local["phase_seconds"].items())
    lines.append(f"- where the cold local run's seconds went: {phases}")
    if "seaweedfs_vs_local" in r:
        lines.append(f"- SeaweedFS / local: {r['seaweedfs_vs_local']:.2f} (target >= 0.5)")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
