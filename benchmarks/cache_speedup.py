"""Cold versus warm build time of medlite's preprocessing cache.

Usage::

    python benchmarks/cache_speedup.py DATA [--size 224] [--cache-dir DIR] [--equalize clahe]

DATA is anything :func:`medlite.data.sources.open_source` accepts (a class folder, a CSV manifest, a MedMNIST
npz). The cache is built into a fresh temporary folder (cold: decode + preprocess + write every image), then
built again (warm: the key matches, so the memmap is just reopened; best of three). Opening the source is
timed separately and excluded from both. The cold time includes reading the image files, which may already
sit in the OS page cache. Prints a markdown table (header + one row).
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from pathlib import Path

from medlite.data.cache import build_cache
from medlite.data.preprocess import PreprocessConfig
from medlite.data.sources import open_source


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("data", help="class folder, CSV manifest or MedMNIST .npz")
    parser.add_argument("--size", type=int, default=224, help="output side in pixels (default 224)")
    parser.add_argument("--cache-dir", type=Path, default=None,
                        help="parent of the fresh temporary cache folder (default: the system temp dir)")
    parser.add_argument("--equalize", choices=["none", "hist", "clahe"], default="none")
    args = parser.parse_args(argv)

    start = time.perf_counter()
    source = open_source(args.data)
    open_s = time.perf_counter() - start
    cfg = PreprocessConfig(size=args.size, equalize=args.equalize)
    if args.cache_dir is not None:
        args.cache_dir.mkdir(parents=True, exist_ok=True)
    workdir = Path(tempfile.mkdtemp(prefix="medlite-cache-bench-", dir=args.cache_dir))
    try:
        start = time.perf_counter()
        cold = build_cache(source, cfg, workdir, progress=False)
        cold_s = time.perf_counter() - start
        if cold.from_cache:
            raise SystemExit(f"{workdir} was expected to be empty, but the cache was reused")
        warm_s = float("inf")
        for _ in range(3):
            start = time.perf_counter()
            warm = build_cache(source, cfg, workdir, progress=False)
            warm_s = min(warm_s, time.perf_counter() - start)
        if not warm.from_cache:
            raise SystemExit("the second build did not hit the cache")
        threads = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
        print("| data | images | size | threads | open source (s) | cold build (s) | warm open (ms) "
              "| speed-up |")
        print("| --- | --- | --- | --- | --- | --- | --- | --- |")
        print(f"| {args.data} | {len(cold)} | {args.size} | {threads} | {open_s:.2f} | {cold_s:.2f} | "
              f"{warm_s * 1e3:.1f} | {cold_s / warm_s:,.0f}x |")
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
