"""Simulated workers (distributed/simulated.py) and the fixed-global-batch protocol.

The simulated transport is held against torchrun (the same run ends with the same weights) and
against one process (dense sync over a shared global batch equals the one-process step).
"""
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from millionhours import data, distributed as D, schedules, student, train
from millionhours.distributed import simulated
from millionhours.distributed.sync import DenseSync
from millionhours.models import AcousticModel, ModelConfig

DIM, SENONES = 6, 5


# --------------------------------------------------------------------------- the transport


def _collectives():
    r, n = D.rank(), D.world_size()
    comm = D.default_comm()
    t = torch.tensor([0.1 * (r + 1), 1.0 + r], dtype=torch.float32)
    s = comm.all_reduce_(t.clone())
    g = comm.all_gather(torch.tensor([r * 10], dtype=torch.int64))
    b = comm.broadcast_(torch.tensor([float(r)]), src=n - 1)
    return r, n, s, [int(x) for x in g], float(b), comm.bytes, comm.wire_bytes


def test_collectives_sum_in_rank_order_gather_broadcast_and_count_bytes():
    out = simulated.run_workers(_collectives, 3)
    want = torch.tensor([0.1, 1.0], dtype=torch.float32)
    want = want.add(torch.tensor([0.2, 2.0])).add(torch.tensor([0.30000001192092896, 3.0]))
    for r, (rank, n, s, g, b, nbytes, wire) in enumerate(out):
        assert (rank, n) == (r, 3)
        assert torch.equal(s, want) and torch.equal(s, out[0][2])    # the same bits everywhere
        assert g == [0, 10, 20] and b == 2.0
        assert nbytes == 8 + 8                 # all_reduce (2 x fp32) + all_gather (1 x int64);
        assert wire == pytest.approx(2 * 2 / 3 * 8 + 2 * 8)   # broadcast uncounted, as Comm


def _rng_worker():
    torch.manual_seed(100 + D.rank())
    a = torch.rand(3)
    D.default_comm().all_reduce_(torch.zeros(1))     # the other workers draw in between
    b = torch.rand(3)
    return torch.cat([a, b])


def test_each_worker_has_its_own_rng_stream():
    out = simulated.run_workers(_rng_worker, 4)
    for r, x in enumerate(out):
        torch.manual_seed(100 + r)
        assert torch.equal(x, torch.rand(6))


def _failing_worker():
    if D.rank() == 1:
        raise ValueError("worker 1 fails before the collective")
    D.default_comm().all_reduce_(torch.zeros(1))
    return D.rank()


def test_a_failing_worker_stops_all_and_raises_in_the_caller():
    with pytest.raises(ValueError, match="worker 1 fails"):
        simulated.run_workers(_failing_worker, 3)


def test_rank_and_exp_dirs_are_per_virtual_worker(tmp_path):
    dirs = simulated.run_workers(lambda: D.rank_exp_dir(str(tmp_path)), 3)
    assert dirs == [str(tmp_path), str(tmp_path / "rank1"), str(tmp_path / "rank2")]
    assert D.rank() == 0 and D.world_size() == 1          # the caller is not a worker


def _selftest(exp, algo, simulate: bool, n: int = 2):
    algo, _, form = algo.partition("-")               # gtc-update: the GTC form after the dash
    base = ["-m", "millionhours.distributed.selftest", "--exp", str(exp), "--algorithm", algo,
            "--block", "3", "--form", form or "gradient"]
    cmd = ([sys.executable, *base, "--simulate", str(n)] if simulate else
           [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(n), *base])
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    subprocess.run(cmd, check=True, capture_output=True, text=True, timeout=300, env=env)
    return [torch.load(exp / f"final_rank{r}.pt") for r in range(n)]


@pytest.mark.slow
@pytest.mark.parametrize("algo,n", [("sync", 2), ("gtc", 2), ("gtc-update", 2), ("gtc-momentum", 2),
                                    ("bmuf", 2), ("two_tier", 4)])
