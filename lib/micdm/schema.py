"""Every table micdm reads or writes, as Spark schemas: the single source of truth.

The spec tables (image_occurrence, image_feature) and the OMOP CDM 5.4 tables are transcribed from
their field-level definitions. Types follow the OHDSI Spark DDL: integer -> IntegerType,
varchar(n) -> StringType with the length kept in the field metadata (and enforced by a Delta CHECK
constraint), date -> DateType, datetime -> TimestampType. The CDM's ``float`` is SQL Server's 8-byte
float, so it becomes DoubleType, not Spark's 4-byte FLOAT.

The pipeline's own bronze and silver tables are declared with the same notation, so that one
function turns any table into DDL, constraints or an empty DataFrame.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass

from pyspark.sql.types import (
    ArrayType,
    BooleanType,
    DataType,
    DateType,
    DoubleType,
    IntegerType,
    LongType,
    MapType,
    StringType,
    StructField,
    StructType,
    TimestampType,
    VariantType,
)

__all__ = [
    "CDM_TABLES",
    "MAX_LENGTH_KEY",
    "PIPELINE_TABLES",
    "PUBLISHED_TABLES",
    "SPEC_TABLES",
    "TABLES",
    "VOCABULARY_TABLES",
    "TableDef",
    "max_length",
    "table",
    "with_header_format",
]

#: Field-metadata key holding a varchar's declared length.
MAX_LENGTH_KEY = "max_length"

_SCALAR_TYPES: dict[str, DataType] = {
    "integer": IntegerType(),
    "bigint": LongType(),
    "float": DoubleType(),
    "double": DoubleType(),
    "boolean": BooleanType(),
    "date": DateType(),
    "datetime": TimestampType(),
    "string": StringType(),
}
_VARCHAR = re.compile(r"varchar\((\d+|max)\)")
_ARRAY = re.compile(r"array<(\w+)>")
_MAP = re.compile(r"map<(\w+),(\w+)>")


def _parse_type(declared: str) -> tuple[DataType, int | None]:
    """Turn a declared type (``integer``, ``varchar(250)``, ``array<string>``, ``map<string,bigint>``) into a
    Spark type."""
    varchar = _VARCHAR.fullmatch(declared)
    if varchar:
        length = varchar.group(1)
        return StringType(), None if length == "max" else int(length)
    array = _ARRAY.fullmatch(declared)
    if array:
        return ArrayType(_SCALAR_TYPES[array.group(1)], containsNull=True), None
    mapping = _MAP.fullmatch(declared)
    if mapping:
        return MapType(_SCALAR_TYPES[mapping.group(1)], _SCALAR_TYPES[mapping.group(2)], valueContainsNull=True), None
    return _SCALAR_TYPES[declared], None


@dataclass(frozen=True)
class TableDef:
    """A table's name, layer and schema; the DDL and constraints derive from the schema."""

    name: str
    layer: str
    schema: StructType
    stats_columns: tuple[str, ...] = ()
    """The columns Delta keeps min/max statistics for (file skipping); empty means Delta's default.

    Wide tables name their keys here: statistics on every column cost more per write than the rest of it.
    """
    cluster_by: tuple[str, ...] = ()
    """Liquid clustering keys: the columns users filter on and micdm MERGEs on, so those read few files."""
    bloom_columns: tuple[str, ...] = ()
    """Columns of values held once each (paths, UIDs, natural keys) that micdm looks up by a night's few
    values: Parquet keeps a bloom filter of each row group's values, so such a lookup skips the row groups
    that hold none of them, where no statistics or dictionary can tell (tables.within)."""
    filled_from: tuple[tuple[str, str], ...] = ()
    """(column, SQL expression of the other columns) for a column a newer micdm adds that its writers fill
    from the others: the rows an older micdm stored get it when the column is added (tables.create_table)."""

    @property
    def required_columns(self) -> list[str]:
        return [f.name for f in self.schema.fields if not f.nullable]

    @property
    def length_limits(self) -> dict[str, int]:
        return {f.name: f.metadata[MAX_LENGTH_KEY] for f in self.schema.fields if MAX_LENGTH_KEY in f.metadata}

    def ddl_columns(self) -> str:
        """Column list for CREATE TABLE: NOT NULL where required, VARCHAR(n) where a length is declared.

        Delta enforces both on every write (append, overwrite, MERGE); a VARCHAR reads back as a string.
        """
        def ddl_type(f: StructField) -> str:
            length = max_length(f)
            return f"varchar({length})" if length is not None else f.dataType.simpleString()

        return ", ".join(f"`{f.name}` {ddl_type(f)}{'' if f.nullable else ' NOT NULL'}" for f in self.schema.fields)


