"""Distributed student training on torch.distributed: one interface, four algorithms.

`fit` (train.py) calls a sync object at two points of every step:
    loss.backward(); sync.after_backward(model); clip; optimizer.step(); sync.after_step(...)
and saves `sync.state_dict()` in every checkpoint. The algorithms, one module each:
* `sync` (DenseSync): all-reduce of the gradients every step, the accuracy reference;
* `gtc` (GTC): Strom's threshold compression, sparse (index, sign) words all-gathered;
* `bmuf` (BMUF): local steps, a model all-reduce every `block` steps, block momentum;
* `two_tier` (TwoTier): GTC inside groups of workers, BMUF across the groups.

Transports: torch.distributed processes (`Comm`), or N virtual workers in one process
(`simulated.SimComm`, the same algorithm code in lockstep; `default_comm()` picks).

Launch: `torchrun --nproc-per-node N <script>` on one machine; on several,
`torchrun --nnodes M --node-rank R --nproc-per-node N --master-addr HOST --master-port PORT
<script>` on each. A single process needs no launcher (no process group is made).

Checkpoints: one file per rank. GTC residuals and BMUF local models/optimizers differ between
ranks, so each rank saves its own `last.pt` under `rank_exp_dir(exp_dir)` (rank 0 keeps
`exp_dir` itself, so best.pt and results sit where single-process runs put them). One file per
rank needs no collective inside a checkpoint write, so a save can never hang on a dead peer.

Failures: every collective runs under a timeout (params `timeout_s`); a dead or hung peer turns
into `WorkerLost` with a one-line message ("worker 1 died after step 120; rerun the same command
to resume from the last checkpoint"); `run_main` prints it and exits 1.

Bytes: each algorithm counts the bytes this worker hands to its collectives (the logical message:
the tensor it contributes, sizes headers included), excluding the one-off start-up broadcast.
`wire_bytes` estimates what a ring implementation puts on this worker's link:
2(N-1)/N x B for an all-reduce of B bytes, (N-1) x B for an all-gather of B bytes per worker.
"""
from __future__ import annotations

import contextlib
import datetime
import os
import shutil
import signal
import socket
import sys
import time

import torch
import torch.distributed as dist

from millionhours.distributed import simulated
from millionhours.distributed.comm import CommBase

RERUN = "rerun the same command to resume from the last checkpoint"


class WorkerLost(RuntimeError):
    """A peer died or stopped answering; the message is one line meant for the user."""


# --------------------------------------------------------------------------- process group


def init(timeout_s: float = 60.0) -> int:
    """Joins the torchrun job described by RANK/WORLD_SIZE/MASTER_ADDR/MASTER_PORT (no-op for a
    single process) and returns the world size. gloo on CPU, NCCL on GPU (device = LOCAL_RANK).

    The timeout bounds how long a collective waits for a peer: a dead peer's closed sockets are
    usually seen at once, a hung one after timeout_s. It must exceed the largest skew between
    ranks (e.g. rank 0 writing results at an epoch end), not the time between collectives.
    """
    if simulated.current() is not None:         # a virtual worker: no process group
        return world_size()
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and not dist.is_initialized():
        cuda = torch.cuda.is_available()
        if cuda:
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
            os.environ.setdefault("TORCH_NCCL_ASYNC_ERROR_HANDLING", "1")   # timeouts raise
        dist.init_process_group("nccl" if cuda else "gloo",
                                timeout=datetime.timedelta(seconds=timeout_s))
    return world_size()


def rank() -> int:
    ctx = simulated.current()
    if ctx is not None:
        return ctx.rank
    return dist.get_rank() if dist.is_initialized() else 0


def world_size() -> int:
    ctx = simulated.current()
    if ctx is not None:
        return ctx.group.world
    return dist.get_world_size() if dist.is_initialized() else 1


def default_comm():
    """The communicator of this worker: a SimComm in a virtual worker, else a Comm."""
    return simulated.SimComm() if simulated.current() is not None else Comm()