def test_simulated_run_ends_with_torchruns_weights(tmp_path, algo, n):
    """Every all-reduce here has 2 members (two_tier: 2 groups of 2): gloo's sum is a + b, the
    simulated one x0 + x1, so the weights are bit-identical. Each GTC form (Strom's gradient with
    SGD; the Adam update, DL4J; Adam's momentum with a refreshed second moment, 1-bit/0-1 Adam)."""
    real = _selftest(tmp_path / "torchrun", algo, simulate=False, n=n)
    sim = _selftest(tmp_path / "sim", algo, simulate=True, n=n)
    for a, b in zip(real, sim):
        assert torch.equal(a, b)
    if algo in ("sync", "gtc", "gtc-update", "gtc-momentum"):   # between block syncs BMUF's replicas differ by design
        assert all(torch.equal(sim[0], w) for w in sim)
    if algo == "two_tier":                 # GTC keeps the members of a group identical
        assert torch.equal(sim[0], sim[1]) and torch.equal(sim[2], sim[3])


# --------------------------------------------------------------------------- fixed global batch


class ToyStream:
    """A stream of utterances with random features and hard targets (the senone is the argmax of
    the first SENONES features), read by pieces like student.HardStream."""

    def __init__(self, n: int, seed: int, kind: str = "labeled"):
        rng = np.random.default_rng(seed)
        self.lengths = {f"u{seed}-{i:03d}": int(rng.integers(5, 40)) for i in range(n)}
        self.kind = kind

    def read_batch(self, pieces) -> data.Batch:
        items = []
        for utt, a, b in pieces:
            g = torch.Generator().manual_seed(int(utt.split("-")[1]) + 1000 * int(utt[1:3]))
            x = torch.randn(self.lengths[utt], DIM, generator=g).numpy()
            items.append((utt, x[a:b], x[a:b, :SENONES].argmax(1)))
        batch = data.collate(items)
        batch.kind = self.kind
        return batch


def _dataset(world=1, rank=0, split="batches", schedule="interleaved"):
    cfg = schedules.ScheduleConfig(name=schedule, epochs=2, ratio=None, labeled_lr_scale=2.0)
    streams = {schedules.LABELED: ToyStream(12, 11), schedules.MACHINE: ToyStream(40, 22, "oracle")}
    d = {"chunk_frames": 16, "batch_frames": 160, "batch_size": 10, "bucket_width": 4}
    return student.ScheduledBatches(cfg, streams, 5, d, rank=rank, world=world, split=split)


@pytest.mark.parametrize("world", [2, 4, 16])
def test_pieces_split_shares_each_one_process_batch(world):
    one = _dataset()
    shares = [_dataset(world, r, "pieces") for r in range(world)]
    for epoch in (0, 1):
        plan = one.schedule.epoch_plan(epoch)
        assert all(s.num_batches(epoch) == len(plan) for s in shares)     # the same updates
        for i, entry in enumerate(plan):
            whole = one.schedule.batch(entry)
            parts = [s.schedule.batch(s.schedule.epoch_plan(epoch)[i]) for s in shares]
            assert sorted(p for part in parts for p in part) == sorted(whole)
            assert all(s.schedule.epoch_plan(epoch)[i].lr_scale == entry.lr_scale for s in shares)
    if world == 16:                       # batches of <= 10 pieces: some shares are empty
        assert any(not shares[-1].schedule.batch(e) for e in shares[-1].schedule.epoch_plan(0))


class ListSource:
    """fit's BatchSource interface over a ScheduledBatches, read in this process."""

    def __init__(self, ds):
        self.ds = ds

    def num_batches(self, epoch):
        return self.ds.num_batches(epoch)

    def batches(self, epoch, start=0):
        return (self.ds[(epoch, i)] for i in range(start, self.ds.num_batches(epoch)))


def _model():
    torch.manual_seed(0)
    return AcousticModel(ModelConfig(num_senones=SENONES, input_dim=DIM, layers=2, cells=12,
                                     bidirectional=False))


def _fit(exp, world: int, rank: int = 0):
    model = _model()
    cfg = train.TrainConfig(epochs=2, optimizer="sgd", lr=0.2, schedule="const", ckpt_every=0,
                            seed=0)
    ds = _dataset(world, rank, "pieces" if world > 1 else "batches")
    dev = ListSource(_dataset())
    sync = DenseSync() if world > 1 else None
    train.fit(model, ListSource(ds), dev, cfg, D.rank_exp_dir(str(exp)), "toy", results_dir=None,
              sync=sync, log=lambda *a: None, device=torch.device("cpu"))
    return D.flat_data(D.flat_params(model))


