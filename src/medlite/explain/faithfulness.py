"""Deprecated alias: moved to medlite.explain.metrics.faithfulness."""

from medlite.utils.deprecation import moved

moved(__name__, "medlite.explain.metrics.faithfulness")
