"""Deprecated alias: moved to medlite.explain.images."""

from medlite.utils.deprecation import moved

moved(__name__, "medlite.explain.images", "medlite.explain.methods")
