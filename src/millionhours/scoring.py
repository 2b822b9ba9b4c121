"""Word error rate: Kaldi's ``compute-wer`` and ``align-text``/``wer_per_utt_details.pl`` via jiwer.

Each utterance is aligned by jiwer (Levenshtein over words); the counts are summed over the set.
The per-utterance file has Kaldi's ``per_utt`` layout (``ref``, ``hyp``, ``op`` with C/S/I/D and
``#csid`` lines, ``***`` for the empty side). An utterance without a hypothesis (the decoder
failed or it was not decoded) scores as all deletions and is counted in ``missing_hyps``.

Reference words outside the decoding vocabulary can never be recognized; they are counted
(``oov_words``, ``oov_rate``) so the WER can be read against them, and score as the errors they
cause. Nothing is filtered from either side (no ``<unk>`` removal): a hypothesized ``<unk>`` is
an error too.

Two systems are compared by a paired bootstrap over test utterances (Bisani & Ney, ICASSP 2004,
:func:`paired_bootstrap`): one matrix of resampled utterance indices serves both systems and all
their seed replicas, so each replicate scores every model on the same utterances; the statistic
is on each system's mean over seeds. With one seed a side, the 95% interval is the replicates'
percentile interval; with several, the between-seed variance of each side's mean is added to the
bootstrap variance and the interval is normal around the point estimate.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from statistics import NormalDist

import jiwer
import numpy as np

__all__ = ["align", "UttScore", "score_utt", "score_set", "per_utt_lines", "write_per_utt",
           "utt_error_counts", "REPLICATES", "Comparison", "paired_bootstrap"]

EPS = "***"
_OPS = {"equal": "C", "substitute": "S", "delete": "D", "insert": "I"}


def align(ref: list[str], hyp: list[str]) -> list[tuple[str, str, str]]:
    """Word alignment as (op, ref word or ***, hyp word or ***), op in C/S/D/I."""
    if not ref:
        return [("I", EPS, h) for h in hyp]
    if not hyp:
        return [("D", r, EPS) for r in ref]
    out = []
    for c in jiwer.process_words(" ".join(ref), " ".join(hyp)).alignments[0]:
        rs, hs = ref[c.ref_start_idx:c.ref_end_idx], hyp[c.hyp_start_idx:c.hyp_end_idx]
        op = _OPS[c.type]
        if op == "D":
            out += [("D", r, EPS) for r in rs]
        elif op == "I":
            out += [("I", EPS, h) for h in hs]
        else:
            out += [(op, r, h) for r, h in zip(rs, hs)]
    return out


@dataclass
class UttScore:
    utt: str
    ref: list
    hyp: list
    ops: list                  # (op, ref, hyp) from :func:`align`

    def count(self, op: str) -> int:
        return sum(o == op for o, _, _ in self.ops)

    @property
    def errors(self) -> int:
        return sum(o != "C" for o, _, _ in self.ops)


def score_utt(utt: str, ref: str, hyp: str) -> UttScore:
    r, h = ref.split(), hyp.split()
    return UttScore(utt, r, h, align(r, h))


def score_set(refs: dict, hyps: dict, vocab=None) -> tuple[dict, list[UttScore]]:
    """(summary, per-utterance scores) over the utterances of ``refs`` (sorted by id).

    ``vocab``: the words the decoder can output; reference words outside it are counted.
    """
    utts = sorted(refs, key=str.encode)
    scores = [score_utt(u, refs[u], hyps.get(u, "")) for u in utts]
    n_ref = sum(len(s.ref) for s in scores)
    sub, dele, ins = (sum(s.count(op) for s in scores) for op in "SDI")
    oov = sum(w not in vocab for s in scores for w in s.ref) if vocab is not None else None
    summary = {
        "wer": round(100.0 * (sub + dele + ins) / n_ref, 3) if n_ref else None,
        "substitutions": sub, "deletions": dele, "insertions": ins,
        "errors": sub + dele + ins, "ref_words": n_ref, "hyp_words": sum(len(s.hyp) for s in scores),
        "sentences": len(scores), "sentence_errors": sum(s.errors > 0 for s in scores),
        "ser": round(100.0 * sum(s.errors > 0 for s in scores) / len(scores), 3) if scores else None,
        "missing_hyps": sum(u not in hyps for u in utts),
        "oov_words": oov,
        "oov_rate": round(100.0 * oov / n_ref, 3) if oov is not None and n_ref else None,
    }
    return summary, scores


def per_utt_lines(s: UttScore) -> list[str]:
    """Kaldi's per_utt block for one utterance (ref/hyp/op aligned in columns, then #csid)."""
    cols = s.ops or [("", "", "")]
    width = [max(len(r), len(h), len(o)) for o, r, h in cols]
    row = lambda xs: " ".join(x.ljust(w) for x, w in zip(xs, width)).rstrip()  # noqa: E731
    return [f"{s.utt} ref  {row([r for _, r, _ in cols])}",
            f"{s.utt} hyp  {row([h for _, _, h in cols])}",
            f"{s.utt} op   {row([o for o, _, _ in cols])}",
            f"{s.utt} #csid {s.count('C')} {s.count('S')} {s.count('I')} {s.count('D')}"]


