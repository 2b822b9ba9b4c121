"""Distributed training: dense sync, GTC and BMUF on real multi-process gloo groups (CPU).

Each group test spawns 2-3 processes (one torch thread each) that train a tiny LSTM with real
optimizer steps, and returns per-rank records through files. The end-to-end test runs
`torchrun --nproc-per-node 2 -m millionhours.distributed.selftest` (train.fit with a sync),
kills a worker, reruns, and compares with an uninterrupted run.
"""
import datetime
import math
import os
import re
import socket
import subprocess
import sys
import time

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F

from millionhours import distributed as D
from millionhours.distributed.gtc import GTC
from millionhours.models import AcousticModel, ModelConfig

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DIM, OUT, ROWS, T = 8, 4, 4, 10


# --------------------------------------------------------------------------- the tiny problem


def tiny_model():
    torch.manual_seed(0)
    return AcousticModel(ModelConfig(num_senones=OUT, input_dim=DIM, layers=2, cells=16,
                                     bidirectional=False))                  # 3,940 params


def batch(step, rank, world):
    """This rank's batch at `step`: the senone is the argmax of the first OUT features."""
    g = torch.Generator().manual_seed(10_000 + step * world + rank)
    x = torch.randn(ROWS, T, DIM, generator=g)
    return x, x[..., :OUT].argmax(-1)


def loss_of(model, x, y):
    return F.cross_entropy(model(x).reshape(-1, OUT), y.reshape(-1))


def eval_loss(model):
    with torch.no_grad():
        return float(sum(loss_of(model, *batch(-1 - i, 0, 1)) for i in range(4)) / 4)


def flat(model):
    return D.flat_data(D.flat_params(model))


def sgd(model, lr, momentum):
    return torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum)


def dense_reference(steps, world, lr, momentum):
    """One process, each step on the concatenation of every rank's batch."""
    model = tiny_model()
    opt = sgd(model, lr, momentum)
    for s in range(1, steps + 1):
        xs, ys = zip(*(batch(s, r, world) for r in range(world)))
        opt.zero_grad()
        loss_of(model, torch.cat(xs), torch.cat(ys)).backward()
        opt.step()
    return flat(model), eval_loss(model)


# --------------------------------------------------------------------------- group launcher


def _entry(rank, world, port, timeout, fn, args, out):
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                            world_size=world, timeout=datetime.timedelta(seconds=timeout))
    try:
        res = fn(rank, world, *args)
    except Exception as e:               # the test inspects it
        res = {"error": str(e), "type": type(e).__name__, "t_error": time.time()}
    torch.save(res, os.path.join(out, f"{rank}.pt"))
    os._exit(0)                          # skip teardown: the group may be broken


def run_group(tmp_path, fn, world, *args, timeout=20, wait=180):
    """Runs fn(rank, world, *args) on `world` spawned gloo workers; returns their results
    (None for a worker that left none)."""
    out_dir = tmp_path / f"group{len(list(tmp_path.glob('group*')))}"
    out_dir.mkdir()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=_entry, args=(r, world, port, timeout, fn, args, str(out_dir)))
             for r in range(world)]
    for p in procs:
        p.start()
    deadline = time.time() + wait
    for p in procs:
        p.join(max(1, deadline - time.time()))
    for p in procs:
        if p.is_alive():
            p.kill()
            p.join()
    out = [out_dir / f"{r}.pt" for r in range(world)]
    return [torch.load(o, weights_only=False) if o.exists() else None for o in out]


def replicas_equal(model, comm) -> bool:
    """All ranks hold the same bits (an uncounted all_gather)."""
    w = flat(model)
    return all(torch.equal(w, g) for g in comm.all_gather(w, count=False))


