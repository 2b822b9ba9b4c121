"""Kaldi alignments -> per-frame senone (pdf) targets at the paper's low frame rate, plus priors.

A Kaldi experiment dir (``exp/tri3``, made by ``steps/train_*.sh`` or ``steps/align_*.sh``) holds
``final.mdl`` (a TransitionModel followed by the acoustic model), ``tree``, ``num_jobs``,
``phones.txt`` and ``ali.{1..num_jobs}.gz``: gzipped archives of int32 transition-id vectors, one
per utterance at the 10 ms feature rate. This module does what these Kaldi programs do:

* ``ali-to-pdf``: :func:`ali_to_pdf` (transition-id -> pdf-id, i.e. senone);
* ``ali-to-phones --per-frame``: :func:`ali_to_phones`;
* ``analyze-counts``: :func:`senone_counts` / :func:`write_counts` (the prior counts that turn
  posteriors into pseudo-likelihoods at decoding time);

and then brings the targets to the low frame rate with :func:`features.lfr_targets`, after
checking each utterance against the feature data dir (:func:`fit_length`).
"""
from __future__ import annotations

import glob
import gzip
import os
import re
import struct
import zlib
from dataclasses import dataclass, field
from typing import Iterator

import kaldiio
import numpy as np

from millionhours import features, kaldi_io
from millionhours.datadir import DataDirError, read_table
from millionhours.fileio import atomic_open, atomic_path, file_sha256  # noqa: F401 (API)

__all__ = [
    "AlignmentError", "ExpDir", "load_exp_dir", "find_ali_files", "read_phones",
    "read_alignments", "check_tids", "ali_to_pdf", "ali_to_phones", "fit_length",
    "num_feature_frames", "Imported", "import_alignments", "senone_counts", "write_counts",
    "read_counts", "log_priors", "file_sha256", "write_alis",
]

DROP_REASONS = ("no_features", "length_mismatch", "empty_alignment")


class AlignmentError(ValueError):
    """A bad exp dir or alignment; the message is one line naming the file and the fix."""


# --------------------------------------------------------------------------- the exp dir


@dataclass
class ExpDir:
    """What a Kaldi exp dir holds, loaded and cross-checked."""
    path: str
    tm: kaldi_io.TransitionModel
    num_pdfs: int
    tree: kaldi_io.ContextDependency | None
    ali_files: list[str]
    phones: dict[int, str] | None          # phones.txt (id -> symbol), None if absent
    model_binary: bool

    @property
    def model_path(self) -> str:
        return os.path.join(self.path, "final.mdl")


def load_exp_dir(path: str, require_tree: bool = True) -> ExpDir:
    """Reads final.mdl (+ tree, phones.txt) and finds the alignment archives of a Kaldi exp dir.

    Raises AlignmentError for a missing or malformed final.mdl/tree, a tree whose pdf count
    differs from the model's, phones missing from phones.txt, or no/missing ali files.
    """
    if not os.path.isdir(path):
        raise AlignmentError(f"{path}: not a directory; pass a Kaldi exp dir (e.g. exp/tri3_ali)")
    mdl = os.path.join(path, "final.mdl")
    if not os.path.isfile(mdl):
        raise AlignmentError(f"{mdl}: missing; the exp dir needs the model the alignments were made "
                             f"with (steps/train_*.sh and steps/align_*.sh write it)")
    try:
        tm, am = kaldi_io.read_model(mdl)
    except kaldi_io.KaldiFormatError as e:
        raise AlignmentError(f"{mdl}: not a Kaldi model ({_detail(e, mdl)}); pass the final.mdl "
                             f"of a Kaldi GMM or nnet training") from None
    num_pdfs = am.num_pdfs if am is not None else tm.num_pdfs()
    tree = _load_tree(path, num_pdfs, require_tree)
    phones = read_phones(os.path.join(path, "phones.txt"))
    if phones is not None:
        missing = sorted(set(tm.phones()) - set(phones))
        if missing:
            raise AlignmentError(f"{os.path.join(path, 'phones.txt')}: lacks phone id {missing[0]} "
                                 f"used by final.mdl; copy phones.txt from the lang dir the model "
                                 f"was trained with")
    with open(mdl, "rb") as f:
        binary = f.read(2) == b"\0B"
    return ExpDir(path, tm, num_pdfs, tree, find_ali_files(path), phones, binary)


