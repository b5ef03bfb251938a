"""Suite-wide fixtures: every preprocessing cache inside pytest's temporary folder; one torch thread; one small
trained run shared by the modules that only need *a* run (each training costs seconds on 2 cores)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

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


TRAINED_RUN = dict(source="synthetic", model="hybridnet_xr_50", epochs=2, size=48, synthetic_per_class=8,
                   synthetic_size=48, batch_size=12, progress=False)


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Any]:
    """``(run_dir, TrainResult)`` of :data:`TRAINED_RUN`: hybridnet_xr_50, 2 epochs on 48 px chestx6 phantoms
    (8 per class, lesion masks included). Tests may add files to it (evaluations, explanations) but must not
    change or remove what training wrote."""
    from medlite.workflows.train import train

    out = tmp_path_factory.mktemp("shared-run") / "hxr"
    return out, train(out=out, **TRAINED_RUN)
