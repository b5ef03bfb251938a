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
it (:func:`follow_rank_zero`), wait at a barrier until rank 0 has written the weights, metrics and model card,
and return what it wrote. The run directory must be on a filesystem every node sees for ``--resume`` and
``simclr-pw`` (every rank reads ``last.ckpt`` and the SimCLR phase's encoder).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from medlite.errors import MedliteError

if TYPE_CHECKING:
    from medlite.config import RunConfig
    from medlite.workflows.train import TrainResult


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
    from medlite.config import RunConfig, build_config, load_config
    from medlite.rundir import layout

    if resume:
        return load_config(out / layout.CONFIG, stored=True, **overrides)
    if isinstance(config, RunConfig):
        cfg = build_config(config.model_dump(mode="json"), **overrides)
    elif config is not None:
        cfg = load_config(config, **overrides)
    else:
        cfg = build_config(None, **overrides)
    return cfg.with_absolute_paths()


def follow_rank_zero(launch: Launch, config: RunConfig | str | Path | None, *, out: Path, resume: bool,
                     callbacks: Sequence[Any], progress: bool, **overrides: Any) -> TrainResult:
    """Train as rank ``launch.rank`` > 0: the same data, split and model as rank 0, nothing written.

    Returns rank 0's result, read from the run directory after the closing barrier (``metrics`` is empty when
    that directory is not visible from this node).
    """
    import time

    from medlite.data.prepared import prepare_data
    from medlite.data.sources import is_synthetic
    from medlite.rundir import layout, store
    from medlite.utils import atomic
    from medlite.utils.seed import seed_everything
    from medlite.workflows import train as workflow

    started = time.perf_counter()
    cfg = follower_config(config, out, resume, overrides)
    t = cfg.train
    check_world_size(launch, t.devices, t.num_nodes)
    seed_everything(t.seed, t.deterministic)
    # The split is a function of the config (and of rank 0's manifest when resuming): every rank draws the same.
    data = prepare_data(cfg, manifest=out / layout.SPLITS if resume else None, progress=False)
    _, task, datamodule, has_val = workflow._build_task(cfg, data, out, resume, callbacks, progress)
    ckpt_path = out / layout.LAST_CKPT if resume and (out / layout.LAST_CKPT).is_file() else None
    with workflow.quiet_lightning():
        trainer, _ = workflow._trainer(cfg, out, has_val, callbacks, progress,
                                       early_stopping=task.supports_early_stopping)
        trainer.fit(task, datamodule=datamodule, ckpt_path=ckpt_path)
    sync_ranks()  # rank 0 has written model.safetensors, metrics.json and the card
    finished = (out / layout.METRICS).is_file()
    history = store.read_history(out) if finished else []
    val_aucs = [float(r["val_auc"]) for r in history if r.get("val_auc")]
    return workflow.TrainResult(run_dir=out, metrics=atomic.read_json(out / layout.METRICS) if finished else {},
                                epochs_run=len(history), wall_time_s=time.perf_counter() - started,
                                best_val_auc=max(val_aucs, default=None), synthetic=is_synthetic(cfg.data.source),
                                rank=launch.rank)
