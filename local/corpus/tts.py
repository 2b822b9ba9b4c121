"""Offline TTS with exact phone timings: 7 base voices -> many pseudo-speakers.

Base voices (all Debian packages, see shared/research/data_sources.md §1):

* flite (one process per utterance, 16 kHz, phone end times from ``-psdur``):
  ``awb`` (Scottish male), ``rms`` (US male), ``slt`` (US female) -- clustergen;
  ``kal16`` (US male, diphone).  ``rms`` ignores every F0 control.
* festival (one ``--batch`` process per call, phones from ``utt.save.segs``):
  ``kal`` and ``ked`` (US male diphones, 16 kHz) and ``slt_hts``
  (``cmu_us_slt_arctic_hts``, US female, 32 kHz).  Debian festival's HTS module
  honours only ``-m``/``-r``, so slt_hts has a speed control but no F0 control.

A pseudo-speaker is (base voice, alpha, f0, rate).  The formant warp is done by
resampling: the native waveform is treated as if it had been sampled at
``sr * alpha`` and resampled to 16 kHz, which multiplies F0 and formants by alpha
and divides durations by alpha.  The engine is therefore asked for
pre-compensated controls (duration x rate*alpha, F0 x f0/alpha) so that the
final audio has F0 factor ``f0`` and duration factor ``rate``.  Phone times are
scaled by the exact rational resampling factor, so alignments stay exact.

Phones are the 39-phone CMU set plus ``sil`` (engine "pau"/"#" -> "sil",
"ax" -> "ah").  Engine failures raise SynthesisError (a RuntimeError) that names
the voice, the text and its batch index.  festival itself can crash on odd
input ("...", "Hmmm..." at low F0); a festival batch then resumes in a fresh
process so that only the culprit utterance fails.
"""
from __future__ import annotations

import functools
import os
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from fractions import Fraction

import numpy as np
import soundfile as sf
from scipy.signal import resample_poly

SR = 16000
SIL = "sil"

CMU_PHONES = frozenset(
    "aa ae ah ao aw ay b ch d dh eh er ey f g hh ih iy jh k l m n ng ow oy p r s sh t th "
    "uh uw v w y z zh".split()
)
# Engine symbols outside the 39-phone set.  "ax" (schwa) is in the CMU "radio"
# set used by flite/festival but folds into "ah" in CMUdict.
_PHONE_MAP = {"pau": SIL, "#": SIL, "h#": SIL, "sil": SIL, "ssil": SIL, "ax": "ah"}

# alpha ranges: whole range per data_sources.md §1.4 (male bases 0.92-1.15,
# slt 0.86-1.04), split by target sex so that female-like speakers get the upper
# (shorter vocal tract) part and male-like ones the lower part.
_MALE_BASE_ALPHA = {"m": (0.92, 1.06), "f": (1.02, 1.15)}
_SLT_ALPHA = {"m": (0.86, 0.95), "f": (0.94, 1.04)}

# f0_hz: median F0 of the base voice at default settings (autocorrelation
# tracker, 4 sentences), used to aim at a target F0.  f0_param: the engine's
# default F0 mean parameter (festival diphones' target_f0_mean), which is scaled to move F0.
VOICES: dict[str, dict] = {
    "flite:awb": dict(engine="flite", name="awb", sr=16000, sex="m", f0_hz=131.0,
                      alpha=_MALE_BASE_ALPHA, controls=("rate", "f0")),
    "flite:rms": dict(engine="flite", name="rms", sr=16000, sex="m", f0_hz=104.0,
                      alpha={"m": (0.92, 1.15)}, controls=("rate",)),
    "flite:slt": dict(engine="flite", name="slt", sr=16000, sex="f", f0_hz=172.0,
                      alpha=_SLT_ALPHA, controls=("rate", "f0")),
    "flite:kal16": dict(engine="flite", name="kal16", sr=16000, sex="m", f0_hz=94.0,
                        alpha=_MALE_BASE_ALPHA, controls=("rate", "f0")),
    "festival:kal": dict(engine="festival", name="kal_diphone", sr=16000, sex="m",
                         f0_hz=111.0, f0_param=105.0, f0_std=14.0, alpha=_MALE_BASE_ALPHA,
                         controls=("rate", "f0"), f0_shift=(0.8, 1.7)),
    "festival:ked": dict(engine="festival", name="ked_diphone", sr=16000, sex="m",
                         f0_hz=110.0, f0_param=105.0, f0_std=15.0, alpha=_MALE_BASE_ALPHA,
                         controls=("rate", "f0"), f0_shift=(0.8, 1.7)),
    "festival:slt_hts": dict(engine="festival", name="cmu_us_slt_arctic_hts", sr=32000,
                             sex="f", f0_hz=169.0, alpha={"f": (0.95, 1.04)},
                             controls=("rate",)),
}