def _load_tree(path: str, num_pdfs: int, required: bool) -> kaldi_io.ContextDependency | None:
    """The tree, checked against the model: a different pdf count means they don't belong together."""
    tree_path = os.path.join(path, "tree")
    if not os.path.isfile(tree_path):
        if required:
            raise AlignmentError(f"{tree_path}: missing; copy the tree of the training that made "
                                 f"final.mdl into the exp dir")
        return None
    try:
        tree = kaldi_io.read_tree(tree_path)
    except kaldi_io.KaldiFormatError as e:
        raise AlignmentError(f"{tree_path}: not a Kaldi tree ({_detail(e, tree_path)}); copy the "
                             f"tree that belongs to final.mdl") from None
    if tree.num_pdfs != num_pdfs:
        raise AlignmentError(f"{tree_path}: has {tree.num_pdfs} pdfs but final.mdl has {num_pdfs}; "
                             f"the tree and model come from different trainings, use the pair from one exp dir")
    return tree


def _detail(e: Exception, path: str) -> str:
    """A KaldiFormatError's message without its leading file name (we name the file first)."""
    msg = str(e)
    return msg[len(path) + 2:] if msg.startswith(f"{path}: ") else msg


def find_ali_files(path: str) -> list[str]:
    """ali.1.gz .. ali.N.gz (N from ``num_jobs`` if present), else any ali.*.gz / ali.*.ark."""
    nj_path = os.path.join(path, "num_jobs")
    if os.path.isfile(nj_path):
        with open(nj_path) as f:
            text = f.read().strip()
        if not text.isdigit() or int(text) < 1:
            raise AlignmentError(f"{nj_path}: expected a positive integer, got '{text[:20]}'; "
                                 f"write the number of alignment jobs")
        files = []
        for j in range(1, int(text) + 1):
            cands = [os.path.join(path, f"ali.{j}.{ext}") for ext in ("gz", "ark")]
            hit = next((c for c in cands if os.path.isfile(c)), None)
            if hit is None:
                raise AlignmentError(f"{cands[0]}: missing but num_jobs is {text}; rerun the "
                                     f"alignment or fix num_jobs")
            files.append(hit)
        return files
    files = glob.glob(os.path.join(path, "ali.*.gz")) + glob.glob(os.path.join(path, "ali.*.ark"))
    if not files:
        raise AlignmentError(f"{os.path.join(path, 'ali.*.gz')}: no alignment archives; align the "
                             f"training data first (steps/align_si.sh) or pass the ali dir")
    return sorted(files, key=_job_number)


def _job_number(path: str) -> tuple:
    """Sort key: numeric job index (ali.10 after ali.9), then the name."""
    m = re.search(r"ali\.(\d+)\.", os.path.basename(path))
    return (int(m.group(1)) if m else 1 << 30, path)


def read_phones(path: str) -> dict[int, str] | None:
    """phones.txt (``symbol id`` lines) as id -> symbol; None when the file is absent."""
    if not os.path.isfile(path):
        return None
    table = {}
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            parts = line.split()
            if len(parts) != 2 or not parts[1].isdigit():
                raise AlignmentError(f"{path}:{n}: expected 'symbol id', got '{line.strip()[:40]}'; "
                                     f"use the lang dir's phones.txt")
            table[int(parts[1])] = parts[0]
    return table


# --------------------------------------------------------------------------- alignments


def read_alignments(path: str) -> Iterator[tuple[str, np.ndarray]]:
    """(utt, int32 transition-ids) from one ali archive, gzipped or plain, Kaldi binary format."""
    opener = gzip.open if path.endswith(".gz") else open
    try:
        with opener(path, "rb") as f:
            for utt, ali in kaldiio.load_ark(f):
                ali = np.asarray(ali)
                if ali.ndim != 1 or ali.dtype.kind not in "iu":
                    raise AlignmentError(f"{path}: utterance '{utt}' is not an integer vector "
                                         f"(got {ali.dtype} {ali.shape}); pass transition-id "
                                         f"alignments (ali.*.gz), not features or posteriors")
                yield utt, ali.astype(np.int32, copy=False)
    except (OSError, EOFError, zlib.error, ValueError, RuntimeError, IndexError, struct.error) as e:
        # kaldiio signals a malformed archive with RuntimeError/ValueError; gzip with OSError/EOFError
        if isinstance(e, AlignmentError):
            raise
        msg = str(e).splitlines()[0][:120] if str(e) else type(e).__name__
        raise AlignmentError(f"{path}: cannot read as a Kaldi int32-vector archive ({msg}); "
                             f"the file is truncated or not an alignment, rerun the alignment") from None


