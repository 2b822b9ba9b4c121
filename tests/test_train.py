"""Stage 4: models, batch planning, the training loop, exact resume after SIGKILL, input checks."""
import os
import signal
import subprocess
import sys
import time

import kaldiio
import numpy as np
import pytest
import torch
import yaml
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

import fakedata
from conftest import ROOT
from millionhours import data, features, models, train
from millionhours.bin import train_am

S = 8          # senones of the synthetic task

TINY = {
    "threads": 1,
    "model": {"layers": 2, "cells": 32, "bidirectional": True},
    "data": {"chunk_frames": 40, "batch_frames": 320, "batch_size": 8, "num_workers": 0},
    "train": {"epochs": 3, "optimizer": "adam", "lr": 0.01, "schedule": "newbob",
              "warmup_steps": 5, "ckpt_every": 4},
}


# --------------------------------------------------------------------------- synthetic data


def write_set(root, name, n_utts, seed, protos, num_senones=S):
    """A feats data dir (+ cmvn.mat) and a stage-3-like targets dir for fake utterances."""
    return fakedata.write_set(root, name, n_utts, seed, protos, num_senones, f"u{seed}")[:2]


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    root = tmp_path_factory.mktemp("synth")
    protos = np.random.default_rng(7).standard_normal((S, 64)) * 1.0 + 5.0
    tr = write_set(root, "train", 32, 1, protos)
    dv = write_set(root, "dev", 12, 2, protos)
    return root, tr, dv


def write_params(path, role_params):
    path.mkdir(parents=True, exist_ok=True)
    (path / "recipes" / "conf").mkdir(parents=True, exist_ok=True)
    (path / "recipes" / "conf" / "default.yaml").write_text("{}\n")
    (path / "params.yaml").write_text(yaml.safe_dump({"seed": 11, "teacher": role_params}))
    return str(path / "params.yaml")


def train_args(params, synth, exp, results):
    _, (ftr, ttr), (fdv, tdv) = synth
    return ["--params", params, "--role", "teacher", "--results-dir", str(results),
            ftr, ttr, fdv, tdv, str(exp)]


# --------------------------------------------------------------------------- models


def test_paper_sizes():
    teacher = models.build_model({"layers": 5, "cells": 832, "bidirectional": True}, 3000)
    student = models.build_model({"layers": 5, "cells": 768, "bidirectional": False}, 3000)
    assert abs(teacher.param_count - 78.3e6) < 0.1e6
    assert abs(student.param_count - 24.2e6) < 0.1e6
    assert teacher.summary("teacher").startswith("teacher: BLSTM 5x832, 78.3M params")


@pytest.mark.parametrize("bi", [True, False])
def test_forward_shapes_and_padding(bi):
    torch.manual_seed(0)
    m = models.build_model({"layers": 2, "cells": 16, "bidirectional": bi}, 10).eval()
    x = torch.randn(3, 20, 192)
    lengths = torch.tensor([20, 12, 5])
    with torch.no_grad():
        out = m(x, lengths)
        alone = m(x[1:2, :12], lengths[1:2])
    assert out.shape == (3, 20, 10)
    # padding never leaks into valid frames, in either direction
    torch.testing.assert_close(out[1, :12], alone[0], rtol=1e-5, atol=1e-5)
    if bi:   # the per-direction reversal equals nn.LSTM on packed sequences
        packed = pack_padded_sequence(x, lengths, batch_first=True, enforce_sorted=False)
        with torch.no_grad():
            h, _ = pad_packed_sequence(m.lstm(packed)[0], batch_first=True, total_length=20)
            ref = m.output(h)
        mask = torch.arange(20)[None, :] < lengths[:, None]
        torch.testing.assert_close(out[mask], ref[mask], rtol=1e-5, atol=1e-5)


