"""The student's data: a labeled stream, a machine-labeled (or oracle) stream, one scheduled dataset.

* labeled stream: feature data dir + stage-3 targets (hard senone ids), as for the teacher;
* machine stream: the unlabeled feature data dir + the teacher's top-k store (stage 5), read
  per utterance from the store's memory map; the top-k become a distribution in the loss
  (train.batch_loss) as `student.soft` says (mode, temperature, k);
* oracle stream: the unlabeled feature data dir + its true alignments (hard targets), for the
  `oracle` schedule.

`ScheduledBatches` is the dataset train.fit's BatchSource reads: item (epoch, i) is step i of
that epoch's schedules.Schedule plan, read from its stream and given its lr_scale. Every stream
pass is planned by data.plan_batches with a seed derived from (seed, stream, pass), so the whole
sequence is a pure function of (seed, epoch, rank, world_size).
"""
from __future__ import annotations

import zlib
from dataclasses import dataclass, replace

import numpy as np
from torch.utils.data import Dataset

from millionhours import data, schedules, topk
from millionhours.data import Batch, DataError, UttSet

STREAM_CODES = {schedules.LABELED: 1, schedules.MACHINE: 2}


def stream_seed(seed: int, stream: str, pass_: int) -> int:
    """The plan seed of one pass over one stream (independent draws per stream and pass)."""
    return int(np.random.SeedSequence([seed, STREAM_CODES[stream], pass_]).generate_state(1)[0])


@dataclass(frozen=True)
class SoftConfig:
    mode: str = "renorm"            # renorm | uniform_residual (topk.soft_targets)
    temperature: float = 1.0
    k: int | None = None            # use the top-k of the stored k (a k sweep); None = all

    def __post_init__(self):
        if self.mode not in ("renorm", "uniform_residual"):
            raise ValueError(f"student.soft.mode: unknown '{self.mode}'; use renorm or "
                             f"uniform_residual")
        if not self.temperature > 0:
            raise ValueError(f"student.soft.temperature: {self.temperature} must be > 0")
        if self.k is not None and self.k < 1:
            raise ValueError(f"student.soft.k: {self.k} must be >= 1 or null (all stored)")


# --------------------------------------------------------------------------- the streams


class HardStream:
    """Reads planned pieces with hard targets (a labeled or oracle UttSet)."""

    def __init__(self, uttset: UttSet, kind: str):
        self.u, self.kind = uttset, kind
        self._reader = data.PlannedBatches(uttset, 0, 1, 1)     # its read() and checks only

    @property
    def lengths(self) -> dict[str, int]:
        return self.u.lengths

    def read_batch(self, pieces) -> Batch:
        items = []
        for utt, a, b in pieces:
            x, y = self._reader.read(utt)
            items.append((utt, x[a:b], y[a:b]))
        batch = data.collate(items)
        batch.kind = self.kind
        return batch


class TopKStream:
    """Reads planned pieces with the teacher's top-k targets from a TopKStore."""

    def __init__(self, uttset: UttSet, store_dir: str, soft: SoftConfig, kind: str = "soft"):
        self.u, self.store_dir, self.soft, self.kind = uttset, store_dir, soft, kind
        self._store = None
        self._feats = None

    @property
    def lengths(self) -> dict[str, int]:
        return self.u.lengths

    def store(self) -> topk.TopKStore:
        if self._store is None:                  # opened lazily, once per worker process
            self._store = topk.TopKStore(self.store_dir)
        return self._store

    def read_batch(self, pieces) -> Batch:
        import kaldiio
        if self._feats is None:
            self._feats = kaldiio.load_scp(self.u.feats_scp)
        store, items = self.store(), []
        for utt, a, b in pieces:
            x = data.model_input(self._feats[utt], self.u.cmvn, self.u.stack, self.u.skip,
                                 self.u.cmn)
            ids, lp = store.get(utt, self.soft.k)
            if len(ids) != len(x):
                raise DataError(f"{self.store_dir}: utterance '{utt}' has {len(ids)} labeled "
                                f"frames but {len(x)} LFR frames in {self.u.feats_scp}; relabel "
                                f"these features (stage 5)")
            items.append((utt, x[a:b], np.asarray(ids[a:b], np.int64),
                          np.asarray(lp[a:b], np.float32)))
        batch = data.collate_soft(items)
        batch.kind, batch.soft_mode, batch.temperature = (self.kind, self.soft.mode,
                                                          self.soft.temperature)
        return batch

    def __getstate__(self):                      # memmaps and scp readers stay in their process
        return {**self.__dict__, "_store": None, "_feats": None}


