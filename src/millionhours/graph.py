"""The decoding graph HCLG: Kaldi's ``utils/mkgraph.sh`` in Python.

The same steps and the same native code as mkgraph.sh (OpenFst through kaldifst, Kaldi's
``fstcomposecontext``/``make-h-transducer``/``add-self-loops`` through kaldi-hmm-gmm):

    LG    = minimize_encoded(determinize_star(L_disambig o G, use_log))
    CLG   = compose_context(LG, N=tree's context width, P=its central position)
    HCLGa = minimize_encoded(rmepsilon(rmsymbols(determinize_star(Ha o CLG, use_log))))
    HCLG  = add_self_loops(HCLGa, self_loop_scale=0.1, reorder)

with ``Ha`` from ``make-h-transducer --transition-scale=1.0``. Two gaps of the pip packages are
filled here: ``fstrmsymbols`` (the disambiguation transition-ids become epsilons) is a
composition with a one-state relabeling transducer (C++ speed, no Python loop over arcs), and
``fstrmepslocal`` is the global ``rmepsilon``; ``fstpushspecial`` is skipped, as the toolchain
notes record (it changes only where weight sits, not the paths or their total costs).

A graph dir holds ``HCLG.fst``, ``words.txt``, ``phones.txt``, ``trans.mdl`` (the transition
model the graph was built with; a decoder's model must have the same transition-ids),
``num_pdfs``, ``disambig_tid.int``, ``info.json`` (sizes, build time) and ``stamp.json``: the
hashes of (tree, final.mdl, lang, LM text, LM/graph params). A rerun whose stamp matches is a
no-op, so the graph is built once per (tree, lang, LM).
"""
from __future__ import annotations

import hashlib
import os
import shutil
import time

from millionhours import kaldi_io, lm as lmmod
from millionhours.fileio import atomic_open, atomic_path, file_sha256, read_json, write_json

__all__ = ["GraphError", "compose_lg", "compose_clg", "make_h", "remove_symbols", "make_hclg",
           "fst_size", "stamp_of", "build_graph_dir", "load_graph", "Graph"]


class GraphError(ValueError):
    """A graph that cannot be built or used; the message is one line naming the file and the fix."""


def _fst():
    from millionhours.toolchain import kaldifst, khg   # the only safe import order
    return kaldifst, khg


def fst_size(fst) -> dict:
    """``{"states": S, "arcs": A}`` (fstinfo's counts)."""
    n = fst.num_states
    n = n() if callable(n) else n
    arcs = sum(fst.num_arcs(s) for s in range(n))
    return {"states": int(n), "arcs": int(arcs)}


def compose_lg(L, G):
    """``fsttablecompose L_disambig G | fstdeterminizestar --use-log | fstminimizeencoded``."""
    kaldifst, _ = _fst()
    kaldifst.arcsort(L, sort_type="olabel")
    kaldifst.arcsort(G, sort_type="ilabel")
    LG = kaldifst.compose(L, G)
    _determinize(LG, "L o G is not determinizable; use the L_disambig.fst of prepare_lang "
                     "(homophones need disambiguation symbols) and a G with #0 on back-off arcs")
    kaldifst.minimize_encoded(LG)
    return LG


def _determinize(fst, fix: str) -> None:
    """``fstdeterminizestar --use-log=true`` in place; kaldifst raises on a non-functional FST."""
    kaldifst, _ = _fst()
    try:
        kaldifst.determinize_star(fst, use_log=True)   # returns True only when max_states hit
    except RuntimeError:
        raise GraphError(fix) from None


def compose_clg(LG, disambig_phones: list[int], context_width: int, central_position: int):
    """``fstcomposecontext``: (CLG ilabel-sorted, ilabel_info)."""
    kaldifst, _ = _fst()
    CLG, ilabels = kaldifst.compose_context(disambig_syms=disambig_phones,
                                            context_width=context_width,
                                            central_position=central_position, ifst=LG)
    kaldifst.arcsort(CLG, sort_type="ilabel")
    return CLG, ilabels


