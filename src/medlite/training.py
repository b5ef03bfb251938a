"""Deprecated alias: moved to medlite.workflows.train (prepare_data: medlite.data.prepared; resolve_init:
medlite.rundir.store)."""

from medlite.utils.deprecation import moved

moved(__name__, "medlite.workflows.train", "medlite.data.prepared", "medlite.rundir.store")