def write_per_utt(path: str, scores: list[UttScore]) -> None:
    from millionhours.fileio import atomic_open
    with atomic_open(path) as f:
        for s in scores:
            f.write("\n".join(per_utt_lines(s)) + "\n")


def utt_error_counts(scores: list[UttScore]) -> dict[str, list[int]]:
    """``{utt: [errors (S+D+I), reference words]}``: what a result JSON keeps (``utt_errors``) so
    that two decodes can be compared utterance by utterance (:func:`paired_bootstrap`)."""
    return {s.utt: [s.errors, len(s.ref)] for s in scores}


Counts = Mapping[str, Sequence[int]]       # utt -> (errors, reference words), as utt_error_counts
REPLICATES = 1000                          # bootstrap replicates; the tables name the number


@dataclass(frozen=True)
class Comparison:
    """``system`` against ``base`` on one test set (WERs in %, WERR as a fraction).

    ``diff`` = WER_base - WER_system and ``werr`` = diff / WER_base, both positive when the system
    is better; ``*_ci`` their 95% intervals, ``*_se`` their standard errors (bootstrap plus seed
    spread); ``werr`` is None when WER_base is 0. ``p_improvement``: the share of replicates in
    which the system's WER is below the base's (utterance sampling only, not seeds).
    """
    wer_base: float
    wer_system: float
    diff: float
    diff_ci: tuple[float, float]
    diff_se: float
    werr: float | None
    werr_ci: tuple[float, float] | None
    werr_se: float | None
    p_improvement: float
    utterances: int
    seeds: tuple[int, int]               # replicas of (base, system)
    interval: str                        # "percentile" (one seed a side) or "normal"


def _matrix(replicas: Sequence[Counts], utts: list[str], words: np.ndarray, side: str) -> np.ndarray:
    """(seeds, utterances) errors, after checking every replica scored the same references."""
    if not replicas:
        raise ValueError(f"paired_bootstrap: no {side} replicas")
    rows = []
    for counts in replicas:
        if counts.keys() != set(utts):
            raise ValueError(f"paired_bootstrap: {side} counts {len(counts)} utterances, not the "
                             f"same {len(utts)} as the first base replica")
        if any(counts[u][1] != w for u, w in zip(utts, words)):
            raise ValueError(f"paired_bootstrap: {side} has other reference word counts")
        rows.append([counts[u][0] for u in utts])
    return np.asarray(rows, dtype=float)