def table(name: str, layer: str, columns: str, stats_columns: tuple[str, ...] = (),
          cluster_by: tuple[str, ...] = (), bloom_columns: tuple[str, ...] = (),
          filled_from: tuple[tuple[str, str], ...] = ()) -> TableDef:
    """Declare a table from lines of ``name  type  [required]``."""
    fields = []
    for line in columns.strip().splitlines():
        parts = line.split()
        if not parts:
            continue
        column, declared = parts[0], parts[1]
        required = parts[2:] == ["required"]
        if parts[2:] and not required:
            raise ValueError(f"table {name!r}: cannot read column line {line!r}")
        spark_type, length = _parse_type(declared)
        metadata = {MAX_LENGTH_KEY: length} if length is not None else {}
        fields.append(StructField(column, spark_type, nullable=not required, metadata=metadata))
    schema = StructType(fields)
    unknown = set(stats_columns) - set(schema.fieldNames())
    if unknown:
        raise ValueError(f"table {name!r}: statistics on unknown columns {sorted(unknown)}")
    unfiltered = set(bloom_columns) - set(schema.fieldNames())
    if unfiltered:
        raise ValueError(f"table {name!r}: bloom filters on unknown columns {sorted(unfiltered)}")
    # Delta clusters by a column's min/max statistics, which it keeps for neither VARCHAR nor unlisted columns.
    unclusterable = [c for c in cluster_by if c not in schema.fieldNames() or max_length(schema[c]) is not None
                     or (stats_columns and c not in stats_columns)]
    if unclusterable:
        raise ValueError(f"table {name!r}: cannot cluster by {unclusterable} (unknown, varchar, or without statistics)")
    unfilled = [column for column, _ in filled_from if column not in schema.fieldNames() or not schema[column].nullable]
    if unfilled:
        raise ValueError(f"table {name!r}: cannot fill {unfilled} in stored rows (unknown, or required)")
    return TableDef(name, layer, schema, stats_columns, cluster_by, bloom_columns, filled_from)


def max_length(field: StructField) -> int | None:
    """The declared varchar length of a field, None when unbounded."""
    return field.metadata.get(MAX_LENGTH_KEY)


# --- the specification's tables (gold) ------------------------------------------------------------

IMAGE_OCCURRENCE = table("image_occurrence", "gold", """
    image_occurrence_id        integer       required
    person_id                  integer       required
    procedure_occurrence_id    integer       required
    visit_occurrence_id        integer
    anatomic_site_concept_id   integer
    wadors_uri                 varchar(max)
    local_path                 varchar(max)  required
    image_occurrence_date      date          required
    image_study_uid            varchar(250)  required
    image_series_uid           varchar(250)  required
    modality                   varchar(250)  required
""", cluster_by=("person_id", "image_occurrence_id"), bloom_columns=("image_series_uid",))

IMAGE_FEATURE = table("image_feature", "gold", """
    image_feature_id                integer       required
    person_id                       integer       required
    image_occurrence_id             integer       required
    table_concept_id                integer       required
    table_row_id                    integer       required
    image_feature_concept_id        integer       required
    image_feature_type_concept_id   integer       required
    image_finding_concept_id        integer
    image_finding_id                integer
    anatomic_site_concept_id        integer
    alg_system                      varchar(max)
    alg_datetime                    datetime
""", cluster_by=("person_id", "image_occurrence_id"))

SPEC_TABLES = (IMAGE_OCCURRENCE, IMAGE_FEATURE)

# --- the same tables under the published MI-CDM 1.0 names (Park et al. 2024; see CONCEPTS notes) ----------

PUBLISHED_IMAGE_OCCURRENCE = table("image_occurrence", "published", """
    image_occurrence_id        integer       required
    person_id                  integer       required
    visit_occurrence_id        integer
    procedure_occurrence_id    integer       required
    wadors_uri                 varchar(max)
    local_path                 varchar(max)
    image_occurrence_date      date          required
    image_study_uid            varchar(250)  required
    image_series_uid           varchar(250)  required
    modality_concept_id        integer       required
    anatomic_site_concept_id   integer
""", cluster_by=("person_id", "image_occurrence_id"))

