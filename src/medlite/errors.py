"""User-facing errors.

Every mistake a user can make (a bad path, a corrupt image, an unknown model name, a wrong shape) raises
:class:`MedliteError` with a one-line message that names the file or argument and what is wrong. The CLI
prints that line and exits with code 2; nothing else is caught there, so programming errors still show a
traceback.
"""

from __future__ import annotations


class MedliteError(ValueError):
    """A problem with the user's input, explained in one line."""


class DataError(MedliteError):
    """A data source, image file, manifest or cache cannot be used as given."""


class ModelError(MedliteError):
    """An unknown model name, an incompatible checkpoint or a bad model argument."""


def require_positive(flag: str, value: int | None, minimum: int = 1, maximum: int | None = None) -> None:
    """Refuse an integer option below ``minimum`` (or above ``maximum``); ``None`` means "use the default".

    ``flag`` is the command-line spelling (``--threads``): the one rule for 0 and negatives in every command,
    so ``--threads 0`` is refused like ``--batch-size 0`` instead of meaning "default" in some places.
    """
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum or (
            maximum is not None and value > maximum):
        bound = f">= {minimum}" if maximum is None else f"between {minimum} and {maximum}"
        raise MedliteError(f"{flag} must be an integer {bound}, got {value!r}")
