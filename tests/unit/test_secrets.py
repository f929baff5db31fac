"""Secret and environment references in settings resolve to their values, and fail by name, not value."""

from __future__ import annotations

import pytest

from micdm.errors import ConfigError
from micdm.secrets import resolve_references


def test_env_references_resolve_in_nested_options(monkeypatch) -> None:
    monkeypatch.setenv("MICDM_TEST_KEY", "k-123")
    options = {"key": "{{env/MICDM_TEST_KEY}}", "config_kwargs": {"retries": {"max_attempts": 2}},
               "endpoint_url": "http://127.0.0.1:8333", "list": ["{{ env/MICDM_TEST_KEY }}", "plain"]}
    assert resolve_references(options) == {**options, "key": "k-123", "list": ["k-123", "plain"]}


def test_a_missing_variable_is_named_in_a_config_error(monkeypatch) -> None:
    monkeypatch.delenv("MICDM_TEST_ABSENT", raising=False)
    with pytest.raises(ConfigError, match="environment variable MICDM_TEST_ABSENT is not set"):
        resolve_references({"secret": "{{env/MICDM_TEST_ABSENT}}"})


def test_secret_scope_references_go_to_the_secret_reader() -> None:
    # A stand-in for dbutils.secrets: a Databricks secret scope cannot run here.
    store = {("micdm", "adls-key"): "s3cr3t"}
    resolved = resolve_references({"account_key": "{{secrets/micdm/adls-key}}"}, lambda s, k: store[(s, k)])
    assert resolved == {"account_key": "s3cr3t"}
    with pytest.raises(ConfigError, match="secret reference is"):
        resolve_references("{{secrets/only-a-scope}}", lambda s, k: "")


def test_outside_databricks_a_secret_scope_reference_says_what_to_use() -> None:
    with pytest.raises(ConfigError, match=r"needs a Databricks runtime; elsewhere name an environment variable"):
        resolve_references("{{secrets/micdm/adls-key}}")
