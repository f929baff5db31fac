"""Linkage: each series to a person, a procedure and a visit of the site's CDM, with the rule used.

Linkage is decided per study, so that every series of a study (the images, their SR, their SEG) ends
on the same procedure. Rules, in order:

1. ``accession``: AccessionNumber = procedure_occurrence.procedure_source_value, same person;
2. ``window``: same person, procedure_date within ``link_window_days`` of the image date, procedure
   concept matching the modality; the nearest date wins, then the lowest procedure_occurrence_id;
3. ``created``: a procedure_occurrence row made from the study (policy ``create``), or an exception
   (policy ``exception``).
"""

from __future__ import annotations

from dataclasses import dataclass

from pyspark.sql import DataFrame, SparkSession, Window
from pyspark.sql import functions as F

from micdm.config import Settings
from micdm.ids import assign_ids
from micdm.tables import TableLocator, merge_into, overwrite, read_table
from micdm.vocab import modality_procedures

__all__ = ["LinkInputs", "link_studies", "run_link", "study_keys"]

_NON_IMAGE_MODALITIES = ("SR", "SEG", "KO", "PR", "RWV", "ANN", "REG", "DOC")


@dataclass(frozen=True)
class LinkInputs:
    series: DataFrame
    person: DataFrame
    procedure: DataFrame
    visit: DataFrame
    modality_map: DataFrame


def study_keys(series: DataFrame) -> DataFrame:
    """One row per study: patient, accession, the imaging modality and the earliest image date."""
    imaging = F.when(~F.col("modality").isin(*_NON_IMAGE_MODALITIES), F.col("modality"))
    return series.groupBy("study_instance_uid").agg(
        F.mode("patient_id").alias("patient_id"),
        F.mode("accession_number").alias("accession_number"),
        F.coalesce(F.mode(imaging), F.mode("modality")).alias("modality"),
        F.min("image_date").alias("image_date"),
    )


def _first_by(frame: DataFrame, key: str, *order: str) -> DataFrame:
    rank = F.row_number().over(Window.partitionBy(key).orderBy(*order))
    return frame.withColumn("_rank", rank).where("_rank = 1").drop("_rank")


def link_studies(inputs: LinkInputs, window_days: int) -> DataFrame:
    """Per study: person_id, procedure_occurrence_id (NULL when no rule matched), link_rule."""
    persons = _first_by(inputs.person.select("person_source_value", "person_id"), "person_source_value",
                        "person_id")
    studies = study_keys(inputs.series).join(
        persons, F.col("patient_id") == F.col("person_source_value"), "left"
    ).drop("person_source_value")
    procedures = inputs.procedure.select("procedure_occurrence_id", F.col("person_id").alias("p_person"),
                                         "procedure_source_value", "procedure_date", "procedure_concept_id")
    by_accession = _first_by(
        studies.join(procedures, (F.col("person_id") == F.col("p_person"))
                     & (F.col("accession_number") == F.col("procedure_source_value"))),
        "study_instance_uid", "procedure_occurrence_id",
    ).select("study_instance_uid", "procedure_occurrence_id", F.lit("accession").alias("link_rule"))
    compatible = procedures.join(inputs.modality_map, "procedure_concept_id")
    candidates = studies.join(by_accession.select("study_instance_uid"), "study_instance_uid", "left_anti").join(
        compatible,
        (F.col("person_id") == F.col("p_person"))
        & (studies["modality"] == compatible["modality"])
        & (F.abs(F.datediff("procedure_date", "image_date")) <= window_days),
    ).withColumn("_distance", F.abs(F.datediff("procedure_date", "image_date")))
    by_window = _first_by(candidates, "study_instance_uid", "_distance", "procedure_occurrence_id").select(
        "study_instance_uid", "procedure_occurrence_id", F.lit("window").alias("link_rule"))
    return studies.join(by_accession.unionByName(by_window), "study_instance_uid", "left")


def _visits(links: DataFrame, visit: DataFrame, procedure: DataFrame) -> DataFrame:
    """The person's visit containing the image date, else the linked procedure's visit."""
    containing = _first_by(
        links.select("study_instance_uid", "person_id", "image_date").join(
            visit.select(F.col("person_id").alias("v_person"), "visit_occurrence_id", "visit_start_date",
                         "visit_end_date"),
            (F.col("person_id") == F.col("v_person"))
            & F.col("image_date").between(F.col("visit_start_date"), F.col("visit_end_date")),
        ),
        "study_instance_uid", "visit_start_date", "visit_occurrence_id",
    ).select("study_instance_uid", F.col("visit_occurrence_id").alias("containing_visit"))
    of_procedure = procedure.select("procedure_occurrence_id", F.col("visit_occurrence_id").alias("procedure_visit"))
    return (
        links.join(containing, "study_instance_uid", "left")
        .join(of_procedure, "procedure_occurrence_id", "left")
        .withColumn("visit_occurrence_id", F.coalesce("containing_visit", "procedure_visit"))
        .drop("containing_visit", "procedure_visit")
    )