def test_input_ceps_keep_the_envelope_and_drop_fine_structure(tmp_path):
    """input_ceps: each 64-bin block of the LFR frame becomes its first N cepstra (a fixed DCT,
    not a parameter): a ripple of a higher quefrency (F0 harmonics) leaves the output unchanged,
    a change of the envelope does not; the setting survives save_final/load_final."""
    torch.manual_seed(0)
    m = models.build_model({"layers": 1, "cells": 8, "input_ceps": 13}, 10).eval()
    assert m.lstm.input_size == 39 and "dct" not in m.state_dict()
    x = torch.randn(2, 6, 192)
    basis = torch.from_numpy(features.dct_matrix(64, 64)).float()
    ripple = basis[30].repeat(3)            # quefrency 30 in every stacked frame
    envelope = basis[2].repeat(3)
    with torch.no_grad():
        y = m(x)
        torch.testing.assert_close(m(x + 3.0 * ripple), y, rtol=1e-5, atol=1e-5)
        assert (m(x + 3.0 * envelope) - y).abs().max() > 1e-3
    models.save_final(str(tmp_path / "m.pt"), m)
    back, _ = models.load_final(str(tmp_path / "m.pt"))
    assert back.cfg.input_ceps == 13
    with torch.no_grad():
        torch.testing.assert_close(back(x), y)
    with pytest.raises(ValueError, match="input_ceps 70"):
        models.build_model({"input_ceps": 70}, 10)


# --------------------------------------------------------------------------- data


def test_plan_deterministic_and_complete():
    rng = np.random.default_rng(0)
    lengths = {f"u{i}": int(n) for i, n in enumerate(rng.integers(1, 400, 300))}
    plan = lambda e: data.plan_batches(lengths, 5, e, chunk_frames=100, batch_frames=1000,
                                       batch_size=16)
    assert plan(0) == plan(0)
    assert plan(0) != plan(1)
    for batches in (plan(0), plan(1)):
        covered = {u: np.zeros(n, int) for u, n in lengths.items()}
        for b in batches:
            assert len(b) <= 16
            assert len(b) * max(e - s for _, s, e in b) <= 1000
            for u, s, e in b:
                assert e - s <= 100
                covered[u][s:e] += 1
        assert all((c == 1).all() for c in covered.values())


@pytest.mark.parametrize("shuffle", [True, False])
def test_uniform_plan_has_unpadded_batches(shuffle):
    """uniform + bucket_width 1: every batch holds pieces of one length (no padding: the GPU's
    fused BLSTM path) and every frame is still in exactly one batch."""
    rng = np.random.default_rng(1)
    lengths = {f"u{i}": int(n) for i, n in enumerate(rng.integers(1, 60, 400))}
    plan = data.plan_batches(lengths, 5, 0, chunk_frames=40 if shuffle else None,
                             batch_frames=300, batch_size=16, bucket_width=1, shuffle=shuffle,
                             uniform=True)
    covered = {u: np.zeros(n, int) for u, n in lengths.items()}
    for b in plan:
        assert len({e - s for _, s, e in b}) == 1
        assert len(b) <= 16 and len(b) * (b[0][2] - b[0][1]) <= 300
        for u, s, e in b:
            assert e - s == min(40, lengths[u]) or not shuffle     # fixed-width chunks
            skip = data.overlap_frames(s, lengths[u], 40) if shuffle else 0
            covered[u][s + skip:e] += 1                # frames in the loss: each exactly once
    assert all((c == 1).all() for c in covered.values())
    mixed = data.plan_batches(lengths, 5, 0, chunk_frames=40 if shuffle else None,
                              batch_frames=300, batch_size=16, bucket_width=1, shuffle=shuffle)
    assert any(len({e - s for _, s, e in b}) > 1 for b in mixed)     # the default pads


