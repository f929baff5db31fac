"""A new warehouse for a test, copied from one made once per session.

Creating micdm's tables is some forty Delta commits, about 4 s of a warm session; a test that starts from
empty tables needs them as init_tables leaves them, not made again. Tests of table creation itself call
init_tables."""

from __future__ import annotations

import atexit
import dataclasses
import shutil
import tempfile
from pathlib import Path
from typing import Any

from micdm.tables import TableLocator, init_tables

__all__ = ["new_tables"]

#: Per locator (its warehouse left out, as text): the warehouse init_tables made for it, copied for each new one.
_templates: dict[str, Path] = {}


def new_tables(spark: Any, locator: TableLocator) -> None:
    """Give ``locator``'s new warehouse every table, empty, as init_tables would: a copy of a warehouse made
    once per session for these settings. A catalog, or a folder that exists already, gets init_tables."""
    warehouse = Path(locator.storage.warehouse)
    if locator.storage.catalog or warehouse.exists():
        init_tables(spark, locator)
        return
    key = repr(_moved(locator, Path("template")))  # settings hold dicts: not hashable
    if key not in _templates:
        folder = Path(tempfile.mkdtemp(prefix="micdm-template-"))
        atexit.register(shutil.rmtree, folder, True)
        init_tables(spark, _moved(locator, folder / "warehouse"))
        _templates[key] = folder / "warehouse"
    shutil.copytree(_templates[key], warehouse)


def _moved(locator: TableLocator, warehouse: Path) -> TableLocator:
    return dataclasses.replace(locator, storage=dataclasses.replace(locator.storage, warehouse=str(warehouse)))