@pytest.mark.parametrize("world", [2, 4, 16])
def test_dense_sync_over_a_global_batch_equals_one_process(tmp_path, world):
    """N workers sharing each batch take one process's steps: the same weights up to the float
    order of the sums (loss of a share / (global frames / N), mean of N gradients)."""
    one = _fit(tmp_path / "one", 1)
    sims = simulated.run_workers(lambda: _fit(tmp_path / "sim", world, D.rank()), world)
    assert all(torch.equal(sims[0], w) for w in sims)                   # replicas identical
    assert torch.allclose(sims[0], one, rtol=0, atol=2e-5), (sims[0] - one).abs().max()
    start = D.flat_data(D.flat_params(_model()))
    assert (one - start).abs().max() > 100 * (sims[0] - one).abs().max()   # it did train


# --------------------------------------------------------------------------- GTC's forms


def _fit_sync(exp, make_sync, epochs=2, optimizer="adam", lr=0.01):
    """One virtual worker's toy run over a shared global batch with the sync make_sync() gives;
    returns (final weights, dev CE, the sync)."""
    model = _model()
    cfg = train.TrainConfig(epochs=epochs, optimizer=optimizer, lr=lr, schedule="const",
                            ckpt_every=0, seed=0)
    sync = make_sync()
    ds = _dataset(D.world_size(), D.rank(), "pieces")
    out = train.fit(model, ListSource(ds), ListSource(_dataset()), cfg, D.rank_exp_dir(str(exp)),
                    "toy", results_dir=None, sync=sync, log=lambda *a: None,
                    device=torch.device("cpu"))
    return D.flat_data(D.flat_params(model)), out["last_dev_ce"], sync


# what each form needs to train in 60 toy steps: Strom's form its biases sent dense (without:
# no progress at 10%), 1-bit-Adam's form a warm-up of a quarter of the run (4 steps: diverges)
FORM_ARGS = {"gradient": {"dense_below": 50}, "update": {}, "momentum": {"dense_warmup": 15}}


@pytest.mark.parametrize("form", ["gradient", "update", "momentum"])
def test_each_gtc_form_keeps_replicas_identical_and_trains(tmp_path, form):
    """4 workers, 10% fired: identical replicas, and at least a third of dense sync's dev CE gain."""
    from millionhours.distributed.gtc import GTC
    opt = {"optimizer": "sgd", "lr": 1.0} if form == "gradient" else {}
    run = lambda name, make: simulated.run_workers(
        lambda: _fit_sync(tmp_path / name, make, epochs=6, **opt), 4)
    gtc = run("gtc", lambda: GTC(target_fraction=0.1, form=form, **FORM_ARGS[form]))
    dense = run("dense", DenseSync)
    assert all(torch.equal(gtc[0][0], w) for w, _, _ in gtc)
    start = train.evaluate(_model(), ListSource(_dataset()), torch.device("cpu"), False)["ce"]
    assert start - dense[0][1] > 0.1
    assert start - gtc[0][1] > (start - dense[0][1]) / 3, (start, gtc[0][1], dense[0][1])
    stats = gtc[0][2].stats()
    assert stats["form"] == form and 0 < stats["ratio_to_dense"] < 0.5
    assert 0.03 < stats["fired_fraction_mean"] < 0.3


@pytest.mark.parametrize("form", ["gradient", "update", "momentum"])
def test_dense_warmup_is_dense_sync_bit_for_bit(tmp_path, form):
    """Every form's warm-up steps are dense sync's: the same weights after them."""
    from millionhours.distributed.gtc import GTC
    steps = sum(_dataset().num_batches(e) for e in range(1))      # one epoch, all dense
    gtc = simulated.run_workers(lambda: _fit_sync(
        tmp_path / "g", lambda: GTC(target_fraction=0.05, form=form, dense_warmup=steps),
        epochs=1), 3)
    ref = simulated.run_workers(lambda: _fit_sync(tmp_path / "s", DenseSync, epochs=1), 3)
    assert torch.equal(gtc[0][0], ref[0][0])
    assert gtc[0][2].comm.bytes == ref[0][2].comm.bytes


