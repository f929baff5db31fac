"""Actions run side by side keep their order, their errors and the stage's job group."""

from __future__ import annotations

import pytest

from micdm.concurrency import run_concurrently

from support.jobs import jobs_started


def test_results_come_back_in_order_and_jobs_count_in_the_callers_group(spark) -> None:
    with jobs_started(spark, "micdm-test-concurrency") as jobs:
        counts = run_concurrently(*[lambda n=n: spark.range(n).count() for n in (3, 1, 4, 1, 5)])
    assert counts == [3, 1, 4, 1, 5]
    assert len(jobs) >= 5


def test_an_error_in_one_call_is_raised_after_the_others_finish(spark) -> None:
    finished: list[int] = []

    def fails() -> None:
        raise ValueError("one call failed")

    with pytest.raises(ValueError, match="one call failed"):
        run_concurrently(lambda: finished.append(spark.range(2).count()), fails,
                         lambda: finished.append(spark.range(3).count()))
    assert sorted(finished) == [2, 3]
