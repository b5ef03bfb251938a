"""The package version (one place; read by medlite/__init__ and recorded in exported models)."""

__version__ = "0.1.0"
