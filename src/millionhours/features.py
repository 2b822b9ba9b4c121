"""Acoustic features: 64-dim log-mel filterbank, global CMVN, and the paper's low frame rate (LFR).

The paper's models see 30 ms frames: 64-dim log-mel filterbank energies every 10 ms, three
consecutive frames stacked (192 dims) and only every third stacked frame kept. Training targets
are subsampled by the same rule (`lfr_frame_index`), so features and senone labels stay in step.
Training, labeling and decoding all go through `lfr` and `lfr_targets` here.
"""
from dataclasses import dataclass

import kaldi_native_fbank as knf
import numpy as np

INT16_SCALE = 32768.0     # Kaldi computes features on int16-range samples


@dataclass(frozen=True)
class FbankConfig:
    num_bins: int = 64
    frame_length_ms: float = 25.0
    frame_shift_ms: float = 10.0
    dither: float = 0.0            # the corpus adds its own noise floor, so no digital silence
    snip_edges: bool = False       # frames centred on 10 ms ticks: T = round(duration / 10 ms)

    @classmethod
    def from_params(cls, p: dict) -> "FbankConfig":
        return cls(**{k: p[k] for k in cls.__dataclass_fields__ if k in p})


def fbank(samples: np.ndarray, cfg: FbankConfig = FbankConfig(), sample_rate: int = 16000) -> np.ndarray:
    """(T, num_bins) float32 log-mel filterbank of float samples in [-1, 1] (Kaldi compute-fbank-feats)."""
    opts = knf.FbankOptions()
    opts.frame_opts.samp_freq = sample_rate
    opts.frame_opts.frame_length_ms = cfg.frame_length_ms
    opts.frame_opts.frame_shift_ms = cfg.frame_shift_ms
    opts.frame_opts.dither = cfg.dither
    opts.frame_opts.snip_edges = cfg.snip_edges
    opts.mel_opts.num_bins = cfg.num_bins
    comp = knf.OnlineFbank(opts)
    comp.accept_waveform(sample_rate, np.ascontiguousarray(samples, dtype=np.float32) * INT16_SCALE)
    comp.input_finished()
    n = comp.num_frames_ready
    if n == 0:
        return np.zeros((0, cfg.num_bins), np.float32)
    return np.stack([comp.get_frame(i) for i in range(n)]).astype(np.float32, copy=False)


def cmvn_stats(feats: np.ndarray) -> np.ndarray:
    """Kaldi cmvn stats (2, D+1) float64: row 0 sums + count, row 1 sums of squares."""
    return knf.compute_cmvn_stats(np.ascontiguousarray(feats, dtype=np.float32))


def cmvn_mean_var(stats: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(mean, variance floored at 1e-10) of Kaldi-format cmvn stats."""
    count = stats[0, -1]
    mean = stats[0, :-1] / count
    return mean, np.maximum(stats[1, :-1] / count - mean ** 2, 1e-10)


def apply_cmvn(feats: np.ndarray, stats: np.ndarray, norm_vars: bool = True) -> np.ndarray:
    """Mean (and variance) normalization with Kaldi-format stats (apply-cmvn --norm-vars)."""
    mean, var = cmvn_mean_var(stats)
    out = feats - mean
    if norm_vars:
        out = out / np.sqrt(var)
    return out.astype(np.float32, copy=False)


def num_lfr_frames(num_frames: int, skip: int = 3) -> int:
    """Frames kept at the low frame rate: one per `skip` input frames, the last one padded."""
    return -(-num_frames // skip)


def dct_matrix(num_ceps: int, num_bins: int) -> np.ndarray:
    """Kaldi's ``ComputeDctMatrix`` (orthonormal DCT-II rows), (num_ceps, num_bins)."""
    k = np.arange(num_ceps)[:, None]
    n = np.arange(num_bins)[None, :]
    m = np.sqrt(2.0 / num_bins) * np.cos(np.pi / num_bins * (n + 0.5) * k)
    m[0] = np.sqrt(1.0 / num_bins)
    return m


def lfr_frame_index(num_frames: int, stack: int = 3, skip: int = 3) -> np.ndarray:
    """For each LFR frame, the input frame whose label it takes: the centre of its stacked window."""
    centre = np.arange(num_lfr_frames(num_frames, skip)) * skip + stack // 2
    return np.minimum(centre, num_frames - 1)


def lfr(feats: np.ndarray, stack: int = 3, skip: int = 3) -> np.ndarray:
    """Stack `stack` consecutive frames and keep every `skip`-th: (T, D) -> (ceil(T/skip), stack*D).

    LFR frame t holds input frames t*skip .. t*skip+stack-1; past the end the last frame repeats
    (so no frame of audio is dropped and the output length depends only on T).
    """
    t_in, dim = feats.shape
    t_out = num_lfr_frames(t_in, skip)
    idx = np.arange(t_out)[:, None] * skip + np.arange(stack)[None, :]
    idx = np.minimum(idx, t_in - 1)
    return feats[idx].reshape(t_out, stack * dim)


def lfr_targets(labels: np.ndarray, stack: int = 3, skip: int = 3) -> np.ndarray:
    """Frame labels brought to the low frame rate by the same rule as `lfr` (the window centre)."""
    return labels[lfr_frame_index(len(labels), stack, skip)]


def lfr_window_targets(labels: np.ndarray, stack: int = 3, skip: int = 3) -> np.ndarray:
    """(T_lfr, stack): the labels of all frames LFR row t stacks, in time order (column
    stack // 2 is `lfr_targets`); past the end the last frame repeats, as in `lfr`."""
    return lfr(np.asarray(labels)[:, None], stack, skip)
