"""Shared fixtures: a tiny-profile corpus + features built once per test session."""
import os
import subprocess
import sys

import pytest
import yaml

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_module(module: str, *args, cwd=None, check=True) -> subprocess.CompletedProcess:
    """Runs `python -m module args` like the recipe does, in `cwd` (default: the current
    directory, the repository root unless a test moved into a workspace)."""
    proc = subprocess.run([sys.executable, "-m", module, *map(str, args)], cwd=cwd or os.getcwd(),
                          capture_output=True, text=True)
    if check and proc.returncode != 0:
        raise AssertionError(f"{module} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory):
    """Stages 0-1 of the tiny profile through recipes/run.sh, as a user would run them."""
    data = tmp_path_factory.mktemp("tiny") / "data"
    proc = subprocess.run(["bash", "recipes/run.sh", "--skip-setup", "--profile", "tiny",
                           "--stop-stage", "1", "--data", str(data)],
                          cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return data, proc.stdout


# the student variants of the tiny profile's DVC workspace (its `run_variants`: the others differ
# only in params that test_student.py covers; all of them would double the suite's time)
with open(os.path.join(ROOT, "recipes", "conf", "tiny.yaml")) as _f:
    TINY_VARIANTS = tuple(yaml.safe_load(_f)["run_variants"])


@pytest.fixture(scope="session")
def tiny_exp(tmp_path_factory):
    """The whole tiny profile as a user regenerates it: `dvc repro` in the profile's DVC
    workspace (recipes/dvc_workspace.sh): corpus, features, GMM, targets, teacher, labels,
    TINY_VARIANTS of the students, graph, decodes, tables: (data, exp, results, output)."""
    ws = tmp_path_factory.mktemp("tinydvc") / "ws"
    subprocess.run(["bash", "recipes/dvc_workspace.sh", "tiny", str(ws)], cwd=ROOT, check=True,
                   capture_output=True)
    proc = subprocess.run([sys.executable, "-m", "dvc", "repro"], cwd=ws, capture_output=True,
                          text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return ws / "data", ws / "exp", ws / "results", proc.stdout + proc.stderr


@pytest.fixture
def in_tiny_ws(tiny_exp, monkeypatch):
    """Runs the test from the tiny workspace: its scp files hold paths relative to it, as a
    Kaldi recipe's do (`pytestmark = pytest.mark.usefixtures("in_tiny_ws")`)."""
    ws = tiny_exp[1].parent
    monkeypatch.chdir(ws)
    return ws