def open_machine_set(feats_dir: str, store_dir: str, cmvn: np.ndarray, num_senones: int,
                     targets_dir: str, soft: SoftConfig, stack: int = 3,
                     skip: int = 3, cmn: str = "global") -> tuple[UttSet, topk.TopKStore]:
    """The utterances of `feats_dir` labeled in the store (others skipped), checked against it:
    senone count, k and the number of frames of every utterance."""
    u = data.open_uttset(feats_dir, None, cmvn, stack, skip, cmn)
    try:
        store = topk.TopKStore(store_dir)
    except topk.TopKStoreError as e:
        raise DataError(str(e)) from None
    if store.num_senones != num_senones:
        raise DataError(f"{store_dir}: the store has {store.num_senones} senones but "
                        f"{targets_dir}/num_senones says {num_senones}; relabel with a teacher "
                        f"trained on these targets (stage 4-5) or pass the matching store")
    if soft.k is not None and soft.k > store.k:
        raise DataError(f"{store_dir}: student.soft.k = {soft.k} but the store keeps only "
                        f"k = {store.k}; lower student.soft.k or relabel with a larger labels.k")
    skipped = [utt for utt in u.lengths if utt not in store]
    lengths = {utt: n for utt, n in u.lengths.items() if utt in store}
    bad = next((utt for utt, n in lengths.items() if store.num_frames(utt) != n), None)
    if bad is not None:
        raise DataError(f"{store_dir}: utterance '{bad}' has {store.num_frames(bad)} labeled "
                        f"frames but {lengths[bad]} LFR frames in {feats_dir}/utt2num_frames; "
                        f"relabel these features (stage 5)")
    return UttSet(u.feats_scp, lengths, cmvn, None, stack, skip, num_senones, skipped, cmn), store


def subset(u: UttSet, fraction: float) -> UttSet:
    """The utterances whose id hashes below `fraction` (crc32): nested across fractions (the 25%
    set holds the 12.5% set) and independent of the seed, for the unlabeled-amount sweep (F1)."""
    if not 0 < fraction <= 1:
        raise DataError(f"student.unlabeled_fraction: {fraction} must be in (0, 1]")
    if fraction == 1:
        return u
    keep = {utt: n for utt, n in u.lengths.items()
            if zlib.crc32(utt.encode()) < fraction * 2 ** 32}
    return replace(u, lengths=keep)


# --------------------------------------------------------------------------- the dataset


class ScheduledBatches(Dataset):
    """Item (epoch, i): step i of the schedule's plan for `epoch`, read from its stream.

    streams: {"labeled": HardStream, "machine": TopKStream or HardStream (oracle)}.
    """

    def __init__(self, cfg: schedules.ScheduleConfig, streams: dict, seed: int,
                 data_params: dict, rank: int = 0, world: int = 1, split: str = "batches"):
        self.streams, self.seed, self.d = streams, seed, data_params
        missing = [s for s in cfg.streams if s not in streams]
        if missing:
            raise ValueError(f"schedule {cfg.name} needs the {', '.join(missing)} stream(s)")
        self.schedule = schedules.Schedule(cfg, self.plan, rank, world, split)

    def plan(self, stream: str, epoch: int, pass_: int) -> list[list[data.Piece]]:
        """One pass over one stream: chunked, bucketed, shuffled (data.plan_batches)."""
        d = self.d
        return data.plan_batches(self.streams[stream].lengths, stream_seed(self.seed, stream, pass_),
                                 epoch, d.get("chunk_frames"), int(d.get("batch_frames", 4096)),
                                 int(d.get("batch_size", 64)), int(d.get("bucket_width", 8)))

    def num_batches(self, epoch: int) -> int:
        return self.schedule.num_batches(epoch)

    def __len__(self):
        return self.num_batches(0)

    def __getitem__(self, key: tuple[int, int]) -> Batch:
        epoch, i = key
        entry = self.schedule.epoch_plan(epoch)[i]
        mine, stream = self.schedule.batch(entry), self.streams[entry.stream]
        batch = stream.read_batch(mine) if mine else Batch.empty(stream.kind)
        batch.lr_scale = entry.lr_scale
        if self.schedule.split == "pieces":
            # the loss of a share is divided by the global batch's frames / N, so the mean of
            # the workers' gradients is the gradient of the whole batch (one process's step)
            whole = sum(b - a for _, a, b in self.schedule.global_batch(entry))
            batch.norm_frames = whole / self.schedule.world
        return batch


def describe_epoch(ds: ScheduledBatches, epoch: int = 0) -> str:
    """One line: steps per epoch and per stream, frames per stream, the lr multipliers."""
    plan = ds.schedule.epoch_plan(epoch)
    parts = []
    for s in ds.schedule.cfg.streams:
        mine = [e for e in plan if e.stream == s]
        frames = sum(b - a for e in mine for _, a, b in ds.schedule.batch(e))
        scale = mine[0].lr_scale if mine else 1.0
        parts.append(f"{s} {len(mine)} batches / {frames} frames (lr x{scale:g})")
    return f"{len(plan)} steps per epoch: " + ", ".join(parts)