def _train(rank, world, algo, kw, steps, lr, momentum, die_step=None):
    """Real optimizer steps under an algorithm; per-step records for the assertions."""
    model = tiny_model()
    sync = D.make_sync({"algorithm": algo, algo: kw}, world)
    opt = sgd(model, lr, momentum)
    rec = {"identical": [], "bytes": [], "nwords": [], "words": [], "grad": [], "taus": [],
           "differs": []}
    if algo == "gtc":                                     # record this rank's own message
        encode = sync.encode
        sync.encode = lambda g, tau: _keep(rec, encode(g, tau))
    for s in range(1, steps + 1):
        x, y = batch(s, rank, world)
        opt.zero_grad()
        loss_of(model, x, y).backward()
        before = sync.comm.bytes
        if algo == "gtc":
            rec["taus"].append(list(sync.taus) if sync.taus else None)
        sync.after_backward(model)
        rec["grad"].append(D.flat_grad(D.flat_params(model)) if s <= 3 else None)
        opt.step()
        if die_step == s and rank == 1:
            torch.save(time.time(), f"{os.environ['DIST_TEST_DIR']}/died.pt")
            os._exit(3)
        sync.after_step(model, opt, s)
        rec["bytes"].append(sync.comm.bytes - before)
        synced = algo != "bmuf" or sync.last_sync == s
        (rec["identical"] if synced else rec["differs"]).append(replicas_equal(model, sync.comm))
    local, before = flat(model), sync.comm.bytes
    with sync.global_weights(model):                      # the epoch-end evaluation's model
        rec.update(global_=flat(model), global_identical=replicas_equal(model, sync.comm))
    rec.update(restored=torch.equal(flat(model), local), global_bytes=sync.comm.bytes - before)
    rec.update(params=local, loss=eval_loss(model), stats=sync.stats(), state=sync.state_dict())
    return rec


def _keep(rec, words):
    rec["nwords"].append(words.numel())
    rec["words"].append(words.clone() if len(rec["words"]) < 3 else None)
    return words


# --------------------------------------------------------------------------- single process


def test_gtc_encode_one_quantum_residual_keeps_the_rest():
    """Words are (index << 1 | negative); one quantum per element; residual holds the rest."""
    gtc = GTC(tau=1.0, target_fraction=None)
    gtc.residual = torch.tensor([0.2, 1.0, -1.5, 2.7, -0.99])
    words = gtc.encode(torch.zeros(5), torch.ones(5))
    assert words.tolist() == [1 << 1, (2 << 1) | 1, 3 << 1]
    assert torch.allclose(gtc.residual, torch.tensor([0.2, 0.0, -0.5, 1.7, -0.99]))
    assert gtc.encode(torch.zeros(5), torch.ones(5)).tolist() == [3 << 1]   # delayed, not lost


def test_make_sync_choices():
    assert D.make_sync(None) is None and D.make_sync({"algorithm": "sync"}, 1) is None
    with pytest.raises(ValueError, match="unknown 'ddp'"):
        D.make_sync({"algorithm": "ddp"}, 2)
    with pytest.raises(ValueError, match="tau > 0"):
        D.make_sync({"algorithm": "gtc", "gtc": {"tau": 0, "target_fraction": 0}}, 2)


# --------------------------------------------------------------------------- gloo groups


def test_sync_equals_dense_reference_and_counts_bytes(tmp_path):
    steps, world = 6, 2
    res = run_group(tmp_path, _train, world, "sync", {}, steps, 0.5, 0.9)
    ref, _ = dense_reference(steps, world, 0.5, 0.9)
    p = res[0]["params"].numel()
    for r in res:
        assert all(r["identical"]) and len(r["identical"]) == steps
        assert r["bytes"] == [4 * p] * steps
        assert torch.allclose(r["params"], ref, atol=1e-6)
        assert r["stats"]["ratio_to_dense"] == 1.0


def test_bmuf_eta0_block1_equals_dense_averaging(tmp_path):
    """Plain SGD: the average of the local steps is the step on the averaged gradient."""
    steps, world = 6, 2
    kw = {"block": 1, "eta": 0.0, "zeta": 1.0, "nesterov": False, "reset_momentum": False}
    res = run_group(tmp_path, _train, world, "bmuf", kw, steps, 0.5, 0.0)
    ref, _ = dense_reference(steps, world, 0.5, 0.0)
    for r in res:
        assert all(r["identical"]) and len(r["identical"]) == steps
        assert torch.allclose(r["params"], ref, atol=1e-6), (r["params"] - ref).abs().max()


