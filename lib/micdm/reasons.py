"""What feature_quarantine's reason and a feature's domain may hold, named once for every module that
sets them (extract's own reasons are dicom.reader.QuarantineReason)."""

from __future__ import annotations

from enum import StrEnum

__all__ = ["FeatureDomain", "FeatureReason"]


class FeatureReason(StrEnum):
    """Why a report, a segmentation, one of their items or an imported result is in feature_quarantine."""

    SR_MALFORMED = "sr_malformed"
    """No root item, an item without a parent, a by-reference to no item: the whole report."""
    SR_REFERENCE_CYCLE = "sr_reference_cycle"
    SR_TOO_DEEP = "sr_too_deep"
    """Content nested deeper than dicom.sr_content.MAX_DEPTH levels."""
    SR_TOO_MANY_ITEMS = "sr_too_many_items"
    """More content items than extract.sr_max_items."""
    SR_NO_CONTENT = "sr_no_content"
    """Read by a micdm older than sr_content_item: re-extract it."""
    SR_BAD_VALUE = "sr_bad_value"
    """One NUM item whose value is not a number; the rest of the report is kept."""
    SR_NO_UNITS = "sr_no_units"
    SEG_NO_HEADER = "seg_no_header"
    SEG_MALFORMED = "seg_malformed"
    SEG_NO_SEGMENTS = "seg_no_segments"
    ALG_MISSING_KEY = "alg_missing_key"
    """An imported result without its series or feature code."""
    ALG_MISSING_SYSTEM = "alg_missing_system"
    ALG_BAD_VALUE = "alg_bad_value"
    SERIES_NOT_IN_IMAGE_OCCURRENCE = "series_not_in_image_occurrence"
    """The series a group or result names has no image_occurrence; it is never put on another series."""


class FeatureDomain(StrEnum):
    """The clinical table a feature's value goes to."""

    MEASUREMENT = "measurement"
    OBSERVATION = "observation"
