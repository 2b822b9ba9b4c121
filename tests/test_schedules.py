"""Scheduled learning: exact batch order and lr multipliers, epoch accounting, sharding, purity."""
from collections import Counter

import numpy as np
import pytest

from millionhours import data, schedules
from millionhours.schedules import LABELED, MACHINE, Schedule, ScheduleConfig


def counted(n_machine, n_labeled):
    """plan_fn with fixed batch counts; batch i of pass (e, p) is a one-piece batch naming itself."""
    sizes = {MACHINE: n_machine, LABELED: n_labeled}
    return lambda stream, epoch, p: [[(stream, epoch, p, i)] for i in range(sizes[stream])]


def order(plan):
    return [(e.stream[0], e.epoch, e.pass_, e.index, e.lr_scale) for e in plan]


def test_interleaved_fixed_ratio_exact_order():
    s = Schedule(ScheduleConfig("interleaved", ratio=4, labeled_lr_scale=2.0), counted(8, 3))
    m = lambda i: ("m", 0, 0, i, 1.0)
    l = lambda i: ("l", 0, 0, i, 2.0)
    assert order(s.epoch_plan(0)) == [m(0), m(1), m(2), m(3), l(0), m(4), m(5), m(6), m(7), l(1)]
    assert s.num_batches(0) == 10


def test_interleaved_ratio_one_and_fractional():
    s = Schedule(ScheduleConfig("interleaved", ratio=1, labeled_lr_scale=3.0), counted(3, 5))
    assert [(e.stream, e.lr_scale) for e in s.epoch_plan(0)] == \
        [(MACHINE, 1.0), (LABELED, 3.0)] * 3
    # ratio 2.5 on 10 machine batches: 4 labeled, each closing a group of 2-3 machine batches
    s = Schedule(ScheduleConfig("interleaved", ratio=2.5), counted(10, 20))
    kinds = "".join(e.stream[0] for e in s.epoch_plan(0))
    assert kinds == "mmmlmmlmmmlmml" and kinds.count("l") == 4


def test_interleaved_natural_ratio_is_one_pass_of_each():
    s = Schedule(ScheduleConfig("interleaved"), counted(10, 5))
    plan = s.epoch_plan(0)
    assert "".join(e.stream[0] for e in plan) == "mmlmmlmmlmmlmml"
    assert [e.index for e in plan if e.stream == LABELED] == [0, 1, 2, 3, 4]
    assert [e.index for e in plan if e.stream == MACHINE] == list(range(10))


def test_fixed_ratio_cycles_the_labeled_stream_in_fresh_passes():
    s = Schedule(ScheduleConfig("interleaved", ratio=2), counted(12, 2))
    lab = [(e.epoch, e.pass_, e.index) for e in s.epoch_plan(3) if e.stream == LABELED]
    assert lab == [(3, 0, 0), (3, 0, 1), (3, 1, 0), (3, 1, 1), (3, 2, 0), (3, 2, 1)]


def test_labeled_only_and_oracle():
    s = Schedule(ScheduleConfig("labeled_only", labeled_lr_scale=2.0), counted(9, 4))
    assert order(s.epoch_plan(1)) == [("l", 1, 0, i, 1.0) for i in range(4)]
    a = Schedule(ScheduleConfig("oracle", ratio=4), counted(8, 3))
    b = Schedule(ScheduleConfig("interleaved", ratio=4), counted(8, 3))
    assert a.epoch_plan(0) == b.epoch_plan(0)


@pytest.mark.parametrize("order_", ["machine_first", "labeled_first"])
def test_segregated_reorders_the_interleaved_run(order_):
    epochs = 3
    inter = Schedule(ScheduleConfig("interleaved", epochs=epochs, ratio=3), counted(7, 2))
    seg = Schedule(ScheduleConfig("segregated", epochs=epochs, ratio=3, order=order_),
                   counted(7, 2))
    seg_run = [e for ep in range(epochs) for e in seg.epoch_plan(ep)]
    inter_run = [e for ep in range(epochs) for e in inter.epoch_plan(ep)]
    assert Counter(seg_run) == Counter(inter_run)          # the same batches, same lr_scale
    assert [seg.num_batches(e) for e in range(epochs)] == [inter.num_batches(e) for e in range(epochs)]
    first = MACHINE if order_ == "machine_first" else LABELED
    n_first = sum(e.stream == first for e in seg_run)
    assert all(e.stream == first for e in seg_run[:n_first])
    assert all(e.stream != first for e in seg_run[n_first:])
    # within each stream, epochs in order
    for stream in (MACHINE, LABELED):
        eps = [e.epoch for e in seg_run if e.stream == stream]
        assert eps == sorted(eps)
    assert seg.num_batches(epochs) == 0


def lengths_of(n, seed):
    rng = np.random.default_rng(seed)
    return {f"{'ab'[seed % 2]}{i:04d}": int(rng.integers(5, 300)) for i in range(n)}


