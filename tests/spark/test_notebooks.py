"""The Databricks notebooks, run top to bottom on local Spark against the demo tables."""

from __future__ import annotations

from pathlib import Path

import pytest

from support.notebooks import run_notebook

REPO = Path(__file__).resolve().parents[2]


def _widgets(demo: dict) -> dict[str, str]:
    settings = demo["settings"]
    return {"config": str(REPO / "conf" / "local.yml"),
            "overrides": f"storage.warehouse={settings.storage.warehouse}"}


def _png(path: Path) -> bool:
    return path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 1000


def test_ingested(spark, demo, tmp_path) -> None:
    run = run_notebook(REPO / "notebooks" / "ingested.py", spark, tmp_path, _widgets(demo))
    assert len(run.figures) == 2 and all(_png(f) for f in run.figures)
    reasons = run.tables[0]
    assert list(reasons.columns) == ["reason", "count"]  # the demo quarantines nothing: an empty table


def test_linkage_review(spark, demo, tmp_path) -> None:
    widgets = {**_widgets(demo), "reason": "person_not_found"}
    run = run_notebook(REPO / "notebooks" / "linkage_review.py", spark, tmp_path, widgets)
    assert len(run.figures) == 1 and _png(run.figures[0])
    report, exceptions = run.tables
    assert {"accession", "person_not_found"} <= set(report["name"])
    missing = {uid for uid, row in demo["truth"].items() if row["expected_rule"] == "person_not_found"}
    assert set(exceptions["image_series_uid"]) == missing and set(exceptions["reason"]) == {"person_not_found"}


def test_research_example(spark, demo, tmp_path) -> None:
    run = run_notebook(REPO / "notebooks" / "research_ct_chest.py", spark, tmp_path,
                       {**_widgets(demo), "max_slice_thickness_mm": "1.25"})
    cohort = run.tables[0]
    assert len(cohort) > 0 and (cohort["slice_thickness_mm"] <= 1.25).all()
    assert cohort["person_id"].notna().all() and cohort["procedure_occurrence_id"].notna().all()
    assert len(run.figures) == 1 and _png(run.figures[0])


def test_a_wrong_widget_value_is_refused(spark, demo, tmp_path) -> None:
    with pytest.raises(ValueError, match="not one of"):
        run_notebook(REPO / "notebooks" / "linkage_review.py", spark, tmp_path, {**_widgets(demo), "reason": "x"})
