"""micdm: DICOM archives to the OMOP CDM medical-imaging tables on Spark and Delta Lake."""

from micdm.config import Settings, load_settings
from micdm.errors import (
    ConfigError,
    EnvironmentProblem,
    IdOverflowError,
    InvalidInputError,
    MicdmError,
    QualityError,
    RunInProgressError,
    SchemaMismatchError,
    SourceError,
    VocabularyError,
)

__version__ = "0.1.0"

__all__ = [
    "ConfigError",
    "EnvironmentProblem",
    "IdOverflowError",
    "InvalidInputError",
    "MicdmError",
    "QualityError",
    "RunInProgressError",
    "SchemaMismatchError",
    "Settings",
    "SourceError",
    "VocabularyError",
    "__version__",
    "load_settings",
]
