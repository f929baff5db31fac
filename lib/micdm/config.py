"""Typed settings: conf/*.yml layered over the defaults, then ``key=value`` overrides.

Every key has a home in a frozen dataclass below, so an unknown key or a value of the wrong type
fails at load time with a message naming the key, instead of deep inside a Spark job.
"""

from __future__ import annotations

import dataclasses
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Union

import yaml

from micdm.dicom.attributes import select_attributes
from micdm.errors import ConfigError

__all__ = [
    "ExtractSettings",
    "FeatureSettings",
    "OccurrenceSettings",
    "PublishSettings",
    "ReportSettings",
    "Settings",
    "SourceSettings",
    "SparkSettings",
    "StorageSettings",
    "SynthSettings",
    "VocabularySettings",
    "load_settings",
    "parse_override",
]

_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,127}")
_TABLE_REFERENCE = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,127}(\.[A-Za-z_][A-Za-z0-9_]{0,127}){0,2}")
_CDM_TABLE_NAME = re.compile(r"[a-z_]+")


#: How the tables micdm creates are laid out: by the keys schema.py declares, by Databricks' choice
#: (CLUSTER BY AUTO: Unity Catalog managed tables with predictive optimization), or not clustered.
_CLUSTERING = ("keys", "auto", "none")

#: How the files are found: listed by the driver alone, listed by folder in Spark tasks, or (Databricks Auto
#: Loader) streamed as they arrive.
_LISTINGS = ("driver", "split", "autoloader")

#: How dicom_instance keeps each header: DICOM JSON text (header_json) or a VARIANT (header).
_HEADER_FORMATS = ("json", "variant")

#: The site tables micdm adds rows to, and the first id of the block micdm allocates from in each.
_SITE_ID_BLOCKS = {"procedure_occurrence": 2_000_000_000, "measurement": 2_000_000_000, "observation": 2_000_000_000}


@dataclass(frozen=True)
class StorageSettings:
    catalog: str | None = None
    schema: str = "micdm"
    warehouse: str = ".micdm/warehouse"
    cdm_schema: str | None = None
    site_id_blocks: dict[str, int] = field(default_factory=lambda: dict(_SITE_ID_BLOCKS))
    cdm_tables: dict[str, str] = field(default_factory=dict)
    clustering: str = "keys"

    def __post_init__(self) -> None:
        if self.clustering not in _CLUSTERING:
            raise ConfigError(f"storage.clustering: {self.clustering!r} is not one of {list(_CLUSTERING)}")
        for key in ("catalog", "schema", "cdm_schema"):
            value = getattr(self, key)
            if value is not None and not _IDENTIFIER.fullmatch(value):
                raise ConfigError(
                    f"storage.{key}: {value!r} is not a plain identifier (letters, digits, underscore)"
                )
        unknown = set(self.site_id_blocks) - set(_SITE_ID_BLOCKS)
        if unknown:
            raise ConfigError(f"storage.site_id_blocks: {sorted(unknown)} are not tables micdm adds rows to; "
                              f"name some of {sorted(_SITE_ID_BLOCKS)}")
        for name, where in self.cdm_tables.items():
            if not _CDM_TABLE_NAME.fullmatch(name):
                raise ConfigError(f"storage.cdm_tables: {name!r} is not a CDM table name")
            if "/" not in where and not _TABLE_REFERENCE.fullmatch(where):
                raise ConfigError(f"storage.cdm_tables.{name}: {where!r} is neither a Delta path nor "
                                  "catalog.schema.table (letters, digits, underscores)")
        for name, start in self.site_id_blocks.items():
            if not 0 <= start < 2**31 - 1:
                raise ConfigError(f"storage.site_id_blocks.{name}: {start!r} is not a 32-bit id")

    def site_id_block(self, table: str) -> int:
        """First id micdm allocates from in a site table (the configured block, else the default one)."""
        return self.site_id_blocks.get(table, _SITE_ID_BLOCKS[table])


@dataclass(frozen=True)
class SourceSettings:
    roots: tuple[str, ...] = ("demo/dicom",)
    include: tuple[str, ...] = ("**",)
    exclude: tuple[str, ...] = ()
    storage_options: dict[str, Any] = field(default_factory=dict)
    """fsspec options (nested ones too, e.g. config_kwargs); strings may be secret references (secrets.py)."""
    listing: str = "driver"
    listing_depth: int = 1
    autoloader_format: str = "cloudFiles"
    autoloader_options: dict[str, str] = field(default_factory=dict)
    autoloader_checkpoint: str | None = None

    def __post_init__(self) -> None:
        if self.listing not in _LISTINGS:
            raise ConfigError(f"sources.listing: {self.listing!r} is not one of {list(_LISTINGS)}")
        if self.listing_depth < 1:
            raise ConfigError(f"sources.listing_depth: must be at least 1, got {self.listing_depth!r}")