def _create_procedures(spark: SparkSession, locator: TableLocator, settings: Settings, unlinked: DataFrame,
                       modality_map: DataFrame, procedure: DataFrame) -> DataFrame:
    """Allocate and write one procedure_occurrence per unlinked study; returns study -> procedure id."""
    floor = procedure.agg(F.max("procedure_occurrence_id")).first()[0] or 0
    ids = assign_ids(spark, locator, "procedure_occurrence",
                     unlinked.select(F.col("study_instance_uid").alias("natural_key")), floor=floor)
    created = unlinked.join(ids, unlinked["study_instance_uid"] == ids["natural_key"]).join(
        modality_map, "modality", "left")
    rows = created.select(
        F.col("id").alias("procedure_occurrence_id"),
        "person_id",
        F.coalesce("procedure_concept_id", F.lit(0)).alias("procedure_concept_id"),
        F.col("image_date").alias("procedure_date"),
        F.lit(settings.occurrence.procedure_type_concept_id).alias("procedure_type_concept_id"),
        # varchar(50): the accession number, else the tail of the study UID (UIDs run to 64 characters)
        F.coalesce("accession_number", F.expr("right(study_instance_uid, 50)")).alias("procedure_source_value"),
    )
    merge_into(spark, locator, "procedure_occurrence", rows, ["procedure_occurrence_id"])
    return rows.select("procedure_occurrence_id").join(
        ids.select(F.col("natural_key").alias("study_instance_uid"), F.col("id").alias("procedure_occurrence_id")),
        "procedure_occurrence_id",
    )


def run_link(spark: SparkSession, locator: TableLocator, settings: Settings) -> dict[str, int]:
    """Link every series; rebuild series_link; returns counts per rule and exception reason."""
    # Procedures micdm created on earlier runs are not the site's evidence: they are re-derived below.
    ours = read_table(spark, locator, "id_map").where(F.col("namespace") == "procedure_occurrence")
    site_procedures = read_table(spark, locator, "procedure_occurrence").join(
        ours.select(F.col("id").alias("procedure_occurrence_id")), "procedure_occurrence_id", "left_anti")
    inputs = LinkInputs(
        series=read_table(spark, locator, "dicom_series"),
        person=read_table(spark, locator, "person"),
        procedure=site_procedures,
        visit=read_table(spark, locator, "visit_occurrence"),
        modality_map=modality_procedures(spark),
    )
    links = link_studies(inputs, settings.occurrence.link_window_days).localCheckpoint(eager=True)
    unlinked = links.where(F.col("procedure_occurrence_id").isNull() & F.col("person_id").isNotNull()
                           & F.col("image_date").isNotNull())
    if settings.occurrence.missing_procedure == "create" and unlinked.take(1):
        created = _create_procedures(spark, locator, settings, unlinked, inputs.modality_map, inputs.procedure)
        links = links.join(created.withColumnRenamed("procedure_occurrence_id", "_created"), "study_instance_uid",
                           "left").select(
            *[c for c in links.columns if c not in ("procedure_occurrence_id", "link_rule")],
            F.coalesce("procedure_occurrence_id", "_created").alias("procedure_occurrence_id"),
            F.when(F.col("link_rule").isNotNull(), F.col("link_rule"))
            .when(F.col("_created").isNotNull(), F.lit("created")).alias("link_rule"),
        )
    links = _visits(links, read_table(spark, locator, "visit_occurrence"),
                    read_table(spark, locator, "procedure_occurrence"))
    exception = (
        F.when(F.col("person_id").isNull(), F.lit("person_not_found"))
        .when(F.col("image_date").isNull(), F.lit("no_image_date"))
        .when(F.col("procedure_occurrence_id").isNull(), F.lit("no_matching_procedure"))
    )
    series_links = inputs.series.select(F.col("series_instance_uid").alias("image_series_uid"),
                                        "study_instance_uid").join(links, "study_instance_uid", "left").select(
        "image_series_uid", "person_id", "procedure_occurrence_id", "visit_occurrence_id", "link_rule",
        exception.alias("exception_reason"), F.current_timestamp().alias("updated_at"),
    )
    overwrite(locator, "series_link", series_links)
    stored = read_table(spark, locator, "series_link")
    return {row[0]: row[1] for row in stored.groupBy(F.coalesce("link_rule", "exception_reason")).count().collect()}
