"""Load test of ``medlite serve``: throughput, latency, errors and memory under 1 / 4 / 16 concurrent clients.

Usage::

    python benchmarks/serve_load.py ../shared/data/pediatric-cxr/train [--seconds 30] [--clients 1 4 16]
        [--workers 2] [--run /tmp/bench/serve_hxr100] [--train-per-class 100] [--files-per-request 1]

1. A hybridnet_xr_100 run at 224 px is trained for **1 epoch** on ``--train-per-class`` images per class of DATA
   (in a subprocess; reused when ``--run`` already holds one) and exported to ONNX fp32. Its accuracy is
   irrelevant here: the work per image (decode, preprocess, network, heatmap) does not depend on the weights.
2. ``medlite serve RUN/export/model.onnx`` starts in a subprocess on 127.0.0.1; *ready* = process start to the
   first ``/healthz`` answer, *first answer* = process start to the first prediction returned.
3. For each client count, with and without ``heatmap=true``: that many threads post real X-rays (JPEG bytes
   of DATA, round-robin, ``--files-per-request`` per request, file name "u") over keep-alive connections for
   ``--seconds``; a request counts as an error unless it returns 200 with every result ``ok``.
4. Peak resident memory of the server process: ``VmHWM`` of ``/proc/PID/status`` after each phase (it only grows).

The load generator runs on the same machine as the server (it competes for the same cores); the report says so.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import platform
import statistics
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

from _runner import train_in_subprocess

BOUNDARY = "medlite-load"


def _body(images: list[bytes], heatmap: bool) -> bytes:
    parts = [f"--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"heatmap\"\r\n\r\n"
             f"{'true' if heatmap else 'false'}\r\n".encode()]
    for data in images:
        parts.append(f"--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"files\"; filename=\"u\"\r\n"
                     "Content-Type: application/octet-stream\r\n\r\n".encode() + data + b"\r\n")
    return b"".join(parts) + f"--{BOUNDARY}--\r\n".encode()


def _subset_folder(data: Path, per_class: int, out: Path) -> Path:
    """``out/<class>/`` with symlinks to the first ``per_class`` images of each class folder of ``data``."""
    for folder in sorted(p for p in data.iterdir() if p.is_dir()):
        target = out / folder.name
        target.mkdir(parents=True, exist_ok=True)
        for image in sorted(folder.iterdir())[:per_class]:
            link = target / image.name
            if not link.exists():
                link.symlink_to(image.resolve())
    return out


def _cpu() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "?"


def _peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _start_server(onnx: Path, port: int, workers: int) -> tuple[subprocess.Popen, float]:
    start = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-c", "from medlite.cli import main; main()", "serve", str(onnx),
                             "--port", str(port), "--workers", str(workers)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    while True:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=1):
                return proc, time.perf_counter() - start
        except OSError:
            if proc.poll() is not None:
                raise SystemExit("the server exited during start-up") from None
            time.sleep(0.02)


def _client(port: int, bodies: list[bytes], n_files: int, stop: float, out: dict[str, Any], offset: int) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    headers = {"Content-Type": f"multipart/form-data; boundary={BOUNDARY}"}
    i = offset
    while True:  # at least one request per client, then until the deadline
        body = bodies[i % len(bodies)]
        i += 1
        t0 = time.perf_counter()
        try:
            conn.request("POST", "/api/v1/predict", body=body, headers=headers)
            response = conn.getresponse()
            payload = response.read()
            ok = response.status == 200 and all(r["status"] == "ok" for r in json.loads(payload)["results"])
        except (OSError, http.client.HTTPException, ValueError, KeyError):
            ok = False
            conn.close()
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        out["latency"].append(time.perf_counter() - t0)
        out["errors"] += 0 if ok else 1
        out["predictions"] += n_files if ok else 0
        if time.perf_counter() >= stop:
            break
    conn.close()


def _phase(port: int, bodies: list[bytes], n_files: int, clients: int, seconds: float) -> dict[str, Any]:
    results = [{"latency": [], "errors": 0, "predictions": 0} for _ in range(clients)]
    start = time.perf_counter()
    stop = start + seconds
    threads = [threading.Thread(target=_client, args=(port, bodies, n_files, stop, results[c], c * 7))
               for c in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - start
    latency = sorted(x for r in results for x in r["latency"])
    q = statistics.quantiles(latency, n=100) if len(latency) >= 2 else latency * 99
    return {"requests": len(latency), "req_s": len(latency) / wall,
            "pred_s": sum(r["predictions"] for r in results) / wall,
            "p50_ms": 1e3 * statistics.median(latency), "p99_ms": 1e3 * q[98],
            "errors": sum(r["errors"] for r in results)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data", type=Path, help="folder of class folders of real X-rays (pediatric-cxr/train)")
    parser.add_argument("--run", type=Path, default=Path("/tmp/bench/serve_hxr100"))
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 4, 16])
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--train-per-class", type=int, default=100)
    parser.add_argument("--files-per-request", type=int, default=1)
    parser.add_argument("--images", type=int, default=200, help="distinct X-rays posted (round-robin)")
    parser.add_argument("--port", type=int, default=8787)
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()

    onnx = args.run / "export" / "model.onnx"
    if not onnx.is_file():
        subset = _subset_folder(args.data, args.train_per_class, args.run.parent / f"{args.run.name}_data")
        train_in_subprocess({"out": str(args.run), "source": str(subset), "model": "hybridnet_xr_100", "epochs": 1,
                             "size": 224, "batch_size": 16, "progress": False}, threads=2)
        subprocess.run([sys.executable, "-c", "import sys; from medlite.serve.runner import resolve_model; "
                        "resolve_model(sys.argv[1])", str(args.run)], check=True)
    files = sorted(p for p in args.data.rglob("*") if p.suffix.lower() in (".jpeg", ".jpg", ".png"))
    picked = files[:: max(1, len(files) // args.images)][: args.images]
    images = [p.read_bytes() for p in picked]
    k = args.files_per_request
    groups = [images[i:i + k] for i in range(0, len(images) - k + 1, k)]

    proc, ready_s = _start_server(onnx, args.port, args.workers)
    rows: list[dict[str, Any]] = []
    try:
        t0 = time.perf_counter()
        first = _phase(args.port, [_body(groups[0], False)], k, 1, 0.0)  # one request
        first_answer_s = ready_s + (time.perf_counter() - t0)
        assert first["errors"] == 0
        for heatmap in (False, True):
            bodies = [_body(g, heatmap) for g in groups]
            for clients in args.clients:
                row = _phase(args.port, bodies, k, clients, args.seconds)
                row.update(clients=clients, heatmap=heatmap, peak_rss_mb=_peak_rss_mb(proc.pid))
                rows.append(row)
                print(json.dumps(row), flush=True)
    finally:
        proc.terminate()
        proc.wait(10)
    load = os.getloadavg()
    print(f"\nserver: medlite serve {onnx} --workers {args.workers} (hybridnet_xr_100, ONNX fp32, 224 px); "
          f"{len(images)} real X-rays, {k} file(s) per request, {args.seconds:g} s per row; ready {ready_s:.2f} s, "
          f"first answer {first_answer_s:.2f} s after start; {os.cpu_count()} cores ({_cpu()})"
          f", load average {load[0]:.1f} at the end; load generator on the same machine")
    print("\n| clients | heatmap | req/s | predictions/s | p50 (ms) | p99 (ms) | errors | server peak RSS (MB) |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['clients']} | {'yes' if r['heatmap'] else 'no'} | {r['req_s']:.1f} | {r['pred_s']:.1f} | "
              f"{r['p50_ms']:.1f} | {r['p99_ms']:.1f} | {r['errors']} | {r['peak_rss_mb']:.0f} |")
    if args.json:
        args.json.write_text(json.dumps({"ready_s": ready_s, "first_answer_s": first_answer_s, "rows": rows},
                                        indent=2))


if __name__ == "__main__":
    main()