F0_RANGE = {"m": (85.0, 140.0), "f": (160.0, 240.0)}
RATE_RANGE = (0.85, 1.2)
# Engine-side F0 factor (f0/alpha) used by draw_speakers: beyond it the voices
# sound broken; festival kal/ked override the floor (see _FESTIVAL_MIN_F0).
ENGINE_F0_SHIFT = (0.6, 1.7)
# festival kal/ked crash (malloc corruption) on short exclamations when
# target_f0_mean goes below ~70 Hz, so synthesis never asks for less.
_FESTIVAL_MIN_F0 = 75.0
_END_TOL_S = 0.020  # allowed gap between the last phone end and the audio end
_FESTIVAL_DUR_STRETCH = 1.1  # festival kal/ked voices' default Duration_Stretch


# --------------------------------------------------------------------- speakers
@dataclass(frozen=True)
class Speaker:
    """A pseudo-speaker.  f0 and rate are factors of the final audio relative to
    the base voice (base F0 * f0 lands in F0_RANGE[sex])."""
    id: str
    voice: str
    alpha: float
    f0: float
    rate: float
    sex: str


def _assign_sexes(voices: list[str], rng: np.random.Generator, female_share: float) -> list[str]:
    """Sexes for a list of voices: forced where a voice can do only one, and the
    flexible ones filled so the female share is as close to the target as possible."""
    n = len(voices)
    sexes = [next(iter(VOICES[v]["alpha"])) if len(VOICES[v]["alpha"]) == 1 else "" for v in voices]
    need_f = int(round(n * female_share)) - sexes.count("f")
    flexible = [i for i, s in enumerate(sexes) if not s]
    order = rng.permutation(len(flexible))
    for rank, j in enumerate(order):
        sexes[flexible[j]] = "f" if rank < need_f else "m"
    return sexes


def _intersect(a: tuple[float, float], b: tuple[float, float]) -> tuple[float, float]:
    """Overlap of two ranges; the point of a nearest to b when they are disjoint."""
    lo, hi = max(a[0], b[0]), min(a[1], b[1])
    if lo > hi:
        lo = hi = a[1] if a[1] < b[0] else a[0]
    return lo, hi


def _draw_one(sid: str, voice: str, sex: str, rng: np.random.Generator) -> Speaker:
    """Pick alpha, then a target F0 in the sex range that the engine can reach.

    Speaker.f0 is the F0 factor of the final audio (base F0 -> base F0 * f0).
    Voices without F0 control get f0 = alpha: the warp is all they can do.
    """
    facts, base = VOICES[voice], VOICES[voice]["f0_hz"]
    f0_lo, f0_hi = F0_RANGE[sex]
    if "f0" not in facts["controls"]:
        # Keep alpha where the warped base F0 lands in the target range.
        lo, hi = _intersect(facts["alpha"][sex], (f0_lo / base, f0_hi / base))
        alpha = float(rng.uniform(lo, hi))
        f0 = alpha
    else:
        alpha = float(rng.uniform(*facts["alpha"][sex]))
        # The engine is asked for f0/alpha; keep that within its shift range.
        reach = tuple(base * alpha * k for k in facts.get("f0_shift", ENGINE_F0_SHIFT))
        f0 = float(rng.uniform(*_intersect(reach, (f0_lo, f0_hi)))) / base
    rate = float(rng.uniform(*RATE_RANGE))
    return Speaker(sid, voice, round(alpha, 4), round(f0, 4), round(rate, 4), sex)