def check_tids(tm: kaldi_io.TransitionModel, ali: np.ndarray, path: str, utt: str) -> None:
    """Every transition-id must be in 1..num_transition_ids (ali-to-pdf would crash otherwise)."""
    n = tm.num_transition_ids()
    bad = (ali < 1) | (ali > n)
    if bad.any():
        i = int(np.argmax(bad))
        raise AlignmentError(f"{path}: utterance '{utt}' has transition-id {int(ali[i])} at frame {i}, "
                             f"outside 1..{n} of final.mdl; the alignments were made with another "
                             f"model, use the final.mdl from the same exp dir")


def ali_to_pdf(tm: kaldi_io.TransitionModel, ali: np.ndarray) -> np.ndarray:
    """ali-to-pdf: pdf-id (senone) of each frame. Assumes :func:`check_tids` passed."""
    return tm.tid2pdf()[ali].astype(np.int32, copy=False)


def ali_to_phones(tm: kaldi_io.TransitionModel, ali: np.ndarray) -> np.ndarray:
    """ali-to-phones --per-frame: phone id (phones.txt numbering) of each frame."""
    return tm.tid2phone()[ali].astype(np.int32, copy=False)


def fit_length(ali: np.ndarray, num_frames: int, tolerance: int) -> np.ndarray | None:
    """The alignment made exactly ``num_frames`` long, or None if it is off by more than
    ``tolerance`` frames (or empty).

    Small differences come from feature framing conventions (snip-edges, a different frame
    count at the end); padding repeats the last label (end silence), trimming drops the tail.
    """
    diff = num_frames - len(ali)
    if len(ali) == 0 or abs(diff) > tolerance:
        return None
    if diff > 0:
        return np.concatenate([ali, np.full(diff, ali[-1], ali.dtype)])
    return ali[:num_frames]


def num_feature_frames(feats_dir: str) -> dict[str, int]:
    """utt -> number of 10 ms frames, from utt2num_frames (or the feature matrices themselves)."""
    scp = os.path.join(feats_dir, "feats.scp")
    if not os.path.isfile(scp):
        raise AlignmentError(f"{scp}: missing; compute features first (stage 1, "
                             f"millionhours.bin.compute_features)")
    try:
        keys = read_table(scp)
        frames_path = os.path.join(feats_dir, "utt2num_frames")
        if os.path.isfile(frames_path):
            frames = read_table(frames_path)
            missing = next((u for u in keys if u not in frames), None)
            if missing is not None:
                raise AlignmentError(f"{frames_path}: utterance '{missing}' of feats.scp is missing; "
                                     f"regenerate it (feat-to-len scp:feats.scp ark,t:utt2num_frames)")
            return {u: int(frames[u]) for u in keys}
    except DataDirError as e:
        raise AlignmentError(str(e)) from None
    # No utt2num_frames: read each matrix's length (slower, but any Kaldi feats.scp works).
    mats = kaldiio.load_scp(scp)
    return {u: int(mats[u].shape[0]) for u in keys}


# --------------------------------------------------------------------------- the import


@dataclass
class Imported:
    """Result of :func:`import_alignments`: LFR-rate targets keyed by utterance, plus counts."""
    targets: dict[str, np.ndarray] = field(default_factory=dict)        # pdf ids
    phone_targets: dict[str, np.ndarray] = field(default_factory=dict)  # phone ids
    window_targets: dict[str, np.ndarray] = field(default_factory=dict)  # (T, stack) pdf ids
    frames_10ms: int = 0
    padded: int = 0
    trimmed: int = 0
    dropped: dict[str, list[str]] = field(default_factory=lambda: {r: [] for r in DROP_REASONS})
    no_alignment: list[str] = field(default_factory=list)  # utts with features but no alignment

    @property
    def frames_lfr(self) -> int:
        return sum(len(t) for t in self.targets.values())


