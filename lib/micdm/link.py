"""Linkage: each series to a person, a procedure and a visit of the site's CDM, with the rule used.

Linkage is decided per study, so that every series of a study (the images, their SR, their SEG) ends
on the same procedure. Rules, in order:

1. ``accession``: the study's AccessionNumber equals the procedure's accession (a procedure_occurrence
   column, or the site's crosswalk table), same person; the nearest date, then the lowest id, wins;
2. ``window``: same person, procedure_date within ``link_window_days`` of the image date, procedure
   concept compatible with the modality, procedure not claimed by an accession link; the nearest date
   wins, then the lowest procedure_occurrence_id;
3. ``created``: a procedure_occurrence row made from the study (policy ``create``), or an exception
   (policy ``exception``).

Series that cannot be linked are never dropped: each gets a row in link_exception with the reason.
"""

from __future__ import annotations

import enum
import logging
import re
from dataclasses import dataclass

from pyspark.sql import Column, DataFrame, SparkSession, Window
from pyspark.sql import functions as F

from micdm.changes import Changes, changed_keys
from micdm.concurrency import run_concurrently
from micdm.config import OccurrenceSettings, Settings
from micdm.ids import allocated_ids, assign_ids
from micdm.ownership import release_clashing_ids, remove_site_rows, site_floor, write_site_rows
from micdm.stage import StageCounts
from micdm.tables import (
    Keys,
    TableLocator,
    append,
    as_frame,
    has_rows,
    listed_or_kept,
    read_table,
    site_table,
    sync_rows,
    within,
)
from micdm.vocab import compatible_procedures, modality_procedures

__all__ = ["WARNING_CREATED_ON_PROCEDURE_DAY", "ExceptionReason", "LinkInputs", "LinkRule", "link_studies",
           "person_key", "run", "studies_to_relink", "study_keys"]

log = logging.getLogger(__name__)

_NON_IMAGE_MODALITIES = ("SR", "SEG", "KO", "PR", "RWV", "ANN", "REG", "DOC")


#: link_report name (kind 'warning') of the studies for which micdm created a procedure on a day the site has
#: one for the same person: most likely the imaging procedure, with a concept the window rule does not accept.
WARNING_CREATED_ON_PROCEDURE_DAY = "created_on_site_procedure_day"


class LinkRule(enum.StrEnum):
    ACCESSION = "accession"
    WINDOW = "window"
    CREATED = "created"


class ExceptionReason(enum.StrEnum):
    """Why a series has no image_occurrence row."""

    PERSON_NOT_FOUND = "person_not_found"
    PERSON_AMBIGUOUS = "person_ambiguous"
    NO_IMAGE_DATE = "no_image_date"
    NO_MATCHING_PROCEDURE = "no_matching_procedure"


_DETAILS = {
    ExceptionReason.PERSON_NOT_FOUND: "no person matches the study's PatientID (and issuer, where configured)",
    ExceptionReason.PERSON_AMBIGUOUS: "several persons match the study's PatientID",
    ExceptionReason.NO_IMAGE_DATE: "none of the configured header dates is present",
    ExceptionReason.NO_MATCHING_PROCEDURE: "no procedure matched and occurrence.missing_procedure is 'exception'",
}


@dataclass(frozen=True)
class LinkInputs:
    """What linkage reads: silver series and the site's CDM rows (already filtered to the site's own)."""

    series: DataFrame
    persons: DataFrame
    """patient_id, issuer_of_patient_id (NULL: any issuer), person_id: from the crosswalk or person."""
    procedures: DataFrame
    """procedure_occurrence_id, person_id, procedure_date, procedure_concept_id, accession_number."""
    compatible: DataFrame
    """modality, procedure_concept_id: what the window rule accepts."""


def study_keys(series: DataFrame) -> DataFrame:
    """One row per study: patient, issuer, accession, the imaging modality and the earliest image date."""
    imaging = F.when(~F.col("modality").isin(*_NON_IMAGE_MODALITIES), F.col("modality"))
    return series.groupBy("study_instance_uid").agg(
        F.mode("patient_id").alias("patient_id"),
        F.mode("issuer_of_patient_id").alias("issuer_of_patient_id"),
        F.mode("accession_number").alias("accession_number"),
        F.coalesce(F.mode(imaging), F.mode("modality")).alias("modality"),
        F.min("image_date").alias("image_date"),
    )


def person_key(template: str, patient_id: Column, issuer: Column) -> Column:
    """person_source_value as the template spells it; NULL when a part it names is missing."""
    parts: list[Column] = []
    for literal, name in re.findall(r"([^{}]*)(?:{(\w+)})?", template):
        if literal:
            parts.append(F.lit(literal))
        if name:
            parts.append(patient_id if name == "patient_id" else issuer)
    return F.concat(*parts)