PUBLISHED_IMAGE_FEATURE = table("image_feature", "published", """
    image_feature_id                      integer       required
    person_id                             integer       required
    image_occurrence_id                   integer       required
    image_feature_concept_id              integer       required
    image_feature_type_concept_id         integer       required
    image_feature_event_field_concept_id  integer
    image_feature_event_id                integer
    image_finding_concept_id              integer
    image_finding_id                      integer
    anatomic_site_concept_id              integer
    alg_system                            varchar(max)
    alg_datetime                          datetime
""", cluster_by=("person_id", "image_occurrence_id"))

PUBLISHED_TABLES = (PUBLISHED_IMAGE_OCCURRENCE, PUBLISHED_IMAGE_FEATURE)

# --- OMOP CDM 5.4 tables the pipeline reads or writes --------------------------------------------

PERSON = table("person", "cdm", """
    person_id                    integer      required
    gender_concept_id            integer      required
    year_of_birth                integer      required
    month_of_birth               integer
    day_of_birth                 integer
    birth_datetime               datetime
    race_concept_id              integer      required
    ethnicity_concept_id         integer      required
    location_id                  integer
    provider_id                  integer
    care_site_id                 integer
    person_source_value          varchar(50)
    gender_source_value          varchar(50)
    gender_source_concept_id     integer
    race_source_value            varchar(50)
    race_source_concept_id       integer
    ethnicity_source_value       varchar(50)
    ethnicity_source_concept_id  integer
""")

VISIT_OCCURRENCE = table("visit_occurrence", "cdm", """
    visit_occurrence_id            integer      required
    person_id                      integer      required
    visit_concept_id               integer      required
    visit_start_date               date         required
    visit_start_datetime           datetime
    visit_end_date                 date         required
    visit_end_datetime             datetime
    visit_type_concept_id          integer      required
    provider_id                    integer
    care_site_id                   integer
    visit_source_value             varchar(50)
    visit_source_concept_id        integer
    admitted_from_concept_id       integer
    admitted_from_source_value     varchar(50)
    discharged_to_concept_id       integer
    discharged_to_source_value     varchar(50)
    preceding_visit_occurrence_id  integer
""")

PROCEDURE_OCCURRENCE = table("procedure_occurrence", "cdm", """
    procedure_occurrence_id      integer      required
    person_id                    integer      required
    procedure_concept_id         integer      required
    procedure_date               date         required
    procedure_datetime           datetime
    procedure_end_date           date
    procedure_end_datetime       datetime
    procedure_type_concept_id    integer      required
    modifier_concept_id          integer
    quantity                     integer
    provider_id                  integer
    visit_occurrence_id          integer
    visit_detail_id              integer
    procedure_source_value       varchar(50)
    procedure_source_concept_id  integer
    modifier_source_value        varchar(50)
""")

MEASUREMENT = table("measurement", "cdm", """
    measurement_id                 integer      required
    person_id                      integer      required
    measurement_concept_id         integer      required
    measurement_date               date         required
    measurement_datetime           datetime
    measurement_time               varchar(10)
    measurement_type_concept_id    integer      required
    operator_concept_id            integer
    value_as_number                float
    value_as_concept_id            integer
    unit_concept_id                integer
    range_low                      float
    range_high                     float
    provider_id                    integer
    visit_occurrence_id            integer
    visit_detail_id                integer
    measurement_source_value       varchar(50)
    measurement_source_concept_id  integer
    unit_source_value              varchar(50)
    unit_source_concept_id         integer
    value_source_value             varchar(50)
    measurement_event_id           integer
    meas_event_field_concept_id    integer
""", cluster_by=("person_id", "measurement_id"))

OBSERVATION = table("observation", "cdm", """
    observation_id                 integer      required
    person_id                      integer      required
    observation_concept_id         integer      required
    observation_date               date         required
    observation_datetime           datetime
    observation_type_concept_id    integer      required
    value_as_number                float
    value_as_string                varchar(60)
    value_as_concept_id            integer
    qualifier_concept_id           integer
    unit_concept_id                integer
    provider_id                    integer
    visit_occurrence_id            integer
    visit_detail_id                integer
    observation_source_value       varchar(50)
    observation_source_concept_id  integer
    unit_source_value              varchar(50)
    qualifier_source_value         varchar(50)
    value_source_value             varchar(50)
    observation_event_id           integer
    obs_event_field_concept_id     integer
""", cluster_by=("person_id", "observation_id"))