def test_batch_equals_direct_computation(synth):
    _, (ftr, ttr), _ = synth
    cmvn = data.load_cmvn(ftr)
    u = data.open_uttset(ftr, ttr, cmvn)
    ds = data.PlannedBatches(u, seed=3, batch_frames=320, batch_size=8, chunk_frames=40)
    src = data.BatchSource(ds, num_workers=1)
    feats = kaldiio.load_scp(os.path.join(ftr, "feats.scp"))
    targs = kaldiio.load_scp(os.path.join(ttr, "targets.scp"))
    got = list(src.batches(0))
    assert len(got) == ds.num_batches(0) and sum(b.num_frames for b in got) == u.num_lfr_frames
    for batch, pieces in zip(got[:3], ds.plan(0)[:3]):
        for row, (utt, s, e) in enumerate(pieces):
            x = features.lfr(features.apply_cmvn(feats[utt], cmvn))[s:e]
            assert batch.lengths[row] == e - s
            np.testing.assert_array_equal(batch.feats[row, :e - s].numpy(), x)
            np.testing.assert_array_equal(batch.targets[row, :e - s].numpy(), targs[utt][s:e])
            assert (batch.targets[row, e - s:] == data.IGNORE).all()
    # resuming at batch 2 yields the same batches as the full pass from there
    tail = list(src.batches(0, 2))
    assert [b.utts for b in tail] == [b.utts for b in got[2:]]


def test_window_targets_batches_and_losses(synth, tmp_path):
    _, (ftr, ttr), _ = synth
    cmvn = data.load_cmvn(ftr)
    kw = dict(seed=3, batch_frames=320, batch_size=8, chunk_frames=40)
    hard = data.PlannedBatches(data.open_uttset(ftr, ttr, cmvn), **kw)
    win = data.PlannedBatches(data.open_uttset(ftr, ttr, cmvn, window=True), **kw)
    h, w = hard[(0, 1)], win[(0, 1)]
    assert w.targets.shape == (*h.targets.shape, 3) and w.feats.equal(h.feats)
    assert w.targets[..., 1].equal(h.targets)                         # the centre column
    valid = h.targets != data.IGNORE
    assert (w.targets[~valid] == data.IGNORE).all()
    sub_ce = lambda lg, j: train.batch_loss(lg, data.Batch(h.feats, h.lengths, targets=torch.where(
        valid, w.targets[..., j], data.IGNORE)))[0]
    # one row per frame: the mean CE of the row's three labels; accuracy against the centre
    logits = torch.randn(*h.targets.shape, S)
    loss, correct = train.batch_loss(logits, w)
    assert torch.allclose(loss, sum(sub_ce(logits, j) for j in range(3)) / 3, rtol=1e-5)
    assert int(correct) == int(train.batch_loss(logits, h)[1])
    # a sub-frame model: sub-frame j learns label j
    logits4 = torch.randn(*h.targets.shape, 3, S)
    loss4, correct4 = train.batch_loss(logits4, w)
    assert torch.allclose(loss4, sum(sub_ce(logits4[:, :, j], j) for j in range(3)) / 3, rtol=1e-5)
    assert int(correct4) == int(train.batch_loss(logits4[:, :, 1], h)[1])
    with pytest.raises(ValueError, match="window_targets"):
        train.batch_loss(logits4, h)
    with pytest.raises(data.DataError, match="window_targets.scp: missing"):
        data.open_uttset(ftr, str(tmp_path), cmvn, window=True)


