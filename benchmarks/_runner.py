"""Shared by the training benchmarks: each run in a fresh process, a small parallel queue, fixed splits.

* :func:`train_in_subprocess` trains one run (keyword arguments of :func:`medlite.workflows.train.train`) in a new
  Python process, so its peak resident memory and CPU time are its own; the numbers are cached in
  ``RUNDIR/bench.json`` and a finished run is never trained twice (re-running a benchmark resumes it).
* :func:`run_queue` runs jobs ``workers`` at a time, each after the jobs it depends on (teachers, SimCLR
  pre-training).
* :func:`train_in_process` trains one run here unless it already finished (for benchmarks that then use the
  model in the same process).
* :func:`write_split` fixes one train/val/test split of a source as a manifest that every run reuses with
  ``split_from``, so runs with other seeds (other label fractions) and teachers share one split.
"""

from __future__ import annotations

import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import time
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import numpy as np

BENCH = "bench.json"


@dataclass
class Job:
    """One training run: ``name`` (unique), ``spec`` (``train`` keyword arguments), ``after`` (job names),
    ``meta`` (what a results table shows about it)."""

    name: str
    spec: dict[str, Any]
    after: list[str] = field(default_factory=list)
    meta: dict[str, Any] = field(default_factory=dict)


def _worker(job: dict[str, Any]) -> None:
    """Child process: train one run and print its numbers as the last line, in JSON."""
    import torch

    torch.set_num_threads(int(job["threads"]))
    from medlite.workflows.train import train

    started = time.perf_counter()
    result = train(**job["spec"])
    usage = resource.getrusage(resource.RUSAGE_SELF)
    out = Path(job["spec"]["out"])
    row: dict[str, Any] = {
        "metrics": result.metrics,
        "epochs": result.epochs_run,
        "wall_s": time.perf_counter() - started,
        "cpu_s": usage.ru_utime + usage.ru_stime,
        "peak_rss_mb": usage.ru_maxrss / 1024,
        "peak_gpu_mb": torch.cuda.max_memory_allocated() / 2**20 if torch.cuda.is_available() else None,
        "threads": int(job["threads"]),
    }
    for extra in ("episodic.json", "dual_skd.json"):
        if (out / extra).is_file():
            row[extra.removesuffix(".json")] = json.loads((out / extra).read_text())
    print(json.dumps(row))


def train_in_subprocess(spec: dict[str, Any], threads: int = 1) -> dict[str, Any]:
    """Train ``spec`` in a fresh process (or reuse its ``bench.json``); returns the numbers of the run."""
    out = Path(spec["out"])
    if (out / BENCH).is_file():
        return json.loads((out / BENCH).read_text())
    if (out / "last.ckpt").is_file() and not (out / "metrics.json").is_file():
        spec = {"out": spec["out"], "resume": True, "progress": False}  # an interrupted earlier attempt
    elif (out / "config.yaml").is_file() and not (out / "metrics.json").is_file():
        shutil.rmtree(out)  # an attempt that died before its first checkpoint: start again
    job = json.dumps({"threads": threads, "spec": spec})
    proc = subprocess.run([sys.executable, __file__, "--_worker", job], capture_output=True, text=True,
                          check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"run {out} failed:\n{proc.stderr[-3000:]}")
    row = json.loads(proc.stdout.strip().splitlines()[-1])
    (out / BENCH).write_text(json.dumps(row, indent=1))
    return row


def train_in_process(out: Path, **settings: Any) -> Path:
    """Train one run into ``out`` with :func:`medlite.workflows.train.train`, unless ``out`` holds finished weights;
    a folder without them is an interrupted run and starts again. Returns ``out``."""
    from medlite.rundir import layout
    from medlite.workflows.train import train

    if (out / layout.WEIGHTS).is_file():
        return out
    if out.exists():
        shutil.rmtree(out)
    started = time.perf_counter()
    result = train(out=out, progress=False, **settings)
    print(f"trained {out.name} in {time.perf_counter() - started:.0f} s: {result.epochs_run} epochs, test accuracy "
          f"{result.metrics['accuracy']:.3f}", flush=True)
    return out


def run_queue(jobs: list[Job], workers: int = 2, threads: int = 1, log: Any = print) -> dict[str, dict[str, Any]]:
    """Run every job (each after its ``after`` jobs), ``workers`` at a time; ``{name: numbers}``.

    A failed job is reported and its dependants are skipped; the others still run.
    """
    by_name = {j.name: j for j in jobs}
    done: dict[str, dict[str, Any]] = {}
    failed: set[str] = set()
    pending = list(jobs)
    running: dict[Future, Job] = {}
    with ThreadPoolExecutor(max_workers=workers) as pool:
        while pending or running:
            for job in list(pending):
                if any(d in failed for d in job.after):
                    pending.remove(job)
                    failed.add(job.name)
                    log(f"skipped {job.name}: a job it needs failed")
                elif all(d in done for d in job.after) and len(running) < workers:
                    pending.remove(job)
                    running[pool.submit(train_in_subprocess, job.spec, threads)] = job
            if not running:
                missing = {d for j in pending for d in j.after if d not in by_name}
                raise RuntimeError(f"jobs wait for unknown jobs {sorted(missing)}")
            finished, _ = wait(running, return_when=FIRST_COMPLETED)
            for future in finished:
                job = running.pop(future)
                try:
                    done[job.name] = future.result()
                    log(f"done {job.name}: accuracy {done[job.name]['metrics']['accuracy']:.3f}, "
                        f"{done[job.name]['wall_s']:.0f} s")
                except RuntimeError as err:
                    failed.add(job.name)
                    log(f"FAILED {job.name}: {err}")
    return done


def write_split(source: str, out_csv: Path, *, seed: int = 0, val_frac: float = 0.1, test_frac: float = 0.2,
                group_from_filename: bool = False, size: int = 64) -> Path:
    """Fix one split of ``source`` (medlite's own stratified, patient-grouped split) as a manifest file."""
    import numpy as np

    from medlite.config import build_config
    from medlite.data.prepared import prepare_data
    from medlite.data.splits import SplitManifest

    if out_csv.is_file():
        return out_csv
    cfg = build_config(None, source=source, seed=seed, val_frac=val_frac, test_frac=test_frac,
                       group_from_filename=group_from_filename, size=size)
    data = prepare_data(cfg, progress=False)
    out_csv.parent.mkdir(parents=True, exist_ok=True)
    SplitManifest.from_source(data.source, data.splits, fraction_indices=np.flatnonzero(data.in_fraction),
                              record_indices=data.cached.record_indices).save(out_csv)
    return out_csv


def machine_line(threads: int, workers: int) -> str:
    """The machine a table was measured on, for its caption."""
    import torch

    from medlite.metrics.profile import cpu_name

    return (f"{cpu_name()} ({os.cpu_count()} cores), {platform.python_version()}, torch {torch.__version__}; "
            f"{workers} run(s) in parallel, {threads} thread(s) each")


if __name__ == "__main__" and len(sys.argv) == 3 and sys.argv[1] == "--_worker":
    _worker(json.loads(sys.argv[2]))


def batched_proba(classifier: Any, images: np.ndarray, batch: int = 64) -> np.ndarray:
    """``classifier.predict_proba`` over uint8 (N, S, S) ``images`` in chunks of ``batch`` (bounded memory)."""
    import numpy as np

    return np.concatenate([classifier.predict_proba(images[i:i + batch]) for i in range(0, len(images), batch)])