CONCEPT = table("concept", "cdm", """
    concept_id        integer       required
    concept_name      varchar(255)  required
    domain_id         varchar(20)   required
    vocabulary_id     varchar(20)   required
    concept_class_id  varchar(20)   required
    standard_concept  varchar(1)
    concept_code      varchar(50)   required
    valid_start_date  date          required
    valid_end_date    date          required
    invalid_reason    varchar(1)
""")

CONCEPT_RELATIONSHIP = table("concept_relationship", "cdm", """
    concept_id_1      integer      required
    concept_id_2      integer      required
    relationship_id   varchar(20)  required
    valid_start_date  date         required
    valid_end_date    date         required
    invalid_reason    varchar(1)
""")

CONCEPT_ANCESTOR = table("concept_ancestor", "cdm", """
    ancestor_concept_id       integer  required
    descendant_concept_id     integer  required
    min_levels_of_separation  integer  required
    max_levels_of_separation  integer  required
""")

VOCABULARY = table("vocabulary", "cdm", """
    vocabulary_id          varchar(20)   required
    vocabulary_name        varchar(255)  required
    vocabulary_reference   varchar(255)
    vocabulary_version     varchar(255)
    vocabulary_concept_id  integer       required
""")

DOMAIN = table("domain", "cdm", """
    domain_id          varchar(20)   required
    domain_name        varchar(255)  required
    domain_concept_id  integer       required
""")

CONCEPT_CLASS = table("concept_class", "cdm", """
    concept_class_id          varchar(20)   required
    concept_class_name        varchar(255)  required
    concept_class_concept_id  integer       required
""")

DEATH = table("death", "cdm", """
    person_id                integer      required
    death_date               date         required
    death_datetime           datetime
    death_type_concept_id    integer
    cause_concept_id         integer
    cause_source_value       varchar(50)
    cause_source_concept_id  integer
""")

CDM_TABLES = (
    PERSON,
    DEATH,
    VISIT_OCCURRENCE,
    PROCEDURE_OCCURRENCE,
    MEASUREMENT,
    OBSERVATION,
    CONCEPT,
    CONCEPT_RELATIONSHIP,
    CONCEPT_ANCESTOR,
    VOCABULARY,
    DOMAIN,
    CONCEPT_CLASS,
)

#: The CDM's vocabulary tables (micdm adds its own DICOM concepts to them; see vocabulary.py).
VOCABULARY_TABLES = ("concept", "concept_relationship", "vocabulary", "domain", "concept_class")

# --- the pipeline's own tables (bronze, silver, bookkeeping) ---------------------------------------

_HEADER_COLUMNS = """
    sop_class_uid               string
    sop_instance_uid            string
    study_instance_uid          string
    series_instance_uid         string
    patient_id                  string
    issuer_of_patient_id        string
    accession_number            string
    modality                    string
    study_date                  date
    study_time                  string
    series_date                 date
    series_time                 string
    acquisition_date            date
    acquisition_time            string
    content_date                date
    content_time                string
    body_part_examined          string
    anatomic_region_code        string
    study_description           string
    series_description          string
    manufacturer                string
    manufacturer_model_name     string
    series_number               integer
    instance_number             integer
    image_type                  array<string>
    rows                        integer
    columns                     integer
    number_of_frames            integer
    transfer_syntax_uid         string
    slice_thickness             double
    kvp                         double
    exposure_time               double
    xray_tube_current           double
    exposure                    double
    pixel_spacing               array<double>
    spacing_between_slices      double
    magnetic_field_strength     double
    repetition_time             double
    echo_time                   double
    inversion_time              double
    flip_angle                  double
    convolution_kernel          string
    contrast_bolus_agent        string
    forced_read                 boolean
    parse_warnings              array<string>
    header_json                 string
    header_json_truncated       boolean
"""

_FILE_COLUMNS = """
    path                 string     required
    file_size            bigint
    modification_time    datetime
    etag                 string
"""

#: What the extract step returns for every file it was given: an instance or a quarantine reason.
EXTRACT_RESULT = table("extract_result", "internal", _FILE_COLUMNS + """
    bytes_read           bigint
    header_bytes         bigint
    outcome              string     required
    reason               string
    message              string
    signature            string
""" + _HEADER_COLUMNS + """
    acquisition_text     string
    header_json_dropped  string
    referenced_series    array<string>
    sr_content_reason    string
    sr_content_message   string
    header_digest        string
    sr_content           string
""")

