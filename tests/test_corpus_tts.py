"""Tests for local.corpus.tts (flite/festival synthesis with phone timings)."""
import numpy as np
import pytest

from local.corpus import tts

SENT = "The quick brown fox jumps over the lazy dog."
SR = tts.SR
PHONES = tts.CMU_PHONES | {"sil"}


@pytest.fixture(scope="module")
def missing():
    return set(tts.check_engines())


def need(voice, missing):
    engine = tts.VOICES[voice]["engine"]
    if engine in missing or voice in missing:
        pytest.skip(f"{voice}: engine/voice not installed (check_engines: {sorted(missing)})")


def synth1(voice, tmp_path, alpha=1.0, f0=1.0, rate=1.0, text=SENT):
    return tts.synthesize(voice, [tts.Utt(text, alpha, f0, rate)], str(tmp_path))[0]


def median_f0(x, sr=SR, fmin=60.0, fmax=400.0):
    """Median autocorrelation pitch over loud, clearly periodic 40 ms frames."""
    x = np.asarray(x, np.float64)
    n, hop = int(0.04 * sr), int(0.01 * sr)
    lo, hi = int(sr / fmax), int(sr / fmin)
    level = np.sqrt(np.mean(x ** 2)) + 1e-9
    f0s = []
    for s in range(0, len(x) - n, hop):
        fr = x[s:s + n] - x[s:s + n].mean()
        if np.sqrt(np.mean(fr ** 2)) < 0.5 * level:
            continue
        ac = np.correlate(fr, fr, "full")[n - 1:]
        ac /= ac[0] + 1e-12
        lag = lo + int(np.argmax(ac[lo:hi]))
        if ac[lag] > 0.6:
            f0s.append(sr / lag)
    assert f0s, "no voiced frames"
    return float(np.median(f0s))


def check_result(audio, segs):
    assert audio.dtype == np.float32 and audio.ndim == 1 and audio.size > SR // 4
    assert np.abs(audio).max() <= 1.0 and np.abs(audio).max() > 0.01
    assert segs and segs[0][0] == 0.0
    assert segs[-1][1] == pytest.approx(len(audio) / SR, abs=1e-9)
    for (s0, e0, p0), (s1, _, p1) in zip(segs, segs[1:]):
        assert e0 == s1, "segments not contiguous"
        assert not (p0 == p1 == "sil"), "adjacent silences not merged"
    assert all(e > s for s, e, _ in segs)
    assert {p for _, _, p in segs} <= PHONES
    assert any(p != "sil" for _, _, p in segs)


@pytest.mark.parametrize("voice", sorted(tts.VOICES))
def test_every_voice(voice, missing, tmp_path):
    need(voice, missing)
    audio, segs = synth1(voice, tmp_path)
    check_result(audio, segs)
    assert segs[0][2] == "sil" and segs[-1][2] == "sil"
    assert [p for _, _, p in segs][1:4] == ["dh", "ah", "k"]  # "the quick", ax -> ah
    assert list(tmp_path.iterdir()) == []  # temp files cleaned up


def test_warp_resample_scales_duration_and_f0(missing, tmp_path):
    need("flite:awb", missing)
    x, _ = synth1("flite:awb", tmp_path)
    y = tts.warp_resample(x, SR, 1.1)
    assert y.dtype == np.float32
    assert len(y) / len(x) == pytest.approx(1 / 1.1, rel=0.002)
    assert median_f0(y) / median_f0(x) == pytest.approx(1.1, rel=0.04)
    z = tts.warp_resample(x, 32000, 1.0)  # plain 2:1 down-sampling
    assert len(z) == pytest.approx(len(x) / 2, abs=1)


def test_warp_without_f0_control_raises_f0(missing, tmp_path):
    # rms ignores F0 controls: alpha 1.1 raises F0 by ~1.1, while the
    # pre-compensated duration stays the same.
    need("flite:rms", missing)
    a, _ = synth1("flite:rms", tmp_path)
    b, segs = synth1("flite:rms", tmp_path, alpha=1.1)
    check_result(b, segs)
    assert median_f0(b) / median_f0(a) == pytest.approx(1.1, rel=0.05)
    assert len(b) / len(a) == pytest.approx(1.0, rel=0.05)


@pytest.mark.parametrize("voice", ["flite:awb", "festival:kal"])
def test_precompensation_keeps_f0_and_duration(voice, missing, tmp_path):
    need(voice, missing)
    a, _ = synth1(voice, tmp_path)
    b, segs = synth1(voice, tmp_path, alpha=1.1)
    check_result(b, segs)
    assert median_f0(b) / median_f0(a) == pytest.approx(1.0, rel=0.05)
    assert len(b) / len(a) == pytest.approx(1.0, rel=0.05)
    c, _ = synth1(voice, tmp_path, f0=1.3)
    assert median_f0(c) / median_f0(a) == pytest.approx(1.3, rel=0.06)


