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