def import_alignments(exp: ExpDir, frames: dict[str, int], stack: int = 3, skip: int = 3,
                      tolerance_lfr_frames: int = 1, progress=None) -> Imported:
    """Every alignment of ``exp`` checked against the feature frame counts and brought to LFR.

    An utterance is dropped (and listed by reason) when it has no features, an empty alignment,
    or a length off by more than ``tolerance_lfr_frames`` LFR frames (``* skip`` input frames).
    A transition-id outside the model or a duplicate utterance is an error.
    """
    out, seen = Imported(), {}
    tol = tolerance_lfr_frames * skip
    for path in exp.ali_files:
        for utt, ali in read_alignments(path):
            if utt in seen:
                raise AlignmentError(f"{path}: utterance '{utt}' is also in {seen[utt]}; each "
                                     f"utterance must be aligned once, remove the stale archive")
            seen[utt] = path
            check_tids(exp.tm, ali, path, utt)
            if progress is not None:
                progress.update(1)
            _add_utterance(out, exp.tm, utt, ali, frames, stack, skip, tol)
    out.no_alignment = [u for u in frames if u not in seen]
    for utts in out.dropped.values():
        utts.sort(key=str.encode)
    out.targets = dict(sorted(out.targets.items(), key=lambda kv: kv[0].encode()))
    out.phone_targets = {u: out.phone_targets[u] for u in out.targets}
    out.window_targets = {u: out.window_targets[u] for u in out.targets}
    return out


def _add_utterance(out: Imported, tm, utt: str, ali: np.ndarray, frames: dict[str, int],
                   stack: int, skip: int, tol: int) -> None:
    if utt not in frames:
        out.dropped["no_features"].append(utt)
        return
    fitted = fit_length(ali, frames[utt], tol)
    if fitted is None:
        out.dropped["empty_alignment" if len(ali) == 0 else "length_mismatch"].append(utt)
        return
    out.padded += len(fitted) > len(ali)
    out.trimmed += len(fitted) < len(ali)
    out.frames_10ms += len(fitted)
    pdfs = ali_to_pdf(tm, fitted)
    out.targets[utt] = features.lfr_targets(pdfs, stack, skip)
    out.window_targets[utt] = features.lfr_window_targets(pdfs, stack, skip)
    out.phone_targets[utt] = features.lfr_targets(ali_to_phones(tm, fitted), stack, skip)


def write_alis(out_dir: str, shards: list, alis: dict) -> int:
    """ali.N.gz (gzipped Kaldi int32-vector archives, N = 1..nj) and num_jobs; each file
    atomically, stale ali.N.gz with N > nj removed. gzip's mtime is 0 so reruns give
    identical bytes."""
    os.makedirs(out_dir, exist_ok=True)
    for j, utts in enumerate(shards, 1):
        with atomic_path(os.path.join(out_dir, f"ali.{j}.gz")) as tmp:
            with open(tmp, "wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb", mtime=0) as f:
                kaldiio.save_ark(f, {u: alis[u] for u in utts if u in alis})
    with atomic_open(os.path.join(out_dir, "num_jobs")) as f:
        f.write(f"{len(shards)}\n")
    for name in os.listdir(out_dir):      # archives of an earlier run with more jobs
        m = re.fullmatch(r"ali\.(\d+)\.gz", name)
        if m and int(m.group(1)) > len(shards):
            os.remove(os.path.join(out_dir, name))
    return len(shards)


# --------------------------------------------------------------------------- priors


def senone_counts(targets, num_pdfs: int) -> np.ndarray:
    """analyze-counts: how many (LFR) frames carry each pdf-id; int64 of length ``num_pdfs``."""
    counts = np.zeros(num_pdfs, np.int64)
    for t in targets:
        counts += np.bincount(t, minlength=num_pdfs)[:num_pdfs]
    return counts


def write_counts(f, counts: np.ndarray) -> None:
    """Kaldi text vector (Vector<double>::Write, text mode) ``" [ c0 c1 ... ]\\n"`` to an open file."""
    f.write(" [ " + "".join(f"{int(c)} " for c in counts) + "]\n")


def read_counts(path: str) -> np.ndarray:
    """A counts file written by :func:`write_counts` or Kaldi's analyze-counts (float64)."""
    with open(path) as f:
        words = f.read().split()
    if len(words) < 2 or words[0] != "[" or words[-1] != "]":
        raise AlignmentError(f"{path}: expected a Kaldi text vector '[ c0 c1 ... ]'; "
                             f"rerun the alignment import (stage 3)")
    return np.asarray([float(w) for w in words[1:-1]], np.float64)


def log_priors(counts: np.ndarray, floor: float = 1.0) -> np.ndarray:
    """log p(senone) from counts, unseen senones floored at ``floor`` counts (so no -inf)."""
    c = np.maximum(np.asarray(counts, np.float64), floor)
    return np.log(c / c.sum())
