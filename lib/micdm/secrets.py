"""Credentials by reference: settings name a secret, never hold it.

A setting value ``{{secrets/<scope>/<key>}}`` is read from a Databricks secret scope (the syntax
Databricks uses for secret references in cluster and job settings), ``{{env/<NAME>}}`` from the
environment. References are resolved on the driver when a filesystem is opened; the values reach the
Spark tasks that need them inside the task closure and are never logged or written to a table.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from typing import Any

from micdm.errors import ConfigError

__all__ = ["SecretReader", "resolve_references"]

#: Reads (scope, key) from a secret store.
SecretReader = Callable[[str, str], str]

_REFERENCE = re.compile(r"^\{\{\s*(secrets|env)/([^{}]+?)\s*\}\}$")


def _databricks_secret(scope: str, key: str) -> str:
    try:
        from pyspark.dbutils import DBUtils  # present on Databricks runtimes only
    except ImportError:
        raise ConfigError(f"{{{{secrets/{scope}/{key}}}}} needs a Databricks runtime; elsewhere name an "
                          "environment variable with {{env/NAME}}") from None
    from pyspark.sql import SparkSession

    return DBUtils(SparkSession.getActiveSession()).secrets.get(scope=scope, key=key)


def _resolve_one(value: str, read_secret: SecretReader) -> str:
    match = _REFERENCE.match(value)
    if match is None:
        return value
    kind, name = match.groups()
    if kind == "env":
        if name not in os.environ:
            raise ConfigError(f"environment variable {name} is not set (referenced as {{{{env/{name}}}}})")
        return os.environ[name]
    scope, _, key = name.partition("/")
    if not scope or not key:
        raise ConfigError(f"{value!r}: a secret reference is {{{{secrets/<scope>/<key>}}}}")
    return read_secret(scope, key)


def resolve_references(value: Any, read_secret: SecretReader = _databricks_secret) -> Any:
    """``value`` (a string, or dicts and lists of them) with every secret or env reference replaced."""
    if isinstance(value, str):
        return _resolve_one(value, read_secret)
    if isinstance(value, dict):
        return {k: resolve_references(v, read_secret) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(resolve_references(v, read_secret) for v in value)
    return value
