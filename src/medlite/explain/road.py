"""Deprecated alias: moved to medlite.explain.metrics.road."""

from medlite.utils.deprecation import moved

moved(__name__, "medlite.explain.metrics.road")