def real_plan_fn(lengths):
    """Real data.plan_batches per stream and pass (as student.ScheduledBatches does)."""
    return lambda stream, epoch, p: data.plan_batches(lengths[stream], 100 * p + len(stream), epoch,
                                                      chunk_frames=100, batch_frames=800,
                                                      batch_size=8)


def pieces_of(schedule, plan):
    return [piece for e in plan for piece in schedule.batch(e)]


@pytest.mark.parametrize("name,ratio", [("interleaved", None), ("interleaved", 3.0),
                                        ("oracle", None), ("segregated", None),
                                        ("labeled_only", None)])
def test_sharding_world_1_and_2(name, ratio):
    lengths = {MACHINE: lengths_of(300, 1), LABELED: lengths_of(45, 2)}
    cfg = ScheduleConfig(name, epochs=2, ratio=ratio)
    all_pieces = {s: Counter(p for u, n in lengths[s].items() for p in data.chunk(u, n, 100))
                  for s in lengths}
    for world in (1, 2):
        workers = [Schedule(cfg, real_plan_fn(lengths), r, world) for r in range(world)]
        for epoch in range(2):
            plans = [w.epoch_plan(epoch) for w in workers]
            assert len({len(p) for p in plans}) == 1            # same steps on every worker
            assert len({tuple(e.stream for e in p) for p in plans}) == 1   # same pattern
            entries = [e for p in plans for e in p]
            assert len(set(entries)) == len(entries)            # disjoint shares
            if name in ("interleaved", "oracle") and ratio is None:
                # natural ratio: per epoch, every frame of each stream exactly once over the workers
                for s in (MACHINE, LABELED):
                    got = Counter(piece for w, p in zip(workers, plans)
                                  for piece in pieces_of(w, [e for e in p if e.stream == s]))
                    assert got == all_pieces[s]
            if name == "labeled_only":
                got = Counter(piece for w, p in zip(workers, plans) for piece in pieces_of(w, p))
                assert got == all_pieces[LABELED]
            # union over workers = the whole world-split plan of every pass used
            for key in {(e.stream, e.epoch, e.pass_) for e in entries}:
                used = sorted(e.index for e in entries if (e.stream, e.epoch, e.pass_) == key)
                whole = len(workers[0].stream_plan(*key))
                if name != "segregated" and (key[0] == MACHINE or ratio is None):
                    assert used == list(range(whole))
        if name == "interleaved" and ratio == 3.0:
            for p in plans:                                     # the ratio holds on every worker
                n_m, n_l = sum(e.stream == MACHINE for e in p), sum(e.stream == LABELED for e in p)
                assert n_l == max(1, round(n_m / 3.0))
        if name == "segregated":          # over the whole run: every machine frame twice, etc.
            run = [(w, e) for w in workers for ep in range(2) for e in w.epoch_plan(ep)]
            got = Counter(piece for w, e in run if e.stream == MACHINE for piece in w.batch(e))
            assert got == Counter({p: 2 for p in all_pieces[MACHINE]})


def test_world_split_keeps_every_piece():
    batches = [[1, 2, 3], [4], [5, 6], [7, 8, 9, 10], [11]]
    for world in (1, 2, 3, 4, 7):
        out = schedules.split_for_world(batches, world)
        assert len(out) % world == 0 and len(out) >= world
        assert sorted(p for b in out for p in b) == list(range(1, 12))
        assert all(b for b in out)
    assert schedules.split_for_world(batches, 1) == batches
    with pytest.raises(ValueError, match="fewer workers"):
        schedules.split_for_world([[1], [2], [3]], 2)


def test_plan_is_a_pure_function():
    lengths = {MACHINE: lengths_of(200, 3), LABELED: lengths_of(40, 4)}
    cfg = ScheduleConfig("interleaved", epochs=3, ratio=2.0)
    a, b = Schedule(cfg, real_plan_fn(lengths), 1, 2), Schedule(cfg, real_plan_fn(lengths), 1, 2)
    for ep in (2, 0, 1):                         # any order of asking gives the same plans
        assert a.epoch_plan(ep) == b.epoch_plan(ep)
        assert [a.batch(e) for e in a.epoch_plan(ep)] == [b.batch(e) for e in b.epoch_plan(ep)]
    assert [a.batch(e) for e in a.epoch_plan(0)] != [a.batch(e) for e in a.epoch_plan(1)]


def test_position_names_both_streams():
    s = Schedule(ScheduleConfig("interleaved", ratio=4), counted(8, 3))
    pos = s.position(0, 6)
    assert pos[MACHINE].startswith("5 of 8 batches done") and pos[LABELED].startswith("1 of 2")


@pytest.mark.parametrize("kw,match", [({"name": "mixed"}, "unknown 'mixed'"),
                                      ({"ratio": 0}, "ratio"), ({"order": "both"}, "order"),
                                      ({"labeled_lr_scale": 0}, "labeled_lr_scale")])
def test_bad_config(kw, match):
    with pytest.raises(ValueError, match=match):
        ScheduleConfig(**kw)
