"""Linkage against ground truth: `micdm synth` data of many patients through extract, series, link and
occurrence; precision and recall per rule written to bench/results/linkage.{json,md}. The scoring is
also what tests/spark/test_linkage_truth.py asserts on.

    python bench/linkage_eval.py --patients 500
"""

from __future__ import annotations

import argparse
import csv
import datetime as dt
import json
import shutil
import sys
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]


def _markdown(result: dict) -> str:
    lines = [
        "# Linkage against ground truth", "",
        f"`{result['command']}`, {result['date']}: {result['patients']} synthetic patients, {result['series']} "
        f"series; {result['in_image_occurrence']} in image_occurrence, {result['in_link_exception']} in "
        f"link_exception, {result['in_both']} in both.", "",
        "| rule / exception | series linked by micdm | series the truth puts there | correct | precision | recall |",
        "|---|---|---|---|---|---|",
    ]
    lines += [f"| {s['name']} | {s['predicted']} | {s['expected']} | {s['correct']} | {s['precision']:.3f} | "
              f"{s['recall']:.3f} |" for s in result["scores"]]
    return "\n".join(lines) + "\n"


@dataclass(frozen=True)
class LinkScore:
    """How one rule (or exception reason) did against the ground truth."""

    name: str
    predicted: int
    """Series the pipeline put under this rule."""
    expected: int
    """Series the ground truth puts under it."""
    correct: int
    """Series under it in both, with the expected procedure where the rule links to a site procedure."""

    @property
    def precision(self) -> float:
        return self.correct / self.predicted if self.predicted else 1.0

    @property
    def recall(self) -> float:
        return self.correct / self.expected if self.expected else 1.0


def score_links(truth_csv: str | Path, series_links: Iterable[Any]) -> list[LinkScore]:
    """Precision and recall per rule, from series_link rows (image_series_uid, link_rule, exception_reason,
    procedure_occurrence_id).

    A series missing from the rows counts against recall; an accession or window link counts as correct
    only with the expected procedure.
    """
    with Path(truth_csv).open(newline="", encoding="utf-8") as handle:
        truth = {row["series_instance_uid"]: row for row in csv.DictReader(handle)}
    links = {row["image_series_uid"]: (row["link_rule"] or row["exception_reason"], row["procedure_occurrence_id"])
             for row in series_links}
    names = sorted({row["expected_rule"] for row in truth.values()} | {rule for rule, _ in links.values() if rule})
    scores = []
    for name in names:
        predicted = {uid for uid, (rule, _) in links.items() if rule == name}
        expected = {uid for uid, row in truth.items() if row["expected_rule"] == name}
        correct = sum(
            1 for uid in predicted & expected
            if name not in ("accession", "window")
            or str(links[uid][1]) == truth[uid]["expected_procedure_occurrence_id"]
        )
        scores.append(LinkScore(name, len(predicted), len(expected), correct))
    return scores


def evaluate_linkage(spark: Any, work: Path, patients: int, seed: int, *overrides: str) -> dict[str, Any]:
    """Synth ``patients`` (one instance per series) in ``work``, run the stages up to image_occurrence on
    ``spark`` with the local settings (plus ``overrides``), and score the links against the truth."""
    from micdm.config import load_settings
    from micdm.pipeline import run_stage
    from micdm.synth import generate, load_site
    from micdm.tables import TableLocator, read_table

    shutil.rmtree(work, ignore_errors=True)
    export = work / "export"
    generate(export, patients=patients, seed=seed, pixels="none", max_instances=1)
    settings = load_settings(None, [
        f"storage.warehouse={work / 'warehouse'}", f"sources.roots=[{export / 'dicom'}]", *overrides])
    locator = TableLocator.of(settings)
    load_site(spark, locator, export)
    started = time.monotonic()
    stages = [run_stage(spark, settings, stage, init=False) for stage in ("extract", "series", "link", "occurrence")]
    links = read_table(spark, locator, "series_link").collect()
    occurrences = {r.image_series_uid for r in read_table(spark, locator, "image_occurrence").collect()}
    exceptions = {r.image_series_uid for r in read_table(spark, locator, "link_exception").collect()}
    scores = score_links(export / "truth.csv", [r.asDict() for r in links])
    return {
        "patients": patients,
        "series": len(links),
        "in_image_occurrence": len(occurrences),
        "in_link_exception": len(exceptions),
        "in_both": len(occurrences & exceptions),
        "seconds": time.monotonic() - started,
        "stages": {s.stage: s.counts for s in stages},
        "scores": [{"name": s.name, "predicted": s.predicted, "expected": s.expected, "correct": s.correct,
                    "precision": s.precision, "recall": s.recall} for s in scores],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--patients", type=int, default=500)
    parser.add_argument("--seed", type=int, default=5)
    parser.add_argument("--work", type=Path, default=REPO / ".micdm" / "linkage")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results")
    args = parser.parse_args(argv)

    from micdm.config import SparkSettings
    from micdm.spark import get_spark

    spark = get_spark(SparkSettings(master="local[2]", conf={"spark.sql.shuffle.partitions": "4"}))
    result = evaluate_linkage(spark, args.work, args.patients, args.seed)
    result["date"] = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
    result["command"] = " ".join(["python", "bench/linkage_eval.py", *(argv or sys.argv[1:])])
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "linkage.json").write_text(json.dumps(result, indent=2, default=str) + "\n")
    (args.out / "linkage.md").write_text(_markdown(result))
    print(_markdown(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
