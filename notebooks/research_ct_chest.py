# Databricks notebook source
# MAGIC %md
# MAGIC # Research example: thin-slice chest CT
# MAGIC CT series of the chest with a slice thickness at or below a threshold, with their persons and the
# MAGIC procedures they are linked to: the kind of cohort question the imaging tables answer in one query.

# COMMAND ----------

dbutils.widgets.text("config", "conf/local.yml", "Settings file")
dbutils.widgets.text("overrides", "", "Overrides (key=value ...)")
dbutils.widgets.text("max_slice_thickness_mm", "1.5", "Slice thickness at most (mm)")

# COMMAND ----------

import matplotlib.pyplot as plt
from pyspark.sql import functions as F

from micdm.config import load_settings
from micdm.tables import TableLocator, read_table

settings = load_settings(dbutils.widgets.get("config"), dbutils.widgets.get("overrides").split())
locator = TableLocator.of(settings)
limit = float(dbutils.widgets.get("max_slice_thickness_mm"))
SLICE_THICKNESS = "00180050:"  # measurement_source_value: tag, then the rule (a series may have several)
CHEST_TERMS = ("CHEST", "THORAX", "LUNG")

# COMMAND ----------

occurrence = read_table(spark, locator, "image_occurrence")
series = read_table(spark, locator, "dicom_series").select(
    F.col("series_instance_uid").alias("image_series_uid"), "body_part_examined")
slice_thickness = (
    read_table(spark, locator, "image_feature")
    .join(read_table(spark, locator, "measurement"), F.col("table_row_id") == F.col("measurement_id"))
    .where(F.col("measurement_source_value").startswith(SLICE_THICKNESS))
    .groupBy("image_occurrence_id").agg(F.max("value_as_number").alias("slice_thickness_mm"))
)
cohort = (
    occurrence.where(F.col("modality") == "CT")
    .join(series, "image_series_uid")
    .where(F.upper("body_part_examined").isin(*CHEST_TERMS))
    .join(slice_thickness, "image_occurrence_id")
    .where(F.col("slice_thickness_mm") <= limit)
    .join(read_table(spark, locator, "person").select("person_id", "year_of_birth", "gender_concept_id"),
          "person_id")
    .join(read_table(spark, locator, "procedure_occurrence").select(
        "procedure_occurrence_id", "procedure_concept_id", "procedure_date"), "procedure_occurrence_id")
    .select("person_id", "year_of_birth", "gender_concept_id", "procedure_occurrence_id", "procedure_date",
            "image_occurrence_date", "image_series_uid", "slice_thickness_mm", "wadors_uri")
    .orderBy("person_id", "image_occurrence_date")
)
display(cohort)
print(f"{cohort.count()} series of {cohort.select('person_id').distinct().count()} persons")

# COMMAND ----------

thickness = slice_thickness.join(occurrence.where(F.col("modality") == "CT"), "image_occurrence_id").toPandas()
figure, axis = plt.subplots(figsize=(6, 3))
axis.hist(thickness["slice_thickness_mm"], bins=20)
axis.axvline(limit, color="tab:red")
axis.set_xlabel("slice thickness (mm)")
axis.set_title("CT series by slice thickness; the cohort is left of the line")
display(figure)
