"""The n-gram language model: Kneser-Ney ARPA from the LM text, perplexity/OOV, and G.fst.

Kaldi's LM recipe without SRILM: ``ngram-count -order 3 -ukndiscount`` is kaldingram's
``NgramCounts`` (its docstring states equality with SRILM's back-off, unmodified KN),
``ngram -prune`` is kaldingram's entropy pruning, and ``arpa2fst --disambig-symbol=#0
--read-symbol-table=words.txt`` is kaldilm. Words of the LM text that the lexicon lacks are
mapped to the lang dir's OOV word first (Kaldi's ``format_lm.sh`` habit), so G only emits words
that L can spell. The LM vocabulary is the LM text's: lexicon words the LM text never uses get
no unigram and cannot be recognized (an honest open-vocabulary OOV rate, reported per set).

Perplexity follows SRILM's ``ngram -ppl``: OOV tokens are left out of the count (and the history
restarts after one, since no n-gram contains them); ``ppl`` counts one ``</s>`` per sentence.
"""
from __future__ import annotations

import math
import os

from millionhours.fileio import atomic_open, atomic_path

__all__ = ["LMError", "read_sentences", "map_oov", "train_arpa", "load_arpa", "perplexity",
           "arpa_to_fst", "arpa_counts"]


class LMError(ValueError):
    """An unusable LM text or model; the message is one line naming the file and the fix."""


def read_sentences(path: str, kaldi_text: bool = False) -> list[str]:
    """Non-empty lines of a text file (``kaldi_text``: a Kaldi ``text`` file, utt id dropped)."""
    if not os.path.isfile(path):
        raise LMError(f"{path}: LM text not found; pass a file with one sentence per line")
    out = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            words = line.split()[1:] if kaldi_text else line.split()
            if words:
                out.append(" ".join(words))
    if not out:
        raise LMError(f"{path}: LM text is empty; give it at least one sentence (one per line)")
    return out


def map_oov(sentences: list[str], vocab, oov: str) -> tuple[list[str], int]:
    """Sentences with words outside ``vocab`` replaced by ``oov``; also how many were replaced."""
    out, n = [], 0
    for s in sentences:
        words = s.split()
        mapped = [w if w in vocab else oov for w in words]
        n += sum(a != b for a, b in zip(words, mapped))
        out.append(" ".join(mapped))
    return out, n


def train_arpa(sentences: list[str], arpa_path: str, order: int = 3,
               cutoffs: list[int] | None = None, prune_threshold: float = 0.0) -> dict:
    """Trains a KN back-off n-gram (SRILM ``-ukndiscount``), optionally entropy-pruned, and
    writes it as ARPA (atomically). ``cutoffs[i]`` drops (i+1)-grams seen fewer times
    (SRILM ``-gtNmin``). Returns the n-gram counts per order."""
    from kaldingram import train as kt
    if not sentences:
        raise LMError(f"{arpa_path}: no LM training sentences; the LM text is empty")
    if not 1 <= order <= 5:
        raise LMError(f"lm.order must be 1..5 (kaldingram's range), got {order}")
    counts = kt.NgramCounts(order)
    for s in sentences:
        counts.add_raw_counts_from_line(s)
    gtmin = list(cutoffs or []) + [0] * order
    if any(gtmin[:order]):
        counts.apply_count_cutoffs(gtmin[:order])
    counts.cal_discounting_constants()
    counts.cal_f()
    counts.cal_bow()
    with atomic_open(arpa_path, "w") as f:
        counts.print_as_arpa(fout=f)
    if prune_threshold > 0:
        _prune(arpa_path, prune_threshold)
    return arpa_counts(arpa_path)


def _prune(arpa_path: str, threshold: float) -> None:
    """SRILM ``ngram -prune threshold`` (Stolcke entropy pruning), in place."""
    from kaldingram import prune as kp
    lm = load_arpa(arpa_path)
    kp.prune(lm, threshold, 2)            # unigrams are never pruned (minorder 2)
    with atomic_open(arpa_path, "w") as f:
        lm.write(f)


def load_arpa(path: str):
    """A kaldingram ``Arpa`` model."""
    from kaldingram.prune import ArpaParser
    if not os.path.isfile(path):
        raise LMError(f"{path}: ARPA LM not found; train it with millionhours.bin.make_graph")
    models = ArpaParser().loadf(path, encoding="utf-8")
    if not models:
        raise LMError(f"{path}: no \\data\\ section; not an ARPA LM")
    return models[0]


def arpa_counts(path: str) -> dict:
    """``{order: count}`` from an ARPA header."""
    out = {}
    with open(path, encoding="utf-8") as f:
        for line in f:
            if line.startswith("ngram "):
                n, c = line[6:].split("=")
                out[int(n)] = int(c)
            elif line.startswith("\\1-grams:"):
                break
    return out


def perplexity(lm, sentences: list[str]) -> dict:
    """SRILM-style perplexity over sentences; OOV tokens excluded (and counted)."""
    bos, eos = lm.SOS, lm.EOS
    order = lm.order()
    logprob, words, oov, sents = 0.0, 0, 0, 0
    for s in sentences:
        hist: tuple = (bos,)
        toks = s.split()
        sents += 1
        for w in toks + [eos]:
            if w != eos and not lm.contains_word(w):
                oov += 1
                hist = ()                      # no n-gram spans an OOV
                continue
            logprob += _log10_p(lm, hist + (w,))
            words += w != eos
            hist = (hist + (w,))[-(order - 1):] if order > 1 else ()
    denom = words + sents
    total = words + oov
    return {"sentences": sents, "words": total, "oov": oov,
            "oov_rate": round(oov / total, 6) if total else 0.0,
            "logprob10": round(logprob, 4),
            "ppl": round(10 ** (-logprob / denom), 3) if denom else math.inf,
            "ppl1": round(10 ** (-logprob / words), 3) if words else math.inf}


def _log10_p(lm, ngram: tuple) -> float:
    """log10 p(w | h) with back-off; an empty history after an OOV is a unigram."""
    while ngram and ngram[0] not in lm._vocabulary:
        ngram = ngram[1:]
    return lm.log_p_raw(ngram)


def arpa_to_fst(arpa_path: str, words_txt: str, g_path: str) -> None:
    """``arpa2fst --disambig-symbol=#0 --read-symbol-table=words.txt`` -> G.fst (atomically)."""
    from millionhours import toolchain
    kaldilm = toolchain.kaldilm()
    with atomic_path(g_path) as tmp:
        kaldilm.arpa2fst(input_arpa=arpa_path, output_fst=tmp, disambig_symbol="#0",
                         read_symbol_table=words_txt, max_arpa_warnings=0)
