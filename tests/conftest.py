"""Suite-wide fixtures: every preprocessing cache inside pytest's temporary folder; one torch thread."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(autouse=True, scope="session")
def _isolated_cache(tmp_path_factory: pytest.TempPathFactory) -> None:
    # build_cache reads $MEDLITE_CACHE; tests must never write into the user's ~/.cache/medlite.
    patcher = pytest.MonkeyPatch()
    patcher.setenv("MEDLITE_CACHE", str(tmp_path_factory.mktemp("medlite-cache")))
    yield
    patcher.undo()


@pytest.fixture(autouse=True, scope="session")
def _one_thread() -> None:
    # The suite's tensors are tiny: intra-op threads gain nothing and, on 2 shared CI cores, only contend.
    # A test that wants every core (e.g. the demo recipe) sets it for itself.
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)
