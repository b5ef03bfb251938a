"""Training processes started by a cluster launcher (torchrun, SLURM's srun) instead of by medlite.

``medlite train --devices N`` on one machine starts its N DDP workers itself (``start_method="spawn"``: the
calling process stays outside the process group, so the Python API works from notebooks and tests). A cluster
user instead starts one ``medlite train`` per device on every node::

    torchrun --nnodes 2 --nproc-per-node 1 --rdzv-backend c10d --rdzv-endpoint HOST:PORT \\
        -m medlite train --data DATA --out RUN --num-nodes 2 --devices 1
    srun medlite train --data DATA --out RUN --num-nodes 2 --devices 1     # sbatch --nodes=2 --ntasks-per-node=1

Lightning recognises these launchers by their environment variables (the same cluster environments it detects
itself, in its order: torchelastic, SLURM, LSF, MPI). Then every process is already one rank: the strategy must
not spawn workers of its own, and only global rank 0 writes the run directory. The other ranks train alongside
it (``medlite.workflows.train``), wait at a barrier until rank 0 has written the weights, metrics and model card,
and return what it wrote. The run directory must be on a filesystem every node sees for ``--resume`` and
``simclr-pw`` (every rank reads ``last.ckpt`` and the SimCLR phase's encoder).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from medlite.errors import MedliteError

if TYPE_CHECKING:
    from medlite.config import RunConfig


@dataclass(frozen=True)
class Launch:
    """This process's place in an externally launched job."""

    launcher: str  # "torchrun", "slurm", "lsf" or "mpi"
    rank: int  # global rank, 0 .. world_size - 1; rank 0 writes the run directory
    world_size: int  # processes in the whole job (nodes x processes per node)


def external_launch() -> Launch | None:
    """The launch this process belongs to, or ``None`` when no cluster launcher started it."""
    from lightning.fabric.plugins.environments import (
        LSFEnvironment,
        MPIEnvironment,
        SLURMEnvironment,
        TorchElasticEnvironment,
    )

    for name, env_type in (("torchrun", TorchElasticEnvironment), ("slurm", SLURMEnvironment),
                           ("lsf", LSFEnvironment), ("mpi", MPIEnvironment)):
        if env_type.detect():
            env = env_type()
            return Launch(name, env.global_rank(), env.world_size())
    return None


def check_world_size(launch: Launch | None, devices: int, num_nodes: int) -> None:
    """Raise a one-line error when ``devices x num_nodes`` is not the number of processes the launcher started.

    Under torchrun a mismatch is always an error (each rank would otherwise train on its own); under SLURM, LSF
    or MPI only when DDP is asked for, since a single ``medlite train`` inside a batch script also sees the job's
    task count.
    """
    if launch is None or devices * num_nodes == launch.world_size:
        return
    if launch.launcher == "torchrun" or devices * num_nodes > 1:
        raise MedliteError(f"{launch.launcher} started {launch.world_size} processes but --num-nodes {num_nodes} x "
                           f"--devices {devices} = {devices * num_nodes}; pass --num-nodes NODES --devices "
                           f"PROCESSES-PER-NODE whose product is {launch.world_size}")


def ddp_strategy(accelerator: str, launch: Launch | None) -> Any:
    """Lightning's DDP strategy: gloo on CPU (NCCL on GPUs); spawned workers unless a launcher made them."""
    from lightning.pytorch.strategies import DDPStrategy

    backend = "gloo" if accelerator == "cpu" else None
    if launch is not None:
        # The default "popen" launcher starts no process when the cluster environment created them.
        return DDPStrategy(process_group_backend=backend)
    return DDPStrategy(start_method="spawn", process_group_backend=backend)


def sync_ranks() -> None:
    """Barrier over every rank of an externally launched job (no-op without a process group): rank 0 calls it
    after writing the finished run directory, the other ranks wait in it before reading that directory."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        dist.barrier()


def follower_config(config: RunConfig | str | Path | None, out: Path, resume: bool,
                    overrides: dict[str, Any]) -> RunConfig:
    """The settings rank 0 resolves, read without its checks of ``out`` (rank 0 reports those) and without
    touching ``out``: rank 0 may already have written its config there."""
    from medlite.config import load_config, resolve_config
    from medlite.rundir import layout

    if resume:
        return load_config(out / layout.CONFIG, stored=True, **overrides)
    return resolve_config(config, **overrides)
