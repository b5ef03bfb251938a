"""Deprecated alias: moved to medlite.rundir.layout, medlite.rundir.store and medlite.utils.atomic."""

from medlite.utils.deprecation import moved

moved(__name__, "medlite.rundir.layout", "medlite.rundir.store", "medlite.utils.atomic")
