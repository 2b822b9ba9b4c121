"""On-the-fly training augmentation of LFR pieces: tempo, frame shifts, VTLP warps and SpecAugment
masks.

Both act on what the model sees (CMVN'd fbank stacked to LFR frames) and on the piece's frame
targets, inside the data loader, so nothing is stored and an epoch costs what it did:

* tempo (Kaldi's speed perturbation without the pitch shift, like sox `tempo`): the piece's 10 ms
  frames are resampled in time by a factor r drawn uniformly from `tempo` (linear interpolation),
  restacked to LFR frames, and each new LFR frame takes the target of the original LFR frame its
  centre maps to (window targets: each 10 ms label follows its own frame). r < 1 makes speech
  slower (more frames). Needs stack == skip (LFR frames are then a plain reshape of the 10 ms
  frames).
* frame shift (Kaldi chain's `--frame-shift` egs augmentation): the piece's LFR rows are rebuilt
  starting s = 0 .. stack-1 10 ms frames later (the end repeats its last frame, as `lfr` pads), so
  the model sees every phase of the 30 ms grid against the phone boundaries, not only the one
  the features were stored with. Same length; needs stack == skip.
* VTLP (Jaitly & Hinton 2013): the spectrum of each piece is warped along frequency by a
  factor a drawn uniformly from `warp`, S'(f) = S(f / a), read off the mel bins by linear
  interpolation (bins past the band edge repeat the edge). a > 1 moves formants up: the
  corpus's own pseudo-speakers are formant warps of a few voices, so this is its speaker axis.
* SpecAugment (Park et al. 2019, without time warping): `freq_masks` bands of up to `freq_width`
  fbank bins, the same bins in each stacked sub-frame, and `time_masks` spans of up to
  `time_width` LFR frames (at most `time_ratio` of the piece in all) set to 0, the normalised mean.

Draws come from a generator seeded by (seed, epoch, batch, piece): an epoch's augmented batches
are a pure function of those, so a resumed run sees exactly what the uninterrupted one saw.
"""
from __future__ import annotations

from dataclasses import dataclass, fields

import numpy as np


RANGES = ("tempo", "warp")      # [lo, hi] factor ranges; (1, 1) = off


@dataclass(frozen=True)
class AugmentConfig:
    tempo: tuple = (1.0, 1.0)    # range of the tempo factor r (frames / r); (1, 1) = off
    warp: tuple = (1.0, 1.0)     # range of the VTLP frequency warp factor a; (1, 1) = off
    shift: bool = False          # random frame shift s in 0 .. stack-1 (10 ms frames) per piece
    freq_masks: int = 0          # number of fbank bands masked per piece
    freq_width: int = 8          # bins, at most, per band
    time_masks: int = 0          # number of time spans masked per piece
    time_width: int = 5          # LFR frames, at most, per span
    time_ratio: float = 0.2      # all spans together cover at most this share of the piece

    @classmethod
    def from_params(cls, d: dict | None) -> "AugmentConfig | None":
        """None when `d` is empty or asks for nothing."""
        if not d:
            return None
        known = {f.name for f in fields(cls)}
        bad = sorted(set(d) - known)
        if bad:
            raise ValueError(f"data.augment: unknown keys {bad}; known: {sorted(known)}")
        cfg = cls(**{k: tuple(v) if k in RANGES else v for k, v in d.items()})
        for key in RANGES:
            lo, hi = getattr(cfg, key)
            if not 0.5 <= lo <= hi <= 2.0:
                raise ValueError(f"data.augment.{key} must be [lo, hi] with 0.5 <= lo <= hi <= 2, "
                                 f"got {list(getattr(cfg, key))}")
        return cfg if cfg.active else None

    @property
    def active(self) -> bool:
        return (any(getattr(self, k) != (1.0, 1.0) for k in RANGES) or self.shift
                or self.freq_masks > 0 or self.time_masks > 0)


