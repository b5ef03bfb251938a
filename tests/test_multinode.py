"""Multi-node DDP as a cluster user launches it: ``torchrun --nnodes 2 --nproc-per-node 1 -m medlite train``,
two "nodes" on this machine over gloo, against the single-machine engine (spawned DDP) and one process.

What matches, measured on 2 CPU cores (BENCHMARKS.md "Multi-node equivalence"):

* torchrun 2 nodes x 1 process, batch B each == ``--devices 2`` spawned on one machine, batch B each: bit-identical
  weights, history and test metrics (the same engine, sharding and per-rank seeds).
* The global batches equal those of one process with batch 2B, exactly (:func:`test_ranks_share_the_batches_of_
  one_process_with_the_global_batch`): rank r takes every W-th image of the one seeded order.
* The weights do *not* equal one process with batch 2B: BatchNorm normalises each process's B images with their
  own statistics (SyncBatchNorm is CUDA-only in torch, so there is none on CPU) and dropout draws per-rank masks.
  The final validation loss agrees within the tolerance below (measured 0.005-0.009 over seeds 0-2). It is a
  sanity bound, not the proof of equivalence: one process with batch B lands 0.012-0.03 away, also inside it.
  The proof is the two exact assertions above (same engine as spawned DDP; same global batches).
"""

from __future__ import annotations

import csv
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file

from medlite.errors import MedliteError
from medlite.workflows.launch import Launch, check_world_size, external_launch

SETTINGS = ["--model", "hybridnet_xr_50", "--img-size", "32", "--epochs", "2", "--balance", "none",
            "--augment", "none", "--deterministic", "--seed", "1"]
PER_PROCESS_BATCH = 4
VAL_LOSS_TOLERANCE = 0.05  # vs one process with the global batch: per-process BatchNorm (measured <= 0.009)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _env(cache: Path) -> dict[str, str]:
    src = str(Path(__file__).resolve().parents[1] / "src")
    return {**os.environ, "PYTHONPATH": src + os.pathsep + os.environ.get("PYTHONPATH", ""), "OMP_NUM_THREADS": "1",
            "MEDLITE_CACHE": str(cache)}


