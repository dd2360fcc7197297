"""The package as a user installs it: the wheel built from this tree, installed into a fresh venv
(dependencies resolved from its own metadata), used for one export from a folder where the source
tree is not importable. A test, so that `make test`'s two workers pack its minutes of pip with the
rest; `make test-wheel` runs it alone.
"""

import subprocess
import sys
from pathlib import Path

import pytest

from conftest import TESTS

REPO = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow


def _run(*cmd, cwd=None, timeout=1800):
    r = subprocess.run([str(c) for c in cmd], cwd=cwd, capture_output=True, text=True, timeout=timeout)
    assert r.returncode == 0, f"{' '.join(map(str, cmd))} exited {r.returncode}:\n{r.stderr[-3000:]}"
    return r


def test_the_wheel_installs_into_a_fresh_venv_and_exports(tmp_path):
    wheels, venv, run = tmp_path / "wheel", tmp_path / "venv", tmp_path / "run"
    _run(sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", wheels, REPO)
    (wheel,) = wheels.glob("mobilellm_export-*.whl")
    # The interpreter the project's venv was made from: a bare Python 3.11, not the project's venv.
    base = Path(sys.base_prefix) / "bin" / f"python{sys.version_info.major}.{sys.version_info.minor}"
    _run(base, "-m", "venv", venv)
    pip, exe = venv / "bin" / "pip", venv / "bin" / "mobilellm-export"
    _run(pip, "install", "-q", "torch==2.13.0")  # the CPU wheel on this machine's disk (an open range pulls CUDA)
    _run(pip, "install", "-q", wheel)
    run.mkdir()
    assert _run(exe, "--version", cwd=run).stdout.strip()
    where = _run(venv / "bin" / "python", "-c", "import mobilellm_export; print(mobilellm_export.__file__)", cwd=run)
    assert where.stdout.startswith(str(venv)), f"imported from {where.stdout.strip()}, not the installed wheel"
    # tiny-llama (512-id vocabulary): the wheel's data (recipes, presets, calibration text, schemas) is
    # what this checks, not an architecture (tiny-r1, with its 128K-row head, exported in 73 s, this in 39 s)
    _run(exe, "export", "--model", "tiny-llama", "--tokenizer", TESTS / "data" / "tiny-tokenizer", "--quant", "4bit",
         "--max-context", "128", "--max-seq-len", "16", "--eval-tokens", "256", "--no-latency", "--out", "out",
         cwd=run)
    assert (run / "out" / "tiny-llama-android-4bit" / "model.pte").is_file()
