"""Stage 6: the student's loss on soft targets, its data streams, the CLI, resume mid-schedule."""
import os
import re
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import yaml

import fakedata
from conftest import ROOT
from millionhours import data, models, schedules, student, topk, train
from millionhours.bin import train_student

S, K = 8, 3            # senones of the synthetic task, top-k kept by the synthetic teacher

STUDENT = {
    "threads": 1,
    "model": {"layers": 2, "cells": 32, "bidirectional": False},
    "data": {"chunk_frames": 40, "batch_frames": 320, "batch_size": 8, "num_workers": 0},
    "train": {"epochs": 2, "optimizer": "adam", "lr": 0.01, "schedule": "newbob",
              "warmup_steps": 5, "ckpt_every": 4},
    "schedule": "interleaved", "ratio": None, "labeled_lr_scale": 2.0, "order": "machine_first",
    "soft": {"mode": "renorm", "temperature": 1.0, "k": None},
}
VARIANTS = {"labeled_only": {"schedule": "labeled_only", "train": {"epochs": 3}},
            "interleaved": {"schedule": "interleaved"},
            "segregated": {"schedule": "segregated"},
            "oracle": {"schedule": "oracle"}}


# --------------------------------------------------------------------------- synthetic data


def write_set(root, name, n_utts, seed, protos):
    """A feats data dir and a stage-3-like targets dir; returns (feats dir, targets dir, labels)."""
    return fakedata.write_set(root, name, n_utts, seed, protos, S, name, max_frames=400)


def write_store(store_dir, lfr_targets, num_senones=S, k=K, skip_last=0):
    """A 2-shard top-k store from a noisy synthetic teacher (right ~70% of the time)."""
    utts = sorted(lfr_targets)[:len(lfr_targets) - skip_last]
    for shard, part in enumerate((utts[::2], utts[1::2])):
        with topk.ShardWriter(str(store_dir), shard, k, num_senones, 30.0, "synthetic") as w:
            for u in part:
                t = lfr_targets[u]
                logits = torch.randn(len(t), num_senones) * 1.5
                logits[torch.arange(len(t)), torch.from_numpy(t.astype(np.int64))] += 3.0
                w.add(u, *topk.topk_from_logits(logits, k))
    return str(store_dir)


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    root = tmp_path_factory.mktemp("student")
    protos = np.random.default_rng(7).standard_normal((S, 64)) * 1.0 + 5.0
    fl, tl, _ = write_set(root, "labeled", 16, 1, protos)
    fu, tu, lfr_u = write_set(root, "unlabeled", 40, 2, protos)
    fd, td, _ = write_set(root, "dev", 12, 3, protos)
    store = write_store(root / "labels", lfr_u)
    return {"root": root, "fl": fl, "tl": tl, "fu": fu, "oracle": tu, "store": store, "fd": fd,
            "td": td, "lfr_u": lfr_u}


def write_params(path, student_params=STUDENT, variants=VARIANTS):
    path.mkdir(parents=True, exist_ok=True)
    (path / "recipes" / "conf").mkdir(parents=True, exist_ok=True)
    (path / "recipes" / "conf" / "default.yaml").write_text("{}\n")
    (path / "params.yaml").write_text(yaml.safe_dump({"seed": 11, "student": student_params,
                                                      "student_variants": variants}))
    return str(path / "params.yaml")


def cli_args(params, s, variant, exp, results, store=None, oracle=True):
    return (["--params", params, "--variant", variant, "--results-dir", str(results)]
            + (["--oracle-targets", s["oracle"]] if oracle else [])
            + [s["fl"], s["tl"], s["fu"], store or s["store"], s["fd"], s["td"], str(exp)])


# --------------------------------------------------------------------------- the loss


def soft_batch(rng, lengths, mode, temperature, num_senones=S, k=K):
    b, t = len(lengths), max(lengths)
    teacher = torch.log_softmax(torch.from_numpy(rng.standard_normal((b * t, num_senones)) * 2), -1)
    lp, ids = teacher.topk(k, -1)
    ids, lp = ids.view(b, t, k), lp.view(b, t, k).float()
    return data.Batch(torch.zeros(b, t, 4), torch.tensor(lengths), soft_ids=ids,
                      soft_logprobs=lp, kind="soft", soft_mode=mode, temperature=temperature)


