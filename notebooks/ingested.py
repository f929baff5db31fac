# Databricks notebook source
# MAGIC %md
# MAGIC # What was ingested
# MAGIC Modalities, manufacturers and body parts of the instances in the archive, and why files were quarantined.
# MAGIC Widgets: the settings file micdm runs with, and `key=value` overrides separated by spaces.

# COMMAND ----------

dbutils.widgets.text("config", "conf/local.yml", "Settings file")
dbutils.widgets.text("overrides", "", "Overrides (key=value ...)")

# COMMAND ----------

import matplotlib.pyplot as plt
from pyspark.sql import functions as F

from micdm.config import load_settings
from micdm.inventory import present
from micdm.tables import TableLocator, read_table

settings = load_settings(dbutils.widgets.get("config"), dbutils.widgets.get("overrides").split())
locator = TableLocator.of(settings)
# the files the last listing found: a vanished file's rows stay, marked missing in file_inventory
instances = present(spark, locator, read_table(spark, locator, "dicom_instance"))
quarantine = present(spark, locator, read_table(spark, locator, "dicom_quarantine"))
print(f"{instances.count()} instances, {quarantine.count()} files quarantined")

# COMMAND ----------

# MAGIC %md
# MAGIC ## Distributions

# COMMAND ----------

distributions = {
    column: instances.groupBy(F.coalesce(column, F.lit("(none)")).alias(column)).count()
    .orderBy(F.desc("count")).limit(15).toPandas()
    for column in ("modality", "manufacturer", "body_part_examined")
}
figure, axes = plt.subplots(1, 3, figsize=(15, 4))
for axis, (column, counts) in zip(axes, distributions.items(), strict=True):
    axis.barh(counts[column], counts["count"])
    axis.invert_yaxis()
    axis.set_title(f"instances by {column}")
figure.tight_layout()
display(figure)

# COMMAND ----------

# MAGIC %md
# MAGIC ## Quarantine reasons

# COMMAND ----------

reasons = quarantine.groupBy("reason").count().orderBy(F.desc("count"))
display(reasons)
reason_counts = reasons.toPandas()
figure, axis = plt.subplots(figsize=(6, 3))
axis.bar(reason_counts["reason"], reason_counts["count"])
axis.set_title("files quarantined, by reason")
display(figure)
