"""Tests for local.corpus.degrade: exact SNR, noise colours, RIR bank, alignment-preserving reverb, determinism."""

import numpy as np
import pytest
from scipy.signal import correlate, welch

from local.corpus import degrade

FS = 16000


def _power_db(x):
    return 10 * np.log10(np.mean(np.square(x, dtype=np.float64)))


def _speech_like(n, seed=0):
    """Broadband bursts with a syllable-rate envelope and gaps: a sharp autocorrelation, like speech."""
    rng = np.random.default_rng(seed)
    on = np.repeat(rng.uniform(0, 1, n // 800 + 1) > 0.3, 800)[:n]  # 50 ms segments, 70% voiced
    env = on * np.hanning(800)[np.arange(n) % 800]
    return (0.1 * env * rng.standard_normal(n)).astype(np.float32)


def _schroeder_rt60(h, fs=FS):
    """T20 from Schroeder backward integration (-5 to -25 dB), extrapolated to 60 dB."""
    edc = np.cumsum(h[::-1].astype(np.float64) ** 2)[::-1]
    edc_db = 10 * np.log10(edc / edc[0])
    i5, i25 = np.argmax(edc_db <= -5), np.argmax(edc_db <= -25)
    return 3 * (i25 - i5) / fs


@pytest.fixture(scope="module")
def bank():
    return degrade.make_rir_bank(4, seed=11)


@pytest.fixture(scope="module")
def talkers():
    """Ten "talkers": distinct pure tones of different lengths, so the babble's components can be counted."""
    t = np.arange(FS) / FS
    return [np.sin(2 * np.pi * (300 + 100 * i) * t[: FS // 2 + 997 * i]).astype(np.float32) for i in range(10)]


@pytest.mark.parametrize("snr", [-5.0, 0.0, 7.3, 20.0, 45.0])
def test_mix_at_snr_exact(snr):
    rng = np.random.default_rng(1)
    speech = _speech_like(40000)
    noise = degrade.colored_noise("pink", 40000, rng) * 3.0
    y = degrade.mix_at_snr(speech, noise, snr)
    assert y.dtype == np.float32 and y.shape == speech.shape
    measured = _power_db(speech) - _power_db(y.astype(np.float64) - speech)
    assert abs(measured - snr) < 0.01


@pytest.mark.parametrize("kind,slope", [("white", 0.0), ("pink", -10.0), ("brown", -20.0)])
def test_colored_noise_slope_and_rms(kind, slope):
    x = degrade.colored_noise(kind, 2 ** 18, np.random.default_rng(2))
    assert x.dtype == np.float32 and len(x) == 2 ** 18
    assert abs(np.sqrt(np.mean(x.astype(np.float64) ** 2)) - 1) < 1e-4
    f, p = welch(x, fs=FS, nperseg=4096)
    band = (f >= 100) & (f <= 6000)
    fitted = np.polyfit(np.log10(f[band]), 10 * np.log10(p[band]), 1)[0]  # dB per decade
    assert abs(fitted - slope) < 3.0, fitted


def test_colored_noise_rejects_unknown():
    with pytest.raises(ValueError):
        degrade.colored_noise("purple", 100, np.random.default_rng(0))


def test_rir_bank_deterministic_and_seed_dependent(bank):
    again = degrade.make_rir_bank(4, seed=11)
    assert all(np.array_equal(a, b) for a, b in zip(bank, again))
    other = degrade.make_rir_bank(4, seed=12)
    assert not any(np.array_equal(a, b) for a in bank for b in other)  # no shared rooms, not even shifted
    # Parallel chunks reproduce the bank.
    chunks = degrade.make_rir_bank(2, seed=11) + degrade.make_rir_bank(2, seed=11, offset=2)
    assert all(np.array_equal(a, b) for a, b in zip(bank, chunks))


def test_rir_bank_format(bank):
    for h in bank:
        assert h.dtype == np.float32 and h.ndim == 1 and len(h) > 1000
        d = degrade.direct_delay(h)
        assert np.max(h[d:d + 2]) == pytest.approx(1.0, abs=1e-6)  # direct-path peak is 1
        assert np.max(np.abs(h[:d])) < 0.5


def test_direct_delay_ignores_louder_reflection():
    """Coinciding early reflections can exceed the direct path (seen in real banks, up to 2x)."""
    h = np.zeros(400, np.float32)
    h[38:43] = [-0.38, 0.99, 1.0, -0.38, 0.17]  # direct path between two samples, with sinc pre-ringing
    h[85] = 2.0
    assert degrade.direct_delay(h) == 39
    quiet = np.zeros(100, np.float32)
    quiet[[5, 10, 50]] = [0.05, 0.3, 0.2]
    assert degrade.direct_delay(quiet) == 10  # non-bank scaling (peak < 0.5): falls back to half the peak


def test_rir_bank_direct_path_at_fixed_offset():
    """Bank RIRs are trimmed so the direct path sits at the fractional-delay kernel's half-length (40)."""
    bank = degrade.make_rir_bank(1, seed=3, offset=30)  # a room whose floor+ceiling reflection peaks at 2.0
    assert np.max(np.abs(bank[0])) > 1.5
    assert degrade.direct_delay(bank[0]) in (39, 40)


@pytest.mark.parametrize("target", [0.3, 0.8])
def test_rir_rt60_plausible(target):
    rirs = degrade.make_rir_bank(3, seed=5, rt60=(target, target))
    for h in rirs:
        assert 0.5 * target <= _schroeder_rt60(h) <= 2.5 * target


def test_corrupt_keeps_length_and_alignment(bank, talkers):
    x = _speech_like(3 * FS, seed=3)
    for i in range(len(bank)):
        assert degrade.direct_delay(bank[i]) > 0.002 * FS  # so an unshifted convolution would fail the check
        y, info = degrade.corrupt(x, np.random.default_rng(i), [bank[i]], talkers, snr_db=(30, 30), reverb_prob=1.0)
        assert len(y) == len(x) and y.dtype == np.float32 and info["rir"] == 0
        xc = correlate(y.astype(np.float64), x.astype(np.float64), mode="full", method="fft")
        lag = int(np.argmax(np.abs(xc))) - (len(x) - 1)
        assert abs(lag) <= 0.002 * FS, lag


def test_corrupt_deterministic_and_info(bank, talkers):
    x = _speech_like(2 * FS, seed=4)
    runs = [degrade.corrupt(x, np.random.default_rng(9), bank, talkers) for _ in range(2)]
    assert np.array_equal(runs[0][0], runs[1][0]) and runs[0][1] == runs[1][1]
    seen = set()
    for s in range(40):
        y, info = degrade.corrupt(x, np.random.default_rng(s), bank, talkers)
        assert info["noise"] in degrade.NOISE_KINDS and 0.0 <= info["snr_db"] <= 20.0
        assert info["rir"] is None or 0 <= info["rir"] < len(bank)
        assert np.max(np.abs(y)) <= 0.99 + 1e-6
        seen.add((info["rir"] is None, info["noise"]))
    assert len(seen) >= 6  # both reverb branches and several noise kinds occur


def test_corrupt_without_reverb_is_clean_plus_noise_at_snr(talkers):
    x = _speech_like(FS, seed=5)
    y, info = degrade.corrupt(x, np.random.default_rng(0), [], talkers, snr_db=(10, 10), reverb_prob=1.0)
    assert info["rir"] is None and info["snr_db"] == 10
    assert abs(_power_db(x) - _power_db(y.astype(np.float64) - x) - 10) < 0.01


def test_corrupt_peak_normalizes_only_when_needed(talkers):
    loud = np.sign(_speech_like(FS, seed=6)).astype(np.float32) * 0.98
    y, _ = degrade.corrupt(loud, np.random.default_rng(0), [], talkers, snr_db=(0, 0), noise_types=("white",))
    assert np.max(np.abs(y)) == pytest.approx(0.99, abs=1e-6)
    quiet = _speech_like(FS, seed=6) * 0.1
    y, _ = degrade.corrupt(quiet, np.random.default_rng(0), [], talkers, snr_db=(20, 20), noise_types=("white",))
    assert abs(_power_db(quiet) - _power_db(y.astype(np.float64) - quiet) - 20) < 0.01  # unscaled


def test_babble_unit_rms_and_several_talkers(talkers):
    for s in range(5):
        b = degrade.make_babble(talkers, 3 * FS, np.random.default_rng(s))
        assert b.dtype == np.float32 and len(b) == 3 * FS
        assert abs(np.sqrt(np.mean(b.astype(np.float64) ** 2)) - 1) < 1e-4
        spec = np.abs(np.fft.rfft(b)) ** 2
        freqs = np.fft.rfftfreq(len(b), 1 / FS)
        tone_power = [spec[np.abs(freqs - (300 + 100 * i)) < 20].sum() for i in range(len(talkers))]
        present = sum(p > 0.05 * max(tone_power) for p in tone_power)
        assert 4 <= present <= 8, present


def test_noise_floor_removes_digital_silence():
    x = np.zeros(FS, dtype=np.float32)
    x[4000:8000] = 0.3 * np.sin(np.arange(4000) * 0.1)
    y = degrade.add_noise_floor(x, np.random.default_rng(0))
    frames = y[: len(y) // 400 * 400].reshape(-1, 400)
    assert np.all(np.mean(frames.astype(np.float64) ** 2, axis=1) > 0)
    assert 45 - 0.01 <= _power_db(x) - _power_db(y.astype(np.float64) - x) <= 60 + 0.01
    z = degrade.add_noise_floor(np.zeros(100, np.float32), np.random.default_rng(0))
    assert np.all(z != 0)