@pytest.mark.parametrize("mode", ["renorm", "uniform_residual"])
@pytest.mark.parametrize("temperature", [1.0, 2.0, 0.5])
def test_soft_loss_and_gradient_match_dense(mode, temperature):
    rng = np.random.default_rng(0)
    lengths = [7, 3, 5]
    batch = soft_batch(rng, lengths, mode, temperature)
    logits = torch.from_numpy(rng.standard_normal((3, 7, S))).float().requires_grad_()
    loss, correct = train.batch_loss(logits, batch)
    loss.backward()
    # dense reference: q (T, S) per utterance from topk.soft_targets, -sum q log_softmax
    ref_logits = logits.detach().clone().requires_grad_()
    ref = 0.0
    for i, n in enumerate(lengths):
        q = topk.soft_targets(batch.soft_ids[i, :n], batch.soft_logprobs[i, :n], S, mode,
                              temperature)
        ref = ref - (q * torch.log_softmax(ref_logits[i, :n], -1)).sum()
    ref.backward()
    assert torch.allclose(loss, ref, rtol=1e-5, atol=1e-5)
    assert torch.allclose(logits.grad, ref_logits.grad, rtol=1e-5, atol=1e-6)
    assert (logits.grad[1, 3:] == 0).all()          # padded frames: no gradient
    top1 = batch.soft_ids[..., 0]
    want = sum(int((logits[i, :n].argmax(-1) == top1[i, :n]).sum()) for i, n in enumerate(lengths))
    assert int(correct) == want


@pytest.mark.parametrize("mode", ["renorm", "uniform_residual"])
@pytest.mark.parametrize("temperature", [1.0, 3.0])
def test_soft_targets_sum_to_one(mode, temperature):
    rng = np.random.default_rng(1)
    batch = soft_batch(rng, [6, 2], mode, temperature, num_senones=50, k=5)
    q = topk.soft_targets(batch.soft_ids[0], batch.soft_logprobs[0], 50, mode, temperature)
    assert torch.allclose(q.sum(-1), torch.ones(6), atol=1e-6)
    if mode == "uniform_residual":
        assert (q > 0).all()                              # the residual reaches every senone
    else:
        assert ((q > 0).sum(-1) == 5).all()
    # through the training loss: against a uniform student, CE = log(S) * sum(q) per frame
    loss, _ = train.batch_loss(torch.zeros(2, 6, 50), batch)
    assert abs(float(loss) / 8 - np.log(50)) < 1e-5


def test_hard_loss_is_plain_cross_entropy():
    logits = torch.randn(2, 5, S)
    targets = torch.tensor([[1, 2, 3, data.IGNORE, data.IGNORE], [0, 7, 7, 7, 1]])
    batch = data.Batch(torch.zeros(2, 5, 4), torch.tensor([3, 5]), targets=targets)
    loss, correct = train.batch_loss(logits, batch)
    valid = targets != data.IGNORE
    assert torch.allclose(loss, F.cross_entropy(logits[valid], targets[valid], reduction="sum"))
    assert int(correct) == int((logits.argmax(-1)[valid] == targets[valid]).sum())
    # label smoothing e: (1 - e) CE + e * mean over senones of -log p, padded frames still out
    e = 0.1
    smoothed, _ = train.batch_loss(logits, batch, label_smoothing=e)
    logp = torch.log_softmax(logits[valid], -1)
    want = -((1 - e) * logp.gather(-1, targets[valid][:, None])[:, 0] + e * logp.mean(-1)).sum()
    assert torch.allclose(smoothed, want, rtol=1e-5)


# --------------------------------------------------------------------------- the data streams


