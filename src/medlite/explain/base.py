"""Deprecated alias: moved to medlite.explain.explainer."""

from medlite.utils.deprecation import moved

moved(__name__, "medlite.explain.explainer")