def _first_by(frame: DataFrame, key: str, *order: str | Column) -> DataFrame:
    rank = F.row_number().over(Window.partitionBy(key).orderBy(*order))
    return frame.withColumn("_rank", rank).where("_rank = 1").drop("_rank")


def _resolve_persons(studies: DataFrame, persons: DataFrame) -> DataFrame:
    """Adds person_id and person_matches (0, 1, or more: ambiguous) per study.

    A crosswalk row naming the study's issuer beats one that leaves the issuer open.
    """
    candidates = studies.select("study_instance_uid", "patient_id", "issuer_of_patient_id").join(
        persons.select(F.col("patient_id").alias("c_patient"), F.col("issuer_of_patient_id").alias("c_issuer"),
                       "person_id"),
        (F.col("patient_id") == F.col("c_patient"))
        & (F.col("c_issuer").isNull() | (F.col("c_issuer") == F.col("issuer_of_patient_id"))),
    ).withColumn("_specific", F.col("c_issuer").isNotNull().cast("int"))
    # the candidates of each study's most specific kind, in one pass over them
    best = F.max("_specific").over(Window.partitionBy("study_instance_uid"))
    matched = candidates.where(F.col("study_instance_uid").isNotNull()).withColumn("_best", best) \
        .where(F.col("_specific") == F.col("_best")).groupBy("study_instance_uid").agg(
            F.count_distinct("person_id").alias("person_matches"), F.min("person_id").alias("_person"))
    return studies.join(matched, "study_instance_uid", "left").withColumns({
        "person_matches": F.coalesce("person_matches", F.lit(0)),
        "person_id": F.when(F.col("person_matches") == 1, F.col("_person")),
    }).drop("_person")


def link_studies(inputs: LinkInputs, window_days: int) -> DataFrame:
    """Per study: person_id, person_matches, procedure_occurrence_id (NULL when no rule matched), link_rule.

    The studies are materialised first (one small row each): both rules and the final join read them, and
    without it the plan would repeat the grouping of every series and the person lookup each time.
    """
    studies = _resolve_persons(study_keys(inputs.series), inputs.persons).localCheckpoint(eager=True)
    procedures = inputs.procedures.select("procedure_occurrence_id", F.col("person_id").alias("p_person"),
                                          "procedure_date", "procedure_concept_id",
                                          F.col("accession_number").alias("p_accession"))
    distance = F.abs(F.datediff("procedure_date", "image_date"))
    by_accession = _first_by(
        studies.join(procedures, (F.col("person_id") == F.col("p_person"))
                     & (F.col("accession_number") == F.col("p_accession"))).withColumn("_distance", distance),
        "study_instance_uid", F.col("_distance").asc_nulls_last(), "procedure_occurrence_id",
    ).select("study_instance_uid", "procedure_occurrence_id", F.lit(LinkRule.ACCESSION.value).alias("link_rule"))
    claimed = by_accession.select("procedure_occurrence_id")
    candidates = (
        studies.join(by_accession.select("study_instance_uid"), "study_instance_uid", "left_anti")
        .join(procedures.join(claimed, "procedure_occurrence_id", "left_anti").join(
            inputs.compatible.withColumnRenamed("modality", "p_modality"), "procedure_concept_id"),
            (F.col("person_id") == F.col("p_person")) & (F.col("modality") == F.col("p_modality"))
            & (distance <= window_days))
        .withColumn("_distance", distance)
    )
    by_window = _first_by(candidates, "study_instance_uid", "_distance", "procedure_occurrence_id").select(
        "study_instance_uid", "procedure_occurrence_id", F.lit(LinkRule.WINDOW.value).alias("link_rule"))
    return studies.join(by_accession.unionByName(by_window), "study_instance_uid", "left")


def _containing_visits(links: DataFrame, visit: DataFrame) -> DataFrame:
    """study_instance_uid -> the person's visit containing the image date (nearest start, then lowest id)."""
    return _first_by(
        links.select("study_instance_uid", "person_id", "image_date").join(
            visit.select(F.col("person_id").alias("v_person"), "visit_occurrence_id", "visit_start_date",
                         "visit_end_date"),
            (F.col("person_id") == F.col("v_person"))
            & F.col("image_date").between(F.col("visit_start_date"), F.col("visit_end_date")),
        ),
        "study_instance_uid", F.col("visit_start_date").desc(), "visit_occurrence_id",
    ).select("study_instance_uid", F.col("visit_occurrence_id").alias("containing_visit"))