def tempo(x: np.ndarray, y: np.ndarray | None, r: float, stack: int, dim: int):
    """Resamples an LFR piece (T, stack*dim) by tempo factor r; targets follow the frame centres."""
    frames = x.reshape(-1, dim)                              # (stack*T, dim) 10 ms frames
    n_in = len(frames)
    n_out = max(stack, int(round(n_in / r)))
    t_out = -(-n_out // stack)
    pos = np.minimum((np.arange(n_out) + 0.5) * r - 0.5, n_in - 1).clip(0)
    pos = np.concatenate([pos, np.repeat(pos[-1:], t_out * stack - n_out)])   # as `lfr` pads
    lo = np.floor(pos).astype(np.int64)
    hi = np.minimum(lo + 1, n_in - 1)
    w = (pos - lo)[:, None].astype(np.float32)
    out = (frames[lo] * (1 - w) + frames[hi] * w).reshape(t_out, stack * dim).astype(np.float32)
    if y is None:
        return out, None
    if y.ndim == 2:                                          # window targets: (T, stack) per frame
        src = np.minimum(np.round(pos).astype(np.int64), n_in - 1)
        return out, y.reshape(-1)[src].reshape(t_out, stack)
    centre = (np.arange(t_out) * stack + stack // 2 + 0.5) * r - 0.5   # in input 10 ms frames
    src = np.minimum(np.clip(centre, 0, None).astype(np.int64) // stack, len(y) - 1)
    return out, y[src]


def frame_shift(x: np.ndarray, y: np.ndarray | None, s: int, stack: int, dim: int):
    """Rebuilds an LFR piece (T, stack*dim) from its 10 ms frames starting s frames later; the
    end repeats the last frame (label). Row targets take the label of the new row's centre."""
    t = len(x)
    src = np.minimum(np.arange(t * stack) + s, t * stack - 1)   # new 10 ms frame -> old one
    out = x.reshape(-1, dim)[src].reshape(t, stack * dim)
    if y is None:
        return out, None
    if y.ndim == 2:
        return out, y.reshape(-1)[src].reshape(t, stack)
    return out, y[src[stack // 2::stack] // stack]


def _mel(f):
    return 1127.0 * np.log1p(np.asarray(f, np.float64) / 700.0)


def vtlp_source_bins(a: float, dim: int, low_hz: float = 20.0, high_hz: float = 8000.0) -> np.ndarray:
    """Fractional bin index each of `dim` mel bins reads from under warp a (Kaldi's mel bank:
    centres evenly spaced in mel between low_hz and high_hz, the 16 kHz Nyquist by default)."""
    lo, hi = _mel(low_hz), _mel(high_hz)
    delta = (hi - lo) / (dim + 1)
    centres_mel = lo + delta * np.arange(1, dim + 1)
    centres_hz = 700.0 * np.expm1(centres_mel / 1127.0)
    src = np.round((_mel(centres_hz / a) - lo) / delta - 1.0, 6)   # a = 1: exactly the bins
    return np.clip(src, 0.0, dim - 1.0)


def vtlp(x: np.ndarray, a: float, dim: int) -> np.ndarray:
    """Warps every (stacked) fbank sub-frame of x along frequency by factor a."""
    src = vtlp_source_bins(a, dim)
    lo = np.floor(src).astype(np.int64)
    hi = np.minimum(lo + 1, dim - 1)
    w = (src - lo).astype(np.float32)
    view = x.reshape(len(x), -1, dim)
    return (view[..., lo] * (1 - w) + view[..., hi] * w).reshape(x.shape).astype(np.float32)


def spec_mask(x: np.ndarray, cfg: AugmentConfig, rng: np.random.Generator, dim: int) -> np.ndarray:
    """Frequency bands (same bins in every stacked sub-frame) and time spans set to 0, in place."""
    t = len(x)
    view = x.reshape(t, -1, dim)
    for _ in range(cfg.freq_masks):
        w = int(rng.integers(0, min(cfg.freq_width, dim) + 1))
        f0 = int(rng.integers(0, dim - w + 1))
        view[:, :, f0:f0 + w] = 0.0
    budget = int(cfg.time_ratio * t)
    for _ in range(cfg.time_masks):
        w = int(rng.integers(0, min(cfg.time_width, budget) + 1))
        if w == 0 or w >= t:
            continue
        budget -= w
        t0 = int(rng.integers(0, t - w + 1))
        view[t0:t0 + w] = 0.0
    return x


def augment_piece(x: np.ndarray, y: np.ndarray | None, cfg: AugmentConfig,
                  rng: np.random.Generator, stack: int, skip: int, exact_length: bool = False):
    """One training piece through tempo, frame shift, warp, then masks; returns new (x, y) arrays. exact_length:
    no tempo change (a fixed-width chunk whose first targets are masked as overlap)."""
    dim = x.shape[1] // stack
    x = np.array(x, np.float32)
    resliced = [k for k, on in (("tempo", cfg.tempo != (1.0, 1.0)), ("shift", cfg.shift)) if on]
    if resliced and stack != skip:                 # both re-slice the 10 ms frames of each row
        raise ValueError(f"data.augment.{resliced[0]} needs lfr_stack == lfr_skip (got {stack}, {skip})")
    if cfg.tempo != (1.0, 1.0):
        r = float(rng.uniform(*cfg.tempo))
        if r != 1.0 and not exact_length:
            x, y = tempo(x, y, r, stack, dim)
    if cfg.shift:
        x, y = frame_shift(x, y, int(rng.integers(stack)), stack, dim)
    if cfg.warp != (1.0, 1.0):
        x = vtlp(x, float(rng.uniform(*cfg.warp)), dim)
    if cfg.freq_masks or cfg.time_masks:
        spec_mask(x, cfg, rng, dim)
    return x, y
