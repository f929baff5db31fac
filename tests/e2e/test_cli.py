"""The console script as a user runs it."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "micdm.cli", *args], capture_output=True, text=True, check=False)


def test_help_lists_every_command() -> None:
    result = run("--help")
    assert result.returncode == 0
    for command in ("setup", "init", "synth", "extract", "series", "link", "occurrence", "features", "run", "demo"):
        assert command in result.stdout


def test_wrong_setting_gives_one_line_and_exit_2() -> None:
    result = run("init", "extract.block_sise=10")
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "micdm: extract.block_sise: unknown setting; known keys here: ['block_size', 'files_per_partition', "
        "'full_refresh', 'header_format', 'header_json_max_bytes', 'max_nesting', 'max_retries', 'sr_max_items', "
        "'threads_per_task']"]


def test_bad_value_and_bad_yaml_give_one_line_each() -> None:
    wrong = run("extract", "occurrence.missing_procedure=drop")
    assert wrong.returncode == 2 and wrong.stderr.strip().splitlines() == [
        "micdm: occurrence.missing_procedure: 'drop' is not one of ['create', 'exception']"]
    broken = run("extract", "sources.roots=[/data")
    assert broken.returncode == 2 and len(broken.stderr.strip().splitlines()) == 1
    assert "sources.roots" in broken.stderr and "quote it" in broken.stderr


def test_dry_run_lists_files_and_tables_and_writes_nothing(tmp_path) -> None:
    from micdm.synth import generate

    summary = generate(tmp_path / "export", patients=2, seed=1, pixels="none")
    warehouse = tmp_path / "warehouse"
    roots = f"sources.roots=[{tmp_path / 'export' / 'dicom'}]"
    result = run("run", "--dry-run", f"storage.warehouse={warehouse}", roots)
    assert result.returncode == 0, result.stderr
    assert f"extract would list {summary.instances} files" in result.stdout
    for stage in ("extract", "series", "link", "occurrence", "features", "publish"):
        assert any(line.startswith(stage) for line in result.stdout.splitlines()), stage
    assert not warehouse.exists(), "a dry run creates no table"


def _features_by_kind(output: str) -> dict[str, int]:
    line = next(line for line in output.splitlines() if line.startswith("features "))
    return {k: int(v) for k, v in re.findall(r"(\w+)=(\d+)", line)}


def test_a_demo_run_logs_no_phi_and_shows_every_kind_of_feature(tmp_path) -> None:
    """Patient names, ids and birth dates of the demo never reach the output (INFO and above, and print);
    the demo's reports, segmentation and AI results all become features."""
    from deltalake import DeltaTable

    from micdm.synth import UNKNOWN_SERIES, plan_patients

    out, warehouse = tmp_path / "demo", tmp_path / "warehouse"
    result = run("demo", "synth.patients=3", "synth.seed=2", "synth.pixels=none", f"synth.out={out}",
                 f"sources.roots=[{out / 'dicom'}]", f"storage.warehouse={warehouse}")
    assert result.returncode == 0, result.stderr[-2000:]
    output = result.stdout + result.stderr
    assert "image_occurrence" in output and "quality" in output
    kinds = _features_by_kind(result.stdout)
    assert all(kinds[kind] > 0 for kind in ("acquisition", "structured_report", "segmentation", "algorithm")), kinds
    tables = {name: DeltaTable(str(warehouse / "micdm" / name)).to_pandas()
              for name in ("observation", "image_feature", "feature_quarantine", "sr_measurement_group")}
    assert len(tables["observation"]) > 0 and len(tables["sr_measurement_group"]) > 0
    feature = tables["image_feature"]
    assert feature["alg_system"].str.startswith("urn:dicom:algorithm:").sum() > 0, "SEG and CAD report features"
    assert feature["alg_system"].str.startswith("urn:example:").sum() > 0, "the imported AI results"
    quarantine = tables["feature_quarantine"]
    assert list(quarantine["series_instance_uid"]) == [UNKNOWN_SERIES], "only the row the demo plants"
    for patient in plan_patients(3, 2):
        for value in (patient.name, patient.name.replace("^", " "), patient.patient_id,
                      patient.birth_date.strftime("%Y%m%d"), patient.birth_date.isoformat()):
            assert value not in output, f"PHI in the output: {value[:3]}..."
    reports = list((warehouse / "reports").glob("micdm-run-*.html"))
    assert len(reports) == 1
    page = reports[0].read_text(encoding="utf-8")
    assert "Linkage" in page and "Quality checks" in page and "isForeignKey" in page
    assert all(patient.patient_id not in page for patient in plan_patients(3, 2))


def test_quality_command_exits_non_zero_on_a_fatal_failure(spark, empty, tmp_path) -> None:
    from micdm.tables import overwrite

    _, locator = empty
    overwrite(locator, "image_feature", spark.createDataFrame(
        [(1, 1, 42, 1147330, 7, 0, 32817, None, None, None, None, None)],
        "image_feature_id int, person_id int, image_occurrence_id int, table_concept_id int, table_row_id int, "
        "image_feature_concept_id int, image_feature_type_concept_id int, image_finding_concept_id int, "
        "image_finding_id int, anatomic_site_concept_id int, alg_system string, alg_datetime timestamp"))
    done = subprocess.run([sys.executable, "-m", "micdm.cli", "quality", "-c", str(REPO / "conf" / "local.yml"),
                           f"storage.warehouse={tmp_path / 'warehouse'}"], capture_output=True, text=True,
                          check=False, timeout=600)
    assert done.returncode == 2
    message = done.stderr.strip().splitlines()[-1]
    assert message.startswith("micdm: ") and "isForeignKey image_feature.image_occurrence_id" in message
    assert "isForeignKey image_feature.table_row_id" in message
