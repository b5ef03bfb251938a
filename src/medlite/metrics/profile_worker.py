"""Peak-memory measurement of one training step or one inference pass, for :mod:`medlite.metrics.profile`.

Three back-ends, chosen by :func:`medlite.metrics.profile.profile_model`:

* **CPU, fresh subprocess** (``python -m medlite.metrics.profile_worker '<json>'``): the model is rebuilt
  by its registered name and moved to ``channels_last`` if asked; one training step at batch 2 and one
  inference pass warm it up (so one-time library loading is not charged). Then, for inference (batch 1)
  and afterwards for one training step (batch ``batch_size``, fresh AdamW): the input (and optimiser) is
  allocated, freed heap pages are returned to the OS (glibc ``malloc_trim``), the process's peak-RSS
  high-water mark is reset (Linux ``/proc/self/clear_refs``) and read as the *baseline*, the step runs and
  the mark is read again. A fresh process is used so that memory the caller freed earlier, which the
  allocator keeps and re-uses without the RSS growing, cannot hide the cost. The mark is ``VmHWM`` from
  ``/proc/self/status``, the counter behind ``getrusage(RUSAGE_SELF).ru_maxrss``: ``ru_maxrss`` itself also
  keeps the peak latched whenever a thread exits, which the reset cannot clear, so it can hide a step.
* **CUDA, in process**: ``torch.cuda.max_memory_allocated`` after ``reset_peak_memory_stats``.
* **In-process tensor accounting** (:class:`LiveTensorBytes`), used when the model cannot be rebuilt in a
  subprocess: it sums the bytes of every storage an aten op creates while it is alive. It misses allocator
  slack and backend scratch buffers, so it is a lower bound on the RSS figure.

The worker prints one JSON object on stdout; everything is in MB = 10**6 bytes.
"""

from __future__ import annotations

import contextlib
import copy
import ctypes
import gc
import importlib.util
import json
import os
import subprocess
import sys
import weakref
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from medlite.models.factory import create_model
from medlite.models.registry import is_registered, model_builder

_MB = 1e6


def make_batch(
    batch_size: int, in_chans: int, img_size: int, device: torch.device | str, channels_last: bool
) -> torch.Tensor:
    """Standard-normal input of shape ``(batch_size, in_chans, img_size, img_size)``, float32."""
    x = torch.randn(batch_size, in_chans, img_size, img_size, device=device)
    return x.contiguous(memory_format=torch.channels_last) if channels_last else x


def train_step(model: nn.Module, optimizer: torch.optim.Optimizer, x: torch.Tensor) -> None:
    """One forward, loss, backward and optimiser step on random targets.

    Cross-entropy for multi-class logits ``(B, C>1)``; BCE-with-logits for a single logit ``(B, 1)``.
    """
    out = model(x)
    if out.shape[1] == 1:
        loss = F.binary_cross_entropy_with_logits(out, torch.zeros_like(out))
    else:
        target = torch.randint(0, out.shape[1], (out.shape[0],), device=out.device)
        loss = F.cross_entropy(out, target)
    loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)


class LiveTensorBytes(TorchDispatchMode):
    """Tracks the bytes of live tensor storages created under the mode; ``peak`` is the high-water mark.

    Storages that existed before entering the mode (weights, the input) are not counted, so ``peak`` is the
    step's own peak above that baseline. Views share their base's storage and are counted once.
    """

    def __init__(self) -> None:
        super().__init__()
        self.current = 0
        self.peak = 0
        self._live: set[int] = set()

    def _free(self, key: int, nbytes: int) -> None:
        self._live.discard(key)
        self.current -= nbytes

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        out = func(*args, **(kwargs or {}))
        for t in tree_flatten(out)[0]:
            if not isinstance(t, torch.Tensor):
                continue
            storage = t.untyped_storage()
            key = id(storage)
            if key in self._live:
                continue
            self._live.add(key)
            self.current += storage.nbytes()
            self.peak = max(self.peak, self.current)
            # The finaliser runs when the storage is released, so `current` follows frees as they happen.
            weakref.finalize(storage, self._free, key, storage.nbytes())
        return out