def split_comm(group_size: int):
    """(inner, outer): communicators over this worker's group of `group_size` consecutive ranks,
    and over the workers at its place in every group (rank % group_size). Collective: every
    worker calls it, at the same point."""
    n, r = world_size(), rank()
    if group_size < 1 or n % group_size:
        raise ValueError(f"group size {group_size} must divide the {n} workers")
    inner = [list(range(g, g + group_size)) for g in range(0, n, group_size)]
    outer = [list(range(i, n, group_size)) for i in range(group_size)]
    if simulated.current() is not None:
        return (simulated.SimComm(members=inner[r // group_size]),
                simulated.SimComm(members=outer[r % group_size]))
    if not dist.is_initialized():
        return Comm(), Comm()
    mine = []
    for ranks in inner + outer:          # dist.new_group is collective: every rank makes all
        g = dist.new_group(ranks)
        if r in ranks:
            mine.append(Comm(g))
    return mine[0], mine[1]


def is_main() -> bool:
    return rank() == 0


def rank_exp_dir(exp_dir: str) -> str:
    """Where this rank keeps its checkpoints: exp_dir for rank 0, exp_dir/rank<r> for others."""
    return exp_dir if rank() == 0 else os.path.join(exp_dir, f"rank{rank()}")


def _ckpt_step(path: str) -> int:
    """The optimizer step a checkpoint was written at (-1: none); mmap: no full read."""
    if not os.path.isfile(path):
        return -1
    return int(torch.load(path, map_location="cpu", weights_only=False, mmap=True)["loop"]["step"])


def prepare_resume(ckpt_dir: str, sync) -> None:
    """Collective, before fit: makes every rank resume from the same step, and makes the sync
    keep the previous checkpoint (prev.pt) at each save.

    Ranks save their own last.pt independently, so a worker that dies while the others are
    saving (or torchrun stopping them mid-save) can leave ranks one checkpoint apart. Each rank
    then holds the common step in last.pt or prev.pt; this picks the newest step every rank has
    and moves prev.pt back to last.pt where needed. Needs ckpt_every to be a multiple of BMUF's
    block (so live ranks are never more than one checkpoint apart)."""
    last, prev = os.path.join(ckpt_dir, "last.pt"), os.path.join(ckpt_dir, "prev.pt")
    if sync is not None:
        sync.keep_previous(last, prev)
    if world_size() == 1:
        return
    mine = torch.tensor([_ckpt_step(last), _ckpt_step(prev)], dtype=torch.int64)
    comm = sync.comm if sync is not None else default_comm()
    table = [t.tolist() for t in comm.all_gather(mine, count=False)]
    target = min(t[0] for t in table)
    if mine[0] == target:
        return
    if target >= 0 and mine[1] == target:
        os.replace(prev, last)          # roll this rank back to the common checkpoint
        return
    if target < 0:                      # some rank has none: everyone starts over
        os.replace(last, last + ".abandoned")
        return
    raise WorkerLost(f"rank {rank()} has no checkpoint at step {target}, the newest step all "
                     f"workers have (steps per rank [last, prev]: {table}); delete the ckpt "
                     f"dirs under the exp dir to start over")


def shutdown() -> None:
    if dist.is_initialized() and simulated.current() is None:
        dist.destroy_process_group()


# --------------------------------------------------------------------------- failures

_progress = {"step": 0}          # last finished optimizer step, for messages
_peers: list = []                # (hostname, pid) per rank, gathered when the first Comm is made


def _register_peers() -> None:
    if not _peers and dist.is_initialized():
        out = [None] * world_size()
        dist.all_gather_object(out, (socket.gethostname(), os.getpid()))
        _peers.extend(out)


def _pid_dead(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/status") as f:
            return any(ln.startswith("State:") and "Z" in ln.split()[1] for ln in f)
    except OSError:
        return True


def _dead_ranks(wait_s: float = 3.0) -> list[int]:
    """Peers on this host whose process is gone (or a zombie); waits briefly for one to appear,
    as a closed socket can be noticed before the peer's exit is complete."""
    host, me = socket.gethostname(), rank()
    deadline = time.monotonic() + wait_s
    while True:
        dead = [r for r, (h, pid) in enumerate(_peers)
                if r != me and h == host and _pid_dead(pid)]
        if dead or time.monotonic() > deadline:
            return dead
        time.sleep(0.1)


def failure_message(err: BaseException | None = None) -> str:
    """One line naming the dead worker (when it ran on this host) and this worker's step."""
    step = _progress["step"]
    dead = _dead_ranks() if _peers else []
    if dead:
        who = " and ".join(f"worker {r}" for r in dead)
        return f"{who} died; rank {rank()} stopped at step {step}; {RERUN}"
    cause = str(err).strip().splitlines()[0][:160] if err is not None and str(err).strip() else \
        "no answer"
    return f"lost contact with another worker; rank {rank()} stopped at step {step} ({cause}); " \
           f"{RERUN}"


def _on_sigterm(signum, frame):
    raise WorkerLost(f"stopped by the launcher at step {_progress['step']} (another worker "
                     f"failed); {RERUN}")


def run_main(fn, *args, **kwargs):
    """Runs fn; turns a lost worker (or torchrun's SIGTERM after one failed) into one line on
    stderr and exit status 1. The exception unwinds first, so atomic writes remove their temps;
    then os._exit skips the interpreter's teardown, which could wait on the broken group."""
    signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        return fn(*args, **kwargs)
    except WorkerLost as e:
        print(f"error (rank {rank()}): {e}", file=sys.stderr, flush=True)
        sys.stdout.flush()
        os._exit(1)


# --------------------------------------------------------------------------- counted collectives


class Comm(CommBase):
    """The collectives over a torch.distributed group (None: every process); a collective that
    fails raises WorkerLost."""

    def __init__(self, group=None):
        on = dist.is_initialized()
        super().__init__(dist.get_world_size(group) if on else 1, dist.get_rank(group) if on else 0)
        self.group = group
        _register_peers()

    def _run(self, op, nbytes: int, wire: float, count: bool):
        try:
            return super()._run(op, nbytes, wire, count)
        except (RuntimeError, ValueError) as e:   # DistBackendError etc. subclass RuntimeError
            raise WorkerLost(failure_message(e)) from e

    def _all_reduce(self, t):
        dist.all_reduce(t, group=self.group)

    def _all_gather(self, t):
        out = [torch.empty_like(t) for _ in range(self.world)]
        dist.all_gather(out, t, group=self.group)
        return out

    def _broadcast(self, t, src):
        g = src if self.group is None else dist.get_global_rank(self.group, src)
        dist.broadcast(t, g, group=self.group)


def flat_params(model) -> list[torch.nn.Parameter]:
    return [p for p in model.parameters() if p.requires_grad]


def flat_grad(params) -> torch.Tensor:
    """All gradients as one fp32 vector (a missing grad counts as zero, on every rank alike)."""
    return torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1).float()
                      for p in params])


