"""Workflows: the only layer that strings steps together (train, evaluate, profile, compare, demo).

Each is imported on first use through :mod:`medlite.api`; importing this package imports none of them.
"""