def sync(device: torch.device) -> None:
    """Wait for queued CUDA work so wall-clock and memory readings include it (no-op on CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure_inprocess(
    model: nn.Module,
    mode: str,
    batch_size: int,
    in_chans: int,
    img_size: int,
    device: torch.device,
    channels_last: bool,
) -> float:
    """Peak MB of one step (see :func:`measure_rss` for ``mode``) on a copy of ``model``, in this process.

    CUDA: ``max_memory_allocated`` minus what the process held before the copy was moved to the device, so
    it includes weights, input, gradients, AdamW state and activations. CPU: :class:`LiveTensorBytes` peak,
    which excludes the weights and input that exist before the step.
    """
    cuda = device.type == "cuda"
    base = 0
    if cuda:
        sync(device)
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
    fmt = torch.channels_last if channels_last else torch.preserve_format
    model = copy.deepcopy(model).to(device, memory_format=fmt)
    x = make_batch(batch_size, in_chans, img_size, device, channels_last)
    optimizer = torch.optim.AdamW(model.parameters()) if mode == "train" else None
    model.train(mode == "train")
    tracker = LiveTensorBytes() if not cuda else contextlib.nullcontext()
    with tracker, torch.set_grad_enabled(optimizer is not None):
        if optimizer is not None:
            train_step(model, optimizer, x)
        else:
            model(x)
    if isinstance(tracker, LiveTensorBytes):
        return tracker.peak / _MB
    sync(device)
    return (torch.cuda.max_memory_allocated(device) - base) / _MB


def _status_mb(field: str) -> float:
    """``VmHWM`` (peak RSS) or ``VmRSS`` (current RSS) of this process from ``/proc/self/status``, in MB."""
    with open("/proc/self/status") as f:
        line = next(line for line in f if line.startswith(field + ":"))
    return int(line.split()[1]) * 1024 / _MB  # the kernel reports kB = KiB


def _reset_rss_hwm() -> bool:
    """Reset the peak-RSS high-water mark to the current RSS (Linux >= 4.0); False where unsupported."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _trim_heap() -> None:
    """Give freed heap pages back to the OS (glibc), so a step cannot hide inside memory freed earlier."""
    gc.collect()
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)


def _peak_above_baseline(step: Callable[[], Any]) -> dict[str, Any]:
    _trim_heap()
    hwm_reset = _reset_rss_hwm()
    # Without a reset the high-water mark may still hold an earlier peak, so the current RSS is the baseline.
    baseline = _status_mb("VmHWM" if hwm_reset else "VmRSS")
    step()
    peak = _status_mb("VmHWM")
    return {"baseline_rss_mb": baseline, "peak_rss_mb": peak, "peak_mb": max(peak - baseline, 0.0),
            "hwm_reset": hwm_reset}  # fmt: skip


def measure_rss(
    name: str,
    *,
    img_size: int,
    batch_size: int,
    in_chans: int,
    num_classes: int,
    threads: int,
    channels_last: bool,
    module_file: str | None = None,
    module_name: str | None = None,
) -> dict[str, Any]:
    """Peak RSS of inference and of a training step of model ``name``; run it in a fresh process.

    Inference (eval, ``no_grad``, batch 1) is measured first, then one training step (forward, loss,
    backward, AdamW step at ``batch_size``); before each, the heap is trimmed and the high-water mark reset
    after the model and that step's input (and optimiser) exist.

    Args:
        name: registered model name.
        module_file: file of a user module that registers ``name`` outside medlite; loaded first.
        module_name: the name that module had in the caller.

    Returns:
        ``{"infer": r, "train": r, "params": int}`` where each ``r`` holds ``baseline_rss_mb``,
        ``peak_rss_mb`` (absolute), ``peak_mb`` (their difference) and ``hwm_reset``.
    """
    torch.set_num_threads(threads)
    if module_file:
        spec = importlib.util.spec_from_file_location(module_name or "_medlite_user_models", module_file)
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module
        spec.loader.exec_module(module)
    model = create_model(name, num_classes=num_classes, in_chans=in_chans)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    # Warm-up at a small batch first, so one-time costs (library code paged in, kernel set-up) are not
    # charged to the measured steps; its optimiser and gradients are dropped again.
    train_step(
        model.train(),
        torch.optim.AdamW(model.parameters()),
        make_batch(2, in_chans, img_size, "cpu", channels_last),
    )
    model.zero_grad(set_to_none=True)
    model.eval()
    x = make_batch(1, in_chans, img_size, "cpu", channels_last)
    with torch.no_grad():
        model(x)
        infer = _peak_above_baseline(lambda: model(x))
    del x
    model.train()
    x = make_batch(batch_size, in_chans, img_size, "cpu", channels_last)
    optimizer = torch.optim.AdamW(model.parameters())
    train = _peak_above_baseline(lambda: train_step(model, optimizer, x))
    return {"infer": infer, "train": train, "params": sum(p.numel() for p in model.parameters())}


