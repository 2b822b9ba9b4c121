"""Word error rate: Kaldi's ``compute-wer`` and ``align-text``/``wer_per_utt_details.pl`` via jiwer.

Each utterance is aligned by jiwer (Levenshtein over words); the counts are summed over the set.
The per-utterance file has Kaldi's ``per_utt`` layout (``ref``, ``hyp``, ``op`` with C/S/I/D and
``#csid`` lines, ``***`` for the empty side). An utterance without a hypothesis (the decoder
failed or it was not decoded) scores as all deletions and is counted in ``missing_hyps``.

Reference words outside the decoding vocabulary can never be recognized; they are counted
(``oov_words``, ``oov_rate``) so the WER can be read against them, and score as the errors they
cause. Nothing is filtered from either side (no ``<unk>`` removal): a hypothesized ``<unk>`` is
an error too.
"""
from __future__ import annotations

from dataclasses import dataclass

import jiwer

__all__ = ["align", "UttScore", "score_utt", "score_set", "per_utt_lines", "write_per_utt"]

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