@pytest.mark.parametrize("voice", ["flite:slt", "festival:ked", "festival:slt_hts"])
def test_rate_lengthens(voice, missing, tmp_path):
    need(voice, missing)
    a, sa = synth1(voice, tmp_path)
    b, sb = synth1(voice, tmp_path, rate=1.2)
    assert len(b) / len(a) == pytest.approx(1.2, rel=0.08)
    assert [p for _, _, p in sa] == [p for _, _, p in sb]


@pytest.mark.parametrize("voice", ["flite:kal16", "festival:slt_hts"])
def test_deterministic(voice, missing, tmp_path):
    need(voice, missing)
    a, sa = synth1(voice, tmp_path, alpha=0.93, f0=1.2, rate=0.9)
    b, sb = synth1(voice, tmp_path, alpha=0.93, f0=1.2, rate=0.9)
    assert a.tobytes() == b.tobytes() and sa == sb


def test_festival_batch_in_order(missing, tmp_path):
    need("festival:kal", missing)
    texts = ["Yes.", "Call me now.", "She sells sea shells by the shore.",
             "Go.", "Please bring the red box to the kitchen table today."]
    utts = [tts.Utt(t, 1.0 + 0.02 * i, 1.0, 1.0) for i, t in enumerate(texts)]
    res = tts.synthesize("festival:kal", utts, str(tmp_path))
    assert len(res) == 5
    for audio, segs in res:
        check_result(audio, segs)
    real = [[p for _, _, p in segs if p != "sil"] for _, segs in res]
    assert real[0] == ["y", "eh", "s"] and real[3] == ["g", "ow"]
    assert len(real[1]) < len(real[2]) < len(real[4])


def test_errors(missing, tmp_path):
    need("flite:awb", missing)
    with pytest.raises(RuntimeError, match=r"flite:awb.*'\.\.\.'"):
        synth1("flite:awb", tmp_path, text="...")
    with pytest.raises(ValueError):
        synth1("flite:awb", tmp_path, text='say "hi"')
    with pytest.raises(ValueError):
        synth1("nope:voice", tmp_path)
    assert tts.synthesize("festival:kal", [], str(tmp_path)) == []


def test_festival_crash_names_the_utterance(missing, tmp_path):
    # festival segfaults on a text without words; the batch error must point at it.
    need("festival:ked", missing)
    utts = [tts.Utt(t, 1.0, 1.0, 1.0) for t in ["Hello there.", "...", "Good bye."]]
    with pytest.raises(tts.SynthesisError, match=r"festival:ked.*'\.\.\.'") as err:
        tts.synthesize("festival:ked", utts, str(tmp_path))
    assert err.value.index == 1 and isinstance(err.value, RuntimeError)
    assert len(tts.synthesize("festival:ked", utts[::2], str(tmp_path))) == 2


def test_draw_speakers():
    voices = sorted(tts.VOICES)
    a = tts.draw_speakers("spk", 60, np.random.default_rng(7), voices)
    b = tts.draw_speakers("spk", 60, np.random.default_rng(7), voices)
    assert a == b
    assert a != tts.draw_speakers("spk", 60, np.random.default_rng(8), voices)
    assert [s.id for s in a] == [f"spk{i:04d}" for i in range(60)]
    assert {s.voice for s in a} == set(voices)
    seven = tts.draw_speakers("x", 7, np.random.default_rng(0), voices)
    assert {s.voice for s in seven} == set(voices)
    assert {s.sex for s in a} == {"f", "m"}
    assert abs(sum(s.sex == "f" for s in a) - 30) <= 1
    for s in a:
        facts = tts.VOICES[s.voice]
        lo, hi = facts["alpha"][s.sex]
        assert lo - 1e-3 <= s.alpha <= hi + 1e-3
        f_lo, f_hi = tts.F0_RANGE[s.sex]
        assert f_lo - 1 <= facts["f0_hz"] * s.f0 <= f_hi + 1, s
        assert tts.RATE_RANGE[0] - 1e-3 <= s.rate <= tts.RATE_RANGE[1] + 1e-3
        if "f0" not in facts["controls"]:
            assert s.f0 == s.alpha
    only_m = tts.draw_speakers("m", 10, np.random.default_rng(1), ["flite:awb"], female_share=0.0)
    assert {s.sex for s in only_m} == {"m"}