def test_bmuf_identical_after_every_sync_and_bytes_per_step(tmp_path):
    """Nesterov, momentum reset, warm-up 2, eta = 1 - 1/3; block 50 sends 1/50 of dense."""
    steps, world, block = 102, 3, 50
    res = run_group(tmp_path, _train, world, "bmuf", {"block": block, "warmup_steps": 2},
                    steps, 0.1, 0.9)
    p = res[0]["params"].numel()
    for r in res:
        assert r["identical"] == [True] * 4                 # steps 1, 2 (warm-up), 52, 102
        assert not any(r["differs"])                        # local steps do move apart
        assert [s for s, b in enumerate(r["bytes"], 1) if b] == [1, 2, 52, 102]
        assert set(r["bytes"]) == {0, 4 * p}
        st = r["stats"]
        assert st["eta"] == pytest.approx(1 - 1 / 3) and st["syncs"] == 4
        assert st["bytes_sent_total"] == 4 * 4 * p
    blocks_only = 2 * 4 * p / 100 / (4 * p)                 # the two block syncs, steps 3-102
    assert blocks_only <= 1 / 50
    assert all(torch.equal(res[0]["state"][k], r["state"][k]) for r in res
               for k in ("base", "delta"))
    st = res[0]["state"]                                    # evaluation sees W = W~ + eta v, the
    for r in res:                                           # same on every rank, for free
        assert r["global_identical"] and r["restored"] and r["global_bytes"] == 0
        assert torch.allclose(r["global_"], st["base"] + (1 - 1 / 3) * st["delta"])
        assert not torch.equal(r["global_"], r["params"])


def test_gtc_identical_bytes_and_decoding(tmp_path):
    steps, world = 8, 3
    res = run_group(tmp_path, _train, world, "gtc", {"target_fraction": 0.001}, steps, 0.5, 0.9)
    p = res[0]["params"].numel()
    for r in res:
        assert all(r["identical"]) and len(r["identical"]) == steps
    tensors = len(list(tiny_model().parameters()))
    for s in range(steps):                                  # bytes = size header + padded words
        biggest = max(max(r["nwords"][s] for r in res), 1)
        first = 8 * tensors if s == 0 else 0                # step 1: initial taus (float64 each)
        assert all(r["bytes"][s] == first + 8 + 4 * biggest for r in res)
    words = torch.cat([r["words"][1] for r in res]).long()  # step 2: fixed taus, decode by hand
    taus = res[0]["taus"][1]
    sizes = [q.numel() for q in tiny_model().parameters()]
    tau = torch.tensor(taus).repeat_interleave(torch.tensor(sizes))
    expect = torch.zeros(p)
    expect.index_add_(0, words >> 1, (1 - 2 * (words & 1)).float())
    assert torch.equal(res[0]["grad"][1], expect * tau / world)
    assert all(res[0]["state"]["taus"] == r["state"]["taus"] for r in res)
    assert not torch.equal(res[0]["state"]["residual"], res[1]["state"]["residual"])
    st = res[0]["stats"]
    assert st["ratio_to_dense"] <= 0.01, st
    assert 0 < st["fired_fraction_mean"] < 0.02


def test_gtc_with_tiny_tau_converges_like_sync(tmp_path):
    """A tiny tau with enough quanta per step (max_quanta) sends the residual down to < tau each
    step: the final loss is within 5% of dense sync's. Strom's one quantum per step (tau at the
    gradients' size) trains too, slower: each element moves at most tau a step."""
    steps, world, lr = 60, 2, 0.5
    _, loss_sync = dense_reference(steps, world, lr, 0.9)
    start = eval_loss(tiny_model())
    assert loss_sync < 0.6 * start                          # the problem is learnt
    tiny = run_group(tmp_path, _train, world, "gtc",
                     {"tau": 1e-4, "target_fraction": None, "max_quanta": 10_000}, steps, lr, 0.9)
    assert tiny[0]["loss"] == pytest.approx(loss_sync, rel=0.05), (start, loss_sync,
                                                                   tiny[0]["loss"])
    one = run_group(tmp_path, _train, world, "gtc", {"tau": 0.01, "target_fraction": None},
                    steps, lr, 0.9)
    assert one[0]["loss"] < 0.75 * start and all(one[0]["identical"])
    assert one[0]["stats"]["ratio_to_dense"] < 0.1


def test_dead_worker_stops_the_others_with_a_clear_message(tmp_path, monkeypatch):
    monkeypatch.setenv("DIST_TEST_DIR", str(tmp_path))      # spawned workers inherit it
    res = run_group(tmp_path, _train, 3, "gtc", {"target_fraction": 0.01}, 20, 0.5, 0.9, 5,
                    timeout=15, wait=60)
    died = torch.load(tmp_path / "died.pt")
    for r in (0, 2):
        assert res[r]["type"] == "WorkerLost", res[r]
        # worker 1 is named; a survivor that already left after its own error may be too
        assert re.match(r"(worker \d and )*worker 1( and worker \d)* died; rank", res[r]["error"])
        assert res[r]["error"].endswith(D.RERUN)
        assert res[r]["t_error"] - died < 10                # a closed socket, not the timeout
    assert res[1] is None


