"""`dvc repro` runs the same stages as run.sh, skips what is up to date and reruns what changed."""
import os
import re
import shutil
import subprocess
import sys

import kaldiio
import numpy as np
import pytest

from conftest import ROOT
from millionhours import datadir

VENV_BIN = os.path.dirname(sys.executable)


def sh(cmd, cwd):
    env = dict(os.environ, PATH=f"{VENV_BIN}:{os.environ['PATH']}", VIRTUAL_ENV=os.path.dirname(VENV_BIN),
               DVC_NO_ANALYTICS="1")
    proc = subprocess.run(cmd, cwd=cwd, shell=True, capture_output=True, text=True, env=env)
    assert proc.returncode == 0, f"{cmd}\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout + proc.stderr


def set_param(repo, pattern, value):
    path = os.path.join(repo, "params.yaml")
    text = open(path).read()
    new = re.sub(pattern, value, text, count=1, flags=re.M)
    assert new != text, pattern
    open(path, "w").write(new)


@pytest.fixture(scope="module")
def repo(tmp_path_factory):
    """A fresh git copy of this working tree (tracked + untracked, not ignored), on the tiny profile."""
    dst = tmp_path_factory.mktemp("dvcrepo") / "repo"
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=ROOT,
                           capture_output=True, text=True, check=True).stdout.split()
    for f in files:
        if os.path.isfile(os.path.join(ROOT, f)):
            os.makedirs(os.path.dirname(os.path.join(dst, f)), exist_ok=True)
            shutil.copy2(os.path.join(ROOT, f), os.path.join(dst, f))
    set_param(dst, r"^profile: default", "profile: tiny")
    sh("git init -q && git add -A && git -c user.email=t@t -c user.name=t commit -qm init", dst)
    if not os.path.isdir(os.path.join(dst, ".dvc")):
        sh("dvc init -q", dst)
    return str(dst)


def test_repro_runs_skips_and_reruns_dependents(repo, tiny_data, monkeypatch):
    monkeypatch.chdir(repo)          # scp files hold paths relative to the recipe root, as in Kaldi
    out = sh("dvc repro features", repo)
    assert "Running stage 'corpus'" in out and "Running stage 'features'" in out

    # same outputs as recipes/run.sh with the same profile
    data, _ = tiny_data
    for s in ("train_labeled", "test_noisy"):
        a = dict(kaldiio.load_scp(os.path.join("data", "fbank", s, "feats.scp")))
        b = dict(kaldiio.load_scp(str(data / "fbank" / s / "feats.scp")))
        assert list(a) == list(b)
        for utt in a:
            np.testing.assert_array_equal(a[utt], b[utt])

    out = sh("dvc repro features", repo)
    assert "Running stage" not in out

    set_param(repo, r"^  num_bins: 64", "  num_bins: 40")            # a features param
    out = sh("dvc repro features", repo)
    assert "Running stage 'features'" in out and "Running stage 'corpus'" not in out
    assert kaldiio.load_mat(os.path.join(repo, "data", "fbank", "dev", "cmvn.mat")).shape == (2, 41)

    set_param(repo, r"^  train_corrupt_share: 0.4", "  train_corrupt_share: 0.5")   # a corpus param
    out = sh("dvc repro features", repo)
    assert "Running stage 'corpus'" in out and "Running stage 'features'" in out
    corr = datadir.read_table(os.path.join(repo, "data", "corpus", "train_labeled", "utt2corruption"))
    assert list(corr)


def test_exp_run_then_compare_shows_what_moved(repo, monkeypatch):
    """`dvc exp run -S` on a committed baseline, then the compare command between the two."""
    monkeypatch.chdir(repo)
    sh("dvc repro gmm", repo)
    sh("git add -A && git -c user.email=t@t -c user.name=t commit -qm gmm", repo)
    sh("dvc exp run -q -n boost1 -S gmm.mono.boost_silence=1.0 gmm", repo)
    out = sh(f"{VENV_BIN}/python -m millionhours.bin.compare HEAD boost1 --all --only alignment", repo)
    lines = out.splitlines()
    assert lines[0].split() == ["result", "metric", "HEAD", "boost1", "B", "-", "A", "rel"]
    row = next(l.split() for l in lines if "align.boundaries.within_20ms" in l)
    assert row[0] == "alignment" and 0 < float(row[2]) <= 1 and 0 < float(row[3]) <= 1
    assert "metrics in both" in out
