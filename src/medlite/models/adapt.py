"""Deprecated alias: moved to medlite.models.checkpoint."""

from medlite.utils.deprecation import moved

moved(__name__, "medlite.models.checkpoint")