def set_flat_grad(params, flat: torch.Tensor) -> None:
    for p, g in zip(params, flat.split([p.numel() for p in params])):
        p.grad = g.view_as(p).to(p.dtype)     # views of one buffer: no copy


def dense_mean_grad(comm, params) -> None:
    """Every worker's gradients replaced by their mean over the workers (one fp32 all-reduce)."""
    g = flat_grad(params)
    comm.all_reduce_(g)
    set_flat_grad(params, g.div_(comm.world))


def flat_data(params) -> torch.Tensor:
    return torch.cat([p.detach().reshape(-1).float() for p in params])


@torch.no_grad()
def set_flat_data(params, flat: torch.Tensor) -> None:
    for p, w in zip(params, flat.split([p.numel() for p in params])):
        p.copy_(w.view_as(p))


# --------------------------------------------------------------------------- the interface


class Sync:
    """Base of the algorithms: start-up (same initial model everywhere), resume check, counters.

    Subclasses implement _start(params) (state from the initial model), and any of
    after_backward / after_step / global_weights, calling self._tick(step) from after_step.
    """

    name = "base"

    def __init__(self, comm: Comm | None = None):
        self.comm = comm or default_comm()
        self.world = self.comm.world
        self.started, self.resumed_step = False, 0
        self.steps = 0            # steps seen by after_step (this run and resumed runs)
        self.syncs = 0            # collectives of model/gradient information
        self.bytes_total = 0      # carried across resumes
        self._syncs0 = 0          # syncs at resume: seconds_per_sync covers this run only
        self.num_params = 0
        self.t_start = time.perf_counter()

    # -- start-up and resume
    def prepare(self, model) -> None:
        """Once before the first update (called lazily from the first after_backward): checks
        that all ranks resumed at the same step, and on a fresh start copies rank 0's weights to
        everyone so the replicas start identical even if the seeds were not."""
        if self.started:
            return
        params = flat_params(model)
        self.num_params = sum(p.numel() for p in params)
        steps = self.comm.all_gather(torch.tensor([self.resumed_step], dtype=torch.int64),
                                     count=False)
        steps = [int(s) for s in steps]
        if len(set(steps)) > 1:
            raise WorkerLost("the workers' checkpoints are at different steps (" +
                             ", ".join(f"rank {r}: {s}" for r, s in enumerate(steps)) +
                             "); a worker died while the others were saving: delete the ckpt "
                             "dirs of the ranks ahead, or all of them, and rerun")
        if not self.resumed_step:
            for p in params:
                self.comm.broadcast_(p.data, 0)
        self._start(params)
        self.started = True

    def _start(self, params) -> None:
        pass

    # -- the hooks fit calls
    def after_backward(self, model) -> None:
        self.prepare(model)

    def after_step(self, model, optimizer, step: int) -> None:
        self._tick(step)

    @contextlib.contextmanager
    def global_weights(self, model):
        """Around the epoch-end evaluation and best.pt: the model every rank agrees on. Dense sync
        and GTC replicas are identical after every step, so it is the model itself."""
        yield model

    def _tick(self, step: int) -> None:
        self.steps = step
        _progress["step"] = step

    # -- checkpoints
    def keep_previous(self, last: str, prev: str) -> None:
        self._keep = (last, prev)

    def state_dict(self) -> dict:
        """Called by fit's save_checkpoint just before it writes last.pt: hard-links the current
        last.pt to prev.pt first (no copy), so a rank always has its previous checkpoint too."""
        last, prev = getattr(self, "_keep", (None, None))
        if last and os.path.isfile(last):
            tmp = f"{prev}.tmp{os.getpid()}"
            if os.path.exists(tmp):
                os.remove(tmp)
            try:
                os.link(last, tmp)
            except OSError:                 # a file system without hard links: copy
                shutil.copyfile(last, tmp)
            os.replace(tmp, prev)
        return {"algorithm": self.name, "step": self.steps, "syncs": self.syncs,
                "bytes_total": self.bytes_total + self.comm.bytes}

    def load_state_dict(self, state: dict) -> None:
        if state.get("algorithm") != self.name:
            raise ValueError(f"checkpoint holds '{state.get('algorithm')}' state, this run uses "
                             f"'{self.name}'; use a new exp dir or the same algorithm")
        self.steps = self.resumed_step = int(state["step"])
        self.syncs, self.bytes_total = int(state["syncs"]), int(state["bytes_total"])
        self._syncs0 = self.syncs
        self.comm.bytes = 0
        _progress["step"] = self.steps
        self.started = False        # prepare() runs the resume check, without a broadcast

    # -- reporting
    def dense_bytes_per_step(self) -> int:
        return 4 * self.num_params

    def stats(self) -> dict:
        steps = max(self.steps, 1)
        total = self.bytes_total + self.comm.bytes
        run_steps = max(self.steps - self.resumed_step, 1)
        return {"algorithm": self.name, "world": self.world, "steps": self.steps,
                "syncs": self.syncs, "bytes_sent_total": total, "bytes_per_step": total / steps,
                "dense_bytes_per_step": self.dense_bytes_per_step(),
                "ratio_to_dense": total / steps / max(self.dense_bytes_per_step(), 1),
                "wire_bytes_per_step_est": self.comm.wire_bytes / run_steps,
                "comm_seconds": self.comm.seconds,
                "seconds_per_sync": self.comm.seconds / max(self.syncs - self._syncs0, 1),
                "wall_s": time.perf_counter() - self.t_start}