def _create_procedures(spark: SparkSession, locator: TableLocator, cfg: OccurrenceSettings, unlinked: DataFrame
                       ) -> tuple[DataFrame, int]:
    """Allocate and write one procedure_occurrence per unlinked study; returns (study -> procedure id, rows
    restored after a reload of the site's table).

    Ids come from id_map keyed on the study UID, in micdm's block of the site's table, so a re-run re-uses
    them; an id the site has since taken for a row of its own is given up for a new one (ownership.py).
    """
    keys = unlinked.select(F.col("study_instance_uid").alias("natural_key"))
    ids = assign_ids(spark, locator, "procedure_occurrence", keys, floor=site_floor(spark, locator,
                                                                                   "procedure_occurrence"))
    if release_clashing_ids(spark, locator, {"procedure_occurrence": ids}):  # logged with its count
        ids = assign_ids(spark, locator, "procedure_occurrence", keys,
                         floor=site_floor(spark, locator, "procedure_occurrence"))
    created = unlinked.join(ids, unlinked["study_instance_uid"] == ids["natural_key"]).join(
        modality_procedures(spark, locator), "modality", "left")
    rows = created.select(
        F.col("id").alias("procedure_occurrence_id"),
        "person_id",
        F.coalesce("procedure_concept_id", F.lit(0)).alias("procedure_concept_id"),
        F.col("image_date").alias("procedure_date"),
        F.lit(cfg.procedure_type_concept_id).alias("procedure_type_concept_id"),
        F.col("containing_visit").alias("visit_occurrence_id"),
        # varchar(50): the accession number, else the tail of the study UID (UIDs run to 64 characters)
        F.coalesce(F.substring("accession_number", 1, 50), F.expr("right(study_instance_uid, 50)"))
        .alias("procedure_source_value"),
    )
    restored = write_site_rows(spark, locator, {"procedure_occurrence": rows})
    return created.select("study_instance_uid", F.col("id").alias("_created")), restored


def _patient_key(cfg: OccurrenceSettings) -> Column:
    """The key a series' patient is looked up by: person_source_value as the template spells it, or the
    PatientID itself with a crosswalk."""
    if cfg.person_crosswalk:
        return F.col("patient_id")
    return person_key(cfg.person_source_value, F.col("patient_id"), F.col("issuer_of_patient_id"))


def _keys_of_series(series: DataFrame) -> DataFrame:
    """Series rows (changed ones, before and after) -> their study UIDs and patient keys, in one column."""
    return series.select(F.explode(F.array("study_instance_uid", "patient_id")))


def _persons_of(rows: DataFrame) -> DataFrame:
    return rows.select(F.col("person_id").cast("string"))


def studies_to_relink(series: DataFrame, persons: DataFrame, keys: Keys | None) -> Keys | None:
    """The studies to link again (None: all), from ``keys``, study UIDs, patient keys and person ids alike:
    each study named, and every study of a patient key named or of a person named or resolved to. Listed
    (``tables.listed_or_kept``): dicom_series and series_link are then read by the list.

    A person's studies are linked together (a procedure one claims by accession is not the window rule's
    for another), so a change to one study relinks all of them; a key that names more than one thing
    only widens the set, which costs time, never a wrong link.
    """
    if keys is None:
        return None
    named = as_frame(series.sparkSession, keys, "key")
    people = within(persons, "patient_id", named).select("person_id").unionByName(
        within(persons.select(F.col("person_id").cast("string").alias("_person"), "person_id"), "_person", named)
        .select("person_id"))
    keys_of_people = persons.join(people, "person_id", "left_semi").select(F.col("patient_id").alias("key"))
    of_patients = within(series, "patient_id", named.unionByName(keys_of_people))
    return listed_or_kept(of_patients.select(F.col("study_instance_uid").alias("key")).unionByName(named).distinct())


def _site_persons(spark: SparkSession, locator: TableLocator, cfg: OccurrenceSettings) -> DataFrame:
    """patient_id, issuer_of_patient_id, person_id: the crosswalk, or person_source_value read backwards.

    Without a crosswalk, the template is applied to each study (see person_key) and compared with
    person_source_value; here that comparison is set up by keying persons on their source value.
    """
    if cfg.person_crosswalk:
        return site_table(spark, locator, cfg.person_crosswalk).select(
            F.col("patient_id").cast("string"), F.col("issuer_of_patient_id").cast("string"),
            F.col("person_id").cast("int"))
    return read_table(spark, locator, "person").select(
        F.col("person_source_value").alias("patient_id"), F.lit(None).cast("string").alias("issuer_of_patient_id"),
        "person_id")


