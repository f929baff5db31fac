# Databricks notebook source
# MAGIC %md
# MAGIC # Linkage review
# MAGIC Which rule linked each series to its procedure, and the series that could not be linked, with why.

# COMMAND ----------

dbutils.widgets.text("config", "conf/local.yml", "Settings file")
dbutils.widgets.text("overrides", "", "Overrides (key=value ...)")
dbutils.widgets.dropdown("reason", "all", ["all", "person_not_found", "person_ambiguous", "no_image_date",
                                             "no_matching_procedure"], "Exception reason")

# COMMAND ----------

import matplotlib.pyplot as plt
from pyspark.sql import functions as F

from micdm.config import load_settings
from micdm.tables import TableLocator, read_table

settings = load_settings(dbutils.widgets.get("config"), dbutils.widgets.get("overrides").split())
locator = TableLocator.of(settings)
links = read_table(spark, locator, "series_link")
exceptions = read_table(spark, locator, "link_exception")

# COMMAND ----------

# MAGIC %md
# MAGIC ## Rules used and exceptions, by series

# COMMAND ----------

outcomes = links.groupBy(F.coalesce("link_rule", "exception_reason").alias("outcome")).count().orderBy(
    F.desc("count")).toPandas()
figure, axis = plt.subplots(figsize=(7, 3))
colours = ["tab:red" if o in set(exceptions.select("reason").distinct().toPandas()["reason"]) else "tab:blue"
           for o in outcomes["outcome"]]
axis.bar(outcomes["outcome"], outcomes["count"], color=colours)
axis.set_title("series per linkage rule (blue) and exception (red)")
display(figure)

# COMMAND ----------

# MAGIC %md
# MAGIC ## Runs so far

# COMMAND ----------

display(read_table(spark, locator, "link_report").orderBy(F.desc("reported_at"), "kind", "name"))

# COMMAND ----------

# MAGIC %md
# MAGIC ## The exceptions, with their series

# COMMAND ----------

reason = dbutils.widgets.get("reason")
chosen = exceptions if reason == "all" else exceptions.where(F.col("reason") == reason)
series = read_table(spark, locator, "dicom_series").select(
    F.col("series_instance_uid").alias("image_series_uid"), "modality", "image_date", "instance_count",
    "local_path")
display(chosen.join(series, "image_series_uid", "left").orderBy("reason", "image_study_uid"))