def _hang(rank, world):
    model = tiny_model()
    sync = D.make_sync({"algorithm": "sync"}, world)
    if rank == 1:
        time.sleep(40)
    t0 = time.time()
    try:
        loss_of(model, *batch(1, rank, world)).backward()
        sync.after_backward(model)
    except D.WorkerLost as e:
        return {"error": str(e), "waited": time.time() - t0}
    return {"error": None}


def test_hung_worker_times_out(tmp_path):
    res = run_group(tmp_path, _hang, 2, timeout=4, wait=30)
    assert res[0]["error"].startswith("lost contact with another worker; rank 0 stopped at step 0")
    assert 3 < res[0]["waited"] < 15


# --------------------------------------------------------------------------- torchrun end to end


def torchrun(exp, *args):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2",
           "-m", "millionhours.distributed.selftest", "--exp", str(exp), *map(str, args)]
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=240)


@pytest.mark.parametrize("algo", ["gtc", "bmuf"])
def test_torchrun_kill_and_rerun_resumes_exactly(tmp_path, algo):
    t0 = time.time()
    dead = torchrun(tmp_path / "run", "--algorithm", algo, "--die-step", 7)
    assert dead.returncode != 0 and time.time() - t0 < 120
    assert "error (rank 0): worker 1 died; rank 0 stopped at step" in dead.stderr, dead.stderr
    again = torchrun(tmp_path / "run", "--algorithm", algo)
    assert again.returncode == 0, again.stderr
    assert "resuming from" in again.stdout and "at epoch 1, batch 4, step 4" in again.stdout
    assert "replicas identical: True" in again.stdout
    clean = torchrun(tmp_path / "clean", "--algorithm", algo)
    assert clean.returncode == 0, clean.stderr
    for r in (0, 1):                                      # killed + rerun == never interrupted
        assert torch.equal(torch.load(tmp_path / "run" / f"final_rank{r}.pt"),
                           torch.load(tmp_path / "clean" / f"final_rank{r}.pt"))
    import json
    stats = json.load(open(tmp_path / "run" / "results" / "selftest.json"))["distributed"]
    assert stats["algorithm"] == algo and stats["world"] == 2 and stats["steps"] == 16
    assert stats["bytes_per_step"] < stats["dense_bytes_per_step"]
    assert stats["frames_per_s_all_workers"] > 0 and not math.isnan(stats["wall_s"])


def two_nodes(exp, port, *args):
    """The README's multi-node command, once per node (each one worker), on this machine."""
    procs = [subprocess.Popen(
        [sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--node-rank", str(r),
         "--nproc-per-node", "1", "--master-addr", "127.0.0.1", "--master-port", str(port),
         "-m", "millionhours.distributed.selftest", "--exp", str(exp), *map(str, args)],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for r in (0, 1)]
    out = [p.communicate(timeout=240) for p in procs]
    return [(p.returncode, o, e) for p, (o, e) in zip(procs, out)]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_two_torchrun_nodes_train_identical_replicas_and_resume(tmp_path):
    """Two torchrun "nodes" (--nnodes 2, --node-rank 0 and 1) on 127.0.0.1: GTC replicas stay
    identical; node 1 dies after step 7, both stop; rerunning both resumes to the weights of a
    run never interrupted."""
    dead = two_nodes(tmp_path / "run", _free_port(), "--algorithm", "gtc", "--die-step", 7)
    assert all(rc != 0 for rc, _, _ in dead)
    assert "worker 1 died" in dead[0][2] or "lost contact" in dead[0][2], dead[0][2]
    again = two_nodes(tmp_path / "run", _free_port(), "--algorithm", "gtc")
    assert all(rc == 0 for rc, _, _ in again), again
    assert "resuming from" in again[0][1] and "replicas identical: True" in again[0][1]
    clean = two_nodes(tmp_path / "clean", _free_port(), "--algorithm", "gtc")
    assert all(rc == 0 for rc, _, _ in clean)
    for r in (0, 1):
        assert torch.equal(torch.load(tmp_path / "run" / f"final_rank{r}.pt"),
                           torch.load(tmp_path / "clean" / f"final_rank{r}.pt"))
