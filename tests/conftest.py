"""Shared fixtures: a tiny-profile corpus + features built once per test session."""
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_module(module: str, *args, cwd=ROOT, check=True) -> subprocess.CompletedProcess:
    """Runs `python -m module args` like the recipe does; returns the completed process."""
    proc = subprocess.run([sys.executable, "-m", module, *map(str, args)], cwd=cwd,
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


# the student variants the pipeline test trains and decodes (the others differ only in params that
# test_student.py covers; all of them would double the suite's time)
TINY_VARIANTS = ("labeled_only", "interleaved", "segregated", "oracle", "gtc_w2", "dense")


@pytest.fixture(scope="session")
def tiny_exp(tiny_data, tmp_path_factory):
    """Stages 2-8 of the tiny profile on the tiny corpus (GMM, targets, teacher, labels,
    TINY_VARIANTS of the students, graph, decodes, tables): (data, exp, results, stdout)."""
    data, _ = tiny_data
    root = tmp_path_factory.mktemp("tinyexp")
    exp, results = root / "exp", root / "results"
    proc = subprocess.run(["bash", "recipes/run.sh", "--skip-setup", "--profile", "tiny", "--stage", "2",
                           "--stop-stage", "8", "--variants", " ".join(TINY_VARIANTS),
                           "--data", str(data), "--exp", str(exp), "--results", str(results)],
                          cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return data, exp, results, proc.stdout + proc.stderr