def make_sync(params: dict | None, world: int | None = None):
    """The sync object for params' `distributed:` block, or None when there is nothing to do.

    params: {"algorithm": "none"|"sync"|"gtc"|"bmuf"|"two_tier", "gtc": {...}, "bmuf": {...},
    "two_tier": {"group_size": G}} (two_tier: GTC with the gtc options in groups of G, BMUF with
    the bmuf options across them); world
    defaults to the process group's size. `sync` on one worker is None (nothing to average);
    gtc and bmuf run on one worker too (the compression / block filter alone, for ablations).
    """
    params = params or {}
    algo = params.get("algorithm", "none")
    world = world or world_size()
    if algo in ("none", None) or (algo == "sync" and world == 1):
        return None
    if algo == "sync":
        from millionhours.distributed.sync import DenseSync
        return DenseSync()
    if algo == "gtc":
        from millionhours.distributed.gtc import GTC
        return GTC(**params.get("gtc", {}))
    if algo == "bmuf":
        from millionhours.distributed.bmuf import BMUF
        return BMUF(**params.get("bmuf", {}))
    if algo == "two_tier":
        from millionhours.distributed.two_tier import TwoTier
        return TwoTier(int((params.get("two_tier") or {}).get("group_size", 16)),
                       gtc=params.get("gtc"), bmuf=params.get("bmuf"))
    raise ValueError(f"distributed.algorithm: unknown '{algo}'; use none, sync, gtc, bmuf or "
                     f"two_tier")


def summary(sync, fit_summary: dict) -> dict:
    """Collective (call on every rank after fit): the job's frames/s over all workers plus the
    sync's stats, to merge into the results JSON."""
    frames = torch.tensor([float(fit_summary.get("train_frames", 0))], dtype=torch.float64)
    comm = sync.comm if sync is not None else default_comm()
    comm.all_reduce_(frames, count=False)
    seconds = fit_summary.get("train_frames", 0) / max(fit_summary.get("frames_per_s", 0), 1e-9)
    out = {"world": world_size(), "train_frames_all_workers": float(frames),
           "frames_per_s_all_workers": float(frames) / max(seconds, 1e-9),
           "train_seconds": seconds}
    if sync is not None:
        out.update(sync.stats())
    return out
