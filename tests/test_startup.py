"""The CLI starts without torch or Lightning where a command does not need them (issue 17 item 4): ``--help``,
``data inspect`` and ``predict`` on an exported ``.onnx`` run in a fresh interpreter, which then reports the heavy
modules it imported."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

HEAVY = ("torch", "lightning", "torchmetrics")
FIXTURE = Path(__file__).parent / "fixtures" / "run_v0_1"


def _heavy_imports(*argv: str) -> tuple[int, list[str]]:
    code = ("import sys, json\nfrom medlite.cli import main\nsys.argv = ['medlite', *json.loads(sys.argv[1])]\n"
            "try:\n    main()\nexcept SystemExit as err:\n    code = err.code or 0\nelse:\n    code = 0\n"
            f"print(json.dumps([code, [m for m in {HEAVY!r} if m in sys.modules]]))")
    proc = subprocess.run([sys.executable, "-c", code, json.dumps(list(argv))], capture_output=True, text=True,
                          check=True)
    code_, heavy = json.loads(proc.stdout.strip().splitlines()[-1])
    return code_, heavy


@pytest.mark.parametrize("argv", [("--help",), ("train", "--help"), ("predict", "--help"), ("serve", "--help")])
def test_help_imports_no_torch(argv):
    assert _heavy_imports(*argv) == (0, [])


def test_data_inspect_imports_no_torch(tmp_path):
    from medlite.data.synthetic import write_phantom_dataset

    folder = write_phantom_dataset(tmp_path / "ph", classes="binary", per_class=3, size=64, seed=0)
    assert _heavy_imports("data", "inspect", str(folder)) == (0, [])


def test_predict_on_an_onnx_file_through_the_cli_imports_no_torch(tmp_path):
    import cv2
    import numpy as np

    import medlite

    run = shutil.copytree(FIXTURE, tmp_path / "run")
    medlite.export(run)
    image = tmp_path / "scan.png"
    cv2.imwrite(str(image), (np.random.default_rng(0).random((40, 40)) * 255).astype(np.uint8))
    out = tmp_path / "p.csv"
    assert _heavy_imports("predict", str(run / "export" / "model.onnx"), str(image), "--out", str(out)) == (0, [])
    assert out.read_text().count("\n") == 2
