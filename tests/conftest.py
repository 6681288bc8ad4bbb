"""Shared fixtures: no network, a SYNTHETIC VOC tree, a script runner, one trained checkpoint.

Every test runs offline: tests/netguard/netguard.py makes any connection beyond 127.0.0.1
raise, in this process and (through its sitecustomize.py) in every script a test starts.
"""

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
GUARD = Path(__file__).resolve().parent / "netguard"
sys.path.insert(0, str(GUARD))
import netguard  # noqa: E402

netguard.install()

from dataset import make_fake_voc  # noqa: E402


@pytest.fixture(scope="session")
def torch_home(tmp_path_factory) -> Path:
    """An empty torch hub cache: no test can use weights someone downloaded earlier."""
    return tmp_path_factory.mktemp("torch_home")


@pytest.fixture(autouse=True)
def isolated_torch_home(torch_home, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(torch_home))


@pytest.fixture(scope="session")
def fake_voc(tmp_path_factory) -> Path:
    """Data root of a SYNTHETIC VOC tree: 8 images, 4 train and 4 val."""
    root = tmp_path_factory.mktemp("fake_voc")
    make_fake_voc(root, num_images=8, seed=0)
    return root


def run_script(script: str, *args, cwd: Path | None = None, timeout: float = 300):
    """Run a repository script in a fresh interpreter, offline; returns CompletedProcess."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(GUARD), str(ROOT)]))
    return subprocess.run([sys.executable, str(ROOT / script), *map(str, args)], cwd=cwd or ROOT,
                           env=env, capture_output=True, text=True, timeout=timeout)


def load_script(name: str):
    """Import a root script by path (test.py would otherwise clash with Python's own `test`)."""
    spec = importlib.util.spec_from_file_location(f"script_{name}", ROOT / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


TINY_TRAIN = ("--no-pretrained-backbone", "--teacher-weights", "none", "--device", "cpu",
              "--batch-size", "2", "--crop-size", "64", "--num-workers", "0")


@pytest.fixture(scope="session")
def trained(fake_voc, tmp_path_factory) -> dict:
    """One tiny --kd none run of 2 epochs on the SYNTHETIC tree: its paths and its output."""
    work = tmp_path_factory.mktemp("trained")
    out, logs = work / "weights" / "student_none.pth", work / "outputs"
    proc = run_script("train.py", "--kd", "none", "--epochs", 2, "--limit-train", 4,
                      "--limit-val", 2, "--data-root", fake_voc, "--out", out, "--log-dir", logs,
                      *TINY_TRAIN)
    assert proc.returncode == 0, proc.stderr
    return {"out": out, "logs": logs, "work": work, "proc": proc}