def draw_speakers(prefix: str, n: int, rng: np.random.Generator, voices: list[str],
                  female_share: float = 0.5) -> list[Speaker]:
    """n pseudo-speakers; voices cycle in an rng-shuffled order so that every
    voice appears once n >= len(voices)."""
    unknown = [v for v in voices if v not in VOICES]
    if unknown or not voices:
        raise ValueError(f"unknown or no voices: {unknown or voices}")
    order = [voices[i] for i in rng.permutation(len(voices))]
    chosen = [order[i % len(order)] for i in range(n)]
    sexes = _assign_sexes(chosen, rng, female_share)
    return [_draw_one(f"{prefix}{i:04d}", v, s, rng) for i, (v, s) in enumerate(zip(chosen, sexes))]


# --------------------------------------------------------------------- warp
def _warp_ratio(sr_in: int, alpha: float, sr_out: int) -> Fraction:
    """up/down of the resampler: the input is read as if sampled at sr_in*alpha."""
    a = Fraction(alpha).limit_denominator(1000)
    return (Fraction(sr_out) / (Fraction(sr_in) * a)).limit_denominator(1000)


def warp_resample(x: np.ndarray, sr_in: int, alpha: float, sr_out: int = SR) -> np.ndarray:
    """Resample x (rate sr_in) to sr_out with formant/F0 warp alpha."""
    fr = _warp_ratio(sr_in, alpha, sr_out)
    y = resample_poly(np.asarray(x, dtype=np.float64), fr.numerator, fr.denominator)
    return np.clip(y, -1.0, 1.0).astype(np.float32)


# --------------------------------------------------------------------- synthesis
@dataclass
class Utt:
    """One request.  f0/rate are factors of the final audio relative to the base
    voice; voices without F0 control (flite:rms, festival:slt_hts) ignore f0 and
    come out with F0 factor alpha."""
    text: str  # no double quotes or backslashes (festival Scheme string)
    alpha: float
    f0: float
    rate: float


Segments = list[tuple[float, float, str]]


class SynthesisError(RuntimeError):
    """The engine failed on one utterance; .index is its position in the batch,
    so a caller can drop that text and resubmit the rest."""

    def __init__(self, voice: str, text: str, index: int, why: str):
        super().__init__(f"{voice}: {why}, for text {text!r} (batch item {index})")
        self.voice, self.text, self.index = voice, text, index


class _BadOutput(Exception):
    """Raised by the output checks; _finish adds voice/text/index."""


def _map_phone(p: str) -> str:
    p = p.lower()
    return _PHONE_MAP.get(p, p)


def _segments(ends: list[tuple[float, str]]) -> Segments:
    """End-time list -> contiguous (start, end, phone) with silences merged."""
    segs: Segments = []
    start = 0.0
    for end, raw in ends:
        ph = _map_phone(raw)
        if ph != SIL and ph not in CMU_PHONES:
            raise _BadOutput(f"unknown phone {raw!r}")
        if end <= start:  # zero-length phones carry no audio
            continue
        if segs and segs[-1][2] == ph == SIL:
            segs[-1] = (segs[-1][0], end, SIL)
        else:
            segs.append((start, end, ph))
        start = end
    return segs


def _fit_end(segs: Segments, dur: float) -> Segments:
    """Make the last segment end exactly at the audio end.

    A final real phone must end within 20 ms of the audio end.  A final silence
    may be cut or stretched: diphone engines synthesize only the first half of
    the last pau (flite kal16, ~100 ms short) or append the last pitch-period
    window (festival kal/ked, ~25 ms long); both only change silence.
    """
    if all(p == SIL for _, _, p in segs):
        raise _BadOutput("no phones (only silence)")
    start, end, ph = segs[-1]
    if ph == SIL:
        ok = start + 0.005 < dur <= end + 2 * _END_TOL_S
    else:
        ok = abs(end - dur) <= _END_TOL_S
    if not ok:
        raise _BadOutput(f"phones end at {end:.3f}s but audio is {dur:.3f}s")
    return segs[:-1] + [(start, dur, ph)]