FILE_INVENTORY = table("file_inventory", "bronze", _FILE_COLUMNS + """
    first_seen           datetime   required
    changed_at           datetime   required
    missing_since        datetime
    run_id               string     required
""", stats_columns=("path",))

DICOM_INSTANCE = table("dicom_instance", "bronze", _FILE_COLUMNS + """
    bytes_read           bigint
    header_bytes         bigint
""" + _HEADER_COLUMNS + """
    extracted_at         datetime   required
    run_id               string     required
    acquisition_text     string
    header_json_dropped  string
    referenced_series    array<string>
    sr_content_reason    string
    sr_content_message   string
    header_digest        string
""", stats_columns=("path", "sop_instance_uid", "study_instance_uid", "series_instance_uid", "extracted_at"),
   cluster_by=("series_instance_uid",), bloom_columns=("path", "sop_instance_uid"))

DICOM_QUARANTINE = table("dicom_quarantine", "bronze", _FILE_COLUMNS + """
    bytes_read           bigint
    reason               string     required
    message              string
    signature            string
    quarantined_at       datetime   required
    run_id               string     required
""", stats_columns=("path", "reason"))

#: Every content item of every structured report, as extract read it from the file (dicom/sr_content.py).
SR_CONTENT_ITEM = table("sr_content_item", "bronze", """
    path                          string          required
    sop_instance_uid              string          required
    position                      string          required
    relationship                  string
    value_type                    string
    concept_scheme                string
    concept_code                  string
    concept_meaning               string
    template_id                   string
    number                        double
    text_value                    string
    unit_scheme                   string
    unit_code                     string
    unit_meaning                  string
    value_scheme                  string
    value_code                    string
    value_meaning                 string
    referenced_sop_class_uid      string
    referenced_sop_instance_uid   string
    referenced_series_uid         string
    referenced_frames             array<integer>
    referenced_segments           array<integer>
    graphic_type                  string
    graphic_data                  array<double>
    frame_of_reference_uid        string
    referenced_content            string
    run_id                        string          required
""", stats_columns=("path", "sop_instance_uid"), bloom_columns=("text_value", "referenced_sop_instance_uid"))

#: The values of the selected acquisition attributes in each present instance (dicom/attributes.py), read
#: from its header once per header_digest and selection; an instance holding none has one row of NULLs.
INSTANCE_ATTRIBUTE = table("instance_attribute", "silver", """
    path                  string     required
    header_digest         string
    series_instance_uid   string
    instance_number       integer
    selection             string     required
    source                string
    ordinal               integer
    value_text            string
    value_number          double
""", stats_columns=("path", "series_instance_uid"))

DICOM_SERIES = table("dicom_series", "silver", """
    series_instance_uid        string         required
    study_instance_uid         string
    patient_id                 string
    issuer_of_patient_id       string
    accession_number           string
    modality                   string
    modalities                 array<string>
    instance_count             integer        required
    total_bytes                bigint
    image_date                 date
    image_date_source          string
    study_date                 date
    series_date                date
    body_part_examined         string
    anatomic_region_code       string
    study_description          string
    series_description         string
    manufacturer               string
    manufacturer_model_name    string
    local_path                 string
    updated_at                 datetime       required
""", bloom_columns=("series_instance_uid", "study_instance_uid"))

SERIES_LINK = table("series_link", "silver", """
    image_series_uid           string     required
    image_study_uid            string
    person_id                  integer
    procedure_occurrence_id    integer
    visit_occurrence_id        integer
    link_rule                  string
    exception_reason           string
    updated_at                 datetime   required
""", bloom_columns=("image_series_uid", "image_study_uid"))

#: One value of a structured report or segmentation, as dicom/sr.py and dicom/seg.py give it (internal).
REPORT_ITEM = table("report_item", "internal", """
    position               string    required
    value_type             string    required
    concept_scheme         string
    concept_code           string
    concept_meaning        string
    derivation             string
    laterality             string
    method                 string
    modifier               string
    finding_group          integer
    finding_scheme         string
    finding_code           string
    site_scheme            string
    site_code              string
    site_meaning           string
    tracking_id            string
    algorithm              string
    number                 double
    unit_code              string
    unit_meaning           string
    value_scheme           string
    value_code             string
    value_meaning          string
""").schema

