"""databricks.yml against the Databricks bundle JSON schema, and every task against micdm's entry points.

No Databricks workspace can run here, so the bundle is checked statically: the schema the CLI itself
validates with, then each task's entry point and parameters are run through micdm's own parser and
settings loader, with the bundle's variables filled in as `databricks bundle` would.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from importlib.metadata import entry_points
from pathlib import Path

import jsonschema
import pytest
import yaml

from micdm.cli import _parser
from micdm.config import load_settings

REPO = Path(__file__).resolve().parents[2]


def _bundle() -> dict:
    """databricks.yml with its includes merged in, as the CLI sees it."""
    bundle = yaml.safe_load((REPO / "databricks.yml").read_text(encoding="utf-8"))
    for pattern in bundle.get("include", []):
        for path in sorted(REPO.glob(pattern)):
            for key, value in yaml.safe_load(path.read_text(encoding="utf-8")).items():
                if isinstance(value, dict):
                    merged = bundle.setdefault(key, {})
                    for kind, items in value.items():
                        merged.setdefault(kind, {}).update(items)
                else:
                    bundle[key] = value
    return bundle


def _job(bundle: dict, target: str) -> dict:
    """The pipeline job as ``target`` deploys it: the target's settings over the job's, tasks merged by key."""
    base = bundle["resources"]["jobs"]["micdm_pipeline"]
    override = bundle["targets"][target].get("resources", {}).get("jobs", {}).get("micdm_pipeline", {})
    by_key = {task["task_key"]: task for task in override.get("tasks", [])}
    unknown = set(by_key) - {task["task_key"] for task in base["tasks"]}
    assert not unknown, f"target {target} sets tasks the job lacks: {unknown}"
    return {**base, **override, "tasks": [{**task, **by_key.get(task["task_key"], {})} for task in base["tasks"]]}


def _fill(text: str, bundle: dict, target: str) -> str:
    """Replace ${var.x}, ${workspace.file_path} and {{job.parameters.x}} with what a run would pass."""
    variables = {name: spec.get("default") for name, spec in bundle["variables"].items()}
    variables.update(bundle["targets"][target].get("variables", {}))
    job_parameters = {p["name"]: p["default"] for job in bundle["resources"]["jobs"].values()
                      for p in job.get("parameters", [])}
    text = re.sub(r"\$\{var\.(\w+)\}", lambda m: str(variables[m.group(1)]), text)
    text = text.replace("${workspace.file_path}", str(REPO))
    return re.sub(r"\{\{job\.parameters\.(\w+)\}\}", lambda m: str(job_parameters[m.group(1)]), text)


def _schema(shared: Path) -> dict:
    """The bundle schema, its Unicode classes (Go regex syntax) spelt the way Python's re reads them."""
    text = (shared / "spec" / "databricks" / "bundle_schema.json").read_text(encoding="utf-8")
    text = text.replace(r"[\\p{L}\\p{N}]", r"[^\\W_]").replace(r"\\p{L}", r"[^\\W\\d_]")
    return json.loads(text)


def test_bundle_matches_the_databricks_schema(shared: Path) -> None:
    validator = jsonschema.Draft202012Validator(_schema(shared))
    errors = sorted(validator.iter_errors(_bundle()), key=lambda e: list(e.absolute_path))
    assert not errors, "\n".join(f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in errors[:10])


def test_check_jsonschema_validates_the_bundle_files(shared: Path) -> None:
    """The bundle's files through check-jsonschema, a validator of its own, as a site's CI would run it."""
    command = shutil.which("check-jsonschema", path=str(Path(sys.executable).parent))
    assert command, "check-jsonschema is part of the dev extra"
    result = subprocess.run([command, "--schemafile", str(shared / "spec" / "databricks" / "bundle_schema.json"),
                             str(REPO / "databricks.yml"), *map(str, sorted((REPO / "resources").glob("*.yml")))],
                            capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]


def test_schema_check_catches_a_broken_bundle(shared: Path) -> None:
    broken = _bundle()
    broken["resources"]["jobs"]["micdm_pipeline"]["tasks"][0]["max_retries"] = "twice"
    assert list(jsonschema.Draft202012Validator(_schema(shared)).iter_errors(broken))


@pytest.mark.parametrize("target", ["dev", "prod", "serverless"])
def test_every_task_runs_a_micdm_stage_with_valid_settings(target: str) -> None:
    bundle = _bundle()
    scripts = {script.name for script in entry_points(group="console_scripts") if script.module == "micdm.cli"}
    tasks = _job(bundle, target)["tasks"]
    stages = []
    for task in tasks:
        wheel = task["python_wheel_task"]
        assert wheel["package_name"] == "micdm" and wheel["entry_point"] in scripts
        arguments = [_fill(str(p), bundle, target) for p in wheel["parameters"]]
        parsed = _parser().parse_args(arguments)  # exits (SystemExit) on an unknown stage or option
        settings = load_settings(parsed.config, parsed.overrides)  # raises ConfigError on a wrong key or value
        assert settings.storage.catalog == bundle["variables"]["catalog"]["default"]
        stages.append(parsed.command)
        for dependency in task.get("depends_on", []):
            assert dependency["task_key"] in {t["task_key"] for t in tasks}
    assert stages == ["vocabulary", "extract", "series", "link", "occurrence", "features", "publish", "quality"]


def test_targets_and_schedule() -> None:
    bundle = _bundle()
    assert bundle["targets"]["dev"]["mode"] == "development" and bundle["targets"]["prod"]["mode"] == "production"
    job = bundle["resources"]["jobs"]["micdm_pipeline"]
    assert job["schedule"]["quartz_cron_expression"] and job["email_notifications"]["on_failure"]
    # every stage but quality retries (a failed check is not transient)
    assert all(task.get("max_retries", 0) >= 1 for task in job["tasks"] if task["task_key"] != "quality")
    assert (REPO / "jobs").is_dir() and all((REPO / "jobs" / f"{task['task_key']}.py").is_file()
                                            for task in job["tasks"]), "each stage has a spark-submit entry"


@pytest.mark.parametrize("target", ["dev", "prod", "serverless"])
def test_every_task_of_every_target_has_compute_with_the_wheel(target: str) -> None:
    """A job cluster with the wheel as a library, or (serverless) an environment that installs the wheel."""
    bundle = _bundle()
    job = _job(bundle, target)
    wheel = bundle["artifacts"]["micdm_wheel"]
    assert wheel["type"] == "whl" and "--wheel-dir dist" in wheel["build"]
    clusters = {c["job_cluster_key"] for c in job.get("job_clusters", [])}
    environments = {e["environment_key"]: e["spec"] for e in job.get("environments", [])}
    for task in job["tasks"]:
        if "environment_key" in task:  # serverless: no cluster, no task libraries
            assert "job_cluster_key" not in task and "libraries" not in task, task["task_key"]
            spec = environments[task["environment_key"]]
            assert "./dist/*.whl" in spec["dependencies"] and int(spec["environment_version"]) >= 4
        else:
            assert task["job_cluster_key"] in clusters, task["task_key"]
            assert {"whl": "./dist/*.whl"} in task["libraries"], task["task_key"]
    assert bool(environments) == (target == "serverless") and bool(clusters) == (target != "serverless")