def test_subframe_teacher_trains_and_decodes_at_10ms(synth, tmp_path):
    p = dict(TINY, model=dict(TINY["model"], subframes=3),
             data=dict(TINY["data"], window_targets=True), train=dict(TINY["train"], epochs=2))
    train_am.main(train_args(write_params(tmp_path, p), synth, tmp_path / "exp", tmp_path / "r"))
    hist = yaml.safe_load(open(tmp_path / "r" / "teacher.json"))["history"]
    assert hist[-1]["dev_frame_acc"] > hist[0]["dev_frame_acc"] and hist[-1]["dev_frame_acc"] > 0.3
    model, _ = models.load_final(str(tmp_path / "exp" / "final.pt"))
    x = torch.randn(2, 7, 192)
    out = model.eval()(x, torch.tensor([7, 5]))
    assert out.shape == (2, 7, 3, S) and models.row_logits(out).equal(out[:, :, 1])
    from millionhours.decode import NnetScorer
    _, (ftr, ttr), _ = synth
    counts = tmp_path / "counts"
    counts.write_text(" [ " + " ".join(["5"] * S) + " ]\n")
    fb = {u: m for u, m in list(kaldiio.load_scp(os.path.join(ftr, "feats.scp")).items())[:2]}
    ll = NnetScorer(str(tmp_path / "exp" / "final.pt"), str(counts)).loglikes(fb)
    rows = NnetScorer(str(tmp_path / "exp" / "final.pt"), str(counts), frame_repeat=1).loglikes(fb)
    for u, m in fb.items():
        assert ll[u].shape == (len(m), S)                              # one row per 10 ms frame
        assert rows[u].shape == (features.num_lfr_frames(len(m)), S)   # centre rows
        centres = ll[u][1::3]                                           # the last row's centre
        np.testing.assert_allclose(centres, rows[u][:len(centres)], atol=1e-4)   # may be past T
        assert not np.allclose(ll[u][0], ll[u][1])                     # not a repeated row


# --------------------------------------------------------------------------- training


def test_training_learns(synth, tmp_path):
    torch.set_num_threads(1)
    params = write_params(tmp_path, TINY)
    train_am.main(train_args(params, synth, tmp_path / "exp", tmp_path / "results"))
    hist = yaml.safe_load(open(tmp_path / "results" / "teacher.json"))["history"]
    assert hist[-1]["dev_ce"] < hist[0]["dev_ce"] - 0.2
    assert hist[-1]["dev_frame_acc"] > hist[0]["dev_frame_acc"] + 0.05
    assert hist[-1]["dev_frame_acc"] > 0.5              # chance is ~1/8
    for f in ("teacher_metrics.tsv", "teacher_curve.png"):
        assert (tmp_path / "results" / f).stat().st_size > 0
    model, blob = models.load_final(str(tmp_path / "exp" / "final.pt"))
    assert blob["num_senones"] == S and blob["cmvn"].shape == (2, 65)
    assert "checkpoint step 4" in (tmp_path / "exp" / "log").read_text()


def test_average_last_epochs(synth, tmp_path):
    """average_last: 2 keeps the last two epochs' weights; final.pt holds their mean exactly when
    the mean's dev CE beat the best epoch's (else the best epoch's weights)."""
    p = dict(TINY, train=dict(TINY["train"], epochs=4, average_last=2))
    train_am.main(train_args(write_params(tmp_path, p), synth, tmp_path / "exp", tmp_path / "r"))
    ckpt = tmp_path / "exp" / "ckpt"
    assert sorted(f.name for f in ckpt.glob("epoch*.pt")) == ["epoch3.pt", "epoch4.pt"]
    summary = yaml.safe_load(open(tmp_path / "r" / "teacher.json"))
    avg, best_ce = summary["average"], min(r["dev_ce"] for r in summary["history"])
    assert avg["epochs"] == [3, 4] and avg["kept"] == (avg["dev_ce"] < best_ce)
    e3, e4 = (torch.load(ckpt / f"epoch{e}.pt") for e in (3, 4))
    model, _ = models.load_final(str(tmp_path / "exp" / "final.pt"))
    final = model.state_dict()
    k = "out.weight" if "out.weight" in final else next(iter(final))
    mean = (e3[k] + e4[k]) / 2
    assert torch.allclose(final[k], mean, atol=1e-6) == avg["kept"]
    if avg["kept"]:
        assert summary["dev_ce"] == avg["dev_ce"]


def _state(path):
    return torch.load(path, map_location="cpu", weights_only=False)


