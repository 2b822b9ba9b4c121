"""Acoustic degradation of clean 16 kHz synthetic speech: room reverberation plus additive noise.

The clean corpus is TTS output, which is far too easy for an ASR model (and has digital silence).  This module
turns it into a "noisy" condition, following the recipe in data_sources.md section 4:

* reverberation from a precomputed bank of shoebox-room impulse responses (pyroomacoustics image-source model),
  convolved so that the direct path stays at the original sample times, so phone alignments remain valid;
* one additive noise per utterance -- white, pink (1/f), brown (1/f^2) or babble (several other TTS talkers) --
  at an SNR drawn uniformly from a range;
* a tiny white noise floor for "clean" audio, so no feature frame is log(0).

Everything random comes from an explicit ``numpy.random.Generator``: same generator state, same output.
"""

from __future__ import annotations

import numpy as np
import pyroomacoustics as pra
from scipy.signal import fftconvolve

FS = 16000
# Image-source order cap.  The Sabine order for RT60 0.9 s rooms reaches ~150 and costs 0.5-2.5 s per RIR; order 50
# measured 0.055-0.075 s mean, < 0.1 s max per RIR on one core (order 40: ~0.037 s), and its Schroeder RT60 is within
# a few percent of the uncapped RIR's (order 20 underestimates it by up to 40%).
DEFAULT_MAX_ORDER = 50
# pyroomacoustics places each image with a windowed-sinc fractional delay of this many taps, centred on the image.
_FDL_HALF = pra.constants.get("frac_delay_length") // 2
NOISE_KINDS = ("white", "pink", "brown", "babble")
_COLOR_EXPONENT = {"white": 0.0, "pink": 1.0, "brown": 2.0}  # power spectrum ~ 1 / f**exponent


# --------------------------------------------------------------------------------------------------------------
# Room impulse responses
# --------------------------------------------------------------------------------------------------------------

def _random_positions(dims: np.ndarray, rng: np.random.Generator, margin=0.5, min_dist=1.0):
    """Source and mic uniformly inside the room, `margin` from every wall and at least `min_dist` apart."""
    lo, hi = np.full(3, margin), dims - margin
    while True:  # rooms are >= 3 x 3 x 2.4 m, so a valid pair is found within a few tries
        src, mic = rng.uniform(lo, hi), rng.uniform(lo, hi)
        if np.linalg.norm(src - mic) >= min_dist:
            return src, mic


def _make_rir(rng: np.random.Generator, rt60, room_x, room_y, room_z, fs, max_order) -> np.ndarray:
    """One RIR, trimmed so the direct path sits at sample _FDL_HALF, scaled so the direct-path peak is 1."""
    target = rng.uniform(*rt60)
    dims = np.array([rng.uniform(*room_x), rng.uniform(*room_y), rng.uniform(*room_z)])
    src, mic = _random_positions(dims, rng)
    absorption, sabine_order = pra.inverse_sabine(target, dims)
    cap = DEFAULT_MAX_ORDER if max_order is None else max_order
    room = pra.ShoeBox(dims, fs=fs, materials=pra.Material(absorption), max_order=int(min(sabine_order, cap)))
    room.add_source(src)
    room.add_microphone(mic)
    room.compute_rir()
    h = np.asarray(room.rir[0][0], dtype=np.float64)
    # Locate the direct path from geometry (not argmax: coinciding reflections can sum above it), then refine to the
    # largest sample of its fractional-delay kernel.
    geo = int(round(np.linalg.norm(src - mic) / room.c * fs)) + _FDL_HALF
    win = slice(max(geo - 2, 0), geo + 3)
    peak = win.start + int(np.argmax(np.abs(h[win])))
    h = h / h[peak]
    # Drop the propagation-delay silence, keeping the kernel's pre-ringing.
    return h[max(peak - _FDL_HALF, 0):].astype(np.float32)


def make_rir_bank(n: int, seed: int, rt60=(0.2, 0.9), room_x=(3, 10), room_y=(3, 8), room_z=(2.4, 3.5),
                  fs: int = FS, max_order=None, offset: int = 0) -> list[np.ndarray]:
    """`n` random shoebox-room RIRs (float32, direct-path peak 1), deterministic in (`seed`, index).

    RIR i uses its own Generator seeded by the pair (seed, offset + i) -- not seed + i, which would make the banks of
    seeds 0 and 1 share all but one room.  So a bank can be built in parallel chunks with `offset`, and train/test
    banks with different seeds are independent.  `max_order` caps the Sabine image-source order (None: the
    measured default, DEFAULT_MAX_ORDER).
    """
    return [_make_rir(np.random.default_rng([seed, offset + i]), rt60, room_x, room_y, room_z, fs, max_order)
            for i in range(n)]


def direct_delay(rir: np.ndarray) -> int:
    """Index of the direct path of a bank RIR: the first sample with |h| >= 0.5.

    The threshold is absolute, not relative to max|h|: bank RIRs have direct-path peak 1, while coinciding early
    reflections (e.g. floor + ceiling) can reach 2x that; the sinc pre-ringing before it stays below 0.4.  An RIR
    that never reaches 0.5 (not from the bank) falls back to half its own peak.
    """
    a = np.abs(rir)
    return int(np.argmax(a >= min(0.5, 0.5 * a.max())))


def reverberate(x: np.ndarray, rir: np.ndarray) -> np.ndarray:
    """Convolve with `rir`, shifted by its direct-path delay and cut to len(x): the direct sound keeps x's timing."""
    d = direct_delay(rir)
    return fftconvolve(x, rir)[d:d + len(x)]


