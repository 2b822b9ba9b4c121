"""Top-k teacher-posterior store: round trips, atomicity, bad input, soft targets and soft CE."""
import json
import multiprocessing as mp
import os
import signal

import numpy as np
import pytest
import torch

from millionhours import topk
from millionhours.topk import (ShardWriter, TopKStore, TopKStoreError, shard_done, soft_ce,
                               soft_targets, topk_from_logits)

S, K, HASH = 300, 20, "ab" * 32


def fake_utt(seed: int, num_senones=S, k=K, frames=None):
    """Deterministic teacher output for one utterance: (ids uint16, log-posteriors float16).

    numpy only: forked writer processes must not run torch ops (its thread pool can deadlock
    in a child forked after the parent used it).
    """
    rng = np.random.default_rng(seed)
    t = frames if frames is not None else 3 + seed % 7
    logits = rng.standard_normal((t, num_senones)) * 3
    lp = logits - np.log(np.exp(logits).sum(1, keepdims=True))
    ids = np.argsort(-lp, axis=1, kind="stable")[:, :k]
    return ids.astype(np.uint16), np.take_along_axis(lp, ids, 1).astype(np.float16)


def utt_name(shard: int, i: int) -> str:
    return f"spk{shard}-utt{i:03d}"


def write_shard(store, shard, n_utts=4, **kw):
    args = dict(k=K, num_senones=S, frame_shift_ms=30, teacher_hash=HASH)
    args.update(kw)
    with ShardWriter(store, shard, **args) as w:
        for i in range(n_utts):
            w.add(utt_name(shard, i), *fake_utt(100 * shard + i, args["num_senones"], args["k"]))


def _worker(store, shard):
    write_shard(store, shard)


def _killed_worker(store, shard):
    w = ShardWriter(store, shard, K, S, 30, HASH)
    w.add("x-1", *fake_utt(1))
    os.kill(os.getpid(), signal.SIGKILL)


def _run(target, *args):
    p = mp.get_context("fork").Process(target=target, args=args)
    p.start()
    p.join(20)
    if p.is_alive():
        p.kill()
        p.join()
        pytest.fail("writer process hung")
    return p.exitcode


# -- round trip ---------------------------------------------------------------------------------