def make_h(ilabels, ctx_dep, trans_model, transition_scale: float = 1.0):
    """``make-h-transducer --transition-scale``: (Ha without self-loops, disambig tids)."""
    _, khg = _fst()
    cfg = khg.HTransducerConfig()
    cfg.transition_scale = transition_scale
    Ha, disambig_tids = khg.get_h_transducer(ilabel_info=ilabels, ctx_dep=ctx_dep,
                                             trans_model=trans_model, config=cfg)
    return Ha, list(disambig_tids)


def remove_symbols(fst, symbols: list[int], max_label: int):
    """``fstrmsymbols``: input labels in ``symbols`` become epsilon.

    Done as ``R o fst`` with R a one-state transducer (x:x for kept labels, eps:x for removed
    ones), so the work is one C++ composition that keeps fst's states and arcs one-for-one.
    """
    kaldifst, _ = _fst()
    if not symbols:
        return fst
    drop = set(symbols)
    lines = [f"0 0 {0 if x in drop else x} {x}" for x in range(1, max_label + 1)]
    R = kaldifst.compile("\n".join(lines + ["0"]) + "\n")
    kaldifst.arcsort(R, sort_type="olabel")
    return kaldifst.compose(R, fst)


def make_hclg(L, G, ctx_dep, trans_model, disambig_phones: list[int],
              transition_scale: float = 1.0, self_loop_scale: float = 0.1, log=None):
    """HCLG from L_disambig, G, the tree and the transition model (mkgraph.sh); also
    ``{"steps": {name: seconds}, "disambig_tids": [...], "LG": size, "CLG": size}``."""
    kaldifst, khg = _fst()
    steps, t = {}, time.time()

    def lap(name):
        nonlocal t
        steps[name] = round(time.time() - t, 2)
        if log:
            log(f"{name}: {steps[name]:.1f} s")
        t = time.time()

    LG = compose_lg(L, G)
    lap("LG")
    CLG, ilabels = compose_clg(LG, disambig_phones, ctx_dep.context_width,
                               ctx_dep.central_position)
    lap("CLG")
    Ha, disambig_tids = make_h(ilabels, ctx_dep, trans_model, transition_scale)
    HCLGa = kaldifst.compose(Ha, CLG)
    lap("HaCLG")
    _determinize(HCLGa, "Ha o CLG is not determinizable; check the lang dir's disambiguation "
                        "symbols (phones/disambig.int)")
    lap("determinize")
    HCLGa = remove_symbols(HCLGa, disambig_tids, trans_model.num_transition_ids + len(disambig_tids) + 1)
    lap("rmsymbols")
    kaldifst.rmepsilon(HCLGa)
    lap("rmepsilon")
    kaldifst.minimize_encoded(HCLGa)
    lap("minimize")
    HCLG = khg.add_self_loops(self_loop_scale=self_loop_scale, disambig_syms=[], reorder=True,
                              trans_model=trans_model, ifst=HCLGa)
    lap("self_loops")
    return HCLG, {"steps": steps, "disambig_tids": disambig_tids,
                  "LG": fst_size(LG), "CLG": fst_size(CLG)}


# --------------------------------------------------------------------------- the graph dir

LANG_FILES = ("L_disambig.fst", "words.txt", "phones.txt", "phones/disambig.int", "topo")


def _hash_files(paths: list[str]) -> str:
    h = hashlib.sha256()
    for p in paths:
        h.update(os.path.basename(p).encode() + b"\0" + file_sha256(p).encode())
    return h.hexdigest()


def stamp_of(lang_dir: str, model_dir: str, lm_text: str, lm_params: dict,
             graph_params: dict) -> dict:
    """What the graph depends on: hashes of (tree, final.mdl), lang, LM text, and the params."""
    return {"tree_model": _hash_files([os.path.join(model_dir, "tree"),
                                       os.path.join(model_dir, "final.mdl")]),
            "frame_subsampling_factor": read_fsf(model_dir),
            "lang": _hash_files([os.path.join(lang_dir, f) for f in LANG_FILES]),
            "lm_text": file_sha256(lm_text),
            "lm": dict(lm_params), "graph": dict(graph_params)}