def _torchrun_two_nodes(data: Path, out: Path, cache: Path) -> list[subprocess.CompletedProcess]:
    """Two torchrun agents (one per "node") meeting at a c10d rendezvous on 127.0.0.1."""
    endpoint = f"127.0.0.1:{_free_port()}"
    command = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--nproc-per-node", "1",
               "--rdzv-backend", "c10d", "--rdzv-endpoint", endpoint, "-m", "medlite", "train", "--data", str(data),
               "--out", str(out), "--num-nodes", "2", "--devices", "1", "--batch-size", str(PER_PROCESS_BATCH),
               *SETTINGS]
    nodes = [subprocess.Popen(command, env=_env(cache), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for _ in range(2)]
    results = []
    for node in nodes:
        stdout, _ = node.communicate(timeout=180)
        results.append(subprocess.CompletedProcess(command, node.returncode, stdout))
    return results


def _one_machine(data: Path, out: Path, cache: Path, batch: int, devices: int) -> None:
    command = [sys.executable, "-m", "medlite", "train", "--data", str(data), "--out", str(out), "--batch-size",
               str(batch), "--devices", str(devices), *SETTINGS]
    done = subprocess.run(command, env=_env(cache), capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    from medlite.data.synthetic import write_phantom_dataset

    root = tmp_path_factory.mktemp("multinode")
    data = write_phantom_dataset(root / "data", per_class=12, size=32)  # 51 training images
    nodes = _torchrun_two_nodes(data, root / "torchrun", root / "cache")
    _one_machine(data, root / "spawned", root / "cache", PER_PROCESS_BATCH, devices=2)
    _one_machine(data, root / "single", root / "cache", 2 * PER_PROCESS_BATCH, devices=1)
    return root, nodes


def _weights(run: Path) -> dict[str, np.ndarray]:
    return load_file(str(run / "model.safetensors"))


def _history(run: Path) -> list[dict[str, str]]:
    with (run / "history.csv").open() as handle:
        return list(csv.DictReader(handle))


def test_torchrun_two_nodes_write_one_run_directory(runs):
    root, nodes = runs
    assert [n.returncode for n in nodes] == [0, 0], "\n".join(n.stdout for n in nodes)
    assert sorted(p.name for p in root.iterdir()) == ["cache", "data", "single", "spawned", "torchrun"]
    run = root / "torchrun"
    assert sorted(p.name for p in run.rglob("*") if p.is_file()) == sorted(
        p.name for p in (root / "spawned").rglob("*") if p.is_file())  # the same files as one machine's DDP
    assert len(list(run.rglob("metrics.json"))) == 1 and not list(run.rglob("*.tmp"))
    assert [r["epoch"] for r in _history(run)] == ["0", "1"]
    summaries = [line for n in nodes for line in n.stdout.splitlines() if "test accuracy" in line]
    assert len(summaries) == 1  # only rank 0 prints


def test_torchrun_two_nodes_equal_the_single_machine_ddp_exactly(runs):
    root, _ = runs
    a, b = _weights(root / "torchrun"), _weights(root / "spawned")
    assert a.keys() == b.keys()
    for key in a:
        np.testing.assert_array_equal(a[key], b[key], err_msg=key)
    assert _history(root / "torchrun") == _history(root / "spawned")
    metrics = [json.loads((root / r / "metrics.json").read_text()) for r in ("torchrun", "spawned")]
    assert metrics[0] == metrics[1]


def test_torchrun_two_nodes_match_one_process_with_the_global_batch_within_batchnorm_noise(runs):
    root, _ = runs
    ddp, single = _history(root / "torchrun"), _history(root / "single")
    assert len(ddp) == len(single)
    for a, b in zip(ddp, single, strict=True):
        assert abs(float(a["val_loss"]) - float(b["val_loss"])) < VAL_LOSS_TOLERANCE
    # Not bit-identical: the per-process BatchNorm statistics make the weights differ (the test above shows the
    # engine itself is deterministic, so a difference here is BatchNorm's, not noise).
    a, b = _weights(root / "torchrun"), _weights(root / "single")
    assert any(not np.array_equal(a[k], b[k]) for k in a)


def test_ranks_share_the_batches_of_one_process_with_the_global_batch():
    # Lightning wraps medlite's seeded sampler in DistributedSamplerWrapper without shuffling (it is not a
    # RandomSampler); rank r then takes positions r, r + W, ... of the one seeded order.
    from lightning.fabric.utilities.distributed import DistributedSamplerWrapper
    from torch.utils.data import BatchSampler

    from medlite.data.module import EpochSeededSampler

    n, batch, world = 51, 4, 2
    single = list(BatchSampler(EpochSeededSampler(n, seed=1), world * batch, drop_last=True))
    ranks = [list(BatchSampler(DistributedSamplerWrapper(EpochSeededSampler(n, seed=1), num_replicas=world,
                                                         rank=r, shuffle=False), batch, drop_last=True))
             for r in range(world)]
    assert all(len(r) == len(single) for r in ranks)
    for k, expected in enumerate(single):
        assert sorted(ranks[0][k] + ranks[1][k]) == sorted(expected)


def test_torchrun_environment_is_detected_and_checked(monkeypatch):
    for name, value in {"TORCHELASTIC_RUN_ID": "x", "RANK": "1", "WORLD_SIZE": "2", "LOCAL_RANK": "0",
                        "LOCAL_WORLD_SIZE": "1", "GROUP_RANK": "1", "MASTER_ADDR": "127.0.0.1",
                        "MASTER_PORT": "29500"}.items():
        monkeypatch.setenv(name, value)
    assert external_launch() == Launch("torchrun", rank=1, world_size=2)
    check_world_size(Launch("torchrun", 1, 2), devices=1, num_nodes=2)
    with pytest.raises(MedliteError, match=r"torchrun started 2 processes but --num-nodes 1 x --devices 1 = 1"):
        check_world_size(Launch("torchrun", 0, 2), devices=1, num_nodes=1)
    check_world_size(Launch("slurm", 0, 4), devices=1, num_nodes=1)  # one medlite train inside an sbatch script
    with pytest.raises(MedliteError, match="slurm started 4 processes"):
        check_world_size(Launch("slurm", 0, 4), devices=1, num_nodes=2)


def test_no_launcher_no_launch(monkeypatch):
    for name in ("TORCHELASTIC_RUN_ID", "SLURM_NTASKS", "LSB_JOBID", "OMPI_COMM_WORLD_SIZE", "PMI_SIZE"):
        monkeypatch.delenv(name, raising=False)
    assert external_launch() is None
