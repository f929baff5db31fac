"""micdm's exceptions: one base class, a subclass per kind of failure a user can act on."""

from __future__ import annotations

__all__ = ["ConfigError", "EnvironmentProblem", "IdOverflowError", "InvalidInputError", "MicdmError", "QualityError",
           "RunInProgressError", "SchemaMismatchError", "SourceError", "VocabularyError"]


class MicdmError(Exception):
    """Base of every error micdm raises on purpose."""


class ConfigError(MicdmError):
    """A setting is unknown, of the wrong type, or out of range; the message names the key."""


class EnvironmentProblem(MicdmError):
    """The machine lacks something micdm needs (Java, the Delta jars); the message says what to install."""


class SchemaMismatchError(MicdmError):
    """An existing table does not have the schema micdm expects."""


class IdOverflowError(MicdmError):
    """Allocating more ids would pass the spec's 32-bit integer range."""


class RunInProgressError(MicdmError):
    """Another micdm run is writing to the same tables; the message names it."""


class SourceError(MicdmError):
    """A source root cannot be listed (absent, or its store unreachable): nothing is written, so no file
    is wrongly marked missing."""


class InvalidInputError(MicdmError):
    """With ``validation: raise``, input that breaks a rule (a file with an invalid UID) stops the stage before
    anything is written; the message names the files."""


class QualityError(MicdmError):
    """A fatal quality check failed (exit code 2); dq_result holds the details."""


class VocabularyError(MicdmError):
    """A concept micdm ships is missing from its own resources: the package is damaged or out of date."""
