"""Training data: deterministic per-epoch batch plans, background loading, the Batch type.

Scaling rules:
* Only utterance lengths are held in memory (from utt2num_frames); features and targets are read
  from their scp, one planned batch at a time, in DataLoader worker processes.
* An epoch's batches are a pure function of (seed, epoch): utterances longer than `chunk_frames`
  (LFR frames) are cut into near-equal pieces, pieces are bucketed by length (random order inside
  a bucket), packed greedily into batches of at most `batch_frames` padded frames and
  `batch_size` pieces, and the batch order is shuffled. Every LFR frame is in exactly one batch.
* A DataLoader item is one whole planned batch, keyed by (epoch, batch index). So a run that
  resumes at (epoch, i) sees exactly the batches the uninterrupted run would have seen, and the
  workers can stay alive across epochs (the sampler, not the dataset, carries the position).

`Batch` carries hard targets (labeled data) or soft top-k targets (machine-labeled data) and a
per-batch learning-rate multiplier, so a student stage can interleave two streams through the same
training loop: write a dataset whose `__getitem__((epoch, i))` returns either kind of Batch.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field, fields, replace

import kaldiio
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from millionhours import features
from millionhours.augment import AugmentConfig, augment_piece

IGNORE = -100   # target id of padded frames (F.cross_entropy's ignore_index)


class DataError(ValueError):
    """Bad training data; the message is one line naming the file or utterance and the fix."""


# --------------------------------------------------------------------------- the batch type


@dataclass
class Batch:
    """One minibatch. feats (B, T, D) float32; lengths (B,) int64 valid LFR frames per row.

    Exactly one target kind is set: `targets` (B, T) int64 senone ids, IGNORE on padding
    (kind "hard"); or `soft_ids` (B, T, k) int64 + `soft_logprobs` (B, T, k) float32, the
    teacher's top-k (kind "soft"). `lr_scale` multiplies the learning rate for this batch.
    Soft targets become a distribution as topk.soft_targets says: `soft_mode` "renorm" (over the
    k ids) or "uniform_residual" (the missing mass spread over the other senones), tempered by
    `temperature`.
    """
    feats: torch.Tensor
    lengths: torch.Tensor
    targets: torch.Tensor | None = None
    soft_ids: torch.Tensor | None = None
    soft_logprobs: torch.Tensor | None = None
    kind: str = "hard"
    lr_scale: float = 1.0
    utts: list[str] = field(default_factory=list)
    soft_mode: str = "renorm"
    temperature: float = 1.0
    norm_frames: float = 0.0     # > 0: the loss is divided by this, not by num_frames (a
                                 # worker's share of a global batch: its frames / N)

    @classmethod
    def empty(cls, kind: str = "hard") -> "Batch":
        """No rows: a worker's empty share of a global batch (it contributes a zero gradient)."""
        return cls(torch.zeros(0, 0, 0), torch.zeros(0, dtype=torch.int64), kind=kind)

    @property
    def num_frames(self) -> int:
        return int(self.lengths.sum())

    def mask(self) -> torch.Tensor:
        """(B, T) bool, True on valid frames."""
        t = torch.arange(self.feats.shape[1], device=self.lengths.device)
        return t[None, :] < self.lengths[:, None]

    def _map(self, fn) -> "Batch":
        return replace(self, **{f.name: fn(getattr(self, f.name)) for f in fields(self)
                                if isinstance(getattr(self, f.name), torch.Tensor)})

    def to(self, device, non_blocking: bool = True) -> "Batch":
        return self._map(lambda t: t.to(device, non_blocking=non_blocking))

    def pin_memory(self) -> "Batch":
        """Called by DataLoader(pin_memory=True) for custom batch types."""
        return self._map(lambda t: t.pin_memory())


# --------------------------------------------------------------------------- the data set


@dataclass
class UttSet:
    """A features data dir + its targets: utterance ids, LFR lengths, where to read them."""
    feats_scp: str
    lengths: dict[str, int]          # utt -> LFR frames, in feats.scp order
    cmvn: np.ndarray                 # Kaldi global CMVN stats (2, D+1), of the training set
    targets_scp: str | None = None
    stack: int = 3
    skip: int = 3
    num_senones: int | None = None   # targets must lie in 0..num_senones-1
    skipped: list[str] = field(default_factory=list)   # utts of feats.scp without targets
    cmn: str = "global"              # mean normalisation of model_input (global|utterance|sliding)
    window: bool = False             # targets are window_targets.scp: (T, stack) labels per row,
                                     # batches carry (B, T, stack) targets (train.batch_loss)

    @property
    def num_lfr_frames(self) -> int:
        return sum(self.lengths.values())