@pytest.mark.parametrize("eval_every", [0, 5])
def test_sigkill_resume_is_bit_identical(synth, tmp_path, eval_every):
    """Uninterrupted run vs one SIGKILLed twice mid-epoch and rerun: identical final weights
    (validating at epoch ends, or every 5 steps in the middle of epochs)."""
    p = dict(TINY, data=dict(TINY["data"], num_workers=1),
             train=dict(TINY["train"], eval_every=eval_every))
    params = write_params(tmp_path, p)
    ref = tmp_path / "ref"
    subprocess.run([sys.executable, "-m", "millionhours.bin.train_am",
                    *train_args(params, synth, ref, tmp_path / "r1")], cwd=ROOT, check=True,
                   capture_output=True)
    exp = tmp_path / "killed"
    for kill_at in ("checkpoint step 8 ", "checkpoint step 28 "):
        proc = subprocess.Popen([sys.executable, "-m", "millionhours.bin.train_am",
                                 *train_args(params, synth, exp, tmp_path / "r2")], cwd=ROOT,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        log = exp / "log"
        deadline = time.time() + 60
        while time.time() < deadline and proc.poll() is None:
            if log.exists() and kill_at in log.read_text():
                time.sleep(0.03)       # a little past the checkpoint, mid-step
                break
            time.sleep(0.005)
        proc.send_signal(signal.SIGKILL)
        assert proc.wait() == -signal.SIGKILL, "training finished before it could be killed"
    subprocess.run([sys.executable, "-m", "millionhours.bin.train_am",
                    *train_args(params, synth, exp, tmp_path / "r2")], cwd=ROOT, check=True,
                   capture_output=True)
    assert "resuming from" in (exp / "log").read_text()
    a, b = _state(ref / "final.pt")["model_state"], _state(exp / "final.pt")["model_state"]
    assert all(torch.equal(a[k], b[k]) for k in a)
    la, lb = _state(ref / "ckpt" / "last.pt"), _state(exp / "ckpt" / "last.pt")
    assert all(torch.equal(la["model"][k], lb["model"][k]) for k in la["model"])
    assert [r["dev_ce"] for r in la["loop"]["history"]] == [r["dev_ce"] for r in lb["loop"]["history"]]


def _fit_summary(synth, tmp_path, **train_over):
    params = write_params(tmp_path, dict(TINY, train=dict(TINY["train"], **train_over)))
    train_am.main(train_args(params, synth, tmp_path / "exp", tmp_path / "r"))
    return yaml.safe_load(open(tmp_path / "r" / "teacher.json"))


def test_stop_after_halvings(synth, tmp_path):
    """eval_every 3 validates every 3 updates; a threshold no gain can meet halves the LR at
    every validation after the first (which improves on nothing), so stop_halvings 2 ends
    training after exactly 3 validations (9 steps)."""
    s = _fit_summary(synth, tmp_path, eval_every=3, newbob_threshold=1.0, stop_halvings=2,
                     epochs=50)
    assert s["stopped"] == "halvings" and s["halvings"] == 2
    assert [r["step"] for r in s["history"]] == [3, 6, 9] and s["steps"] == 9
    assert [r["lr"] for r in s["history"]] == [0.01, 0.01, 0.005]


def test_stop_on_patience(synth, tmp_path):
    """With lr 0 the dev CE never improves after the first validation: patience 2 stops at the
    third; the best validation is the first."""
    s = _fit_summary(synth, tmp_path, eval_every=2, lr=0.0, schedule="const", patience=2,
                     epochs=50)
    assert s["stopped"] == "patience" and s["steps"] == 6 and s["best_epoch"] == 1
    assert s["best_step"] == 2


def test_epoch_cap_between_validations(synth, tmp_path):
    """When the epoch cap falls between two validations, the last update is still validated."""
    s = _fit_summary(synth, tmp_path, eval_every=1000, epochs=2)
    assert s["stopped"] == "epochs" and len(s["history"]) == 1
    assert s["history"][0]["step"] == s["steps"] > 0


def test_same_seed_same_weights():
    cfg = models.ModelConfig(num_senones=5, layers=1, cells=8)
    train.seed_everything(3)
    a = models.AcousticModel(cfg).state_dict()
    train.seed_everything(3)
    b = models.AcousticModel(cfg).state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


# --------------------------------------------------------------------------- input checks


def _run_cli(args):
    return subprocess.run([sys.executable, "-m", "millionhours.bin.train_am", *args], cwd=ROOT,
                          capture_output=True, text=True)


def test_bad_inputs(synth, tmp_path):
    root, (ftr, ttr), (fdv, tdv) = synth
    params = write_params(tmp_path, TINY)
    # dev targets from another tree
    bad = tmp_path / "bad_targets"
    bad.mkdir()
    for f in ("targets.scp", "targets.ark"):
        os.symlink(os.path.join(tdv, f), bad / f)
    (bad / "num_senones").write_text("9\n")
    proc = _run_cli(["--params", params, ftr, ttr, fdv, str(bad), str(tmp_path / "e1")])
    assert proc.returncode != 0
    err = proc.stderr.strip().splitlines()
    assert len(err) == 1 and "num_senones" in err[0] and "9 senones" in err[0], proc.stderr
    # missing targets dir
    proc = _run_cli(["--params", params, ftr, str(tmp_path / "nowhere"), fdv, tdv,
                     str(tmp_path / "e2")])
    err = proc.stderr.strip().splitlines()
    assert proc.returncode != 0 and len(err) == 1 and "targets.scp: missing" in err[0], proc.stderr
    # the model params ask for another senone count
    params2 = write_params(tmp_path / "p2", dict(TINY, model=dict(TINY["model"], num_senones=3000)))
    proc = _run_cli(["--params", params2, ftr, ttr, fdv, tdv, str(tmp_path / "e3")])
    err = proc.stderr.strip().splitlines()
    assert proc.returncode != 0 and len(err) == 1 and "3000" in err[0], proc.stderr
    # no arguments: usage
    proc = _run_cli([])
    assert proc.returncode != 0 and "usage:" in proc.stderr


def test_utts_without_targets_are_skipped(synth, tmp_path):
    _, (ftr, ttr), _ = synth
    part = tmp_path / "part"
    part.mkdir()
    lines = open(os.path.join(ttr, "targets.scp")).read().splitlines()
    (part / "targets.scp").write_text("\n".join(lines[:-5]) + "\n")
    (part / "num_senones").write_text(f"{S}\n")
    u = data.open_uttset(ftr, str(part), data.load_cmvn(ftr))
    assert len(u.skipped) == 5 and len(u.lengths) == len(lines) - 5


def test_model_input_mean_normalisation_modes():
    """utterance: zero mean per utterance; sliding: the causal running mean of Kaldi's
    apply-cmvn-sliding --center=false (checked against a direct loop); all share the global
    variance; an unknown mode is a one-line DataError."""
    rng = np.random.default_rng(0)
    f = (rng.normal(size=(700, 4)) * 2 + 5).astype(np.float32)
    stats = features.cmvn_stats(f)
    std = np.sqrt(stats[1, :-1] / stats[0, -1] - (stats[0, :-1] / stats[0, -1]) ** 2)
    utt = data.model_input(f, stats, 1, 1, "utterance")
    assert np.abs(utt.mean(0)).max() < 1e-5
    w = data.SLIDING_WINDOW
    ref = np.stack([(f[t] - f[max(0, t - w + 1):t + 1].mean(0)) / std for t in range(len(f))])
    assert np.abs(data.model_input(f, stats, 1, 1, "sliding") - ref).max() < 1e-4
    # causal: the past does not depend on the future
    assert np.array_equal(data.model_input(f[:400], stats, 1, 1, "sliding"),
                          data.model_input(f, stats, 1, 1, "sliding")[:400])
    with pytest.raises(data.DataError, match="cmn 'bogus'"):
        data.model_input(f, stats, 1, 1, "bogus")
