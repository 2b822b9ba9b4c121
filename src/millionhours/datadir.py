"""Kaldi data directories: reading, writing and the checks of Kaldi's utils/validate_data_dir.sh.

A data dir holds `wav.scp` (recording -> file or `command |`), optional `segments`
(utt -> recording start end), `utt2spk`, `spk2utt`, optional `text`, `utt2dur`, and after
feature extraction `feats.scp`. Every table is sorted in C-locale byte order with unique keys, and
utterance ids sort in the same order as their speakers (Kaldi requires the speaker id to prefix
the utterance id). Errors are one line naming the file or utterance and the fix.
"""
import io
import os
import subprocess
from dataclasses import dataclass, field

import numpy as np
import soundfile

from millionhours.fileio import atomic_open

SAMPLE_RATE = 16000


class DataDirError(ValueError):
    """A data dir that Kaldi's validate_data_dir.sh would reject."""


def read_table(path: str, required: bool = True) -> dict[str, str]:
    """key -> rest of line, in file order; checks sorted unique keys like Kaldi tables need."""
    if not os.path.isfile(path):
        if required:
            raise DataDirError(f"{path}: missing; every Kaldi data dir needs it (see utils/validate_data_dir.sh)")
        return {}
    table, prev = {}, None
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            parts = line.rstrip("\n").split(maxsplit=1)
            if not parts:
                raise DataDirError(f"{path}:{n}: empty line; remove it")
            key = parts[0]
            if prev is not None and key.encode() <= prev.encode():
                what = "duplicate key" if key == prev else "not sorted"
                raise DataDirError(f"{path}:{n}: {what} at '{key}'; sort with `LC_ALL=C sort -u` "
                                   f"(or utils/fix_data_dir.sh)")
            table[key] = parts[1] if len(parts) > 1 else ""
            prev = key
    return table


def write_table(path: str, table: dict, sort: bool = True) -> None:
    """Writes `key value` lines (C-locale sorted), atomically."""
    keys = sorted(table, key=str.encode) if sort else list(table)
    with atomic_open(path) as f:
        for key in keys:
            value = table[key]
            f.write(f"{key} {value}\n" if value != "" else f"{key}\n")


def spk2utt_of(utt2spk: dict) -> dict[str, str]:
    spk2utt: dict[str, list[str]] = {}
    for utt, spk in utt2spk.items():
        spk2utt.setdefault(spk, []).append(utt)
    return {spk: " ".join(utts) for spk, utts in spk2utt.items()}


@dataclass
class DataDir:
    path: str
    utt2spk: dict
    wav: dict                     # recording id -> wav.scp entry
    segments: dict = field(default_factory=dict)   # utt -> (recording, start_s, end_s)
    text: dict | None = None      # None when the dir has no `text` (unlabeled or unscored data)

    @property
    def utts(self) -> list[str]:
        return list(self.utt2spk)

    def audio_source(self, utt: str) -> tuple[str, float, float | None]:
        """(wav.scp entry, start s, end s or None) of an utterance, through `segments` if present."""
        if self.segments:
            rec, start, end = self.segments[utt]
            return self.wav[rec], start, end
        return self.wav[utt], 0.0, None


def load_datadir(path: str) -> DataDir:
    utt2spk = read_table(os.path.join(path, "utt2spk"))
    wav = read_table(os.path.join(path, "wav.scp"))
    segments = {}
    for utt, rest in read_table(os.path.join(path, "segments"), required=False).items():
        rec, start, end = rest.split()
        segments[utt] = (rec, float(start), float(end))
    text = read_table(os.path.join(path, "text"), required=False) or None
    return DataDir(path, utt2spk, wav, segments, text)