def _site_procedures(spark: SparkSession, locator: TableLocator, cfg: OccurrenceSettings) -> DataFrame:
    """The site's own procedures (not those micdm created) with the accession number each carries."""
    ours = allocated_ids(spark, locator, "procedure_occurrence", "procedure_occurrence_id")
    procedures = read_table(spark, locator, "procedure_occurrence").join(ours, "procedure_occurrence_id", "left_anti")
    if cfg.accession_crosswalk:
        crosswalk = site_table(spark, locator, cfg.accession_crosswalk).select(
            F.col("accession_number").cast("string"), F.col("procedure_occurrence_id").cast("int"))
        return procedures.join(crosswalk, "procedure_occurrence_id", "left")
    return procedures.withColumn("accession_number", F.col(cfg.accession_column))


def _series_links(series: DataFrame, links: DataFrame) -> DataFrame:
    exception = (
        F.when(F.col("person_matches") == 0, F.lit(ExceptionReason.PERSON_NOT_FOUND.value))
        .when(F.col("person_matches") > 1, F.lit(ExceptionReason.PERSON_AMBIGUOUS.value))
        .when(F.col("image_date").isNull(), F.lit(ExceptionReason.NO_IMAGE_DATE.value))
        .when(F.col("procedure_occurrence_id").isNull(), F.lit(ExceptionReason.NO_MATCHING_PROCEDURE.value))
    )
    return series.select(F.col("series_instance_uid").alias("image_series_uid"), "study_instance_uid").join(
        links, "study_instance_uid", "left").select(
        "image_series_uid", F.col("study_instance_uid").alias("image_study_uid"), "person_id",
        "procedure_occurrence_id", "visit_occurrence_id",
        F.when(exception.isNull(), F.col("link_rule")).alias("link_rule"), exception.alias("exception_reason"),
        F.current_timestamp().alias("updated_at"),
    )


def _report(series_links: DataFrame, run_id: str) -> DataFrame:
    kind = F.when(F.col("exception_reason").isNull(), F.lit("rule")).otherwise(F.lit("exception"))
    return series_links.groupBy(kind.alias("kind"), F.coalesce("link_rule", "exception_reason").alias("name")).agg(
        F.count(F.lit(1)).cast("int").alias("series"), F.count_distinct("image_study_uid").cast("int").alias("studies"),
    ).select(F.lit(run_id).alias("run_id"), F.current_timestamp().alias("reported_at"), "kind", "name", "series",
             "studies")