def paired_bootstrap(base: Sequence[Counts], system: Sequence[Counts], replicates: int = REPLICATES,
                     seed: int = 0, level: float = 0.95) -> Comparison:
    """Paired bootstrap of WER_base - WER_system and of the WERR (Bisani & Ney 2004).

    ``base`` and ``system``: one ``{utt: (errors, words)}`` per seed replica, all on the same
    utterances. Each replicate draws the utterances with replacement (``seed`` fixes the draw, so
    a table is the same every time it is made, and every call on a set of that size reuses the
    same index matrix); a system's WER in it is the mean over its seeds, each seed's WER on those
    drawn utterances. Replicates whose drawn utterances hold no words (or, for the WERR, no base
    errors) are left out of that statistic.

    Seeds: when a side has n > 1 replicas, the variance of its mean WER over training runs is
    s^2/n, s the sample std of its per-seed WERs (on the full set); a side with one replica
    borrows the other side's s^2 (same recipe, so the same training noise is assumed, rather
    than none). These are added to the bootstrap variance, propagated to the WERR to first order
    (WERR = 1 - S/B: var = var_S/B^2 + S^2 var_B/B^4), and the interval is point +- z se.
    """
    utts = sorted(base[0], key=str.encode) if base else []
    if not utts:
        raise ValueError("paired_bootstrap: no utterances")
    words = np.asarray([base[0][u][1] for u in utts], dtype=float)
    eb, es = _matrix(base, utts, words, "base"), _matrix(system, utts, words, "system")
    n = len(utts)
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, n, size=(replicates, n))
    # how often each utterance is drawn in each replicate, so that every total (words, each
    # seed's errors) of every replicate is one matrix product
    draws = np.bincount((np.arange(replicates)[:, None] * n + idx).ravel(),
                        minlength=replicates * n).reshape(replicates, n).astype(float)
    with np.errstate(divide="ignore", invalid="ignore"):
        # all replicas share the words, so the mean of their WERs is the WER of their mean errors
        rep_words = draws @ words
        wb, ws = (100 * (draws @ e.mean(axis=0)) / rep_words for e in (eb, es))
        rep_diff = np.where(rep_words > 0, wb - ws, np.nan)
        rep_werr = np.where(wb > 0, rep_diff / wb, np.nan)

    total = words.sum()
    seed_wer_b, seed_wer_s = 100 * eb.sum(axis=1) / total, 100 * es.sum(axis=1) / total
    wer_b, wer_s = float(seed_wer_b.mean()), float(seed_wer_s.mean())
    diff = wer_b - wer_s
    werr = diff / wer_b if wer_b > 0 else None

    var_b = float(np.var(seed_wer_b, ddof=1)) if len(eb) > 1 else None
    var_s = float(np.var(seed_wer_s, ddof=1)) if len(es) > 1 else None
    var_b, var_s = (var_s if var_b is None else var_b), (var_b if var_s is None else var_s)
    seeded = var_b is not None
    vb, vs = (var_b / len(eb), var_s / len(es)) if seeded else (0.0, 0.0)
    diff_se = float(np.sqrt(np.nanvar(rep_diff, ddof=1) + vb + vs))
    werr_se = None if werr is None else float(np.sqrt(
        np.nanvar(rep_werr, ddof=1) + vs / wer_b ** 2 + wer_s ** 2 * vb / wer_b ** 4))

    tail = 100 * (1 - level) / 2
    z = NormalDist().inv_cdf(1 - (1 - level) / 2)

    def ci(point: float, reps: np.ndarray, se: float) -> tuple[float, float]:
        if seeded:
            return point - z * se, point + z * se
        lo, hi = np.nanpercentile(reps, [tail, 100 - tail])
        return float(lo), float(hi)

    return Comparison(
        wer_base=wer_b, wer_system=wer_s, diff=diff, diff_ci=ci(diff, rep_diff, diff_se),
        diff_se=diff_se, werr=werr,
        werr_ci=None if werr is None else ci(werr, rep_werr, werr_se), werr_se=werr_se,
        p_improvement=float(np.mean(rep_diff > 0)), utterances=n, seeds=(len(eb), len(es)),
        interval="normal" if seeded else "percentile")
