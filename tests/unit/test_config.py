"""Settings: defaults, layering, overrides, and messages that name the bad key."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest

from micdm.config import Settings, load_settings, parse_override
from micdm.errors import ConfigError

REPO = Path(__file__).resolve().parents[2]


def test_default_yml_equals_the_code_defaults() -> None:
    assert load_settings(REPO / "conf" / "default.yml") == Settings()


def test_default_yml_documents_every_key() -> None:
    lines = (REPO / "conf" / "default.yml").read_text(encoding="utf-8").splitlines()
    for section in dataclasses.fields(Settings):
        value = getattr(Settings(), section.name)
        keys = [f.name for f in dataclasses.fields(value)] if dataclasses.is_dataclass(value) else [section.name]
        for key in keys:
            index = next((i for i, line in enumerate(lines) if re.match(rf"\s*{key}:", line)), None)
            assert index is not None, f"{section.name}.{key} missing from conf/default.yml"
            assert lines[index - 1].strip().startswith("#"), f"{section.name}.{key} has no comment above it"


def test_overrides_are_typed_and_layered() -> None:
    settings = load_settings(REPO / "conf" / "local.yml", ["extract.block_size=131072", "sources.roots=[s3://b/x]"])
    assert settings.extract.block_size == 131072
    assert settings.sources.roots == ("s3://b/x",)
    assert settings.spark.master == "local[2]"  # from local.yml, over default.yml


@pytest.mark.parametrize(("override", "message"), [
    ("extract.block_sise=1", r"extract\.block_sise: unknown setting"),
    ("extract.block_size=big", r"extract\.block_size: expected int, got 'big'"),
    ("extract.full_refresh=1", r"extract\.full_refresh: expected bool, got 1"),
    ("occurrence.missing_procedure=drop", r"occurrence\.missing_procedure: 'drop' is not one of"),
    ("storage.schema=x; DROP TABLE person", r"storage\.schema: .* is not a plain identifier"),
    ("storage.catalog=main`.`cdm`.`person` --", r"storage\.catalog: .* is not a plain identifier"),
    ("storage.cdm_schema=cdm.person", r"storage\.cdm_schema: .* is not a plain identifier"),
    ("storage.clustering=sorted", r"storage\.clustering: .sorted. is not one of"),
    ("extract.header_format=bson", r"extract\.header_format: .bson. is not one of"),
    ("sources.listing=parallel", r"sources\.listing: .parallel. is not one of"),
    ("sources.listing_depth=0", r"sources\.listing_depth: must be at least 1"),
    ("publish.schema=mi`; DROP SCHEMA cdm CASCADE; --", r"publish\.schema: .* is not a plain"),
    ("occurrence.person_crosswalk=xwalk`, person", r"occurrence\.person_crosswalk: .* is not a plain table name"),
    ("occurrence.date_order=[visit_date]", r"occurrence\.date_order"),
    ("nonsense", r"expected key=value"),
])
def test_bad_settings_name_the_key(override: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_settings(None, [override])


def test_parse_override_nests_dotted_keys() -> None:
    assert parse_override("a.b.c=[1, 2]") == {"a": {"b": {"c": [1, 2]}}}
