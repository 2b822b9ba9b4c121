"""Scoring against hand-counted substitutions, deletions and insertions (jiwer underneath), and
the paired bootstrap against the exhaustive bootstrap distribution of a hand-sized case."""
import itertools
import statistics

import numpy as np
import pytest

from millionhours import scoring


@pytest.mark.parametrize("ref,hyp,sdi", [
    ("a b c d", "a x c d e", (1, 0, 1)),      # b->x substituted, e inserted
    ("a b c d", "a c d", (0, 1, 0)),          # b deleted
    ("a b c", "", (0, 3, 0)),                 # nothing recognized: all deletions
    ("", "a b", (0, 0, 2)),                   # empty reference: all insertions
    ("the cat sat", "the cat sat", (0, 0, 0)),
    ("one two three four", "two three four five", (0, 1, 1)),   # shift: D + I, not 4 S
    ("a b", "c d e", (2, 0, 1)),
])
def test_counts_match_hand_counts(ref, hyp, sdi):
    s = scoring.score_utt("u", ref, hyp)
    assert (s.count("S"), s.count("D"), s.count("I")) == sdi
    assert s.count("C") + s.count("S") + s.count("D") == len(ref.split())
    assert s.count("C") + s.count("S") + s.count("I") == len(hyp.split())


def test_set_summary_sums_utterances():
    refs = {"u1": "a b c d", "u2": "x y", "u3": "p q r"}
    hyps = {"u1": "a x c d e", "u2": "x y"}                # u3 has no hypothesis
    s, per = scoring.score_set(refs, hyps, vocab={"a", "b", "c", "d", "x", "y", "p", "q"})
    assert (s["substitutions"], s["deletions"], s["insertions"]) == (1, 3, 1)
    assert s["ref_words"] == 9 and s["errors"] == 5
    assert s["wer"] == pytest.approx(100 * 5 / 9, abs=1e-3)
    assert (s["sentence_errors"], s["sentences"]) == (2, 3)
    assert s["ser"] == pytest.approx(100 * 2 / 3, abs=1e-3)
    assert s["missing_hyps"] == 1
    assert s["oov_words"] == 1 and s["oov_rate"] == pytest.approx(100 / 9, abs=1e-3)   # 'r'
    assert [p.utt for p in per] == ["u1", "u2", "u3"]


def test_per_utt_has_kaldi_layout(tmp_path):
    _, per = scoring.score_set({"u1": "a b c d"}, {"u1": "a x c d e"})
    path = tmp_path / "per_utt"
    scoring.write_per_utt(str(path), per)
    lines = path.read_text().splitlines()
    assert [ln.split()[:2] for ln in lines] == [["u1", "ref"], ["u1", "hyp"], ["u1", "op"],
                                                 ["u1", "#csid"]]
    assert lines[0].split()[2:] == ["a", "b", "c", "d", "***"]
    assert lines[1].split()[2:] == ["a", "x", "c", "d", "e"]
    assert lines[2].split()[2:] == ["C", "S", "C", "C", "I"]
    assert lines[3].split()[2:] == ["3", "1", "1", "0"]       # C S I D
    # columns line up: each ref word starts where its hyp word starts
    assert lines[0].index("d") == lines[1].index("d", lines[1].index("c"))


def test_utt_error_counts_are_errors_and_reference_words():
    _, per = scoring.score_set({"u1": "a b c d", "u2": "x y", "u3": "p q r"},
                               {"u1": "a x c d e", "u2": "x y"})
    assert scoring.utt_error_counts(per) == {"u1": [2, 4], "u2": [0, 2], "u3": [3, 3]}


# --------------------------------------------------------------------------- paired bootstrap
# Three utterances of 2, 3 and 5 words; the system is better on the first and last, worse on the
# middle one. WER: base 4/10 = 40%, system 3/10 = 30%.
WORDS, BASE, SYS = (2, 3, 5), (1, 2, 1), (0, 3, 0)


def counts(errors, words=WORDS) -> dict:
    return {f"u{i}": [e, w] for i, (e, w) in enumerate(zip(errors, words))}


def exact_bootstrap(base_seeds, sys_seeds) -> list[tuple[float, float]]:
    """(WER_base - WER_sys, WERR) of each of the 3^3 equally likely resamples, by enumeration."""
    out = []
    for draw in itertools.product(range(3), repeat=3):
        words = sum(WORDS[i] for i in draw)
        wer = [statistics.fmean(100 * sum(e[i] for i in draw) / words for e in seeds)
               for seeds in (base_seeds, sys_seeds)]
        out.append((wer[0] - wer[1], (wer[0] - wer[1]) / wer[0]))
    return out