#: What a structured report says about one group besides its finding: category, site, method.
_SR_GROUP_DESCRIPTION = """
    finding_category_scheme       string
    finding_category_code         string
    finding_category_meaning      string
    site_scheme                   string
    site_code                     string
    site_meaning                  string
    site_laterality               string
    method                        string
"""

#: One measurement group or irradiation event of a structured report, as dicom/sr.py gives it (internal).
REPORT_GROUP = table("report_group", "internal", """
    finding_group                  integer          required
    position                       string           required
    concept_code                   string
    concept_meaning                string
    template_id                    string
    finding_scheme                 string
    finding_code                   string
    finding_meaning                string
""" + _SR_GROUP_DESCRIPTION + """    tracking_id                    string
    tracking_uid                   string
    algorithm_name                 string
    algorithm_version              string
    algorithm                      string
    frame_of_reference_uid         string
    image_sops                     array<string>
    image_series                   array<string>
    source_series                  array<string>
    seg_sops                       array<string>
    segment_numbers                array<integer>
""").schema

#: A value or a group refused (internal): quarantined with its reason, the rest of the report kept.
REPORT_PROBLEM = table("report_problem", "internal", """
    position     string    required
    reason       string    required
    message      string
""").schema

#: One feature before ids and concepts (internal): what acquisition parameters, reports, segmentations and
#: imported results all become, so that one step resolves concepts, allocates ids and writes them.
FEATURE_ROW = table("feature_row", "internal", """
    natural_key                   string    required
    domain                        string    required
    person_id                     integer
    image_occurrence_id           integer
    visit_occurrence_id           integer
    event_date                    date
    event_datetime                datetime
    concept_vocabulary            string
    concept_code                  string
    source_value                  string
    number                        double
    unit_code                     string
    value_vocabulary              string
    value_code                    string
    value_text                    string
    finding_key                   string
    finding_vocabulary            string
    finding_code                  string
    site_vocabulary               string
    site_code                     string
    occurrence_site_concept_id    integer
    type_concept_id               integer
    feature_type_concept_id       integer
    alg_system                    string
    alg_datetime                  datetime
""")

# Structured reports for analysts: one row per group, per number, per coded evaluation, each with the
# report and group it came from and the OMOP rows it became. Rebuilt by the features stage.
_SR_PLACEMENT = """
    sop_instance_uid              string     required
    study_instance_uid            string
    report_series_uid             string
    person_id                     integer
    image_occurrence_id           integer
    image_series_uid              string
    image_finding_id              integer
    finding_group                 integer
"""
_SR_GROUP_CONTEXT = """
    tracking_id                   string
    tracking_uid                  string
    finding_scheme                string
    finding_code                  string
    finding_meaning               string
    source_series_uid             string
    segmentation_sop_uid          string
    segment_numbers               array<integer>
"""
_SR_ITEM = """
    position                      string     required
    concept_scheme                string
    concept_code                  string
    concept_meaning               string
    site_scheme                   string
    site_code                     string
    site_meaning                  string
    derivation                    string
    laterality                    string
    method                        string
    modifier                      string
    algorithm                     string
"""

SR_MEASUREMENT_GROUP = table("sr_measurement_group", "silver", _SR_PLACEMENT + _SR_GROUP_CONTEXT + """
    placed_by                     string
    position                      string     required
    group_concept_code            string
    group_concept_meaning         string
    template_id                   string
""" + _SR_GROUP_DESCRIPTION + """    algorithm_name                string
    algorithm_version             string
    referenced_sop_uids           array<string>
    frame_of_reference_uid        string
    content_date                  date
    updated_at                    datetime   required
""")

SR_QUANTITATIVE = table("sr_quantitative", "silver", _SR_PLACEMENT + _SR_GROUP_CONTEXT + _SR_ITEM + """
    value                         double
    unit_code                     string
    unit_meaning                  string
    measurement_id                integer
    updated_at                    datetime   required
""")

SR_QUALITATIVE = table("sr_qualitative", "silver", _SR_PLACEMENT + _SR_GROUP_CONTEXT + _SR_ITEM + """
    value_scheme                  string
    value_code                    string
    value_meaning                 string
    observation_id                integer
    updated_at                    datetime   required
""")

