"""Linkage against ground truth: `micdm synth` data of many patients through extract, series, link and
occurrence; precision and recall per rule written to bench/results/linkage.{json,md}.

    python bench/linkage_eval.py --patients 500
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
from pathlib import Path

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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--patients", type=int, default=500)
    parser.add_argument("--seed", type=int, default=5)
    parser.add_argument("--work", type=Path, default=REPO / ".micdm" / "linkage")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results")
    args = parser.parse_args(argv)

    from micdm.config import SparkSettings
    from micdm.spark import get_spark
    from micdm.synth import evaluate_linkage

    spark = get_spark(SparkSettings(master="local[2]", conf={"spark.sql.shuffle.partitions": "4"}))
    result = evaluate_linkage(spark, args.work, args.patients, args.seed)
    result["date"] = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
    result["command"] = " ".join(["python", "bench/linkage_eval.py", *(argv or sys.argv[1:])])
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "linkage.json").write_text(json.dumps(result, indent=2, default=str) + "\n")
    (args.out / "linkage.md").write_text(_markdown(result))
    print(_markdown(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
