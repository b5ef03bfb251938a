"""Deprecated alias: moved to medlite.explain.metrics.localisation."""

from medlite.utils.deprecation import moved

moved(__name__, "medlite.explain.metrics.localisation")
