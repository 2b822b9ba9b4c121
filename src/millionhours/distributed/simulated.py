"""Simulated workers: N virtual workers in one process, a second exact transport for the same code.

The paper trained on 16 (GTC) and 64 (BMUF) GPUs; this machine has 2 cores. `run_workers(fn, N)`
runs fn once per virtual worker, each in its own thread, through the same training code and the
same algorithm classes as a torchrun job: `rank()`, `world_size()`, `rank_exp_dir()` answer per
virtual worker, and `default_comm()` hands each worker a `SimComm`, whose collectives have the
interface and byte counting of `Comm` (all_reduce_, all_gather, broadcast_), over all workers or
a subset of them (`members`: the groups of the two-tier algorithm).

Lockstep: one worker runs at a time. Workers take turns in rank order, switching only inside a
collective: worker r deposits its tensor and hands the turn to r + 1; the last one to deposit
computes the result (a sum in rank order: x0 + x1 + ... + x_{N-1}) and hands the turn back to 0;
each worker then reads the result when its turn comes again. So a run is deterministic, and the
global RNGs (torch's: dropout; numpy's, Python's) are each worker's own: their states are saved
when the worker hands the turn on and restored when it gets it back, as if each were a process. At N = 2 the
sum is bit-identical to gloo's all-reduce (a + b); for N > 2 gloo's ring sums in another order
(the results then agree to float rounding). Memory is N models, optimizers and algorithm states;
the time is the sum of the workers' (each on its share of the job's threads, as a torchrun worker).
"""
from __future__ import annotations

import random
import threading
import time

import numpy as np
import torch

from millionhours.distributed.comm import CommBase

_local = threading.local()          # .ctx: the WorkerContext of a virtual worker's thread


class Aborted(RuntimeError):
    """Another virtual worker failed; this one stops at its next collective."""


class SimGroup:
    """The shared state of N virtual workers: whose turn it is, the deposits, the results."""

    def __init__(self, world: int):
        if world < 1:
            raise ValueError(f"simulated workers: world must be >= 1, got {world}")
        self.world = world
        self.gates = [threading.Semaphore(0) for _ in range(world)]   # one per worker: passing
        self.gates[0].release()                 # the turn wakes only the next worker, not all N
        self.turn = 0
        self.failed: BaseException | None = None
        self.slots: dict = {}                    # (members, seq) -> {rank: deposit}
        self.results: dict = {}                  # (members, seq) -> [result, readers left]
        self.busy_s = [0.0] * world              # each worker's time while it holds the turn
        self.rng = [None] * world                # each worker's RNG states while it waits

    # -- turns
    def wait_turn(self, rank: int) -> None:
        self.gates[rank].acquire()
        if self.failed is not None:
            self.gates[rank].release()          # stays open: a later wait here stops too
            raise Aborted("another virtual worker failed")
        if self.rng[rank] is not None:
            torch_state, np_state, py_state = self.rng[rank]
            torch.set_rng_state(torch_state)
            np.random.set_state(np_state)
            random.setstate(py_state)
        _local.ctx.t_turn = time.perf_counter()

    def pass_turn(self, rank: int) -> None:
        ctx = _local.ctx
        self.busy_s[rank] += time.perf_counter() - ctx.t_turn
        self.rng[rank] = (torch.get_rng_state(), np.random.get_state(), random.getstate())
        self.turn = (rank + 1) % self.world
        self.gates[self.turn].release()

    def fail(self, err: BaseException) -> None:
        if self.failed is None:
            self.failed = err
        for gate in self.gates:                 # wake every waiting worker: each sees `failed`
            gate.release()

    # -- one collective
    def collective(self, rank: int, members: tuple, seq: int, value, combine):
        """Deposits `value` for collective `seq` of `members`; when every member has,
        combine(their values in rank order) is the result each gets (computed once, by the last
        depositor). Every worker makes the same sequence of collectives (over its own groups),
        so all members of a group deposit within one round of turns."""
        key = (members, seq)
        self.slots.setdefault(key, {})[rank] = value
        if rank == members[-1]:
            got = self.slots.pop(key)
            self.results[key] = [combine([got[r] for r in members]), len(members)]
        self.pass_turn(rank)
        self.wait_turn(rank)
        entry = self.results[key]
        entry[1] -= 1
        if not entry[1]:
            del self.results[key]
        return entry[0]


class WorkerContext:
    def __init__(self, group: SimGroup, rank: int):
        self.group, self.rank = group, rank
        self.seq: dict = {}              # members -> collectives made over them so far
        self.t_turn = 0.0


def current() -> WorkerContext | None:
    """The virtual worker this thread is, or None in a normal process."""
    return getattr(_local, "ctx", None)


class SimComm(CommBase):
    """`Comm`'s collectives between the virtual workers of one process (all of them, or the
    group `members`), counted by the same CommBase."""

    def __init__(self, ctx: WorkerContext | None = None, members=None):
        ctx = ctx or current()
        if ctx is None:
            raise RuntimeError("SimComm outside a virtual worker (use run_workers)")
        self.ctx = ctx
        self.members = tuple(sorted(members if members is not None else range(ctx.group.world)))
        if ctx.rank not in self.members:
            raise ValueError(f"worker {ctx.rank} is not in the group {list(self.members)}")
        super().__init__(len(self.members), self.members.index(ctx.rank))

    def _exchange(self, value, combine):
        ctx = self.ctx
        ctx.seq[self.members] = seq = ctx.seq.get(self.members, 0) + 1
        return ctx.group.collective(ctx.rank, self.members, seq, value, combine)

    def _all_reduce(self, t):
        def total(xs):                       # rank order: x0 + x1 + ... (gloo at N = 2: a + b)
            acc = xs[0].clone()
            for x in xs[1:]:
                acc.add_(x)
            return acc
        t.copy_(self._exchange(t.clone(), total))

    def _all_gather(self, t):
        return [x.clone() for x in self._exchange(t.clone(), list)]

    def _broadcast(self, t, src):
        t.copy_(self._exchange(t.clone(), lambda xs: xs[src]))


def run_workers(fn, world: int, *args, **kwargs) -> list:
    """Runs fn(*args, **kwargs) as `world` virtual workers (ranks 0..world-1, in lockstep); returns
    their return values in rank order. An exception in one worker stops all of them and is
    re-raised here. Each worker's busy seconds are in `last_busy_s` afterwards."""
    group = SimGroup(world)
    out, errors = [None] * world, [None] * world

    def body(rank: int) -> None:
        _local.ctx = WorkerContext(group, rank)
        try:
            group.wait_turn(rank)
            out[rank] = fn(*args, **kwargs)
            group.pass_turn(rank)       # done: the next worker runs to its end too
        except Aborted:
            pass
        except BaseException as e:      # noqa: BLE001  (re-raised in the caller's thread)
            errors[rank] = e
            group.fail(e)
        finally:
            _local.ctx = None

    threads = [threading.Thread(target=body, args=(r,), name=f"vworker{r}", daemon=True)
               for r in range(world)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    run_workers.last_busy_s = list(group.busy_s)
    err = next((e for e in errors if e is not None), None)
    if err is not None:
        raise err
    return out


run_workers.last_busy_s = []


def state_bytes(model, sync=None) -> int:
    """What one worker holds: weights, gradients and Adam's two moments (4 x the parameters),
    plus the algorithm's own tensors (GTC's residual, BMUF's global model and momentum)."""
    n = 4 * sum(p.numel() * p.element_size() for p in model.parameters())
    if sync is not None:
        n += sum(v.numel() * v.element_size() for v in vars(sync).values() if torch.is_tensor(v))
    return n