def read_fsf(model_dir: str) -> int:
    """The dir's ``frame_subsampling_factor`` (Kaldi chain's file: its frames are this many
    10 ms frames; the LFR tree's 3), 1 when absent (a 10 ms system)."""
    path = os.path.join(model_dir, "frame_subsampling_factor")
    if not os.path.isfile(path):
        return 1
    try:
        value = int(open(path).read().split()[0])
    except (ValueError, IndexError):
        value = 0
    if value < 1:
        raise GraphError(f"{path}: expected a positive integer (e.g. 3); rewrite it")
    return value


def _need(path: str, fix: str) -> str:
    if not os.path.isfile(path):
        raise GraphError(f"{path}: missing; {fix}")
    return path


def check_inputs(lang_dir: str, model_dir: str, lm_text: str) -> None:
    for f in LANG_FILES:
        _need(os.path.join(lang_dir, f), f"run `python -m millionhours.bin.prepare_lang "
                                         f"LEXICON {lang_dir}` first")
    for f in ("final.mdl", "tree"):
        _need(os.path.join(model_dir, f), "pass the exp dir of the GMM system whose tree the "
                                          "models use (e.g. exp/tri)")
    _need(lm_text, "pass the LM training text, one sentence per line")


def build_graph_dir(lang_dir: str, model_dir: str, lm_text: str, graph_dir: str,
                    lm_params: dict, graph_params: dict, force: bool = False,
                    log=print) -> dict:
    """Trains the LM, builds HCLG and writes the graph dir; skipped when the stamp matches.
    Returns the graph's info.json content (with ``"cached": True`` if nothing was rebuilt)."""
    from millionhours import lang as langmod
    check_inputs(lang_dir, model_dir, lm_text)
    stamp = stamp_of(lang_dir, model_dir, lm_text, lm_params, graph_params)
    stamp_path = os.path.join(graph_dir, "stamp.json")
    info_path = os.path.join(graph_dir, "info.json")
    if not force and os.path.isfile(stamp_path) and os.path.isfile(info_path) and \
            os.path.isfile(os.path.join(graph_dir, "HCLG.fst")) and read_json(stamp_path) == stamp:
        return dict(read_json(info_path), cached=True)
    if os.path.exists(stamp_path):
        os.remove(stamp_path)                  # the stamp is the completion marker
    t0 = time.time()
    lang = langmod.load_lang(lang_dir)
    os.makedirs(graph_dir, exist_ok=True)
    arpa = os.path.join(graph_dir, "lm.arpa")
    sents, n_mapped = lmmod.map_oov(lmmod.read_sentences(lm_text), lang.words, lang.oov)
    counts = lmmod.train_arpa(sents, arpa, int(lm_params.get("order", 3)),
                              lm_params.get("cutoffs"), float(lm_params.get("prune", 0.0)))
    g_path = os.path.join(graph_dir, "G.fst")
    lmmod.arpa_to_fst(arpa, os.path.join(lang_dir, "words.txt"), g_path)
    t_lm = time.time() - t0
    log(f"LM: {counts} n-grams, {n_mapped} LM-text tokens mapped to {lang.oov}; "
        f"{t_lm:.1f} s")
    kaldifst, _ = _fst()
    tm, _am = kaldi_io.read_model(os.path.join(model_dir, "final.mdl"))
    ktm, _ = kaldi_io.to_khg(tm, None)
    ctx = kaldi_io.tree_to_khg(kaldi_io.read_tree(os.path.join(model_dir, "tree")))
    L = kaldifst.StdVectorFst.read(os.path.join(lang_dir, "L_disambig.fst"))
    G = kaldifst.StdVectorFst.read(g_path)
    t1 = time.time()
    HCLG, binfo = make_hclg(L, G, ctx, ktm, lang.disambig_ids,
                            float(graph_params.get("transition_scale", 1.0)),
                            float(graph_params.get("self_loop_scale", 0.1)), log)
    info = {"lm_ngrams": counts, "lm_oov_mapped": n_mapped, "G": fst_size(G),
            "LG": binfo["LG"], "CLG": binfo["CLG"], "HCLG": fst_size(HCLG),
            "build_s": round(time.time() - t1, 2), "lm_s": round(t_lm, 2),
            "steps_s": binfo["steps"], "num_pdfs": tm.num_pdfs(),
            "num_transition_ids": tm.num_transition_ids()}
    _write_graph_dir(graph_dir, lang_dir, HCLG, tm, binfo["disambig_tids"],
                     stamp["frame_subsampling_factor"])
    info["HCLG_bytes"] = os.path.getsize(os.path.join(graph_dir, "HCLG.fst"))
    write_json(info_path, info)
    write_json(stamp_path, stamp)
    return dict(info, cached=False)


