"""Efficiency of the zoo's student models at one input size, as a Markdown table.

    python benchmarks/efficiency.py --img-size 224 --batch-size 32 --threads 2

Each row is :func:`medlite.metrics.profile.profile_model` (parameters, MACs, peak training memory of one AdamW
step in a fresh process, training throughput, latency at batch 1, throughput at batch 32); the last columns
compare every model with MobileNetV2 (HybridNet-XR's design goal: <= 0.5x its peak training memory and
>= 2x its training throughput).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from medlite.metrics.profile import profile_model

STUDENTS = ["hybridnet_xr_50", "hybridnet_xr_100", "hybridnet_xr_150", "mobilenet_v2", "squeezenet1_1",
            "efficientnet_lite0", "mobilenetv3_ofa_595"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=STUDENTS)
    parser.add_argument("--img-size", type=int, default=224)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--iters", type=int, default=10)
    parser.add_argument("--num-classes", type=int, default=6)
    parser.add_argument("--json", type=Path, help="also write every profile to this JSON file")
    args = parser.parse_args()

    results = {}
    for name in args.models:
        results[name] = profile_model(name, img_size=args.img_size, batch_size=args.batch_size,
                                      num_classes=args.num_classes, threads=args.threads, iters=args.iters,
                                      warmup=2)
        print(f"{name}: done", flush=True)
    ref = results.get("mobilenet_v2")
    first = next(iter(results.values()))
    print(f"\n{args.img_size} px, batch {args.batch_size}, {args.num_classes} classes, 1 channel; "
          f"{first['threads']} threads on {first['cpu']}; torch {first['torch_version']}\n")
    print("| model | params | MACs (M) | weights (MB) | peak train mem (MB) | train img/s | latency p50 / p90 (ms) "
          "| infer img/s (b32) | mem vs MNv2 | train speed vs MNv2 |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for name, r in results.items():
        mem_ratio = f"{r['peak_train_mem_mb'] / ref['peak_train_mem_mb']:.2f}x" if ref else "—"
        speed_ratio = f"{r['train_throughput_ips'] / ref['train_throughput_ips']:.2f}x" if ref else "—"
        print(f"| {name} | {r['params']:,} | {r['macs'] / 1e6:,.1f} | {r['weights_mb']:.2f} | "
              f"{r['peak_train_mem_mb']:,.0f} | {r['train_throughput_ips']:.1f} | {r['latency_ms_p50']:.1f} / "
              f"{r['latency_ms_p90']:.1f} | {r['throughput_ips_b32']:.1f} | {mem_ratio} | {speed_ratio} |")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
