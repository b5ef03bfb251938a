"""Efficiency profile of a model: parameters, MACs, weight-file size, peak memory, latency and throughput.

Every number is measured as follows, so it can be published with its protocol (METHODS.md §4):

* ``params``: elements of all parameters (trainable or not); buffers (BatchNorm statistics) excluded.
* ``macs``: multiply-accumulates of ONE forward pass at batch 1, input ``(1, in_chans, img_size, img_size)``,
  eval mode, counted by ``torch.utils.flop_counter.FlopCounterMode``. That counter reports FLOPs = 2 x MACs
  for convolutions (grouped / depthwise ones by their true ``C_out * C_in/groups * k*k * H_out*W_out``),
  linear layers, matmuls and attention; we divide by 2. Bias adds, normalisation, activations, pooling and
  element-wise ops are not counted (the fvcore / ptflops convention). ``flops`` = 2 x ``macs``.
* ``weights_mb``: size of the ``.safetensors`` file of the ``state_dict`` (parameters and buffers, fp32),
  either the file given as ``weights_path`` or one written to a temporary directory.
* ``peak_train_mem_mb`` / ``peak_train_rss_mb``: ONE training step (forward, cross-entropy, backward, AdamW
  step; the first, so AdamW state and gradients are allocated inside it) at ``batch_size``, fp32.
  On CPU it runs in a FRESH subprocess that rebuilds the model by its registered name and runs one warm-up
  step at batch 2 (so one-time library loading is not charged); the heap is trimmed and the peak-RSS
  high-water mark reset after model, input and a fresh optimiser exist, and read as the baseline;
  ``peak_train_rss_mb`` is the absolute peak RSS (``VmHWM``, i.e. ``ru_maxrss``), ``peak_train_mem_mb`` the
  peak minus that baseline, i.e. everything the step needed beyond the weights and the input batch.
  On CUDA, ``peak_train_mem_mb`` is ``torch.cuda.max_memory_allocated`` after ``reset_peak_memory_stats``
  minus what the process held on the device before the model copy was moved there, so it includes weights,
  input, gradients, AdamW state and activations (the usual "VRAM" figure); ``peak_train_rss_mb`` is ``None``.
  A module that cannot be rebuilt by name is measured in process by tensor accounting (an RSS lower bound).
  ``memory_method`` says which protocol produced the figures.
* ``peak_infer_mem_mb`` / ``peak_infer_rss_mb``: the same for one eval-mode, ``no_grad`` forward at batch 1.
* ``train_throughput_ips``: images/s over ``iters`` training steps at ``batch_size`` after ``warmup`` steps,
  on a copy of the model (the caller's weights are never changed).
* ``latency_ms_p50`` / ``latency_ms_p90``: batch 1, eval, ``no_grad``, ``max(iters, 20)`` calls timed one by
  one with ``time.perf_counter`` after ``warmup`` calls (CUDA is synchronised around each call).
* ``throughput_ips_b32``: eval, ``no_grad``, batch 32, images/s over ``iters`` calls after ``warmup``.

All timings are eager PyTorch, fp32, with ``channels_last`` on CPU, at the recorded ``threads``
(``torch.get_num_threads()``). MB = 10**6 bytes throughout. Timings on a shared machine vary; quote the
``cpu``, ``threads`` and ``torch_version`` with them.
"""

from __future__ import annotations

import copy
import os
import platform
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import save_model
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from medlite.errors import MedliteError
from medlite.metrics.profile_worker import make_batch, sync, train_step
from medlite.metrics.profile_worker import measure_memory as _measure_memory
from medlite.models.factory import create_model

_MB = 1e6


def count_parameters(model: nn.Module) -> int:
    """Number of elements of all parameters of ``model`` (trainable and frozen)."""
    return sum(p.numel() for p in model.parameters())


def _device_of(model: nn.Module) -> torch.device:
    return next((p.device for p in model.parameters()), torch.device("cpu"))


def _fmt(channels_last: bool) -> torch.memory_format:
    return torch.channels_last if channels_last else torch.preserve_format


def _count(model: nn.Module, img_size: int, in_chans: int) -> tuple[int, int]:
    """(MACs, output width) of one eval forward at batch 1; the model's train/eval mode is restored."""
    was_training = model.training
    model.eval()
    x = torch.randn(1, in_chans, img_size, img_size, device=_device_of(model))
    try:
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            out = model(x)
    finally:
        model.train(was_training)
    return int(counter.get_total_flops()) // 2, int(out.shape[1])


def count_macs(model: nn.Module, img_size: int, in_chans: int = 1) -> int:
    """Multiply-accumulates of one eval forward at batch 1 on ``(1, in_chans, img_size, img_size)``.

    ``FlopCounterMode`` counts FLOPs = 2 x MACs for conv / linear / matmul / attention; the result is halved.
    The model's train/eval mode is restored afterwards.
    """
    return _count(model, img_size, in_chans)[0]


def cpu_name() -> str:
    """The CPU model name from /proc/cpuinfo (Linux), else what ``platform`` reports."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _weights_mb(model: nn.Module, weights_path: Path | None) -> float:
    if weights_path is not None:
        if not Path(weights_path).is_file():
            raise MedliteError(f"weights_path {weights_path}: file not found")
        return os.path.getsize(weights_path) / _MB
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "weights.safetensors"
        # save_model (a wrapper over save_file) also handles tied / shared tensors.
        save_model(model, str(path))
        return path.stat().st_size / _MB


def _timed(fn: Any, device: torch.device, warmup: int, n: int) -> list[float]:
    """Wall-clock seconds of ``n`` calls of ``fn`` after ``warmup`` untimed calls."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(n):
        sync(device)
        start = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - start)
    return times


