"""Linkage on 500 synthetic patients against the generator's ground truth: no wrong link, no lost series."""

from __future__ import annotations

import pytest

from linkage_eval import evaluate_linkage


@pytest.mark.slow
def test_linkage_matches_the_ground_truth_at_scale(spark, tmp_path) -> None:
    result = evaluate_linkage(spark, tmp_path, patients=500, seed=5)
    scores = {s["name"]: s for s in result["scores"]}
    assert result["series"] > 1000
    # every series is in image_occurrence or in link_exception, never both
    assert result["in_image_occurrence"] + result["in_link_exception"] == result["series"]
    assert result["in_both"] == 0
    for rule in ("accession", "window", "created", "person_not_found"):
        assert scores[rule]["expected"] > 20, f"the synthetic data should exercise {rule}"
        assert scores[rule]["precision"] == 1.0, scores[rule]
        assert scores[rule]["recall"] == 1.0, scores[rule]
    assert set(scores) == {"accession", "window", "created", "person_not_found"}