def run(spark: SparkSession, locator: TableLocator, settings: Settings, run_id: str,
        changes: Changes | None = None) -> StageCounts:
    """Link every series (after a change to dicom_series or to the site's rows, the series of the studies
    studies_to_relink names); bring series_link and link_exception in line (only rows that changed are
    written, so the next stages redo only those); append to link_report.

    Returns series counts per rule and per exception reason, over every series. A change to the site's
    person, procedure_occurrence or visit_occurrence rows relinks the studies of the persons they name
    (told by comparing the table's two Delta versions); a change to the vocabulary, a crosswalk or a site
    table that is not Delta relinks every study.
    """
    cfg = settings.occurrence
    every_series = read_table(spark, locator, "dicom_series").withColumn("patient_id", _patient_key(cfg))
    persons = _site_persons(spark, locator, cfg)
    studies = studies_to_relink(every_series, persons, changed_keys(spark, locator, changes, {
        "dicom_series": lambda feed: _keys_of_series(feed.withColumn("patient_id", _patient_key(cfg))),
        # the site's rows that changed, by their person (and its source value: the key it was found by)
        "person": lambda rows: rows.select(F.explode(F.array(F.col("person_id").cast("string"),
                                                             "person_source_value"))),
        "procedure_occurrence": _persons_of, "visit_occurrence": _persons_of}))
    series = within(every_series, "study_instance_uid", studies)
    scope = None if studies is None else ("image_study_uid", studies)
    site_procedures = _site_procedures(spark, locator, cfg)
    inputs = LinkInputs(series=series, persons=persons, procedures=site_procedures,
                        compatible=compatible_procedures(spark, locator, cfg.procedure_concepts,
                                                         cfg.imaging_procedure_roots))
    links = link_studies(inputs, cfg.link_window_days).localCheckpoint(eager=True)  # read twice just below
    links = links.join(_containing_visits(links, read_table(spark, locator, "visit_occurrence")),
                       "study_instance_uid", "left").localCheckpoint(eager=True)
    redone = "all" if studies is None else links.count()
    unlinked = links.where(F.col("procedure_occurrence_id").isNull() & F.col("person_id").isNotNull()
                           & F.col("image_date").isNotNull())
    restored, same_day = 0, 0
    if cfg.missing_procedure == "create" and has_rows(unlinked):
        # counted before micdm's procedures join the site's table, so none of them counts as the site's
        same_day = unlinked.join(site_procedures.select("person_id", F.col("procedure_date").alias("image_date")),
                                 ["person_id", "image_date"], "left_semi").count()
        created, restored = _create_procedures(spark, locator, cfg, unlinked)
        links = links.join(created, "study_instance_uid", "left").withColumns({
            "link_rule": F.coalesce("link_rule", F.when(F.col("_created").isNotNull(),
                                                        F.lit(LinkRule.CREATED.value))),
            "procedure_occurrence_id": F.coalesce("procedure_occurrence_id", "_created"),
        }).drop("_created")
    # The procedure's own visit when it contains the image date (an ER visit inside an admission), else the
    # visit that does, else the procedure's visit.
    visits = read_table(spark, locator, "visit_occurrence").select(
        F.col("visit_occurrence_id").alias("procedure_visit"), F.col("visit_start_date").alias("_start"),
        F.col("visit_end_date").alias("_end"))
    procedure_visits = read_table(spark, locator, "procedure_occurrence").select(
        "procedure_occurrence_id", F.col("visit_occurrence_id").alias("procedure_visit")).join(
        visits, "procedure_visit", "left")
    links = links.join(procedure_visits, "procedure_occurrence_id", "left").withColumn(
        "visit_occurrence_id", F.when(F.col("image_date").between(F.col("_start"), F.col("_end")),
                                      F.col("procedure_visit"))
        .otherwise(F.coalesce("containing_visit", "procedure_visit"))).drop("_start", "_end")
    series_links = _series_links(series, links)
    sync_rows(spark, locator, "series_link", series_links, ["image_series_uid"], scope, ignored=("updated_at",))
    stored = read_table(spark, locator, "series_link")
    exceptions = within(stored, "image_study_uid", studies).where(F.col("exception_reason").isNotNull())
    details = F.create_map(*[F.lit(x) for reason, text in _DETAILS.items() for x in (reason.value, text)])
    report = _report(stored, run_id)
    if same_day:
        log.warning("link: %d procedure(s) created on a day the site has a procedure for the same person; if those "
                    "are the imaging procedures, list their concepts in occurrence.procedure_concepts (or set "
                    "occurrence.imaging_procedure_roots)", same_day)
        report = report.unionByName(spark.createDataFrame(
            [(run_id, "warning", WARNING_CREATED_ON_PROCEDURE_DAY, same_day)],
            "run_id string, kind string, name string, studies int").select(
            "run_id", F.current_timestamp().alias("reported_at"), "kind", "name", F.lit(None).cast("int").alias(
                "series"), "studies"))
    report = report.localCheckpoint(eager=True)
    run_concurrently(
        lambda: sync_rows(spark, locator, "link_exception", exceptions.select(
            "image_series_uid", "image_study_uid", F.col("exception_reason").alias("reason"),
            details[F.col("exception_reason")].alias("detail"), "updated_at"), ["image_series_uid"], scope,
            ignored=("updated_at",)),
        lambda: _remove_unused_procedures(spark, locator, stored),
        lambda: append(locator, "link_report", report.fillna(0, ["series"])))
    counts = {row["name"]: row["series"] for row in report.where(F.col("kind") != "warning")
              .orderBy("kind", "name").collect()}
    if same_day:
        counts[WARNING_CREATED_ON_PROCEDURE_DAY] = same_day
    events = {"restored": restored, "studies redone": redone}
    return {**counts, **{k: v for k, v in events.items() if v}}


def _remove_unused_procedures(spark: SparkSession, locator: TableLocator, links: DataFrame) -> None:
    """Procedures micdm created that no link uses any more (a site procedure now matches their study) leave
    the site's table; only rows still as micdm wrote them are removed (ownership.py)."""
    used = links.where(F.col("procedure_occurrence_id").isNotNull()).select("procedure_occurrence_id")
    unused = allocated_ids(spark, locator, "procedure_occurrence", "id").join(
        used.select(F.col("procedure_occurrence_id").alias("id")), "id", "left_anti")
    removed = remove_site_rows(spark, locator, "procedure_occurrence", unused)
    if removed:
        log.info("link: %d procedure(s) micdm had created are no longer used and were removed", removed)