def test_round_trip_parallel_shards(tmp_path):
    store = str(tmp_path / "store")
    procs = [mp.get_context("fork").Process(target=_worker, args=(store, s)) for s in range(3)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(20)
        if p.is_alive():
            p.kill()
        assert p.exitcode == 0
    assert all(shard_done(store, s) for s in range(3))
    st = TopKStore(store, expect_k=K, expect_num_senones=S, expect_teacher_hash=HASH)
    assert len(st) == 12 and st.utts == sorted(st.utts)
    for s in range(3):
        for i in range(4):
            ids, lp = fake_utt(100 * s + i)
            got_ids, got_lp = st.get(utt_name(s, i))
            assert got_ids.dtype == np.uint16 and got_lp.dtype == np.float16
            np.testing.assert_array_equal(got_ids, ids)
            assert got_lp.tobytes() == lp.tobytes()  # bit-exact float16
            assert st.num_frames(utt_name(s, i)) == len(ids)
    assert st.total_frames == sum(len(fake_utt(100 * s + i)[0]) for s in range(3) for i in range(4))
    assert "spk0-utt000" in st and "nope" not in st
    with pytest.raises(KeyError, match="nope"):
        st.get("nope")


def test_bytes_per_frame_and_ratio(tmp_path):
    store = str(tmp_path / "s")
    write_shard(store, 0, n_utts=1)
    st = TopKStore(store)
    assert st.bytes_per_frame == 4 * K == 80
    assert st.compression_vs_dense_float32 == pytest.approx(4 * S / 80)
    data = os.path.join(topk.shard_dir(store, 0), "data.bin")
    assert os.path.getsize(data) == 80 * st.total_frames
    assert topk.bytes_per_frame(20, 3000) == 80
    assert topk.bytes_per_frame(3000, 3000, dense=True) == 6000
    assert 4 * 3000 / topk.bytes_per_frame(20, 3000) == 150
    rep = st.storage_report()
    assert rep["bytes_per_frame"] == 80 and rep["dense_float32_bytes_per_frame"] == 4 * S


def test_get_is_memmap_slice_of_one_utterance(tmp_path):
    store = str(tmp_path / "s")
    write_shard(store, 0, n_utts=3)
    st = TopKStore(store)
    si, off, n = st._where[utt_name(0, 1)]
    ids, lp = st.get(utt_name(0, 1))
    assert isinstance(ids, np.memmap) and isinstance(lp, np.memmap)
    mm = st._memmap(si)
    base = mm.ctypes.data
    for a in (ids, lp):  # the view's bytes lie inside this utterance's records only
        start = a.ctypes.data - base
        end = start + (a.shape[0] - 1) * a.strides[0] + (a.shape[1] - 1) * a.strides[1] + 2
        assert off * 80 <= start and end <= (off + n) * 80
        assert not a.flags.writeable
    # Garbage in the other utterances does not affect this one.
    data = os.path.join(topk.shard_dir(store, 0), "data.bin")
    raw = bytearray(open(data, "rb").read())
    raw[:off * 80] = b"\xff" * (off * 80)
    raw[(off + n) * 80:] = b"\xff" * (len(raw) - (off + n) * 80)
    open(data, "wb").write(bytes(raw))
    ids2, lp2 = TopKStore(store).get(utt_name(0, 1))
    np.testing.assert_array_equal(ids2, fake_utt(1)[0])


def test_get_with_smaller_k(tmp_path):
    store = str(tmp_path / "s")
    write_shard(store, 0, n_utts=1)
    ids, lp = TopKStore(store).get(utt_name(0, 0), k=5)
    ref = fake_utt(0, k=5)
    np.testing.assert_array_equal(ids, ref[0])
    np.testing.assert_array_equal(lp, ref[1])
    with pytest.raises(ValueError):
        TopKStore(store).get(utt_name(0, 0), k=K + 1)


def test_dense_mode_round_trip(tmp_path):
    store, s = str(tmp_path / "d"), 50
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(6, s, generator=g)
    full = torch.log_softmax(logits, -1).numpy()
    with ShardWriter(store, 0, s, s, 30, HASH, dense=True) as w:
        w.add("u1", None, full)                        # senone order
        ids, lp = topk_from_logits(logits, s)          # sorted order, scattered back
        w.add("u2", ids, lp)
    st = TopKStore(store, expect_k=s, expect_num_senones=s)
    assert st.is_dense and st.bytes_per_frame == 2 * s
    for u in ("u1", "u2"):
        ids, lp = st.get(u)
        np.testing.assert_array_equal(ids, np.broadcast_to(np.arange(s), (6, s)))
        assert lp.tobytes() == full.astype(np.float16).tobytes()
        assert isinstance(lp, np.memmap)
    ids5, lp5 = st.get("u1", k=5)      # top-5 of the float16 row: ties may swap ids, not values
    np.testing.assert_array_equal(lp5, topk_from_logits(logits, 5)[1])
    np.testing.assert_array_equal(np.take_along_axis(st.get("u1")[1], ids5.astype(int), 1), lp5)
    t = st.targets("u1")
    assert torch.allclose(t, torch.softmax(torch.from_numpy(full.astype(np.float16)).double(), -1)
                          .float(), atol=1e-6)
    with pytest.raises(TopKStoreError, match="permutation"):
        with ShardWriter(store, 1, s, s, 30, HASH, dense=True) as w:
            w.add("u3", np.zeros((6, s), int), full)
    with pytest.raises(TopKStoreError, match="k == num_senones"):
        ShardWriter(store, 2, 10, s, 30, HASH, dense=True)


def test_add_sorts_and_validates(tmp_path):
    store = str(tmp_path / "s")
    ids, lp = fake_utt(5)
    perm = np.random.default_rng(0).permuted(np.tile(np.arange(K), (len(ids), 1)), axis=1)
    with ShardWriter(store, 0, K, S, 30, HASH) as w:
        w.add("u", np.take_along_axis(ids, perm, 1), np.take_along_axis(lp, perm, 1))
        with pytest.raises(TopKStoreError, match="0..299"):
            w.add("v", ids.astype(int) + S, lp)
        with pytest.raises(TopKStoreError, match="shape"):
            w.add("v", ids[:, :5], lp[:, :5])
        with pytest.raises(TopKStoreError, match="log_softmax"):
            w.add("v", ids, lp.astype(np.float32) + 5)   # raw logits, not log-posteriors
        with pytest.raises(TopKStoreError, match="twice"):
            w.add("u", ids, lp)
        dup = ids.copy()
        dup[:, 1] = dup[:, 0]
        with pytest.raises(TopKStoreError, match="same senone"):
            w.add("v", dup, lp)
    got = TopKStore(store).get("u")
    np.testing.assert_array_equal(got[1], lp)  # values sorted back to descending
    np.testing.assert_array_equal(np.sort(got[0], 1), np.sort(ids, 1))


# -- atomicity ----------------------------------------------------------------------------------

def test_exception_leaves_no_shard(tmp_path):
    store = str(tmp_path / "s")
    with pytest.raises(RuntimeError):
        with ShardWriter(store, 0, K, S, 30, HASH) as w:
            w.add("u", *fake_utt(0))
            raise RuntimeError("labeling crashed")
    assert not shard_done(store, 0)
    assert os.listdir(store) == []


def test_killed_writer_leaves_no_finished_shard(tmp_path):
    store = str(tmp_path / "s")
    write_shard(store, 1, n_utts=1)
    assert _run(_killed_worker, store, 0) == -signal.SIGKILL
    assert not shard_done(store, 0)
    assert any(".tmp-" in n for n in os.listdir(store))   # the debris is there, but ignored
    assert TopKStore(store).utts == [utt_name(1, 0)]
    write_shard(store, 0, n_utts=2)                        # rerun finishes it and cleans up
    assert shard_done(store, 0) and not any(".tmp-" in n for n in os.listdir(store))
    assert len(TopKStore(store)) == 3


def test_never_overwrites_unless_told(tmp_path):
    store = str(tmp_path / "s")
    write_shard(store, 0, n_utts=1)
    with pytest.raises(TopKStoreError, match="overwrite=True"):
        ShardWriter(store, 0, K, S, 30, HASH)
    write_shard(store, 0, n_utts=2, overwrite=True)
    assert len(TopKStore(store)) == 2
    assert sorted(os.listdir(store)) == ["shard-00000"]


# -- bad input ----------------------------------------------------------------------------------

def _shard_file(store, name):
    return os.path.join(topk.shard_dir(store, 0), name)


def test_truncated_shard(tmp_path):
    store = str(tmp_path / "s")
    write_shard(store, 0, n_utts=2)
    data = _shard_file(store, "data.bin")
    os.truncate(data, os.path.getsize(data) - 80)
    with pytest.raises(TopKStoreError, match=r"data\.bin: truncated.*relabel"):
        TopKStore(store)


@pytest.mark.parametrize("kw,match", [
    ({"expect_k": 10}, "k is 20 but 10"),
    ({"expect_num_senones": 3000}, "num_senones is 300 but 3000"),
    ({"expect_teacher_hash": "cd" * 32}, "teacher_hash"),
])
def test_header_mismatch(tmp_path, kw, match):
    store = str(tmp_path / "s")
    write_shard(store, 0, n_utts=1)
    with pytest.raises(TopKStoreError, match=match) as e:
        TopKStore(store, **kw)
    assert "header.json" in str(e.value) and "\n" not in str(e.value)


def test_shards_disagree(tmp_path):
    store = str(tmp_path / "s")
    write_shard(store, 0, n_utts=1)
    write_shard(store, 1, n_utts=1, teacher_hash="cd" * 32)
    with pytest.raises(TopKStoreError, match="shard-00001/header.json: teacher_hash"):
        TopKStore(store)


def test_duplicate_utterance_across_shards(tmp_path):
    store = str(tmp_path / "s")
    write_shard(store, 0, n_utts=1)
    with ShardWriter(store, 1, K, S, 30, HASH) as w:
        w.add(utt_name(0, 0), *fake_utt(0))
    with pytest.raises(TopKStoreError, match=r"spk0-utt000 is also in .*shard-00000"):
        TopKStore(store)


def test_unknown_version(tmp_path):
    store = str(tmp_path / "s")
    write_shard(store, 0, n_utts=1)
    hp = _shard_file(store, "header.json")
    h = json.load(open(hp))
    h["version"] = 99
    json.dump(h, open(hp, "w"))
    with pytest.raises(TopKStoreError, match="unknown format version 99"):
        TopKStore(store)


def test_empty_store(tmp_path):
    with pytest.raises(TopKStoreError, match="no such store"):
        TopKStore(str(tmp_path / "missing"))
    os.makedirs(tmp_path / "empty")
    with pytest.raises(TopKStoreError, match="no finished shards"):
        TopKStore(str(tmp_path / "empty"))


# -- targets and loss ---------------------------------------------------------------------------

def test_topk_from_logits_matches_torch():
    logits = torch.randn(9, S) * 4
    ids, lp = topk_from_logits(logits, K)
    ref_v, ref_i = torch.topk(torch.log_softmax(logits, -1), K, dim=-1)
    assert ids.dtype == np.uint16 and lp.dtype == np.float16 and ids.shape == (9, K)
    np.testing.assert_array_equal(ids, ref_i.numpy())
    np.testing.assert_array_equal(lp, ref_v.numpy().astype(np.float16))
    assert (np.diff(lp.astype(np.float32), axis=1) <= 0).all()


def _dense_uniform_residual(lp, ids, s, t):
    """Reference: rebuild the full distribution, temper it, renormalize (float64)."""
    p = torch.exp(torch.as_tensor(lp, dtype=torch.float64))
    r = (1 - p.sum(1, keepdim=True)).clamp_min(0)
    full = (r / (s - p.shape[1])).expand(len(p), s).clone()
    full.scatter_(1, torch.as_tensor(ids.astype(np.int64)), p)
    q = full ** (1 / t)
    return q / q.sum(1, keepdim=True)


@pytest.mark.parametrize("t", [0.5, 1.0, 2.0, 5.0])
def test_soft_targets_sum_to_one(t):
    ids, lp = fake_utt(3, frames=12)
    for mode in ("renorm", "uniform_residual"):
        q = soft_targets(ids, lp, S, mode, t)
        assert q.shape == (12, S) and q.dtype == torch.float32 and (q >= 0).all()
        assert torch.allclose(q.sum(1), torch.ones(12), atol=1e-6)
    ren = soft_targets(ids, lp, S, "renorm", t).double()
    kept = torch.softmax(torch.as_tensor(lp.astype(np.float64)) / t, -1)
    assert torch.allclose(ren.gather(1, torch.as_tensor(ids.astype(np.int64))), kept, atol=1e-7)
    assert int((ren > 0).sum()) == 12 * K
    ur = soft_targets(ids, lp, S, "uniform_residual", t).double()
    assert torch.allclose(ur, _dense_uniform_residual(lp, ids, S, t), atol=1e-7)
    if t == 1.0:  # kept posteriors are the teacher's own
        assert torch.allclose(ur.gather(1, torch.as_tensor(ids.astype(np.int64))),
                              torch.exp(torch.as_tensor(lp.astype(np.float64))), atol=1e-7)


@pytest.mark.parametrize("mode", ["renorm", "uniform_residual"])
@pytest.mark.parametrize("t", [0.5, 1.0, 3.0])
@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_soft_ce_matches_dense(mode, t, reduction):
    ids, lp = fake_utt(7, frames=16)
    logits = torch.randn(16, S, dtype=torch.float64) * 2
    outs = []
    for sparse in (True, False):
        x = logits.clone().requires_grad_(True)
        logp = torch.log_softmax(x, -1)
        if sparse:
            loss = soft_ce(logp, torch.as_tensor(ids.astype(np.int64)), lp, mode, t, reduction)
        else:
            per = -(soft_targets(ids, lp, S, mode, t, dtype=torch.float64) * logp).sum(1)
            loss = per.mean() if reduction == "mean" else per.sum()
        loss.backward()
        outs.append((loss.detach(), x.grad))
    assert torch.allclose(outs[0][0], outs[1][0], atol=1e-5, rtol=0)
    assert torch.allclose(outs[0][1], outs[1][1], atol=1e-5, rtol=0)


def test_soft_ce_float32_numpy_inputs():
    ids, lp = fake_utt(8, frames=5)          # straight from the store's dtypes (uint16, float16)
    logp = torch.log_softmax(torch.randn(5, S), -1).requires_grad_(True)
    for mode in ("renorm", "uniform_residual"):
        loss = soft_ce(logp, ids, lp, mode)
        dense = -(soft_targets(ids, lp, S, mode) * logp).sum(1).mean()
        assert torch.allclose(loss, dense, atol=1e-5)
    assert soft_ce(logp, ids, lp, reduction="none").shape == (5,)


def test_full_k_modes_agree():
    logits = torch.randn(4, 30)
    ids, lp = topk_from_logits(logits, 30)
    a = soft_targets(ids, lp, 30, "renorm")
    b = soft_targets(ids, lp, 30, "uniform_residual")
    assert torch.allclose(a, b, atol=1e-6)


def test_add_batch_equals_add(tmp_path):
    """add_batch of a padded batch stores exactly what add does utterance by utterance."""
    utts = [fake_utt(i, frames=n) for i, n in enumerate([7, 3, 9, 1])]
    lengths = [len(ids) for ids, _ in utts]
    ids_b = np.zeros((4, 9, K), np.uint16)
    lp_b = np.full((4, 9, K), np.nan, np.float16)     # padding is never looked at
    for b, (ids, lp) in enumerate(utts):
        ids_b[b, :len(ids)], lp_b[b, :len(ids)] = ids, lp
    lp_b[2, 0, :] = lp_b[2, 0, ::-1]                  # an unsorted row is sorted, as by add
    ids_b[2, 0, :] = ids_b[2, 0, ::-1]
    names = [f"u{b}" for b in range(4)]
    with ShardWriter(str(tmp_path / "a"), 0, K, S, 30, HASH) as w:
        for name, (ids, lp) in zip(names, utts):
            w.add(name, ids, lp)
    with ShardWriter(str(tmp_path / "b"), 0, K, S, 30, HASH) as w:
        w.add_batch(names[:2], lengths[:2], ids_b[:2], lp_b[:2])
        w.add_batch(names[2:], lengths[2:], ids_b[2:], lp_b[2:])
    for f in ("data.bin", "index.txt"):
        assert (tmp_path / "a" / "shard-00000" / f).read_bytes() == \
            (tmp_path / "b" / "shard-00000" / f).read_bytes()

    bad = lp_b.copy()
    bad[1, 2, 0] = np.nan
    with ShardWriter(str(tmp_path / "c"), 0, K, S, 30, HASH) as w:
        with pytest.raises(TopKStoreError, match="'u1'.*NaN"):    # names the utterance
            w.add_batch(names, lengths, ids_b, bad)
        dup = ids_b.copy()
        dup[3, 0, 1] = dup[3, 0, 0]
        with pytest.raises(TopKStoreError, match="'u3'.*same senone"):
            w.add_batch(names, lengths, dup, lp_b)
        with pytest.raises(TopKStoreError, match="repeat"):
            w.add_batch(["x", "x"], [1, 1], ids_b[:2], lp_b[:2])
        w.add_batch(names, lengths, ids_b, lp_b)               # failed calls wrote nothing
    assert TopKStore(str(tmp_path / "c")).total_frames == sum(lengths)
