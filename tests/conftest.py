"""Suite-wide fixtures: keep every preprocessing cache inside pytest's temporary folder."""

from __future__ import annotations

import pytest


@pytest.fixture(autouse=True, scope="session")
def _isolated_cache(tmp_path_factory: pytest.TempPathFactory) -> None:
    # build_cache reads $MEDLITE_CACHE; tests must never write into the user's ~/.cache/medlite.
    patcher = pytest.MonkeyPatch()
    patcher.setenv("MEDLITE_CACHE", str(tmp_path_factory.mktemp("medlite-cache")))
    yield
    patcher.undo()