def profile_model(
    model_or_name: nn.Module | str,
    *,
    img_size: int = 224,
    batch_size: int = 32,
    in_chans: int = 1,
    num_classes: int = 6,
    device: str = "cpu",
    threads: int | None = None,
    measure_memory: bool = True,
    warmup: int = 3,
    iters: int = 20,
    weights_path: Path | None = None,
    on_step: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Measure a model's efficiency with the protocol in the module docstring.

    Args:
        model_or_name: a registered name (built with ``num_classes`` / ``in_chans``) or a module taking
            ``(B, in_chans, img_size, img_size)`` float32 input; the module itself is never modified.
        num_classes: logits of a model built by name; for a module, its output width is used instead.
        img_size: square input side in pixels.
        batch_size: training batch for memory and training throughput.
        device: ``"cpu"``, ``"cuda"`` or ``"cuda:N"``.
        threads: intra-op CPU threads for the measurement (restored afterwards); ``None`` keeps the current.
        measure_memory: skip the peak-memory measurements (they cost two subprocesses) when False.
        warmup: untimed calls before every timing loop.
        iters: timed calls per loop (latency uses at least 20).
        weights_path: the model's ``.safetensors`` file, whose size is reported as ``weights_mb``.
        on_step: called with a short line before each measurement (they take seconds to a minute each).

    Returns:
        A JSON-serialisable dict; keys and units are listed in the module docstring.
    """
    for arg, value, low in (
        ("img_size", img_size, 8),
        ("batch_size", batch_size, 1),
        ("iters", iters, 1),
        ("warmup", warmup, 0),
        ("threads", 1 if threads is None else threads, 1),
    ):
        if value < low:
            raise MedliteError(f"profile: {arg} must be >= {low}, got {value}")
    try:
        dev = torch.device(device)
    except RuntimeError as err:
        raise MedliteError(f"profile: device {device!r} is not a torch device") from err
    if dev.type not in ("cpu", "cuda") or (dev.type == "cuda" and not torch.cuda.is_available()):
        raise MedliteError(f"profile: device {device!r} is not available (use 'cpu' or an available 'cuda')")
    if isinstance(model_or_name, str):
        model = create_model(model_or_name, num_classes=num_classes, in_chans=in_chans)
    else:
        model = model_or_name
    cfg = getattr(model, "cfg", None)
    name = model_or_name if isinstance(model_or_name, str) else getattr(cfg, "name", type(model).__name__)
    try:
        macs, width = _count(model, img_size, in_chans)
    except RuntimeError as err:
        shape = f"(1, {in_chans}, {img_size}, {img_size})"
        raise MedliteError(f"profile: {name} rejects input {shape} (check in_chans/img_size): {err}") from err
    # A module's own head decides the class count (used when the memory worker rebuilds it by name).
    num_classes = num_classes if isinstance(model_or_name, str) else width

    old_threads = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        channels_last = dev.type == "cpu"
        result: dict[str, Any] = {
            "model": name,
            "img_size": img_size,
            "batch_size": batch_size,
            "in_chans": in_chans,
            "num_classes": num_classes,
            "params": count_parameters(model),
            "macs": macs,
            "flops": 2 * macs,
            "weights_mb": _weights_mb(model, weights_path),
        }
        step = on_step or (lambda text: None)
        # Memory first, on CUDA, so the timing copy below is not part of the device's allocation.
        if measure_memory:
            step(f"{name}: peak training and inference memory (batch {batch_size}, {img_size} px, two subprocesses)")
            result.update(
                _measure_memory(
                    name,
                    model,
                    batch_size=batch_size,
                    img_size=img_size,
                    in_chans=in_chans,
                    num_classes=num_classes,
                    threads=torch.get_num_threads(),
                    channels_last=channels_last,
                    device=dev,
                )
            )
        else:
            result.update(
                peak_train_mem_mb=None,
                peak_train_rss_mb=None,
                peak_infer_mem_mb=None,
                peak_infer_rss_mb=None,
                memory_method="not measured",
            )
        work = copy.deepcopy(model).to(dev, memory_format=_fmt(channels_last))

        x_train = make_batch(batch_size, in_chans, img_size, dev, channels_last)
        optimizer = torch.optim.AdamW(work.parameters())
        work.train()
        step(f"{name}: training throughput ({warmup} + {iters} steps of batch {batch_size})")
        t = _timed(lambda: train_step(work, optimizer, x_train), dev, warmup, iters)
        result["train_throughput_ips"] = batch_size * iters / sum(t)

        work.eval()
        step(f"{name}: latency (batch 1) and inference throughput (batch 32)")
        with torch.no_grad():
            x1 = make_batch(1, in_chans, img_size, dev, channels_last)
            lat = np.asarray(_timed(lambda: work(x1), dev, warmup, max(iters, 20))) * 1e3
            x32 = make_batch(32, in_chans, img_size, dev, channels_last)
            t32 = _timed(lambda: work(x32), dev, warmup, iters)
        result.update(
            latency_ms_p50=float(np.percentile(lat, 50)),
            latency_ms_p90=float(np.percentile(lat, 90)),
            throughput_ips_b32=32 * iters / sum(t32),
            device=str(dev),
            threads=torch.get_num_threads(),
            torch_version=torch.__version__,
            cpu=cpu_name() if dev.type == "cpu" else torch.cuda.get_device_name(dev),
            channels_last=channels_last,
        )
    finally:
        torch.set_num_threads(old_threads)
    return result
