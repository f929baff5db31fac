"""Mapping tables shipped with micdm (modality, body part, DICOM attributes, vocabulary extracts)."""