def _finish(voice: str, u: Utt, index: int, wav: np.ndarray, sr: int,
            ends: list[tuple[float, str]]) -> tuple[np.ndarray, Segments]:
    """Warp the native audio and scale the phone times by the same exact factor."""
    try:
        if wav.size == 0 or not ends:
            raise _BadOutput("no audio or no phones")
        y = warp_resample(wav, sr, u.alpha)
        # native seconds -> output seconds: 1/alpha, exactly as resampled
        scale = float(_warp_ratio(sr, u.alpha, SR)) * sr / SR
        return y, _fit_end(_segments([(t * scale, p) for t, p in ends]), len(y) / SR)
    except _BadOutput as e:
        raise SynthesisError(voice, u.text, index, str(e)) from None


def _read_wav(path: str) -> tuple[np.ndarray, int]:
    x, sr = sf.read(path, dtype="float32", always_2d=True)
    return x[:, 0], sr


def _check_text(voice: str, text: str) -> None:
    if '"' in text or "\\" in text or not text.strip():
        raise ValueError(f"{voice}: text must be non-empty without quotes/backslashes: {text!r}")


def _flite_args(facts: dict, u: Utt, wav_path: str) -> list[str]:
    args = ["flite", "-voice", facts["name"],
            "--setf", f"duration_stretch={u.rate * u.alpha:.6f}"]
    f0 = u.f0 / u.alpha  # the warp multiplies F0 by alpha afterwards
    if "f0" in facts["controls"]:  # f0_shift scales mean and range (kal16 too)
        args += ["--setf", f"f0_shift={f0:.6f}"]
    return args + ["-psdur", "-t", u.text, "-o", wav_path]


def _parse_psdur(out: str) -> list[tuple[float, str]]:
    ends = []
    for tok in out.split():
        ph, sep, t = tok.rpartition(":")
        if sep and ph:
            ends.append((float(t), ph))
    return ends


def _synth_flite(voice: str, utts: list[Utt], work: str) -> list[tuple[np.ndarray, Segments]]:
    facts, results = VOICES[voice], []
    for i, u in enumerate(utts):
        path = os.path.join(work, f"u{i:05d}.wav")
        proc = subprocess.run(_flite_args(facts, u, path), capture_output=True, text=True)
        if proc.returncode != 0 or not os.path.exists(path):
            why = f"flite failed (rc {proc.returncode}: {proc.stderr.strip()[-200:]})"
            raise SynthesisError(voice, u.text, i, why)
        results.append(_finish(voice, u, i, *_read_wav(path), _parse_psdur(proc.stdout)))
    return results


def _festival_controls(facts: dict, u: Utt) -> str:
    """Scheme that sets one utterance's pre-compensated speed and F0."""
    stretch = u.rate * u.alpha
    if facts["name"].endswith("_hts"):
        # HTS "-r" is a speed factor; Debian's module ignores F0 options.
        return ('(set! hts_engine_params (append {0}::hts_engine_params '
                '(list (list "-r" {1:.6f}))))'.format(facts["name"], 1.0 / stretch))
    f0 = u.f0 / u.alpha
    return ("(Parameter.set 'Duration_Stretch {0:.6f})\n"
            "(set! int_lr_params '((target_f0_mean {1:.4f}) (target_f0_std {2:.4f}) "
            "(model_f0_mean 170) (model_f0_std 34)))").format(
        _FESTIVAL_DUR_STRETCH * stretch, max(facts["f0_param"] * f0, _FESTIVAL_MIN_F0),
        facts["f0_std"] * f0)


def _festival_script(facts: dict, utts: list[Utt], first: int, work: str) -> str:
    """Scheme for utts[first:]; outputs are named by the utterance's batch index."""
    lines = [f"(voice_{facts['name']})"]
    for i in range(first, len(utts)):
        base = os.path.join(work, f"u{i:05d}")
        lines += [_festival_controls(facts, utts[i]),
                  f'(set! utt (SynthText "{utts[i].text}"))',
                  f"(utt.save.wave utt \"{base}.wav\" 'riff)",
                  f'(utt.save.segs utt "{base}.segs")']  # written last: marks the utt done
    return "\n".join(lines) + "\n"


