"""Mapping tables shipped with micdm (modality, body part, DICOM attributes, vocabulary extracts)."""

from __future__ import annotations

import csv
import io
from functools import cache
from importlib import resources

__all__ = ["rows"]


@cache
def rows(name: str) -> tuple[dict[str, str], ...]:
    """Rows of a CSV shipped in micdm/resources."""
    text = resources.files(__name__).joinpath(name).read_text(encoding="utf-8")
    return tuple(csv.DictReader(io.StringIO(text)))