def make_dataset(s, name="interleaved", ratio=None, workers=0, soft=student.SoftConfig()):
    cmvn = data.load_cmvn(s["fl"])
    lab = data.open_uttset(s["fl"], s["tl"], cmvn)
    mu, _ = student.open_machine_set(s["fu"], s["store"], cmvn, S, s["tl"], soft)
    ds = student.ScheduledBatches(schedules.ScheduleConfig(name, epochs=2, ratio=ratio),
                                  {"labeled": student.HardStream(lab, "labeled"),
                                   "machine": student.TopKStream(mu, s["store"], soft)},
                                  seed=3, data_params=STUDENT["data"])
    return ds, data.BatchSource(ds, num_workers=workers)


def test_batches_follow_the_schedule_and_resume_mid_schedule(synth):
    ds, src = make_dataset(synth, ratio=2.0, workers=1)
    plan = ds.schedule.epoch_plan(1)
    full = list(src.batches(1))
    assert len(full) == len(plan) == ds.num_batches(1)
    for entry, batch in zip(plan, full):
        assert batch.kind == ("labeled" if entry.stream == "labeled" else "soft")
        assert batch.lr_scale == (2.0 if entry.stream == "labeled" else 1.0)
        assert batch.utts == [u for u, _, _ in ds.schedule.batch(entry)]
        assert (batch.targets is None) == (entry.stream == "machine")
    kinds = "".join(b.kind[0] for b in full)
    assert kinds.count("l") == max(1, round(kinds.count("s") / 2.0))
    # a run resumed at step i sees exactly the rest of the sequence, in both streams
    for i in (3, len(full) - 2):
        tail = list(src.batches(1, i))
        assert [b.utts for b in tail] == [b.utts for b in full[i:]]
        assert all(torch.equal(a.feats, b.feats) and a.lr_scale == b.lr_scale
                   for a, b in zip(tail, full[i:]))


def test_soft_batches_carry_the_store(synth):
    soft = student.SoftConfig(mode="uniform_residual", temperature=2.0, k=2)
    ds, _ = make_dataset(synth, soft=soft)
    entry = next(e for e in ds.schedule.epoch_plan(0) if e.stream == "machine")
    batch = ds[(0, ds.schedule.epoch_plan(0).index(entry))]
    assert batch.soft_mode == "uniform_residual" and batch.temperature == 2.0
    assert batch.soft_ids.shape[-1] == 2
    store = topk.TopKStore(synth["store"])
    utt, a, b = ds.schedule.batch(entry)[0]
    ids, lp = store.get(utt, 2)
    n = b - a
    assert np.array_equal(batch.soft_ids[0, :n].numpy(), ids[a:b].astype(np.int64))
    assert np.array_equal(batch.soft_logprobs[0, :n].numpy(), lp[a:b].astype(np.float32))
    # the store's top-1 is the synthetic teacher's, right most of the time
    top1 = np.concatenate([store.get(u)[0][:, 0] for u in store.utts])
    truth = np.concatenate([synth["lfr_u"][u] for u in store.utts])
    assert (top1 == truth).mean() > 0.5


# --------------------------------------------------------------------------- the stage


def test_all_variants_train(synth, tmp_path):
    params = write_params(tmp_path / "p")
    results = tmp_path / "results"
    summaries = {}
    for variant in VARIANTS:
        exp = tmp_path / f"student_{variant}"
        train_student.main(cli_args(params, synth, variant, exp, results))
        summaries[variant] = yaml.safe_load(open(results / f"student_{variant}.json"))
        for f in ("_metrics.tsv", "_curve.png"):
            assert (results / f"student_{variant}{f}").stat().st_size > 0
        model, blob = models.load_final(str(exp / "final.pt"))
        assert blob["num_senones"] == S and blob["cmvn"].shape == (2, 65)
        assert blob["lfr"] == {"stack": 3, "skip": 3} and not model.cfg.bidirectional
        assert blob["role"] == f"student_{variant}"
    kinds = {v: {k for k in s["history"][0] if k.startswith("train_ce_")}
             for v, s in summaries.items()}
    assert kinds["labeled_only"] == {"train_ce_labeled"}
    assert kinds["interleaved"] == {"train_ce_labeled", "train_ce_soft"}
    assert kinds["oracle"] == {"train_ce_labeled", "train_ce_oracle"}
    assert summaries["labeled_only"]["epochs"] == 3                  # variant settings apply
    # interleaved and segregated: the same steps per epoch, the same batches in another order
    assert (summaries["interleaved"]["schedule"]["steps_per_epoch"]
            == summaries["segregated"]["schedule"]["steps_per_epoch"])
    seg = summaries["segregated"]["history"]
    assert "train_ce_labeled" not in seg[0] and "train_ce_labeled" in seg[-1]  # machine data first
    for v in ("interleaved", "segregated"):
        assert summaries[v]["machine"]["k_used"] == K
        assert summaries[v]["dev_frame_acc"] > 0.3                  # chance is 1/8
    assert summaries["oracle"]["machine"]["utts"] == 40