def _parse_segs(path: str) -> list[tuple[float, str]]:
    """festival segs file: header up to a '#' line, then 'END 100 PHONE' lines."""
    with open(path, encoding="utf-8") as f:
        lines = f.read().splitlines()
    body = lines[lines.index("#") + 1:] if "#" in lines else lines
    return [(float(a[0]), a[2]) for a in (ln.split() for ln in body) if len(a) >= 3]


def _run_festival(facts: dict, utts: list[Utt], first: int, last: int,
                  work: str) -> tuple[int, str]:
    """Synthesize utts[first:last] in one festival process.

    Returns the index of the first utterance without output (last if all done)
    and festival's messages.
    """
    scm = os.path.join(work, f"batch{first:05d}.scm")
    with open(scm, "w", encoding="utf-8") as f:
        f.write(_festival_script(facts, utts[:last], first, work))
    proc = subprocess.run(["festival", "--batch", scm], capture_output=True, text=True)
    done = first
    while done < last and os.path.exists(os.path.join(work, f"u{done:05d}.segs")):
        done += 1
    return done, (proc.stderr or proc.stdout).strip()[-300:]


def _synth_festival(voice: str, utts: list[Utt], work: str) -> list[tuple[np.ndarray, Segments]]:
    """One festival process for the batch.  festival can crash (segfault, heap
    corruption) on odd input, e.g. "..." or "Hmmm..." at low F0, and heap damage
    may kill it a few utterances later.  So after a crash the first missing
    utterance is retried alone: if it fails again it is the culprit and raises;
    otherwise the batch resumes after it in a fresh process."""
    facts, first = VOICES[voice], 0
    while first < len(utts):
        first, err = _run_festival(facts, utts, first, len(utts), work)
        if first < len(utts):
            retry, err = _run_festival(facts, utts, first, first + 1, work)
            if retry == first:
                raise SynthesisError(voice, utts[first].text, first, f"festival failed ({err})")
            first = retry
    results = []
    for i, u in enumerate(utts):
        base = os.path.join(work, f"u{i:05d}")
        results.append(_finish(voice, u, i, *_read_wav(base + ".wav"), _parse_segs(base + ".segs")))
    return results


def synthesize(voice: str, utts: list[Utt], tmpdir: str) -> list[tuple[np.ndarray, Segments]]:
    """Synthesize a batch for one base voice -> [(16 kHz float32 audio, phone segments)]."""
    if voice not in VOICES:
        raise ValueError(f"unknown voice {voice!r}")
    for u in utts:
        _check_text(voice, u.text)
    if not utts:
        return []
    work = tempfile.mkdtemp(prefix="tts_", dir=tmpdir)
    try:
        if VOICES[voice]["engine"] == "flite":
            return _synth_flite(voice, utts, work)
        return _synth_festival(voice, utts, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)


# --------------------------------------------------------------------- setup check
@functools.lru_cache(maxsize=1)
def _engine_voices() -> dict[str, frozenset[str]]:
    """Voices each installed engine reports (asked from the engines themselves)."""
    found: dict[str, frozenset[str]] = {}
    if shutil.which("flite"):
        out = subprocess.run(["flite", "-lv"], capture_output=True, text=True).stdout
        found["flite"] = frozenset(out.split(":", 1)[-1].split())
    if shutil.which("festival"):
        with tempfile.TemporaryDirectory() as d:
            scm = os.path.join(d, "list.scm")
            with open(scm, "w") as f:
                f.write("(print (voice.list))\n")
            proc = subprocess.run(["festival", "--batch", scm], capture_output=True, text=True)
        found["festival"] = frozenset(proc.stdout.replace("(", " ").replace(")", " ").split())
    return found


def check_engines() -> list[str]:
    """Missing engines/voices, e.g. ["festival", "flite:awb"]; empty if all present."""
    found, missing = _engine_voices(), []
    for engine in ("flite", "festival"):
        if engine not in found:
            missing.append(engine)
    for vid, facts in VOICES.items():
        if facts["engine"] in found and facts["name"] not in found[facts["engine"]]:
            missing.append(vid)
    return missing
