"""Scoring against hand-counted substitutions, deletions and insertions (jiwer underneath)."""
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