def _state(path):
    return torch.load(path, map_location="cpu", weights_only=False)


@pytest.mark.parametrize("variant", ["interleaved", "segregated"])
def test_sigkill_resume_mid_schedule_is_bit_identical(synth, tmp_path, variant):
    """Uninterrupted run vs one SIGKILLed mid-epoch and rerun: identical final weights."""
    p = dict(STUDENT, data=dict(STUDENT["data"], num_workers=1))
    params = write_params(tmp_path / "p", p)
    run = lambda exp, res: [sys.executable, "-m", "millionhours.bin.train_student",
                            *cli_args(params, synth, variant, exp, res)]
    ref = tmp_path / "ref"
    subprocess.run(run(ref, tmp_path / "r1"), cwd=ROOT, check=True, capture_output=True)
    exp = tmp_path / "killed"
    proc = subprocess.Popen(run(exp, tmp_path / "r2"), cwd=ROOT, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    log, deadline = exp / "log", time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        if log.exists() and "checkpoint step 8 " in log.read_text():
            time.sleep(0.03)
            break
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    assert proc.wait() == -signal.SIGKILL, "training finished before it could be killed"
    subprocess.run(run(exp, tmp_path / "r2"), cwd=ROOT, check=True, capture_output=True)
    text = log.read_text()
    assert re.search(r"resuming at epoch \d+, step \d+: labeled stream .*; machine stream", text)
    a, b = _state(ref / "final.pt")["model_state"], _state(exp / "final.pt")["model_state"]
    assert all(torch.equal(a[k], b[k]) for k in a)
    la, lb = _state(ref / "ckpt" / "last.pt"), _state(exp / "ckpt" / "last.pt")
    assert [r["dev_ce"] for r in la["loop"]["history"]] == [r["dev_ce"] for r in lb["loop"]["history"]]


# --------------------------------------------------------------------------- input checks


def _cli(args):
    return subprocess.run([sys.executable, "-m", "millionhours.bin.train_student", *args],
                          cwd=ROOT, capture_output=True, text=True)


def _one_line_error(proc, *needles):
    err = proc.stderr.strip().splitlines()
    assert proc.returncode != 0 and len(err) == 1, proc.stderr
    for n in needles:
        assert n in err[0], err[0]


def test_bad_inputs(synth, tmp_path):
    params = write_params(tmp_path / "p")
    # a store from a teacher with another senone count
    other = write_store(tmp_path / "labels9", synth["lfr_u"], num_senones=9)
    _one_line_error(_cli(cli_args(params, synth, "interleaved", tmp_path / "e1", tmp_path / "r",
                                  store=other)), "labels9", "9 senones", "num_senones says 8")
    # no store at all
    _one_line_error(_cli(cli_args(params, synth, "interleaved", tmp_path / "e2", tmp_path / "r",
                                  store=str(tmp_path / "nowhere"))),
                    "nowhere", "run the labeling stage")
    # a store whose frame counts do not match the features
    shifted = {u: np.concatenate([t, t[:1]]) for u, t in synth["lfr_u"].items()}
    bad = write_store(tmp_path / "labels_long", shifted)
    _one_line_error(_cli(cli_args(params, synth, "segregated", tmp_path / "e3", tmp_path / "r",
                                  store=bad)), "labels_long", "labeled frames", "relabel")
    # k larger than stored
    p2 = write_params(tmp_path / "p2", dict(STUDENT, soft={"k": 10}))
    _one_line_error(_cli(cli_args(p2, synth, "interleaved", tmp_path / "e4", tmp_path / "r")),
                    "student.soft.k = 10", "k = 3")
    # oracle without its targets; an unknown variant
    _one_line_error(_cli(cli_args(params, synth, "oracle", tmp_path / "e5", tmp_path / "r",
                                  oracle=False)), "--oracle-targets")
    _one_line_error(_cli(cli_args(params, synth, "mixed", tmp_path / "e6", tmp_path / "r")),
                    "student_variants.mixed", "labeled_only")
    # labeled_only never opens the store
    proc = _cli(cli_args(write_params(tmp_path / "p3", dict(STUDENT, train=dict(
        STUDENT["train"], epochs=1))), synth, "labeled_only", tmp_path / "e7", tmp_path / "r",
        store=str(tmp_path / "nowhere")))
    assert proc.returncode == 0, proc.stderr


def test_partly_labeled_store_skips_the_rest(synth, tmp_path):
    store = write_store(tmp_path / "labels", synth["lfr_u"], skip_last=5)
    cmvn = data.load_cmvn(synth["fl"])
    mu, st = student.open_machine_set(synth["fu"], store, cmvn, S, synth["tl"],
                                      student.SoftConfig())
    assert len(mu.lengths) == 35 and len(mu.skipped) == 5 and len(st) == 35


# --------------------------------------------------------------------------- distributed (#7)


@pytest.mark.parametrize("algorithm", ["gtc", "bmuf"])
def test_two_workers_under_torchrun(synth, tmp_path, algorithm):
    """The stage-6 CLI under torchrun with 2 gloo workers: both ranks train their share of
    the interleaved schedule, rank 0 writes final.pt and the JSON with the communication stats,
    and every rank keeps the same best.pt (GTC: identical replicas; BMUF: the global model)."""
    dist = {"workers": 2, "algorithm": algorithm, "timeout_s": 30,
            "gtc": {"target_fraction": 0.01}, "bmuf": {"block": 2}}
    params = write_params(tmp_path / "p", variants={"interleaved": {"schedule": "interleaved",
                                                                    "distributed": dist}})
    exp, results = tmp_path / "exp", tmp_path / "results"
    torchrun = os.path.join(os.path.dirname(sys.executable), "torchrun")
    proc = subprocess.run([torchrun, "--standalone", "--nproc-per-node", "2", "-m",
                           "millionhours.bin.train_student",
                           *cli_args(params, synth, "interleaved", exp, results)],
                          cwd=ROOT, capture_output=True, text=True, timeout=600,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stdout + proc.stderr
    summary = yaml.safe_load(open(results / "student_interleaved.json"))
    d = summary["distributed"]
    assert d["world"] == 2 and d["syncs"] > 0
    assert 0 < d["bytes_per_step"] < d["dense_bytes_per_step"]
    a = _state(exp / "ckpt" / "best.pt")["model"]
    b = _state(exp / "rank1" / "ckpt" / "best.pt")["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)
    if algorithm == "bmuf":                                 # only full blocks are merged
        assert d["syncs"] == d["steps"] // 2 and d["ratio_to_dense"] == pytest.approx(
            d["syncs"] / d["steps"])
    assert (exp / "final.pt").is_file() and not (exp / "rank1" / "final.pt").exists()


def _run_cli(params, synth, exp, results, workers=1):
    """The stage-6 CLI: under torchrun with `workers` processes, or as one process."""
    torchrun = os.path.join(os.path.dirname(sys.executable), "torchrun")
    launch = ([torchrun, "--standalone", "--nproc-per-node", str(workers)] if workers > 1
              else [sys.executable])
    proc = subprocess.run([*launch, "-m", "millionhours.bin.train_student",
                           *cli_args(params, synth, "interleaved", exp, results)],
                          cwd=ROOT, capture_output=True, text=True, timeout=600,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return _state(exp / "final.pt")["model_state"], yaml.safe_load(open(results /
                                                                  "student_interleaved.json"))


@pytest.mark.slow
@pytest.mark.parametrize("protocol", ["equal_epochs", "global_batch"])
def test_simulated_workers_end_with_torchruns_weights(synth, tmp_path, protocol):
    """Stage 6 with 2 virtual workers in one process and with 2 torchrun processes: the same
    final weights, bit for bit (dropout included: each virtual worker has its own RNG stream),
    and the same bytes."""
    def params(transport):
        dist = {"workers": 2, "algorithm": "gtc", "timeout_s": 30, "transport": transport,
                "protocol": protocol, "gtc": {"target_fraction": 0.01}}
        p = dict(STUDENT, model=dict(STUDENT["model"], dropout=0.2))
        return write_params(tmp_path / transport, p,
                            {"interleaved": {"schedule": "interleaved", "distributed": dist}})
    real, jr = _run_cli(params("torchrun"), synth, tmp_path / "e_real", tmp_path / "r_real", 2)
    sim, js = _run_cli(params("simulated"), synth, tmp_path / "e_sim", tmp_path / "r_sim")
    assert all(torch.equal(real[k], sim[k]) for k in real)
    dr, ds = jr["distributed"], js["distributed"]
    assert (ds["steps"], ds["bytes_sent_total"]) == (dr["steps"], dr["bytes_sent_total"])
    assert ds["protocol"] == protocol and ds["simulated"]["workers"] == 2
    assert len(ds["simulated"]["busy_s_per_worker"]) == 2 and ds["simulated"]["state_mb_per_worker"] > 0


@pytest.mark.slow
def test_global_batch_dense_sync_takes_one_process_steps(synth, tmp_path):
    """4 simulated workers sharing each batch (dense sync) take the steps of one process with
    that batch: as many updates, the same weights up to float summation order."""
    p = dict(STUDENT, train=dict(STUDENT["train"], optimizer="sgd", lr=0.3))
    dist = {"workers": 4, "algorithm": "sync", "transport": "simulated", "protocol": "global_batch"}
    one, j1 = _run_cli(write_params(tmp_path / "p1", p), synth, tmp_path / "e1", tmp_path / "r1")
    four, j4 = _run_cli(write_params(tmp_path / "p4", p, {"interleaved": {
        "schedule": "interleaved", "distributed": dist}}), synth, tmp_path / "e4", tmp_path / "r4")
    assert j4["steps"] == j1["steps"] and j4["distributed"]["world"] == 4
    for k in one:
        assert torch.allclose(one[k], four[k], rtol=0, atol=1e-4), k
    assert [r["dev_ce"] for r in j4["history"]] == pytest.approx(
        [r["dev_ce"] for r in j1["history"]], rel=1e-4)


def test_unlabeled_fraction_nests_and_seed_offset_changes_the_run(synth, tmp_path):
    """F1's subsets of the machine-labeled set are nested; a seed replica is another draw."""
    u = data.open_uttset(synth["fu"], None, np.zeros((2, 65)), 3, 3)
    quarter, half = student.subset(u, 0.25), student.subset(u, 0.5)
    assert set(quarter.lengths) < set(half.lengths) < set(u.lengths)
    assert 0 < len(quarter.lengths) < 20 and student.subset(u, 1.0) is u
    with pytest.raises(data.DataError, match="unlabeled_fraction"):
        student.subset(u, 0.0)
    variants = {"half": {"unlabeled_fraction": 0.5, "train": {"epochs": 1}},
                "half_seed1": {"unlabeled_fraction": 0.5, "seed_offset": 1, "train": {"epochs": 1}}}
    params = write_params(tmp_path / "p", variants=variants)
    out = {}
    for v in variants:
        train_student.main(cli_args(params, synth, v, tmp_path / v, tmp_path / "results"))
        out[v] = yaml.safe_load(open(tmp_path / "results" / f"student_{v}.json"))
    assert out["half"]["machine"]["utts"] == len(half.lengths)
    assert out["half_seed1"]["params"]["train_seed"] == out["half"]["params"]["train_seed"] + 1
    assert out["half"]["dev_ce"] != out["half_seed1"]["dev_ce"]
