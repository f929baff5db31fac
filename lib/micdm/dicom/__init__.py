"""Pure-Python DICOM reading (no Spark): headers, structured-report and segmentation content, attributes."""

__all__: list[str] = []