def _subprocess_rss(name: str, model: nn.Module, batch_size: int, **kw: Any) -> dict[str, Any] | None:
    """Run :func:`measure_rss` in a fresh interpreter; ``None`` if it cannot rebuild the model."""
    if not sys.platform.startswith("linux"):
        return None  # the RSS high-water mark is read from /proc
    fn = model_builder(name) if is_registered(name) else None
    module_file = getattr(sys.modules.get(getattr(fn, "__module__", "")), "__file__", None)
    if fn is None or fn.__module__ == "__main__" or module_file is None:
        return None
    args: dict[str, Any] = {"name": name, "batch_size": batch_size, **kw}
    if not fn.__module__.startswith("medlite."):
        # A model registered by user code: the worker loads the same file so the name exists there too.
        args.update(module_file=module_file, module_name=fn.__module__)
    env = dict(os.environ)
    src = str(Path(__file__).resolve().parents[2])  # the folder holding the medlite package
    env["PYTHONPATH"] = os.pathsep.join([src, *sys.path, env.get("PYTHONPATH", "")])
    cmd = [sys.executable, "-m", "medlite.metrics.profile_worker", json.dumps(args)]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"profile worker failed for {name!r}:\n{proc.stderr[-2000:]}")
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    # A module built with other options than the registered defaults is not the one measured.
    return result if result["params"] == sum(p.numel() for p in model.parameters()) else None


def measure_memory(
    name: str,
    model: nn.Module,
    *,
    batch_size: int,
    img_size: int,
    in_chans: int,
    num_classes: int,
    threads: int,
    channels_last: bool,
    device: torch.device,
) -> dict[str, Any]:
    """Peak memory of a train step (at ``batch_size``) and of inference (batch 1); see the module docstring.

    Returns:
        ``peak_train_mem_mb``, ``peak_train_rss_mb``, ``peak_infer_mem_mb``, ``peak_infer_rss_mb`` (MB; the
        RSS keys are ``None`` unless the subprocess protocol ran) and ``memory_method``.
    """
    kw = dict(img_size=img_size, in_chans=in_chans, num_classes=num_classes, threads=threads)
    res = (
        _subprocess_rss(name, model, batch_size, channels_last=channels_last, **kw)
        if device.type == "cpu"
        else None
    )
    out: dict[str, Any] = {}
    if res is not None:
        for mode in ("train", "infer"):
            out[f"peak_{mode}_mem_mb"], out[f"peak_{mode}_rss_mb"] = (
                res[mode]["peak_mb"],
                res[mode]["peak_rss_mb"],
            )
        reset = (
            "" if res["train"]["hwm_reset"] else "; high-water mark not resettable, baseline = current RSS"
        )
        out["memory_method"] = f"cpu: fresh-subprocess peak RSS (VmHWM) minus RSS after model+input{reset}"
        return out
    for mode, batch in (("train", batch_size), ("infer", 1)):
        # On CUDA max_memory_allocated is exact in process; on CPU this is the documented fallback.
        out[f"peak_{mode}_mem_mb"] = measure_inprocess(
            model, mode, batch, in_chans, img_size, device, channels_last
        )
        out[f"peak_{mode}_rss_mb"] = None
    out["memory_method"] = (
        "cuda: max_memory_allocated minus what the process held before (includes weights+input)"
        if device.type == "cuda"
        else "cpu: in-process live-tensor accounting (model not rebuildable by name; RSS lower bound)"
    )
    return out


def main(argv: list[str] | None = None) -> None:
    """Entry point: ``argv[0]`` is a JSON object of :func:`measure_rss` keyword arguments."""
    kwargs = json.loads((argv if argv is not None else sys.argv[1:])[0])
    name = kwargs.pop("name")
    sys.stdout.write(json.dumps(measure_rss(name, **kwargs)) + "\n")


if __name__ == "__main__":
    main()
