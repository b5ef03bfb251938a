"""Deprecated alias: moved to medlite.explain.scoring."""

from medlite.utils.deprecation import moved

moved(__name__, "medlite.explain.scoring")