def test_bootstrap_matches_the_exhaustive_distribution_of_a_hand_case():
    c = scoring.paired_bootstrap([counts(BASE)], [counts(SYS)], replicates=100_000)
    assert (c.wer_base, c.wer_system, c.diff, c.werr) == pytest.approx((40, 30, 10, 0.25))
    assert (c.utterances, c.seeds, c.interval) == (3, (1, 1), "percentile")
    exact = exact_bootstrap([BASE], [SYS])
    diffs = sorted(d for d, _ in exact)
    # 20 of the 27 resamples favour the system (the 7 others draw the middle utterance twice+)
    assert sum(d > 0 for d in diffs) == 20
    assert c.p_improvement == pytest.approx(20 / 27, abs=0.01)
    assert c.diff_se == pytest.approx(statistics.pstdev(diffs), rel=0.02)
    # the 2.5% and 97.5% quantiles are the extreme atoms (each 1/27 > 2.5% of the mass):
    # all three draws the middle utterance (-33.3) and all three the first (+50)
    assert diffs[0] == pytest.approx(-100 / 3) and diffs[-1] == pytest.approx(50)
    assert c.diff_ci == pytest.approx((-100 / 3, 50))
    werrs = sorted(r for _, r in exact)
    assert c.werr_ci == pytest.approx((werrs[0], werrs[-1]))       # -0.5 and 1.0
    assert c.werr_se == pytest.approx(statistics.pstdev(werrs), rel=0.02)


def test_seed_replicas_add_their_spread_to_the_bootstrap_variance():
    """System: two seeds (WER 30% and 20%), base: one seed that borrows the system's s^2 = 50."""
    sys2 = (0, 1, 1)
    c = scoring.paired_bootstrap([counts(BASE)], [counts(SYS), counts(sys2)], replicates=100_000)
    assert (c.wer_base, c.wer_system, c.diff, c.werr) == pytest.approx((40, 25, 15, 0.375))
    assert (c.seeds, c.interval) == ((1, 2), "normal")
    exact = exact_bootstrap([BASE], [SYS, sys2])
    var_s, var_b = 50 / 2, 50 / 1                           # s^2 / n, the base borrowing s^2
    diff_se = (statistics.pvariance([d for d, _ in exact]) + var_s + var_b) ** 0.5
    werr_se = (statistics.pvariance([r for _, r in exact])
               + var_s / 40 ** 2 + 25 ** 2 * var_b / 40 ** 4) ** 0.5
    assert c.diff_se == pytest.approx(diff_se, rel=0.01)
    assert c.werr_se == pytest.approx(werr_se, rel=0.01)
    # normal intervals around the point estimates, +- 1.96 se
    for (lo, hi), point, se in ((c.diff_ci, 15, diff_se), (c.werr_ci, 0.375, werr_se)):
        assert (lo + hi) / 2 == pytest.approx(point)
        assert (hi - lo) / 2 == pytest.approx(1.959964 * se, rel=0.01)


def test_interval_excludes_zero_only_for_a_real_improvement():
    rng = np.random.default_rng(1)
    words = rng.integers(5, 15, size=300)
    base = rng.binomial(words, 0.2)
    better = scoring.paired_bootstrap([counts(base, words)], [counts(base // 2, words)])
    assert better.diff_ci[0] > 0 and better.werr_ci[0] > 0 and better.p_improvement == 1
    same = scoring.paired_bootstrap([counts(base, words)], [counts(base, words)])
    assert same.diff_ci == (0, 0) and same.werr == 0 and same.p_improvement == 0
    # the same errors on other utterances: equal WER, an interval on both sides of zero
    shuffled = scoring.paired_bootstrap([counts(base, words)],
                                        [counts(rng.permutation(base), words)])
    assert shuffled.diff_ci[0] < 0 < shuffled.diff_ci[1] and 0.2 < shuffled.p_improvement < 0.8
    # deterministic: the same inputs give the same intervals
    assert scoring.paired_bootstrap([counts(base, words)], [counts(base // 2, words)]) == better


def test_bootstrap_refuses_unpaired_counts():
    with pytest.raises(ValueError, match="utterances"):
        scoring.paired_bootstrap([counts(BASE)], [counts(SYS[:2], WORDS[:2])])
    with pytest.raises(ValueError, match="reference word counts"):
        scoring.paired_bootstrap([counts(BASE)], [counts(SYS, (2, 3, 6))])