SR_TABLES = (SR_MEASUREMENT_GROUP, SR_QUANTITATIVE, SR_QUALITATIVE)

FEATURE_QUARANTINE = table("feature_quarantine", "silver", """
    path                   string     required
    sop_instance_uid       string
    series_instance_uid    string
    reason                 string     required
    message                string
    quarantined_at         datetime   required
""")

LINK_EXCEPTION = table("link_exception", "silver", """
    image_series_uid           string     required
    image_study_uid            string
    reason                     string     required
    detail                     string
    updated_at                 datetime   required
""")

LINK_REPORT = table("link_report", "bookkeeping", """
    run_id                     string     required
    reported_at                datetime   required
    kind                       string     required
    name                       string     required
    series                     integer    required
    studies                    integer    required
""")

DQ_RESULT = table("dq_result", "bookkeeping", """
    run_id               string     required
    checked_at           datetime   required
    check_name           string     required
    check_level          string     required
    table_name           string     required
    field_name           string
    concept_id           integer
    unit_concept_id      integer
    rows_violated        bigint     required
    rows_checked         bigint     required
    pct_violated         double     required
    threshold            double     required
    severity             string     required
    fatal                boolean    required
    status               string     required
    note                 string
""")

#: The quality stage's counters per person (tally_key: person_id as text; '' for rows without one, '*' for
#: the sum of all): each check's violated and checked rows, so a run counts only the persons that changed.
DQ_TALLY = table("dq_tally", "bookkeeping", """
    tally_key    string               required
    counts       map<string,bigint>   required
""")

#: What a natural key was made from: its second part, where a feature's key names its series or report
#: (features.py), else the key itself. A run's stale features are looked up by their sources' list.
KEY_SOURCE = "coalesce(get(split(natural_key, '[|]'), 1), natural_key)"

ID_MAP = table("id_map", "bookkeeping", """
    namespace     string     required
    natural_key   string     required
    id            integer    required
    assigned_at   datetime   required
    source        string
""", bloom_columns=("natural_key", "source"), filled_from=(("source", KEY_SOURCE),))

#: What micdm wrote into the site's tables (procedure_occurrence, measurement, observation): a fingerprint
#: per row version, so that a row is updated only while it is still the one micdm wrote.
SITE_ROW = table("site_row", "bookkeeping", """
    table_name    string     required
    id            integer    required
    fingerprint   bigint     required
    written_at    datetime   required
""", bloom_columns=("id",))

#: Each stage's watermark after its last successful run (micdm.watermark): one row per stage.
#: Files a streaming discovery (sources.listing: autoloader) found and the inventory does not hold yet:
#: the stream's checkpoint moves on when they land here, and they leave once the inventory records them.
FILE_DISCOVERY = table("file_discovery", "bookkeeping", _FILE_COLUMNS + """
    discovered_at        datetime   required
""")

STAGE_STATE = table("stage_state", "bookkeeping", """
    stage            string     required
    run_id           string     required
    inputs           string     required
    settings_digest  string     required
    micdm_version    string     required
    finished_at      datetime   required
""")

PIPELINE_TABLES = (
    FILE_INVENTORY,
    FILE_DISCOVERY,
    DICOM_INSTANCE,
    DICOM_QUARANTINE,
    SR_CONTENT_ITEM,
    INSTANCE_ATTRIBUTE,
    DICOM_SERIES,
    SERIES_LINK,
    LINK_EXCEPTION,
    LINK_REPORT,
    FEATURE_QUARANTINE,
    *SR_TABLES,
    DQ_RESULT,
    DQ_TALLY,
    ID_MAP,
    SITE_ROW,
    STAGE_STATE,
)

#: Every persistent table by name.
TABLES: dict[str, TableDef] = {t.name: t for t in (*SPEC_TABLES, *CDM_TABLES, *PIPELINE_TABLES)}


def with_header_format(table: TableDef, header_format: str) -> TableDef:
    """``table`` as stored under extract.header_format: with `variant`, its header_json column (DICOM JSON
    text) becomes `header`, a VARIANT users query by path (``header:['00180050'].Value[0]::double``)."""
    if header_format != "variant" or "header_json" not in table.schema.fieldNames():
        return table
    fields = [StructField("header", VariantType(), nullable=True) if f.name == "header_json" else f
              for f in table.schema.fields]
    return dataclasses.replace(table, schema=StructType(fields))
