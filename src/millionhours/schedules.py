"""Scheduled learning: which minibatch comes next, from which data stream, at which learning rate.

The student sees two streams of minibatches:
* `labeled`: human-labeled utterances with hard senone targets (the forced alignment);
* `machine`: machine-labeled utterances with the teacher's stored top-k posteriors (soft
  targets); for the `oracle` schedule the same utterances with their true alignments instead.
One pass over a stream is planned by data.plan_batches (chunked, length-bucketed, shuffled), a
pure function of (seed, stream, epoch, pass); this module only decides the order. So the plan of
an epoch is a pure function of (seed, epoch, rank, world_size), and a run resumed at (epoch,
batch index) continues the same sequence in both streams.

Schedules (params `student.schedule`) and what one epoch means for each (one epoch = one
`train.epochs` unit: one dev evaluation, one newbob decision, one metrics row):
* labeled_only: one pass over the labeled stream. All batches at the base learning rate.
* interleaved: one pass over the machine stream with labeled batches spread evenly between its
  batches, `ratio` machine-labeled batches per labeled batch (e.g. ratio 4: m m m m L m m m m L).
  ratio null (natural): n_machine / n_labeled, so one epoch is exactly one pass over each stream
  and both end together. With a fixed ratio an epoch takes round(n_machine / ratio) labeled
  batches from consecutive passes over the labeled data (each pass its own shuffle; the last
  one is cut at the epoch's end). Labeled batches get lr_scale = labeled_lr_scale.
* oracle: interleaved, with the machine stream carrying the true alignments of the unlabeled
  utterances (hard targets): the upper bound a perfect teacher would give the same schedule.
* segregated: the very batches of an interleaved run of the same number of epochs (same plans,
  same lr_scale per batch), reordered over the whole run: every machine-labeled batch of every
  epoch first, then every labeled batch (order: labeled_first for the reverse). Epoch e is the
  e-th slice of that sequence, as long as interleaved's epoch e, so the two runs take the same
  steps, evaluate dev at the same steps and differ only in the order of their batches.

Distributed training: a plan takes (rank, world_size) and a `split`:
* "batches" (equal epochs: each worker a batch of its own, N x fewer updates per epoch): each
  stream's pass is first made a multiple of world_size batches long (by halving its largest
  batches; every frame stays in exactly one batch), then worker r takes batches r, r + world,
  r + 2 world, ... of every pass. So the workers get disjoint shares of both streams whose union
  is the whole plan, every worker takes the same number of steps per epoch, and the interleaving
  pattern (hence the ratio) is the same on every worker.
* "pieces" (fixed global batch): every worker plans the one-process batches and takes pieces r,
  r + world, ... of each, so one step of N workers consumes exactly one batch of the one-process
  run, with the same learning rate and the same number of updates; a batch of fewer than N pieces
  leaves some workers an empty share (they contribute a zero gradient).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

SCHEDULES = ("labeled_only", "interleaved", "segregated", "oracle")
ORDERS = ("machine_first", "labeled_first")
SPLITS = ("batches", "pieces")
LABELED, MACHINE = "labeled", "machine"


@dataclass(frozen=True)
class ScheduleConfig:
    name: str = "interleaved"
    epochs: int = 1                  # train.epochs; segregated reorders over all of them
    ratio: float | None = None       # machine-labeled batches per labeled batch; None = natural
    labeled_lr_scale: float = 2.0    # lr multiplier of labeled batches (not for labeled_only)
    order: str = "machine_first"     # segregated: machine_first | labeled_first

    def __post_init__(self):
        if self.name not in SCHEDULES:
            raise ValueError(f"student.schedule: unknown '{self.name}'; use one of "
                             f"{', '.join(SCHEDULES)}")
        if self.order not in ORDERS:
            raise ValueError(f"student.order: unknown '{self.order}'; use machine_first or "
                             f"labeled_first")
        if self.ratio is not None and not self.ratio > 0:
            raise ValueError(f"student.ratio: {self.ratio} must be > 0 (machine-labeled batches "
                             f"per labeled batch) or null for the natural ratio")
        if not self.labeled_lr_scale > 0:
            raise ValueError(f"student.labeled_lr_scale: {self.labeled_lr_scale} must be > 0")
        if self.epochs < 1:
            raise ValueError(f"train.epochs: {self.epochs} must be >= 1")

    @property
    def streams(self) -> tuple[str, ...]:
        return (LABELED,) if self.name == "labeled_only" else (LABELED, MACHINE)


@dataclass(frozen=True)
class Entry:
    """One step of a plan: batch `index` of pass (epoch, pass_) of `stream`, at lr x lr_scale."""
    stream: str
    epoch: int
    pass_: int
    index: int
    lr_scale: float


# --------------------------------------------------------------------------- pure pieces


def interleave(n_machine: int, n_labeled: int) -> list[bool]:
    """Positions of n_labeled labeled batches (True) among n_machine machine-labeled ones,
    spread evenly, a labeled batch closing each group: (8, 2) -> 4 x False, True, 4 x False, True.
    """
    total = n_machine + n_labeled
    return [(t + 1) * n_labeled // total > t * n_labeled // total for t in range(total)]


def split_for_world(batches: Sequence[list], world: int) -> list[list]:
    """The batches, with the largest (most pieces) halved until there are a multiple of `world`
    of them, and at least `world`. Every piece stays in exactly one batch; world 1: unchanged."""
    out = [list(b) for b in batches]
    while len(out) % world or len(out) < world:
        i = max(range(len(out)), key=lambda j: len(out[j]), default=None)
        if i is None or len(out[i]) < 2:
            raise ValueError(f"cannot give {world} workers an equal number of batches: "
                             f"{len(out)} batch(es) of one piece each; lower batch_frames or "
                             f"chunk_frames, or use fewer workers")
        half = (len(out[i]) + 1) // 2
        out[i:i + 1] = [out[i][:half], out[i][half:]]
    return out


def labeled_count(n_machine: int, n_labeled_pass: int, ratio: float | None) -> int:
    """Labeled batches per epoch (per worker) of an interleaved epoch."""
    if ratio is None:
        return n_labeled_pass
    return max(1, round(n_machine / ratio))


# --------------------------------------------------------------------------- the schedule


PlanFn = Callable[[str, int, int], Sequence[list]]


class Schedule:
    """The per-worker batch plan of every epoch.

    plan_fn(stream, epoch, pass_) -> the batches (lists of pieces) of one pass over that stream:
    the global plan, the same on every worker. `epoch_plan(epoch)` lists this worker's Entry
    objects in step order; `batch(entry)` gives the pieces of one entry.
    """

    def __init__(self, cfg: ScheduleConfig, plan_fn: PlanFn, rank: int = 0, world: int = 1,
                 split: str = "batches"):
        if not 0 <= rank < world:
            raise ValueError(f"rank {rank} must be in 0..world_size-1 (world_size {world})")
        if split not in SPLITS:
            raise ValueError(f"split '{split}': use one of {', '.join(SPLITS)}")
        self.cfg, self.plan_fn, self.rank, self.world = cfg, plan_fn, rank, world
        self.split = split
        # who plans what: "batches" deals whole batches out; "pieces" plans as one process
        self._prank, self._pworld = (rank, world) if split == "batches" else (0, 1)
        self._plans: dict = {}           # (stream, epoch, pass) -> world-split plan (small LRU)
        self._lens: dict = {}            # (stream, epoch, pass) -> its number of batches
        self._epochs: dict = {}          # epoch -> this worker's entries

    # -- streams
    def stream_plan(self, stream: str, epoch: int, pass_: int) -> list[list]:
        key = (stream, epoch, pass_)
        if key not in self._plans:
            if len(self._plans) >= 8:
                self._plans.pop(next(iter(self._plans)))
            self._plans[key] = split_for_world(self.plan_fn(stream, epoch, pass_), self._pworld)
        return self._plans[key]

    def _share(self, stream: str, epoch: int, pass_: int) -> int:
        """Batches per worker of one pass."""
        key = (stream, epoch, pass_)
        if key not in self._lens:
            self._lens[key] = len(self.stream_plan(stream, epoch, pass_))
        return self._lens[key] // self._pworld

    def _mine(self, stream: str, epoch: int, pass_: int, count: int, scale: float) -> list[Entry]:
        """This worker's first `count` batches of pass (epoch, pass_)."""
        return [Entry(stream, epoch, pass_, self._prank + j * self._pworld, scale)
                for j in range(count)]

    def _labeled_entries(self, epoch: int, count: int, scale: float) -> list[Entry]:
        """`count` labeled batches of this worker: consecutive passes (epoch, 0), (epoch, 1), ..."""
        out, pass_ = [], 0
        while len(out) < count:
            n = self._share(LABELED, epoch, pass_)
            out += self._mine(LABELED, epoch, pass_, min(n, count - len(out)), scale)
            pass_ += 1
        return out

    def _interleaved(self, epoch: int) -> tuple[list[Entry], list[Entry]]:
        """(machine entries, labeled entries) of an interleaved epoch on this worker."""
        c = self.cfg
        n_m = self._share(MACHINE, epoch, 0)
        n_l = labeled_count(n_m, self._share(LABELED, epoch, 0), c.ratio)
        return (self._mine(MACHINE, epoch, 0, n_m, 1.0),
                self._labeled_entries(epoch, n_l, c.labeled_lr_scale))

    # -- the plan
    def epoch_plan(self, epoch: int) -> list[Entry]:
        if epoch not in self._epochs:
            if len(self._epochs) >= 4:
                self._epochs.pop(next(iter(self._epochs)))
            self._epochs[epoch] = self._plan(epoch)
        return self._epochs[epoch]

    def _plan(self, epoch: int) -> list[Entry]:
        c = self.cfg
        if c.name == "labeled_only":
            return self._mine(LABELED, epoch, 0, self._share(LABELED, epoch, 0), 1.0)
        if c.name in ("interleaved", "oracle"):
            machine, labeled = self._interleaved(epoch)
            m, l = iter(machine), iter(labeled)
            return [next(l) if is_labeled else next(m)
                    for is_labeled in interleave(len(machine), len(labeled))]
        # segregated: slice `epoch` of the whole run's reordered sequence
        counts = []
        for e in range(c.epochs):
            counts.append((self._share(MACHINE, e, 0),))
            counts[-1] += (labeled_count(counts[-1][0], self._share(LABELED, e, 0), c.ratio),)
        first, second = (MACHINE, LABELED) if c.order == "machine_first" else (LABELED, MACHINE)
        runs = {MACHINE: [(e, n_m) for e, (n_m, _) in enumerate(counts)],
                LABELED: [(e, n_l) for e, (_, n_l) in enumerate(counts)]}
        start = sum(n_m + n_l for n_m, n_l in counts[:epoch])
        length = sum(counts[epoch]) if epoch < c.epochs else 0
        out, pos = [], 0
        for stream in (first, second):
            for e, n in runs[stream]:
                if pos + n > start and pos < start + length:   # this epoch's run overlaps
                    entries = (self._mine(MACHINE, e, 0, n, 1.0) if stream == MACHINE
                               else self._labeled_entries(e, n, c.labeled_lr_scale))
                    lo, hi = max(start - pos, 0), min(start + length - pos, n)
                    out += entries[lo:hi]
                pos += n
        return out

    def num_batches(self, epoch: int) -> int:
        return len(self.epoch_plan(epoch))

    def batch(self, entry: Entry) -> list:
        """This worker's pieces of one entry (split "pieces": its share, possibly empty)."""
        pieces = self.global_batch(entry)
        return pieces if self.split == "batches" else pieces[self.rank::self.world]

    def global_batch(self, entry: Entry) -> list:
        """Every worker's pieces of one entry (split "batches": this worker's batch)."""
        return self.stream_plan(entry.stream, entry.epoch, entry.pass_)[entry.index]

    def position(self, epoch: int, i: int) -> dict[str, str]:
        """Where batch i of `epoch` stands in each stream (for logs: resume points)."""
        plan = self.epoch_plan(epoch)
        out = {}
        for s in self.cfg.streams:
            done = [e for e in plan[:i] if e.stream == s]
            nxt = next((e for e in plan[i:] if e.stream == s), None)
            out[s] = (f"{len(done)} of {sum(e.stream == s for e in plan)} batches done"
                      + (f", next: pass ({nxt.epoch}, {nxt.pass_}) batch {nxt.index}" if nxt
                         else ""))
        return out
