"""The run report's HTML: charts and tables from plain rows, every data string escaped."""

from __future__ import annotations

from micdm.report import bar_chart, render_report

XSS = '<script>alert("x")</script>'


def test_header_strings_are_escaped_everywhere() -> None:
    page = render_report(
        run_id="r1", stages=[("extract", 1.5, {"instances": 3})], quarantine=[(XSS, 2)],
        linkage=[("rule", "accession", 3, 1)],
        quality=[("isRequired", "image_occurrence", XSS, 0, 3, 0.0, "fatal", "passed")],
        distributions={"manufacturer": [(XSS, 3), ("ACME", 1)]})
    assert "<script>" not in page and "&lt;script&gt;" in page
    assert page.startswith("<!DOCTYPE html>") and page.count("<svg") == 4  # stages, quarantine, linkage, one
    assert "1 quality checks, 0 failed, 0 not evaluated" in page


def test_failed_checks_come_first_and_are_counted() -> None:
    quality = [("isRequired", "image_feature", "person_id", 0, 4, 0.0, "fatal", "passed"),
               ("fkDomain", "measurement", "unit_concept_id", 0, 0, 0.0, "convention", "not_evaluated"),
               ("isForeignKey", "image_feature", "image_occurrence_id", 1, 4, 0.0, "fatal", "failed")]
    page = render_report("r2", [], [], [], quality, {})
    assert "1 failed, 1 not evaluated" in page
    rows = page.split("<h2>Quality checks</h2>")[1].split("<tr")[2:]
    assert [row.split("<td>")[1].split("<")[0] for row in rows] == ["isForeignKey", "fkDomain", "isRequired"]
    assert rows[0].startswith(' class="fail"')


def test_bar_lengths_follow_the_values() -> None:
    svg = bar_chart("t", [("a", 10), ("b", 5)], width=500)
    widths = [float(part.split('"')[0]) for part in svg.split('width="')[2:]]
    assert widths[0] == 2 * widths[1] > 0