def _write_graph_dir(graph_dir: str, lang_dir: str, HCLG, tm, disambig_tids, fsf: int) -> None:
    with atomic_path(os.path.join(graph_dir, "HCLG.fst")) as tmp:
        HCLG.write(tmp)
    for name in ("words.txt", "phones.txt"):
        with atomic_path(os.path.join(graph_dir, name)) as tmp:
            shutil.copyfile(os.path.join(lang_dir, name), tmp)
    kaldi_io.write_model(os.path.join(graph_dir, "trans.mdl"), tm, None)
    with atomic_open(os.path.join(graph_dir, "num_pdfs")) as f:
        f.write(f"{tm.num_pdfs()}\n")
    with atomic_open(os.path.join(graph_dir, "disambig_tid.int")) as f:
        f.writelines(f"{t}\n" for t in disambig_tids)
    with atomic_open(os.path.join(graph_dir, "frame_subsampling_factor")) as f:
        f.write(f"{fsf}\n")


# --------------------------------------------------------------------------- loading


class Graph:
    """A loaded graph dir: HCLG, word table (id -> word), transition model (ours and khg's)."""

    def __init__(self, graph_dir: str, trans_model_path: str | None = None):
        kaldifst, _ = _fst()
        hclg = _need(os.path.join(graph_dir, "HCLG.fst"),
                     "build it with `python -m millionhours.bin.make_graph`")
        words = _need(os.path.join(graph_dir, "words.txt"),
                      "a graph dir needs the words.txt of its lang dir")
        self.dir = graph_dir
        self.fst = read_fst(hclg)
        self.fsf = read_fsf(graph_dir)      # 10 ms frames per graph frame (LFR graph: 3)
        self.id2word = {int(i): w for w, i in (ln.split() for ln in open(words, encoding="utf-8")
                                               if ln.strip())}
        mdl = trans_model_path or os.path.join(graph_dir, "trans.mdl")
        self.tm = None
        if os.path.isfile(mdl):
            try:
                self.tm, _ = kaldi_io.read_model(mdl)
            except kaldi_io.KaldiFormatError as e:
                raise GraphError(f"{mdl}: not a Kaldi model ({e}); rebuild the graph") from None

    @property
    def num_pdfs(self) -> int | None:
        return self.tm.num_pdfs() if self.tm is not None else None

    def words(self, ids) -> list[str]:
        return [self.id2word.get(int(i), f"#{int(i)}") for i in ids]


def read_fst(path: str):
    """An OpenFst binary (vector or const, as Kaldi writes them) as a ``StdVectorFst``."""
    kaldifst, _ = _fst()
    try:
        return kaldifst.StdVectorFst.read(path)
    except Exception:     # a const FST (fstconvert --fst_type=const), Kaldi's other format
        try:
            return kaldifst.StdVectorFst(kaldifst.StdConstFst.read(path))
        except Exception as e:
            raise GraphError(f"{path}: not an OpenFst standard-arc FST ({str(e)[:80]}); pass "
                             f"the HCLG.fst written by mkgraph.sh or make_graph") from None


def load_graph(graph_dir: str, trans_model_path: str | None = None) -> Graph:
    if not os.path.isdir(graph_dir):
        raise GraphError(f"{graph_dir}: not a directory; build the graph with "
                         f"`python -m millionhours.bin.make_graph`")
    return Graph(graph_dir, trans_model_path)
