"""bin/worker_steps: the length of N workers' averaged Adam direction against one process's."""
import os

import pytest
import torch

from millionhours.bin import worker_steps


def _ckpt(path, m, v, step=100.0):
    """A checkpoint whose Adam state gives u = m / sqrt(v) (bias corrections ~1 at t = 10^4)."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    state = {0: {"step": torch.tensor(step), "exp_avg": torch.tensor(m) * (1 - 0.9 ** step),
                 "exp_avg_sq": torch.tensor(v) * (1 - 0.999 ** step)}}
    torch.save({"optimizer": {"state": state}}, path)


def test_agreeing_workers_add_up_and_opposite_ones_cancel(tmp_path, capsys):
    _ckpt(str(tmp_path / "one/ckpt/last.pt"), [2.0, 0.0], [1.0, 1.0])
    run = tmp_path / "run"
    _ckpt(str(run / "ckpt/last.pt"), [1.0, 1.0], [1.0, 1.0])
    _ckpt(str(run / "rank1/ckpt/last.pt"), [1.0, -1.0], [1.0, 1.0])
    _ckpt(str(run / "rank2/ckpt/last.pt"), [1.0, 1.0], [1.0, 1.0])
    _ckpt(str(run / "rank10/ckpt/last.pt"), [1.0, -1.0], [1.0, 1.0])
    assert [p.split("/")[-3] for p in worker_steps.rank_checkpoints(str(run))] == \
        ["run", "rank1", "rank2", "rank10"]                     # rank order, not string order
    r = worker_steps.step_lengths(str(tmp_path / "one/ckpt/last.pt"),
                                  worker_steps.rank_checkpoints(str(run)))
    # each worker |(1, +-1)| = sqrt 2; their mean (1, 0): the second coordinate cancels
    assert r["workers"] == 4 and r["worker"] == pytest.approx(2 ** 0.5, rel=1e-5)
    assert r["mean_over_worker"] == pytest.approx(2 ** -0.5, rel=1e-5)
    assert r["mean_over_one_process"] == pytest.approx(0.5, rel=1e-5)
    assert r["noise_limit"] == 0.5
    worker_steps.main([str(tmp_path / "one/ckpt/last.pt"), str(run)])
    assert "4 workers" in capsys.readouterr().out


def test_a_missing_rank_checkpoint_is_one_line(tmp_path):
    _ckpt(str(tmp_path / "one/ckpt/last.pt"), [1.0], [1.0])
    with pytest.raises(SystemExit, match="run/ckpt/last.pt: no such checkpoint"):
        worker_steps.main([str(tmp_path / "one/ckpt/last.pt"), str(tmp_path / "run")])