@dataclass(frozen=True)
class ExtractSettings:
    block_size: int = 65536
    threads_per_task: int = 16
    files_per_partition: int = 4096
    max_retries: int = 3
    header_json_max_bytes: int = 262144
    sr_max_items: int = 200_000
    max_nesting: int = 10_000
    full_refresh: bool = False
    header_format: str = "json"

    def __post_init__(self) -> None:
        if self.header_format not in _HEADER_FORMATS:
            raise ConfigError(f"extract.header_format: {self.header_format!r} is not one of {list(_HEADER_FORMATS)}")
        for key in ("block_size", "threads_per_task", "files_per_partition", "header_json_max_bytes",
                    "sr_max_items", "max_nesting"):
            if getattr(self, key) < 1:
                raise ConfigError(f"extract.{key}: must be at least 1, got {getattr(self, key)!r}")


_DATE_SOURCES = ("series_date", "study_date", "acquisition_date", "content_date")


_PERSON_FIELDS = ("patient_id", "issuer")
_PLACEHOLDER = re.compile(r"{([^{}]*)}")
#: procedure_occurrence columns an accession number can be matched against.
_ACCESSION_COLUMNS = ("procedure_source_value", "modifier_source_value")


def _check_table_name(key: str, value: str | None) -> None:
    if value is not None and not _IDENTIFIER.fullmatch(value):
        raise ConfigError(f"{key}: {value!r} is not a plain table name (letters, digits, underscore)")


@dataclass(frozen=True)
class OccurrenceSettings:
    date_order: tuple[str, ...] = _DATE_SOURCES
    wadors_root: str | None = None
    person_source_value: str = "{patient_id}"
    person_crosswalk: str | None = None
    accession_column: str = "procedure_source_value"
    accession_crosswalk: str | None = None
    link_window_days: int = 0
    procedure_concepts: dict[str, tuple[int, ...]] = field(default_factory=dict)
    imaging_procedure_roots: tuple[int, ...] = ()
    missing_procedure: Literal["create", "exception"] = "create"
    procedure_type_concept_id: int = 32817
    anatomy_vocabulary: Literal["shipped", "site"] = "shipped"
    local_path_rewrite: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        unknown = [d for d in self.date_order if d not in _DATE_SOURCES]
        if unknown or not self.date_order:
            raise ConfigError(
                f"occurrence.date_order: {list(self.date_order)!r} must list some of {list(_DATE_SOURCES)}"
            )
        fields = _PLACEHOLDER.findall(self.person_source_value)
        if "patient_id" not in fields or set(fields) - set(_PERSON_FIELDS):
            raise ConfigError(
                f"occurrence.person_source_value: {self.person_source_value!r} must contain {{patient_id}} and "
                f"no placeholder but {{patient_id}} and {{issuer}}, e.g. '{{issuer}}:{{patient_id}}'"
            )
        if self.accession_column not in _ACCESSION_COLUMNS:
            raise ConfigError(
                f"occurrence.accession_column: {self.accession_column!r} is not one of {list(_ACCESSION_COLUMNS)}"
            )
        if self.link_window_days < 0:
            raise ConfigError(f"occurrence.link_window_days: must be 0 or more, got {self.link_window_days!r}")
        _check_table_name("occurrence.person_crosswalk", self.person_crosswalk)
        _check_table_name("occurrence.accession_crosswalk", self.accession_crosswalk)


@dataclass(frozen=True)
class FeatureSettings:
    acquisition_attributes: tuple[str, ...] = ("default",)
    max_distinct_values: int = 16
    measurement_type_concept_id: int = 32817
    feature_type_concept_id: int = 32817
    sr_type_concept_id: int = 32817
    sr_feature_type_concept_id: int = 32817
    algorithm_results: str | None = None
    algorithm_type_concept_id: int = 32880
    algorithm_feature_type_concept_id: int = 32880
    text_attributes: Literal["observation", "measurement"] = "observation"

    def __post_init__(self) -> None:
        try:
            select_attributes(self.acquisition_attributes)
        except ValueError as error:
            raise ConfigError(f"features.acquisition_attributes: {error}") from None
        if self.max_distinct_values < 1:
            raise ConfigError(f"features.max_distinct_values: must be 1 or more, got {self.max_distinct_values!r}")


@dataclass(frozen=True)
class VocabularySettings:
    merge: bool = True
    attribute_concepts: Literal["nonstandard", "standard"] = "nonstandard"
    reference_concepts: bool = True


@dataclass(frozen=True)
class SynthSettings:
    out: str = "demo"
    patients: int = 24
    seed: int = 7
    pixels: Literal["realistic", "small", "none"] = "small"
    max_instances_per_series: int | None = None

    def __post_init__(self) -> None:
        if self.patients < 1:
            raise ConfigError(f"synth.patients: must be at least 1, got {self.patients!r}")
        if self.max_instances_per_series is not None and self.max_instances_per_series < 1:
            raise ConfigError(f"synth.max_instances_per_series: must be at least 1, got "
                              f"{self.max_instances_per_series!r}")


