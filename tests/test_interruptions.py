"""The command line under real interruptions, as a user meets them: kill -9 and Ctrl-C (SIGINT) of a
`medlite train` process, two runs building one cold cache at once, and non-ASCII paths throughout."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file

pytestmark = pytest.mark.slow

TRAIN = ["--model", "hybridnet_xr_50", "--img-size", "32", "--batch-size", "8", "--deterministic", "--seed", "1",
         "--patience", "0"]


def _medlite(*args: object, env: dict[str, str]) -> subprocess.Popen:
    # The installed console script, as a user runs it (it sits beside the interpreter in a venv).
    # SIGINT back to its default: a suite started in the background (nohup ... &) hands its children an ignored
    # SIGINT, and Python then never turns Ctrl-C into KeyboardInterrupt.
    return subprocess.Popen([str(Path(sys.executable).with_name("medlite")), *map(str, args)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))


def _finish(proc: subprocess.Popen, timeout: float = 300) -> tuple[int, str]:
    out, err = proc.communicate(timeout=timeout)
    return proc.returncode, out + err


@pytest.fixture(scope="module")
def setting(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, str]]:
    root = tmp_path_factory.mktemp("unterbrochen")
    env = {**os.environ, "MEDLITE_CACHE": str(root / "cache ü"), "PYTHONWARNINGS": "ignore"}
    data = root / "röntgen bilder ü"
    code, output = _finish(_medlite("data", "synth", data, "--classes", "pediatric3", "--per-class", "24",
                                    "--size", "32", env=env))
    assert code == 0, output
    return data, env


def _wait_for(path: Path, proc: subprocess.Popen, timeout: float = 240) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert proc.poll() is None, _finish(proc)[1]
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.05)


def test_kill_9_then_resume_is_bit_identical_to_an_uninterrupted_run(setting, tmp_path):
    data, env = setting
    full = tmp_path / "ganz"
    code, output = _finish(_medlite("train", "--data", data, "--out", full, "--epochs", "6", *TRAIN, env=env))
    assert code == 0, output
    cut = tmp_path / "abgebrochen é"
    proc = _medlite("train", "--data", data, "--out", cut, "--epochs", "6", *TRAIN, env=env)
    _wait_for(cut / "last.ckpt", proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (cut / "model.safetensors").exists(), "the run finished before the kill; make epochs longer"
    code, output = _finish(_medlite("train", "--out", cut, "--resume", env=env))
    assert code == 0, output
    a, b = load_file(str(full / "model.safetensors")), load_file(str(cut / "model.safetensors"))
    assert a.keys() == b.keys()
    for key in a:
        np.testing.assert_array_equal(a[key], b[key], err_msg=key)


def test_ctrl_c_exits_130_with_the_resume_hint(setting, tmp_path):
    data, env = setting
    out = tmp_path / "strg-c"
    proc = _medlite("train", "--data", data, "--out", out, "--epochs", "30", *TRAIN, env=env)
    _wait_for(out / "last.ckpt", proc)
    proc.send_signal(signal.SIGINT)
    code, output = _finish(proc)
    assert code == 130, output
    assert f"continue with: medlite train --out {out} --resume" in " ".join(output.split())
    assert "Traceback" not in output


def test_two_runs_building_one_cold_cache_at_once(setting, tmp_path):
    data, env = setting
    env = {**env, "MEDLITE_CACHE": str(tmp_path / "kalt")}
    procs = [_medlite("train", "--data", data, "--out", tmp_path / f"lauf {i}", "--epochs", "1", *TRAIN, env=env)
             for i in range(2)]
    results = [_finish(p) for p in procs]
    assert [code for code, _ in results] == [0, 0], results
    caches = sorted(p.name for p in (tmp_path / "kalt").iterdir() if not p.name.startswith("."))
    assert len([c for c in caches if c.endswith(".u8") and not c.endswith(".mask.u8")]) == 1, caches
    first, second = (load_file(str(tmp_path / f"lauf {i}" / "model.safetensors")) for i in range(2))
    for key in first:
        np.testing.assert_array_equal(first[key], second[key], err_msg=key)