# --------------------------------------------------------------------------------------------------------------
# Noise
# --------------------------------------------------------------------------------------------------------------

def _unit_rms(x: np.ndarray) -> np.ndarray:
    rms = np.sqrt(np.mean(np.square(x, dtype=np.float64)))
    return x / rms if rms > 0 else x


def colored_noise(kind: str, n: int, rng: np.random.Generator, fs: int = FS, f_min: float = 20.0) -> np.ndarray:
    """White / pink (1/f power) / brown (1/f^2) Gaussian noise of length `n`, float32, unit RMS, by FFT shaping.

    The shaping is flat below `f_min`: otherwise the power of pink/brown noise piles up in the few sub-audio bins,
    whose share (and so the audible level at a given SNR) would depend on the utterance length.
    """
    if kind not in _COLOR_EXPONENT:
        raise ValueError(f"unknown noise colour {kind!r}")
    spec = np.fft.rfft(rng.standard_normal(n))
    f = np.maximum(np.fft.rfftfreq(n, 1.0 / fs), f_min)
    spec *= f ** (-_COLOR_EXPONENT[kind] / 2)  # amplitude ~ power ** 0.5
    spec[0] = 0.0  # no DC offset
    return _unit_rms(np.fft.irfft(spec, n)).astype(np.float32)


def make_babble(talkers: list[np.ndarray], n: int, rng: np.random.Generator, k=(4, 8)) -> np.ndarray:
    """Babble of length `n`: k ~ U{k[0]..k[1]} distinct talkers, each looped from a random offset, unit RMS each.

    Equal per-talker levels keep any single voice from dominating (which would make it a competing talker rather
    than babble).  Uses all talkers when fewer than k are given.  Result: float32, unit RMS.
    """
    if not talkers:
        raise ValueError("babble needs at least one talker")
    count = min(int(rng.integers(k[0], k[1] + 1)), len(talkers))
    out = np.zeros(n, dtype=np.float64)
    for j in rng.choice(len(talkers), size=count, replace=False):
        t = np.asarray(talkers[j], dtype=np.float64)
        idx = (int(rng.integers(len(t))) + np.arange(n)) % len(t)  # circular read = random offset + looping
        out += _unit_rms(t[idx])
    return _unit_rms(out).astype(np.float32)


def mix_at_snr(speech: np.ndarray, noise: np.ndarray, snr_db: float) -> np.ndarray:
    """speech + noise scaled so that 10*log10(P_speech / P_noise) == snr_db (powers over the whole signal)."""
    speech = np.asarray(speech, dtype=np.float64)
    noise = np.asarray(noise, dtype=np.float64)
    if noise.shape != speech.shape:
        raise ValueError(f"noise shape {noise.shape} != speech shape {speech.shape}")
    p_s, p_n = np.mean(speech ** 2), np.mean(noise ** 2)
    if p_n == 0:
        return speech.astype(np.float32)
    gain = np.sqrt(p_s / (p_n * 10 ** (snr_db / 10)))
    return (speech + gain * noise).astype(np.float32)


def add_noise_floor(x: np.ndarray, rng: np.random.Generator, snr_db=(45, 60)) -> np.ndarray:
    """Add white noise at SNR ~ U(snr_db) so no frame is digital silence (log-fbank of zeros is log(eps)).

    An all-zero input gets an absolute floor of 1e-5 RMS instead (there is no speech power to refer to).
    """
    noise = rng.standard_normal(len(x))
    snr = rng.uniform(*snr_db)
    if not np.any(x):
        return (1e-5 * noise).astype(np.float32)
    return mix_at_snr(x, noise, snr)


# --------------------------------------------------------------------------------------------------------------
# Full corruption
# --------------------------------------------------------------------------------------------------------------

def _make_noise(kind: str, n: int, rng: np.random.Generator, babble_talkers) -> np.ndarray:
    if kind == "babble":
        return make_babble(babble_talkers, n, rng)
    return colored_noise(kind, n, rng)


def corrupt(x: np.ndarray, rng: np.random.Generator, rirs: list[np.ndarray], babble_talkers: list[np.ndarray],
            snr_db=(0.0, 20.0), reverb_prob: float = 0.5, noise_types=NOISE_KINDS) -> tuple[np.ndarray, dict]:
    """Reverberate (with probability `reverb_prob`) and add one noise type at SNR ~ U(snr_db).

    Length and alignment are kept (see `reverberate`).  The SNR refers to the (possibly reverberant) speech, i.e.
    the signal as it arrives at the microphone.  The result is scaled down to peak 0.99 only if it would clip.
    Returns (y float32, {"rir": bank index or None, "noise": kind, "snr_db": value}).
    """
    y = np.asarray(x, dtype=np.float32)
    rir_idx = None
    if rirs and rng.random() < reverb_prob:
        rir_idx = int(rng.integers(len(rirs)))
        y = reverberate(y, rirs[rir_idx])
    kind = noise_types[int(rng.integers(len(noise_types)))]
    snr = float(rng.uniform(*snr_db))
    y = mix_at_snr(y, _make_noise(kind, len(y), rng, babble_talkers), snr)
    peak = np.max(np.abs(y)) if len(y) else 0.0
    if peak > 0.99:
        y = y * np.float32(0.99 / peak)
    return y.astype(np.float32), {"rir": rir_idx, "noise": kind, "snr_db": snr}