def test_momentum_form_refreshes_its_second_moment_every_k_steps(tmp_path):
    """refresh_every K: every K-th compressed step one dense all-reduce of the gradient (bytes
    counted) moves the frozen v by beta2^K; replicas stay identical; K = 0 leaves v frozen."""
    from millionhours.distributed.gtc import GTC
    steps = sum(_dataset().num_batches(e) for e in range(2))
    warm, k = 4, 3

    def run(name, refresh):
        make = lambda: GTC(target_fraction=0.1, form="momentum", dense_warmup=warm,
                           refresh_every=refresh)
        return simulated.run_workers(lambda: _fit_sync(tmp_path / name, make), 2)
    frozen, fresh = run("frozen", 0), run("fresh", k)
    assert all(torch.equal(fresh[0][0], w) for w, _, _ in fresh)
    refreshes = (steps - warm) // k
    dense = 4 * fresh[0][2].num_params
    extra = fresh[0][2].comm.bytes - frozen[0][2].comm.bytes
    assert refreshes > 2 and extra > 0
    # each refresh all-reduces the gradient once; the sparse traffic differs run to run a little
    assert abs(extra - refreshes * dense) < 0.5 * dense, (extra, refreshes * dense)
    assert not torch.equal(frozen[0][2].v, fresh[0][2].v)
    assert fresh[0][2].stats()["refresh_every"] == k
    with pytest.raises(ValueError, match="only with form momentum"):
        GTC(target_fraction=0.1, form="update", refresh_every=5)


def test_dense_below_sends_small_tensors_dense(tmp_path):
    """Biases (<= dense_below elements) get the exact dense mean; bigger tensors go sparse."""
    from millionhours.distributed.gtc import GTC

    def one_step():
        torch.manual_seed(D.rank())
        x = torch.randn(30)
        gtc = GTC(target_fraction=0.05, dense_below=10)
        gtc.sizes = [20, 10]
        gtc._start([torch.zeros(20), torch.zeros(10)])
        return x, gtc.compress_mean(x.clone()), gtc.comm.bytes
    out = simulated.run_workers(one_step, 3)
    mean = (out[0][0] + out[1][0] + out[2][0]) / 3
    for _, got, nbytes in out:
        assert torch.allclose(got[20:], mean[20:], atol=1e-6)          # the bias: dense
        assert (got[:20] != 0).sum() <= 3 * 2                          # the matrix: ~5% fired
    assert len({n for _, _, n in out}) == 1


# --------------------------------------------------------------------------- two tiers


def test_split_comm_groups_and_subgroup_collectives():
    def work():
        inner, outer = D.split_comm(3)
        a = inner.all_reduce_(torch.tensor([float(D.rank())]))
        b = outer.all_gather(torch.tensor([D.rank()]))
        return float(a), [int(x) for x in b], (inner.world, inner.rank, outer.world, outer.rank)
    out = simulated.run_workers(work, 6)
    for r, (a, b, shape) in enumerate(out):
        g = r // 3
        assert a == sum(range(3 * g, 3 * g + 3)) and b == [r % 3, r % 3 + 3]
        assert shape == (3, r % 3, 2, r // 3)
    with pytest.raises(ValueError, match="divide"):
        simulated.run_workers(lambda: D.split_comm(4), 6)


def test_two_tier_groups_stay_replicas_and_blocks_merge_them(tmp_path):
    from millionhours.distributed.two_tier import TwoTier
    steps = sum(_dataset().num_batches(e) for e in range(2))
    block = 3
    runs = simulated.run_workers(lambda: _fit_sync(
        tmp_path / "tt", lambda: TwoTier(2, gtc={"target_fraction": 0.05},
                                         bmuf={"block": block}), optimizer="sgd", lr=0.2), 4)
    w = [r[0] for r in runs]
    assert torch.equal(w[0], w[1]) and torch.equal(w[2], w[3])
    assert torch.equal(w[0], w[2]) == (steps % block == 0)
    s = runs[0][2].stats()
    assert s["groups"] == 2 and s["bmuf"]["syncs"] == steps // block
    assert s["bytes_sent_total"] == s["gtc"]["bytes_sent_total"] + s["bmuf"]["bytes_sent_total"]
    assert s["bmuf"]["bytes_sent_total"] == s["bmuf"]["syncs"] * s["bmuf"]["dense_bytes_per_step"]