def read_lengths(feats_dir: str, skip: int = 3) -> dict[str, int]:
    """utt -> LFR frames (ceil(T/skip)) from utt2num_frames; features themselves are not read."""
    path = os.path.join(feats_dir, "utt2num_frames")
    if not os.path.isfile(path):
        raise DataError(f"{path}: missing; regenerate it with `feat-to-len scp:feats.scp "
                        f"ark,t:utt2num_frames` or rerun stage 1 (compute_features)")
    out = {}
    with open(path) as f:
        for n, line in enumerate(f, 1):
            parts = line.split()
            if len(parts) != 2 or not parts[1].isdigit():
                raise DataError(f"{path}:{n}: expected 'utt num_frames', got '{line.strip()[:40]}'; "
                                f"regenerate it with feat-to-len")
            out[parts[0]] = features.num_lfr_frames(int(parts[1]), skip)
    return out


def scp_keys(path: str) -> list[str]:
    with open(path) as f:
        return [line.split(maxsplit=1)[0] for line in f if line.strip()]


def open_uttset(feats_dir: str, targets_dir: str | None, cmvn: np.ndarray, stack: int = 3,
                skip: int = 3, cmn: str = "global", window: bool = False) -> UttSet:
    """The utterances of `feats_dir` that have targets in `targets_dir` (others are skipped).
    window: read window_targets.scp, the labels of every 10 ms frame of each LFR row."""
    if cmn not in CMN_MODES:
        raise DataError(f"cmn '{cmn}' is not one of {', '.join(CMN_MODES)}; fix data.cmn in params")
    feats_scp = os.path.join(feats_dir, "feats.scp")
    if not os.path.isfile(feats_scp):
        raise DataError(f"{feats_scp}: missing; compute features first (stage 1, "
                        f"millionhours.bin.compute_features)")
    frames = read_lengths(feats_dir, skip)
    keys = scp_keys(feats_scp)
    missing = next((u for u in keys if u not in frames), None)
    if missing is not None:
        raise DataError(f"{feats_dir}/utt2num_frames: utterance '{missing}' of feats.scp is "
                        f"missing; regenerate it with feat-to-len")
    lengths = {u: frames[u] for u in keys if frames[u] > 0}   # empty utterances teach nothing
    if targets_dir is None:
        return UttSet(feats_scp, lengths, cmvn, None, stack, skip, cmn=cmn)
    targets_scp = os.path.join(targets_dir, "window_targets.scp" if window else "targets.scp")
    if not os.path.isfile(targets_scp):
        raise DataError(f"{targets_scp}: missing; import alignments first (stage 3, "
                        f"millionhours.bin.import_alignments, writes both kinds)")
    have = set(scp_keys(targets_scp))
    skipped = [u for u in lengths if u not in have]
    lengths = {u: n for u, n in lengths.items() if u in have}
    return UttSet(feats_scp, lengths, cmvn, targets_scp, stack, skip,
                  read_num_senones(targets_dir), skipped, cmn, window)


def read_num_senones(targets_dir: str) -> int:
    path = os.path.join(targets_dir, "num_senones")
    if not os.path.isfile(path):
        raise DataError(f"{path}: missing; rerun the alignment import (stage 3), which writes it")
    text = open(path).read().strip()
    if not text.isdigit() or int(text) < 1:
        raise DataError(f"{path}: expected a positive integer, got '{text[:20]}'; rerun stage 3")
    return int(text)


def load_cmvn(feats_dir: str) -> np.ndarray:
    path = os.path.join(feats_dir, "cmvn.mat")
    if not os.path.isfile(path):
        raise DataError(f"{path}: missing; compute the global CMVN stats of the training set "
                        f"(stage 1 writes cmvn.mat)")
    stats = np.asarray(kaldiio.load_mat(path), np.float64)
    if stats.ndim != 2 or stats.shape[0] != 2 or stats[0, -1] <= 0:
        raise DataError(f"{path}: not Kaldi CMVN stats (2 x D+1 with a positive count, got "
                        f"{stats.shape}); rerun stage 1")
    return stats


# --------------------------------------------------------------------------- the plan


