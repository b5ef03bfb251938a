"""Multi-node equivalence: torchrun 2 nodes x 1 process vs spawned DDP on one machine vs one process.

    python benchmarks/multinode.py --seeds 0 1 2

Per seed: ``torchrun --nnodes 2 --nproc-per-node 1`` (two agents on 127.0.0.1, gloo) with batch B per process,
``--devices 2`` spawned with batch B, one process with the global batch 2B and, as a yardstick, one process with
batch B. Prints max |difference| of the weights (parameters; BatchNorm buffers apart) and of the final validation
loss, and the test accuracy / macro AUC of each, against the one-process global-batch run.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
from safetensors.numpy import load_file

SETTINGS = ["--model", "hybridnet_xr_50", "--img-size", "32", "--epochs", "2", "--balance", "none",
            "--augment", "none", "--deterministic"]


def _port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _train(args: list[str], env: dict[str, str], nodes: int = 0) -> None:
    if nodes:
        endpoint = f"127.0.0.1:{_port()}"
        command = [sys.executable, "-m", "torch.distributed.run", "--nnodes", str(nodes), "--nproc-per-node", "1",
                   "--rdzv-backend", "c10d", "--rdzv-endpoint", endpoint, "-m", "medlite", "train", *args]
        procs = [subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
                 for _ in range(nodes)]
        codes = [p.wait() for p in procs]
        if any(codes):
            raise SystemExit(f"torchrun failed: {procs[0].stderr.read().decode()[-2000:]}")
        return
    subprocess.run([sys.executable, "-m", "medlite", "train", *args], env=env, check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def _summary(run: Path) -> tuple[dict[str, np.ndarray], float, dict]:
    with (run / "history.csv").open() as handle:
        val_loss = float(list(csv.DictReader(handle))[-1]["val_loss"])
    return load_file(str(run / "model.safetensors")), val_loss, json.loads((run / "metrics.json").read_text())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--batch", type=int, default=4, help="per-process batch B")
    opts = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="medlite-multinode-"))
    src = str(Path(__file__).resolve().parents[1] / "src")
    env = {**os.environ, "PYTHONPATH": src, "OMP_NUM_THREADS": "1", "MEDLITE_CACHE": str(root / "cache")}
    subprocess.run([sys.executable, "-m", "medlite", "data", "synth", str(root / "data"), "--per-class", "12",
                    "--size", "32"], env=env, check=True, stdout=subprocess.DEVNULL)
    b = opts.batch
    print("| seed | run | max abs dW (params) | final val loss diff | test acc | test macro AUC |")
    print("| --- | --- | --- | --- | --- | --- |")
    for seed in opts.seeds:
        common = ["--data", str(root / "data"), *SETTINGS, "--seed", str(seed)]
        runs = {f"1 process, batch {2 * b}": (["--batch-size", str(2 * b)], 0),
                f"torchrun 2 nodes x 1, batch {b}": (["--batch-size", str(b), "--num-nodes", "2", "--devices", "1"], 2),
                f"spawned --devices 2, batch {b}": (["--batch-size", str(b), "--devices", "2"], 0),
                f"1 process, batch {b} (yardstick)": (["--batch-size", str(b)], 0)}
        results = {}
        for i, (name, (extra, nodes)) in enumerate(runs.items()):
            out = root / f"s{seed}-{i}"
            _train([*common, "--out", str(out), *extra], env, nodes)
            results[name] = _summary(out)
        ref_w, ref_loss, _ = next(iter(results.values()))
        for name, (w, loss, m) in results.items():
            dw = max(float(np.abs(w[k] - ref_w[k]).max()) for k in w if "running" not in k and "num_batches" not in k)
            print(f"| {seed} | {name} | {dw:.2g} | {abs(loss - ref_loss):.2g} | {m['accuracy']:.3f} | "
                  f"{m['auc_macro']:.3f} |")


if __name__ == "__main__":
    main()
