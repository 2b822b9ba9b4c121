"""The lang directory: Kaldi's ``utils/prepare_lang.sh`` in Python.

From a lexicon (``word p1 p2 ...``, several lines per word allowed) this writes a Kaldi lang dir:

* ``phones.txt``: ``<eps>``, the silence phones (``sil``, and ``spn`` for the OOV word), the
  non-silence phones, then the disambiguation symbols ``#0 .. #N``. Phones are
  **position-independent** (Kaldi's ``--position-dependent-phones false``): no ``_B/_I/_E/_S``
  word-position markers, so no ``word_boundary`` file either. The corpus is synthetic speech
  with a small phone set and little data, where position markers would only multiply the
  number of context-dependent models without adding information we use.
* ``words.txt``: ``<eps>``, the words (including the OOV word), ``#0``, ``<s>``, ``</s>``.
* ``topo``: Kaldi's ``utils/gen_topo.pl``: 3-state left-to-right non-silence phones, 5-state
  silence phones (state 0 may jump to 1-3, states 1-3 are fully connected, state 4 exits).
* ``L.fst`` / ``L_disambig.fst``: ``utils/make_lexicon_fst.pl`` with optional silence
  (probability 0.5) after every word and at the start; ``L_disambig`` has the lexicon
  disambiguation symbols of ``utils/add_lex_disambig.pl``, a ``#N`` after the optional
  silence and the ``#0:#0`` self-loop (``fstaddselfloops``). Both are olabel-sorted.
* ``phones/``: ``silence``, ``nonsilence``, ``optional_silence``, ``disambig``,
  ``context_indep``, ``sets``, ``roots``, ``extra_questions`` as ``.txt``/``.int``
  (``.csl`` where Kaldi has one). Each silence phone is its own ``not-shared not-split`` root
  (one pdf per HMM state, never split by context: Kaldi's ``--share-silence-phones`` style),
  each non-silence phone a ``shared split`` root.
* ``oov.txt``/``oov.int``.

Native packages come only through :mod:`millionhours.toolchain` (import-order deadlock).
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass

from millionhours.fileio import atomic_open, atomic_path

SIL = "sil"
OOV_WORD = "<unk>"
OOV_PHONE = "spn"
SIL_PROB = 0.5


class LangError(ValueError):
    """A lexicon or lang dir that cannot be used; the message is one line."""


@dataclass
class Lang:
    """A lang dir in memory: symbol tables, phone classes and the lexicon with disambig ids."""
    phones: dict            # phone symbol -> id (incl. <eps> and #k)
    words: dict             # word -> id
    silence: list           # silence phone symbols (sil first)
    nonsilence: list
    lexicon: list           # (word, [phones]) in file order, OOV entry included
    disambig: list          # #0..#N phone symbols
    lex_disambig: list      # per lexicon entry: the disambig symbol appended ('' if none)
    sil_phone: str = SIL
    oov: str = OOV_WORD
    sil_prob: float = SIL_PROB

    @property
    def disambig_ids(self) -> list[int]:
        return [self.phones[s] for s in self.disambig]

    @property
    def silence_ids(self) -> list[int]:
        return [self.phones[p] for p in self.silence]

    @property
    def nonsilence_ids(self) -> list[int]:
        return [self.phones[p] for p in self.nonsilence]

    @property
    def real_phone_ids(self) -> list[int]:
        return self.silence_ids + self.nonsilence_ids


def read_lexicon(path: str) -> list[tuple[str, list[str]]]:
    """``word p1 p2 ...`` lines; a word may have several pronunciations (duplicates dropped)."""
    if not os.path.isfile(path):
        raise LangError(f"{path}: lexicon not found; stage 0 writes data/local/lexicon.txt "
                        f"(or pass your own 'word phone ...' file)")
    out, seen = [], set()
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            parts = line.split()
            if not parts:
                continue
            if len(parts) < 2:
                raise LangError(f"{path}:{n}: word '{parts[0]}' has no pronunciation; "
                                f"give it at least one phone")
            word, prons = parts[0], parts[1:]
            if word in ("<eps>", "<s>", "</s>") or word.startswith("#") or \
                    any(p.startswith("#") or p == "<eps>" for p in prons):
                raise LangError(f"{path}:{n}: reserved symbol in '{line.strip()}'; "
                                f"<eps>, <s>, </s> and #k are reserved")
            key = (word, tuple(prons))
            if key not in seen:
                seen.add(key)
                out.append((word, prons))
    if not out:
        raise LangError(f"{path}: empty lexicon")
    return out


def _lex_disambig(prons: list[tuple[str, ...]]) -> tuple[list[str], int]:
    """Mirror of ``utils/add_lex_disambig.pl``: the ``#k`` appended to each pronunciation.

    A pronunciation needs one when another word has the same phones (homophones get #1, #2, ...)
    or when it is a proper prefix of another pronunciation; returns (symbols, max k used).
    """
    count: dict = {}
    for p in prons:
        count[p] = count.get(p, 0) + 1
    prefixes = set()
    for p in count:
        for i in range(1, len(p)):
            prefixes.add(p[:i])
    used: dict = {}
    out, max_k = [], 0
    for p in prons:
        if count[p] == 1 and p not in prefixes:
            out.append("")
            continue
        used[p] = used.get(p, 0) + 1
        out.append(f"#{used[p]}")
        max_k = max(max_k, used[p])
    return out, max_k


def make_lang(lexicon: list[tuple[str, list[str]]], sil_phone: str = SIL,
              oov: str = OOV_WORD, oov_phone: str = OOV_PHONE,
              sil_prob: float = SIL_PROB) -> Lang:
    """Symbol tables and disambiguation symbols (``prepare_lang.sh`` up to the FSTs)."""
    if not 0.0 <= sil_prob < 1.0:
        raise LangError(f"sil_prob must be in [0, 1), got {sil_prob}")
    lexicon = [(w, list(p)) for w, p in lexicon]
    if not any(w == oov for w, _ in lexicon):
        lexicon.append((oov, [oov_phone]))           # OOV word -> spoken-noise phone
    used = {p for _, prons in lexicon for p in prons}
    silence = [sil_phone] + sorted(p for p in {oov_phone} & used if p != sil_phone)
    nonsilence = sorted(used - set(silence))
    disambig_syms, max_k = _lex_disambig([tuple(p) for _, p in lexicon])
    # #0 (LM backoff) .. #max_k (lexicon), plus one for the optional silence (Kaldi's
    # --num-extra-phone-disambig-syms 1).
    disambig = [f"#{k}" for k in range(max_k + 2)]
    phones = {"<eps>": 0}
    for p in silence + nonsilence + disambig:
        phones[p] = len(phones)
    words = {"<eps>": 0}
    for w in sorted({w for w, _ in lexicon}):
        words[w] = len(words)
    for w in ("#0", "<s>", "</s>"):
        words[w] = len(words)
    return Lang(phones, words, silence, nonsilence, lexicon, disambig, disambig_syms,
                sil_phone, oov, sil_prob)


def topo_text(nonsil_ids: list[int], sil_ids: list[int]) -> str:
    """Mirror of ``utils/gen_topo.pl 3 5``: Kaldi's standard HMM topologies."""
    three = "".join(f"<State> {s} <PdfClass> {s} <Transition> {s} 0.75 "
                    f"<Transition> {s + 1} 0.25 </State>\n" for s in range(3))
    five = "<State> 0 <PdfClass> 0 " + "".join(f"<Transition> {d} 0.25 " for d in range(4)) + \
        "</State>\n"
    for s in (1, 2, 3):
        five += f"<State> {s} <PdfClass> {s} " + \
            "".join(f"<Transition> {d} 0.25 " for d in (1, 2, 3, 4)) + "</State>\n"
    five += "<State> 4 <PdfClass> 4 <Transition> 4 0.75 <Transition> 5 0.25 </State>\n"
    entry = lambda ids, body, final: ("<TopologyEntry>\n<ForPhones>\n" +  # noqa: E731
                                      " ".join(map(str, ids)) + "\n</ForPhones>\n" + body +
                                      f"<State> {final} </State>\n</TopologyEntry>\n")
    return "<Topology>\n" + entry(nonsil_ids, three, 3) + entry(sil_ids, five, 5) + \
        "</Topology>\n"


def lfr_topo_text(phone_ids: list[int], pdf_classes: int = 1) -> str:
    """The low-frame-rate topology (Kaldi chain's ``gen_topo.py``): every phone, silence
    included, is one emitting state with a self-loop, so a phone lasts at least one 30 ms frame.
    ``pdf_classes`` 1: one senone per context-dependent phone; 2: chain's forward and self-loop
    pdf classes (a phone's first frame has its own senone)."""
    if pdf_classes not in (1, 2):
        raise LangError(f"pdf_classes {pdf_classes}: the LFR topology has 1 or 2")
    state = ("<State> 0 <PdfClass> 0" if pdf_classes == 1 else
             "<State> 0 <ForwardPdfClass> 0 <SelfLoopPdfClass> 1")
    return ("<Topology>\n<TopologyEntry>\n<ForPhones>\n" + " ".join(map(str, phone_ids)) +
            f"\n</ForPhones>\n{state} <Transition> 0 0.5 <Transition> 1 0.5 "
            "</State>\n<State> 1 </State>\n</TopologyEntry>\n</Topology>\n")


def make_lfr_lang(src_dir: str, dst_dir: str, pdf_classes: int = 1) -> None:
    """A copy of lang dir ``src_dir`` whose topology is :func:`lfr_topo_text` for every phone
    of its topo (Kaldi chain recipes: ``cp -r data/lang data/lang_chain`` + ``gen_topo.py``);
    built under a temporary name, renamed when complete. Works on any Kaldi lang dir."""
    import re
    import shutil
    topo = os.path.join(src_dir, "topo")
    if not os.path.isfile(topo):
        raise LangError(f"{topo}: missing; pass a lang dir made by prepare_lang (or Kaldi's "
                        f"utils/prepare_lang.sh)")
    lists = re.findall(r"<ForPhones>(.*?)</ForPhones>", open(topo).read(), re.S)
    phones = sorted({int(p) for group in lists for p in group.split()})
    if not phones:
        raise LangError(f"{topo}: no <ForPhones> lists; pass a Kaldi topology file")
    tmp = f"{dst_dir.rstrip(os.sep)}.tmp{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(src_dir, tmp)
    with open(os.path.join(tmp, "topo"), "w") as f:
        f.write(lfr_topo_text(phones, pdf_classes))
    shutil.rmtree(dst_dir, ignore_errors=True)
    os.replace(tmp, dst_dir)


def lexicon_fst_text(lang: Lang, disambig: bool) -> str:
    """OpenFst text of L (``utils/make_lexicon_fst.pl`` with optional silence).

    States: 0 start, 1 loop (between words, final), 2 silence. Every word leaves the loop state
    and returns to it directly (cost -log(1 - p)) or through one silence phone (-log p); the
    start state does the same for leading silence. With ``disambig`` the silence is followed by
    the extra disambig symbol (``--sil-disambig``) and each pronunciation by its ``#k``.
    """
    ph, wd = lang.phones, lang.words
    p = lang.sil_prob
    sil_cost, nosil_cost = (-math.log(p), -math.log(1 - p)) if p > 0 else (math.inf, 0.0)
    sil = ph[lang.sil_phone]
    lines = []
    arc = lambda s, d, i, o, c=0.0: lines.append(f"{s} {d} {i} {o} {c:.8g}" if c else  # noqa
                                                  f"{s} {d} {i} {o}")
    start, loop, sil_state = 0, 1, 2
    nxt = 3
    arc(start, loop, 0, 0, nosil_cost)
    if p > 0:
        arc(start, sil_state, 0, 0, sil_cost)
        if disambig:   # silence then its disambig symbol on the way back to the loop
            sd = nxt
            nxt += 1
            arc(sil_state, sd, sil, 0)
            arc(sd, loop, ph[lang.disambig[-1]], 0)
        else:
            arc(sil_state, loop, sil, 0)
    for (word, prons), dsym in zip(lang.lexicon, lang.lex_disambig):
        seq = [ph[x] for x in prons] + ([ph[dsym]] if disambig and dsym else [])
        s, out = loop, wd[word]
        for i in seq[:-1]:
            arc(s, nxt, i, out)
            s, nxt, out = nxt, nxt + 1, 0
        arc(s, loop, seq[-1], out, nosil_cost)
        if p > 0:
            arc(s, sil_state, seq[-1], out, sil_cost)
    if disambig:                                   # fstaddselfloops: #0:#0 on the loop state
        arc(loop, loop, ph["#0"], wd["#0"])
    lines.append(f"{loop}")
    return "\n".join(lines) + "\n"


def lexicon_fst(lang: Lang, disambig: bool = False):
    """L (or L_disambig) as an olabel-sorted ``kaldifst.StdVectorFst``."""
    from millionhours.toolchain import kaldifst
    fst = kaldifst.compile(lexicon_fst_text(lang, disambig))
    kaldifst.arcsort(fst, sort_type="olabel")
    return fst


def _write_lines(path: str, lines) -> None:
    with atomic_open(path) as f:
        f.writelines(f"{x}\n" for x in lines)


def _write_sym_table(path: str, table: dict) -> None:
    _write_lines(path, (f"{s} {i}" for s, i in table.items()))


def _write_phone_list(d: str, name: str, groups: list[list[str]], phones: dict,
                      csl: bool = False) -> None:
    """phones/<name>.txt (symbols) and .int (ids), one group per line (plus .csl)."""
    _write_lines(os.path.join(d, f"{name}.txt"), (" ".join(g) for g in groups))
    _write_lines(os.path.join(d, f"{name}.int"),
                 (" ".join(str(phones[p]) for p in g) for g in groups))
    if csl:
        with atomic_open(os.path.join(d, f"{name}.csl")) as f:
            f.write(":".join(str(phones[p]) for g in groups for p in g) + "\n")


def write_lang(lang: Lang, lang_dir: str) -> None:
    """Writes the lang dir (each file atomically; ``L_disambig.fst`` last, as the completion
    marker). Mirrors the outputs of ``utils/prepare_lang.sh``."""
    ph = lang.phones
    pd = os.path.join(lang_dir, "phones")
    os.makedirs(pd, exist_ok=True)
    _write_sym_table(os.path.join(lang_dir, "phones.txt"), ph)
    _write_sym_table(os.path.join(lang_dir, "words.txt"), lang.words)
    with atomic_open(os.path.join(lang_dir, "topo")) as f:
        f.write(topo_text(lang.nonsilence_ids, lang.silence_ids))
    with atomic_open(os.path.join(lang_dir, "oov.txt")) as f:
        f.write(lang.oov + "\n")
    with atomic_open(os.path.join(lang_dir, "oov.int")) as f:
        f.write(f"{lang.words[lang.oov]}\n")
    singles = lambda xs: [[x] for x in xs]  # noqa: E731
    _write_phone_list(pd, "silence", singles(lang.silence), ph, csl=True)
    _write_phone_list(pd, "nonsilence", singles(lang.nonsilence), ph, csl=True)
    _write_phone_list(pd, "optional_silence", [[lang.sil_phone]], ph, csl=True)
    _write_phone_list(pd, "disambig", singles(lang.disambig), ph, csl=True)
    _write_phone_list(pd, "context_indep", singles(lang.silence), ph, csl=True)
    _write_phone_list(pd, "sets", singles(lang.silence + lang.nonsilence), ph)
    _write_phone_list(pd, "extra_questions", [lang.silence, lang.nonsilence], ph)
    roots = [("not-shared not-split", p) for p in lang.silence] + \
        [("shared split", p) for p in lang.nonsilence]
    _write_lines(os.path.join(pd, "roots.txt"), (f"{k} {p}" for k, p in roots))
    _write_lines(os.path.join(pd, "roots.int"), (f"{k} {ph[p]}" for k, p in roots))
    _write_lines(os.path.join(pd, "wdisambig.txt"), ["#0"])
    _write_lines(os.path.join(pd, "wdisambig_phones.int"), [ph["#0"]])
    _write_lines(os.path.join(pd, "wdisambig_words.int"), [lang.words["#0"]])
    _write_lines(os.path.join(lang_dir, "lexicon.txt"),
                 (f"{w} {' '.join(p)}" for w, p in lang.lexicon))
    for name, dis in (("L.fst", False), ("L_disambig.fst", True)):
        fst = lexicon_fst(lang, dis)
        with atomic_path(os.path.join(lang_dir, name)) as tmp:
            fst.write(tmp)


def prepare_lang(lexicon_path: str, lang_dir: str, sil_phone: str = SIL, oov: str = OOV_WORD,
                 sil_prob: float = SIL_PROB) -> Lang:
    """``utils/prepare_lang.sh``: lexicon file -> lang dir; returns the :class:`Lang`."""
    lang = make_lang(read_lexicon(lexicon_path), sil_phone, oov, sil_prob=sil_prob)
    write_lang(lang, lang_dir)
    return lang


def read_symbol_table(path: str) -> dict:
    """``sym id`` lines -> {sym: id}."""
    if not os.path.isfile(path):
        raise LangError(f"{path}: missing; run `python -m millionhours.bin.prepare_lang "
                        f"LEXICON LANG_DIR` first")
    with open(path, encoding="utf-8") as f:
        return {s: int(i) for s, i in (line.split() for line in f if line.strip())}


def load_lang(lang_dir: str) -> Lang:
    """A :class:`Lang` read back from a lang dir written by :func:`write_lang`."""
    for name in ("phones.txt", "words.txt", "topo", "L.fst", "lexicon.txt", "oov.txt",
                 "phones/silence.txt", "phones/optional_silence.txt", "L_disambig.fst"):
        if not os.path.isfile(os.path.join(lang_dir, name)):
            raise LangError(f"{os.path.join(lang_dir, name)}: missing; run `python -m "
                            f"millionhours.bin.prepare_lang LEXICON {lang_dir}` first")
    phones = read_symbol_table(os.path.join(lang_dir, "phones.txt"))
    words = read_symbol_table(os.path.join(lang_dir, "words.txt"))
    rd = lambda n: open(os.path.join(lang_dir, n), encoding="utf-8").read().split()  # noqa
    silence, optional = rd("phones/silence.txt"), rd("phones/optional_silence.txt")
    disambig = [p for p in phones if p.startswith("#")]
    nonsilence = [p for p in phones if p not in silence and p not in disambig and p != "<eps>"]
    lexicon = []
    with open(os.path.join(lang_dir, "lexicon.txt"), encoding="utf-8") as f:
        for line in f:
            w, *p = line.split()
            lexicon.append((w, p))
    dsyms, _ = _lex_disambig([tuple(p) for _, p in lexicon])
    return Lang(phones, words, silence, nonsilence, lexicon, disambig, dsyms, optional[0],
                rd("oov.txt")[0])
