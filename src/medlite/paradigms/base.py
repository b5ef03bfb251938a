"""Deprecated alias: moved to medlite.paradigms.task."""

from medlite.utils.deprecation import moved

moved(__name__, "medlite.paradigms.task")