@dataclass(frozen=True)
class PublishSettings:
    mode: Literal["none", "view", "table"] = "none"
    schema: str = "micdm_mi_cdm"

    def __post_init__(self) -> None:
        _check_table_name("publish.schema", self.schema)


@dataclass(frozen=True)
class ReportSettings:
    folder: str | None = None
    enabled: bool = True


@dataclass(frozen=True)
class SparkSettings:
    master: str = "local[*]"
    conf: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Settings:
    storage: StorageSettings = field(default_factory=StorageSettings)
    sources: SourceSettings = field(default_factory=SourceSettings)
    extract: ExtractSettings = field(default_factory=ExtractSettings)
    occurrence: OccurrenceSettings = field(default_factory=OccurrenceSettings)
    features: FeatureSettings = field(default_factory=FeatureSettings)
    vocabulary: VocabularySettings = field(default_factory=VocabularySettings)
    synth: SynthSettings = field(default_factory=SynthSettings)
    publish: PublishSettings = field(default_factory=PublishSettings)
    report: ReportSettings = field(default_factory=ReportSettings)
    spark: SparkSettings = field(default_factory=SparkSettings)
    validation: Literal["ignore", "warn", "raise"] = "warn"

    def __post_init__(self) -> None:
        if self.publish.mode == "view" and not self.storage.catalog:
            raise ConfigError("publish.mode: 'view' needs storage.catalog (a metastore to hold the views); "
                              "use 'table' with a local warehouse")


def _type_name(hint: Any) -> str:
    return getattr(hint, "__name__", None) or str(hint).replace("typing.", "")


def _coerce(key: str, hint: Any, value: Any) -> Any:
    """Check ``value`` against a type hint, converting lists to tuples; raise ConfigError naming ``key``."""
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if hint is Any:  # passed through to a library that checks it (fsspec options)
        return value
    if dataclasses.is_dataclass(hint):
        return _build(hint, value, key)
    if origin in (Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        (inner,) = [a for a in args if a is not type(None)]
        return _coerce(key, inner, value)
    if origin is Literal:
        if value not in args:
            raise ConfigError(f"{key}: {value!r} is not one of {list(args)}")
        return value
    if origin is tuple:
        if isinstance(value, str) or not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        return tuple(_coerce(f"{key}[{i}]", args[0], v) for i, v in enumerate(value))
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping, got {value!r}")
        return {str(k): _coerce(f"{key}.{k}", args[1], v) for k, v in value.items()}
    return _scalar(key, hint, value)


def _scalar(key: str, hint: Any, value: Any) -> Any:
    if isinstance(value, (int, float)) and not isinstance(value, bool) and hint in (float, str):
        return hint(value)  # 1 where a float is expected, 4 where a string is: take them as meant
    if not isinstance(value, hint) or (hint is int and isinstance(value, bool)):
        raise ConfigError(f"{key}: expected {_type_name(hint)}, got {value!r}")
    return value


def _build(cls: Any, values: Any, prefix: str) -> Any:
    if not isinstance(values, dict):
        raise ConfigError(f"{prefix or 'config'}: expected a mapping, got {values!r}")
    hints = typing.get_type_hints(cls)
    known = {f.name for f in dataclasses.fields(cls)}
    for key in values:
        if key not in known:
            where = f"{prefix}.{key}" if prefix else str(key)
            raise ConfigError(f"{where}: unknown setting; known keys here: {sorted(known)}")
    kwargs = {
        key: _coerce(f"{prefix}.{key}" if prefix else key, hints[key], value) for key, value in values.items()
    }
    return cls(**kwargs)


def _merge(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def parse_override(text: str) -> dict[str, Any]:
    """Turn ``a.b=value`` into ``{"a": {"b": value}}``; the value is read as YAML (``[1, 2]``, ``true``)."""
    if "=" not in text:
        raise ConfigError(f"override {text!r}: expected key=value, e.g. extract.block_size=131072")
    dotted, raw = text.split("=", 1)
    try:
        value: Any = yaml.safe_load(raw) if raw else None
    except yaml.YAMLError:
        raise ConfigError(f"override {dotted}: {raw!r} is not a YAML value; quote it, e.g. {dotted}='\"{raw}\"'"
                          ) from None
    for part in reversed(dotted.strip().split(".")):
        value = {part: value}
    return value


def load_settings(path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()) -> Settings:
    """Load settings from a YAML file (``extends:`` names a base file beside it) plus overrides."""
    values: dict[str, Any] = _read_yaml(Path(path)) if path else {}
    for override in overrides:
        values = _merge(values, parse_override(override))
    return _build(Settings, values, "")


def _read_yaml(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise ConfigError(f"config file {str(path)!r} does not exist")
    with path.open(encoding="utf-8") as handle:
        values = yaml.safe_load(handle) or {}
    if not isinstance(values, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level")
    base = values.pop("extends", None)
    if base:
        values = _merge(_read_yaml(path.parent / base), values)
    return values