Piece = tuple[str, int, int]   # (utt, start, end) in LFR frames


def chunk(utt: str, length: int, chunk_frames: int | None, fixed: bool = False) -> list[Piece]:
    """Near-equal pieces of at most chunk_frames (so no tiny remainder piece).

    fixed=True: Kaldi nnet3's fixed-width chunks instead, every piece exactly chunk_frames long;
    the last one ends at the utterance end and overlaps its predecessor (the overlap is context
    only: `overlap_frames` says how many of its first frames to leave out of the loss).
    """
    if not chunk_frames or length <= chunk_frames:
        return [(utt, 0, length)]
    if fixed:
        starts = list(range(0, length - chunk_frames, chunk_frames)) + [length - chunk_frames]
        return [(utt, a, a + chunk_frames) for a in starts]
    n = -(-length // chunk_frames)
    cuts = [round(i * length / n) for i in range(n + 1)]
    return [(utt, a, b) for a, b in zip(cuts[:-1], cuts[1:])]


def overlap_frames(start: int, length: int, chunk_frames: int) -> int:
    """Frames at the start of a fixed-width piece already in the loss of the piece before it."""
    return max(0, (length - 1) // chunk_frames * chunk_frames - start) if start % chunk_frames else 0


def plan_batches(lengths: dict[str, int], seed: int, epoch: int, chunk_frames: int | None,
                 batch_frames: int, batch_size: int, bucket_width: int = 8,
                 shuffle: bool = True, uniform: bool = False) -> list[list[Piece]]:
    """The batches of one epoch, a pure function of the arguments.

    shuffle=False (evaluation): whole length-sorted order, no randomness.
    uniform=True: unpadded batches, so a BLSTM runs as one fused cuDNN call (on an H200 the exact
    per-direction path for padded batches measured 74-87% of it): long utterances are cut into
    fixed-width chunks (`chunk`), and a batch never spans two length buckets (with bucket_width 1,
    one length).
    """
    pieces = [p for u, n in lengths.items() for p in chunk(u, n, chunk_frames, fixed=uniform)]
    longest = max((b - a for _, a, b in pieces), default=0)
    if longest > batch_frames:
        raise DataError(f"batch_frames={batch_frames} is smaller than a {longest}-frame piece; "
                        f"raise batch_frames or lower chunk_frames")
    rng = np.random.default_rng([seed, epoch])
    if shuffle:
        # random order, then a stable sort by length bucket: similar lengths batch together,
        # but which pieces share a batch changes from epoch to epoch
        pieces = [pieces[i] for i in rng.permutation(len(pieces))]
        pieces.sort(key=lambda p: (p[2] - p[1]) // bucket_width)
    else:
        pieces.sort(key=lambda p: p[2] - p[1])
    bucket = lambda n: n // max(bucket_width, 1)
    batches, cur, cur_max = [], [], 0
    for p in pieces:
        n = p[2] - p[1]
        new_max = max(cur_max, n)
        if cur and (len(cur) + 1 > batch_size or (len(cur) + 1) * new_max > batch_frames
                    or (uniform and bucket(n) != bucket(cur[0][2] - cur[0][1]))):
            batches.append(cur)
            cur, new_max = [], n
        cur.append(p)
        cur_max = new_max
    if cur:
        batches.append(cur)
    if shuffle:
        batches = [batches[i] for i in rng.permutation(len(batches))]
    return batches


# --------------------------------------------------------------------------- reading batches


CMN_MODES = ("global", "utterance", "sliding")


def model_input(fbank: np.ndarray, cmvn: np.ndarray, stack: int = 3, skip: int = 3,
                cmn: str = "global") -> np.ndarray:
    """What every model sees: mean and variance normalisation, then LFR stacking
    (T, 64) -> (ceil(T/3), 192). The variance always comes from the global stats `cmvn`; the
    mean is, by `cmn`: global (the training set's), utterance (this utterance's: removes the
    recording gain, needs the whole utterance) or sliding (causal, streamable, Kaldi's
    apply-cmvn-sliding --center=false over the last SLIDING_WINDOW frames)."""
    if cmn == "global":
        x = features.apply_cmvn(fbank, cmvn)
    elif cmn in ("utterance", "sliding"):
        f = np.asarray(fbank, np.float64)
        if cmn == "utterance":
            mean = f.mean(0, keepdims=True)
        else:
            csum = np.cumsum(f, 0)
            t = np.arange(len(f))
            start = t - SLIDING_WINDOW            # mean over frames max(0, t-W+1) .. t
            prev = np.where(start[:, None] >= 0, csum[np.maximum(start, 0)], 0.0)
            mean = (csum - prev) / np.minimum(t + 1, SLIDING_WINDOW)[:, None]
        x = ((f - mean) / np.sqrt(features.cmvn_mean_var(cmvn)[1])).astype(np.float32)
    else:
        raise DataError(f"cmn '{cmn}' is not one of {', '.join(CMN_MODES)}; fix data.cmn in params")
    return features.lfr(x, stack, skip)


SLIDING_WINDOW = 300   # frames (3 s) of the causal running mean; Kaldi's default is 600


def collate(items: list[tuple[str, np.ndarray, np.ndarray | None]]) -> Batch:
    """(utt, feats (T, D), targets (T,) or (T, k) window targets, or None) -> a padded
    hard-target Batch."""
    lengths = [len(f) for _, f, _ in items]
    t_max, dim = max(lengths), items[0][1].shape[1]
    feats = np.zeros((len(items), t_max, dim), np.float32)
    tail = () if items[0][2] is None else np.shape(items[0][2])[1:]
    targets = np.full((len(items), t_max, *tail), IGNORE, np.int64)
    for i, (_, f, t) in enumerate(items):
        feats[i, :len(f)] = f
        if t is not None:
            targets[i, :len(t)] = t
    has_targets = items[0][2] is not None
    return Batch(torch.from_numpy(feats), torch.tensor(lengths, dtype=torch.int64),
                 torch.from_numpy(targets) if has_targets else None,
                 utts=[u for u, _, _ in items])


def collate_soft(items: list[tuple[str, np.ndarray, np.ndarray, np.ndarray]]) -> Batch:
    """(utt, feats (T, D), top-k ids (T, k), top-k log-probs (T, k)) -> a padded soft Batch.

    Padded frames get ids 0 and log-probs 0 (a harmless uniform row; the loss masks them).
    """
    lengths = [len(f) for _, f, _, _ in items]
    t_max, dim, k = max(lengths), items[0][1].shape[1], items[0][2].shape[1]
    feats = np.zeros((len(items), t_max, dim), np.float32)
    ids = np.zeros((len(items), t_max, k), np.int64)
    logprobs = np.zeros((len(items), t_max, k), np.float32)
    for i, (_, f, d, lp) in enumerate(items):
        feats[i, :len(f)], ids[i, :len(f)], logprobs[i, :len(f)] = f, d, lp
    return Batch(torch.from_numpy(feats), torch.tensor(lengths, dtype=torch.int64),
                 soft_ids=torch.from_numpy(ids), soft_logprobs=torch.from_numpy(logprobs),
                 kind="soft", utts=[u for u, _, _, _ in items])


class PlannedBatches(Dataset):
    """Item (epoch, i) = batch i of that epoch's plan, read, normalised, stacked and padded.

    train=True: chunked, shuffled plans that change with the epoch; train=False: whole
    utterances in length order (evaluation, labeling), the same for every epoch.
    """

    def __init__(self, uttset: UttSet, seed: int, batch_frames: int, batch_size: int,
                 chunk_frames: int | None = None, bucket_width: int = 8, train: bool = True,
                 kind: str = "hard", lr_scale: float = 1.0, uniform: bool = False,
                 augment: AugmentConfig | None = None):
        self.u, self.seed, self.train, self.uniform = uttset, seed, train, uniform
        self.augment = augment if train else None     # augment.py: tempo, SpecAugment masks
        self.batch_frames, self.batch_size = batch_frames, batch_size
        self.chunk_frames = chunk_frames if train else None
        self.bucket_width, self.kind, self.lr_scale = bucket_width, kind, lr_scale
        self._plan_epoch, self._plan = None, None
        self._feats = self._targets = None      # opened lazily, once per worker process

    def plan(self, epoch: int) -> list[list[Piece]]:
        key = epoch if self.train else 0
        if self._plan_epoch != key:
            self._plan = plan_batches(self.u.lengths, self.seed, key, self.chunk_frames,
                                      self.batch_frames, self.batch_size, self.bucket_width,
                                      shuffle=self.train, uniform=self.uniform)
            self._plan_epoch = key
        return self._plan

    def num_batches(self, epoch: int) -> int:
        return len(self.plan(epoch))

    def __len__(self):   # DataLoader asks; the real count is per epoch
        return self.num_batches(0)

    def read(self, utt: str) -> tuple[np.ndarray, np.ndarray | None]:
        """One whole utterance at the LFR rate: (model input, targets or None)."""
        if self._feats is None:
            self._feats = kaldiio.load_scp(self.u.feats_scp)
            self._targets = kaldiio.load_scp(self.u.targets_scp) if self.u.targets_scp else None
        x = model_input(self._feats[utt], self.u.cmvn, self.u.stack, self.u.skip, self.u.cmn)
        if self._targets is None:
            return x, None
        y = np.asarray(self._targets[utt]).astype(np.int64)
        if self.u.window:
            if len(y) % self.u.stack:
                raise DataError(f"{self.u.targets_scp}: utterance '{utt}' has {len(y)} labels, not "
                                f"a multiple of lfr_stack {self.u.stack}; rerun stage 3")
            y = y.reshape(-1, self.u.stack)
        self._check_targets(utt, x, y)
        return x, y

    def _check_targets(self, utt: str, x: np.ndarray, y: np.ndarray) -> None:
        if len(y) != len(x):
            raise DataError(f"{self.u.targets_scp}: utterance '{utt}' has {len(y)} targets but "
                            f"{len(x)} LFR frames; rerun the alignment import (stage 3) on "
                            f"these features")
        n = self.u.num_senones
        if n is not None and len(y) and (y.min() < 0 or y.max() >= n):
            raise DataError(f"{self.u.targets_scp}: utterance '{utt}' has senone id "
                            f"{int(y.max())} outside 0..{n - 1}; the targets and num_senones "
                            f"disagree, rerun stage 3")

    def __getitem__(self, key: tuple[int, int]) -> Batch:
        epoch, i = key
        items = []
        for j, (utt, a, b) in enumerate(self.plan(epoch)[i]):
            x, y = self.read(utt)
            overlap = self.uniform and self.chunk_frames and overlap_frames(a, len(x), self.chunk_frames)
            if y is not None:
                y = y[a:b]
                if overlap:                                 # fixed-width chunks overlap
                    y = y.copy()
                    y[:overlap] = IGNORE
            x = x[a:b]
            if self.augment is not None:                    # a draw per (seed, epoch, batch, piece)
                rng = np.random.default_rng([self.seed, epoch, i, j])
                x, y = augment_piece(x, y, self.augment, rng, self.u.stack, self.u.skip,
                                     exact_length=bool(self.uniform))
            items.append((utt, x, y))
        batch = collate(items)
        batch.kind, batch.lr_scale = self.kind, self.lr_scale
        return batch


class PositionSampler(Sampler):
    """Yields (epoch, i) for i = start .. num_batches-1; set `epoch`/`start` before iter(loader)."""

    def __init__(self, dataset):
        self.dataset, self.epoch, self.start = dataset, 0, 0

    def __iter__(self):
        return ((self.epoch, i) for i in range(self.start, self.dataset.num_batches(self.epoch)))

    def __len__(self):
        return self.dataset.num_batches(self.epoch) - self.start


class BatchSource:
    """A dataset of planned batches behind one DataLoader whose workers live across epochs.

    `dataset` is any object with num_batches(epoch) and __getitem__((epoch, i)) -> Batch,
    e.g. PlannedBatches, or a student's interleaving of a labeled and a machine-labeled one.
    """

    def __init__(self, dataset, num_workers: int = 1, prefetch_factor: int = 4,
                 pin_memory: bool = False):
        self.dataset = dataset
        self.sampler = PositionSampler(dataset)
        extra = dict(persistent_workers=True, prefetch_factor=prefetch_factor) if num_workers else {}
        # Own generator: DataLoader draws its worker base seed from it, not from torch's global
        # RNG, so starting an iterator never perturbs the training RNG stream (exact resume).
        self.loader = DataLoader(dataset, batch_size=None, sampler=self.sampler,
                                 num_workers=num_workers, pin_memory=pin_memory,
                                 generator=torch.Generator().manual_seed(0), **extra)

    def num_batches(self, epoch: int) -> int:
        return self.dataset.num_batches(epoch)

    def batches(self, epoch: int, start: int = 0):
        """Batches start.. of `epoch`, in plan order, loaded ahead by the workers."""
        self.sampler.epoch, self.sampler.start = epoch, start
        return iter(self.loader)