def validate(path: str, lexicon: set | None = None, need_text: bool = False) -> DataDir:
    """The consistency checks of validate_data_dir.sh (audio is checked when it is read)."""
    dd = load_datadir(path)
    name = lambda f: os.path.join(path, f)  # noqa: E731
    if not dd.utt2spk:
        raise DataDirError(f"{name('utt2spk')}: no utterances")
    spk_order = [dd.utt2spk[u] for u in dd.utt2spk]
    if any(a.encode() > b.encode() for a, b in zip(spk_order, spk_order[1:])):
        bad = next(u for u, a, b in zip(list(dd.utt2spk)[1:], spk_order, spk_order[1:]) if a.encode() > b.encode())
        raise DataDirError(f"{name('utt2spk')}: utterance '{bad}' breaks speaker order; make speaker ids "
                           f"prefixes of utterance ids (Kaldi requires utt2spk sorted by both)")
    spk2utt = read_table(name("spk2utt"))
    if spk2utt != spk2utt_of(dd.utt2spk):
        raise DataDirError(f"{name('spk2utt')}: does not match utt2spk; regenerate it with "
                           f"utils/utt2spk_to_spk2utt.pl utt2spk > spk2utt")
    _check_keys(dd.segments or dd.wav, dd.utt2spk, name("segments" if dd.segments else "wav.scp"))
    if dd.segments:
        missing = sorted({rec for rec, _, _ in dd.segments.values()} - set(dd.wav))
        if missing:
            raise DataDirError(f"{name('segments')}: recording '{missing[0]}' is not in wav.scp; add it or drop its segments")
    if dd.text is None:
        if need_text:
            raise DataDirError(f"{name('text')}: missing; this step needs transcripts")
        return dd
    _check_keys(dd.text, dd.utt2spk, name("text"))
    for utt, words in dd.text.items():
        if not words.strip():
            raise DataDirError(f"{name('text')}: utterance '{utt}' has an empty transcript; "
                               f"remove the utterance (utils/fix_data_dir.sh) or transcribe it")
        if lexicon is not None:
            oov = [w for w in words.split() if w not in lexicon]
            if oov:
                raise DataDirError(f"{name('text')}: utterance '{utt}' has word '{oov[0]}' missing from "
                                   f"the lexicon; add a pronunciation or map it to the OOV word")
    return dd


def _check_keys(table: dict, utt2spk: dict, path: str) -> None:
    extra = [k for k in table if k not in utt2spk]
    missing = [k for k in utt2spk if k not in table]
    if extra or missing:
        which, utt = ("is not in utt2spk", extra[0]) if extra else ("is missing", missing[0])
        raise DataDirError(f"{path}: utterance '{utt}' {which}; make the tables agree (utils/fix_data_dir.sh)")


def read_audio(entry: str, utt: str = "?", start: float = 0.0, end: float | None = None) -> np.ndarray:
    """float32 mono samples at 16 kHz from a wav.scp entry: a file path or a `command |` pipe."""
    try:
        if entry.endswith("|"):
            wav = subprocess.run(entry[:-1], shell=True, check=True, capture_output=True).stdout
            x, rate = soundfile.read(io.BytesIO(wav), dtype="float32", always_2d=True)
        else:
            x, rate = soundfile.read(entry, dtype="float32", always_2d=True)
    except (OSError, RuntimeError, soundfile.LibsndfileError, subprocess.CalledProcessError) as e:
        raise DataDirError(f"utterance '{utt}': cannot read audio '{entry}' ({str(e).splitlines()[0][:120]}); "
                           f"fix the wav.scp entry") from None
    if rate != SAMPLE_RATE:
        raise DataDirError(f"utterance '{utt}': '{entry}' is {rate} Hz, expected {SAMPLE_RATE}; resample it "
                           f"(e.g. `sox in.wav -r 16000 out.wav` or a `sox ... -r 16000 -t wav - |` pipe)")
    x = x[:, 0]
    if start or end is not None:
        x = x[int(round(start * rate)): None if end is None else int(round(end * rate))]
    if x.size == 0:
        raise DataDirError(f"utterance '{utt}': '{entry}' has no samples; remove the utterance")
    return x


def utterance_audio(dd: DataDir, utt: str) -> np.ndarray:
    entry, start, end = dd.audio_source(utt)
    return read_audio(entry, utt, start, end)


def write_datadir(path: str, utt2spk: dict, wav: dict, text: dict | None = None,
                  utt2dur: dict | None = None, extra: dict | None = None) -> None:
    """Writes a Kaldi data dir (each file atomically); `extra` maps file name -> table."""
    os.makedirs(path, exist_ok=True)
    write_table(os.path.join(path, "utt2spk"), utt2spk)
    write_table(os.path.join(path, "spk2utt"), spk2utt_of(dict(sorted(utt2spk.items(), key=lambda kv: kv[0].encode()))))
    write_table(os.path.join(path, "wav.scp"), wav)
    if text is not None:
        write_table(os.path.join(path, "text"), text)
    if utt2dur is not None:
        write_table(os.path.join(path, "utt2dur"), {u: f"{d:.3f}" for u, d in utt2dur.items()})
    for fname, table in (extra or {}).items():
        write_table(os.path.join(path, fname), table)
