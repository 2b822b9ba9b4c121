"""HCLG construction (mkgraph.sh) on a tiny lexicon, and reading a Kaldi-built graph."""
import os

import numpy as np
import pytest

from millionhours.toolchain import khg, kaldifst
from millionhours import decode, graph, kaldi_io, lang as langmod

LEXICON = {"a": ["aa"], "b": ["bb", "aa"], "c": ["cc"], "d": ["aa", "cc"], "e": ["cc", "bb"]}
LM_TEXT = ["a b c", "b a d", "c c a", "d b e", "e a b c", "a d"]
EXTERNAL = os.path.join(os.path.dirname(__file__), "data", "kaldi_external")


@pytest.fixture(scope="module")
def tiny_graph(tmp_path_factory):
    """A prepare_lang dir, a monophone model (real khg tree + transition model) and its graph."""
    root = tmp_path_factory.mktemp("graph")
    lex = root / "lexicon.txt"
    lex.write_text("".join(f"{w} {' '.join(p)}\n" for w, p in LEXICON.items()))
    lang_dir, model_dir, graph_dir = root / "lang", root / "mono", root / "graph"
    lg = langmod.prepare_lang(str(lex), str(lang_dir))
    topo = khg.HmmTopology()
    topo.read((lang_dir / "topo").read_text())
    ctx = khg.monophone_context_dependency(
        phones=topo.phones, phone2num_pdf_classes=topo.get_phone_to_num_pdf_classes())
    tm, _ = kaldi_io.from_khg(khg.TransitionModel(ctx_dep=ctx, hmm_topo=topo))
    os.makedirs(model_dir)
    kaldi_io.write_model(str(model_dir / "final.mdl"), tm, None)
    kaldi_io.write_tree(str(model_dir / "tree"), kaldi_io.tree_from_khg(ctx))
    lm_text = root / "lm.txt"
    lm_text.write_text("\n".join(LM_TEXT) + "\n")
    info = graph.build_graph_dir(str(lang_dir), str(model_dir), str(lm_text), str(graph_dir),
                                 {"order": 2}, {}, log=lambda m: None)
    return lg, lang_dir, model_dir, lm_text, graph_dir, info


def _alignment(lg, lang_dir, model_dir, words, length):
    """Transition-ids of ``words`` equally aligned over ``length`` frames (align-equal)."""
    tm, _ = kaldi_io.read_model(str(model_dir / "final.mdl"))
    ktm, _ = kaldi_io.to_khg(tm, None)
    ctx = kaldi_io.tree_to_khg(kaldi_io.read_tree(str(model_dir / "tree")))
    L = kaldifst.StdVectorFst.read(str(lang_dir / "L_disambig.fst"))
    o = khg.TrainingGraphCompilerOptions()
    gc = khg.TrainingGraphCompiler(trans_model=ktm, ctx_dep=ctx, lex_fst=L,
                                   disambig_syms=lg.disambig_ids, opts=o)
    fst = gc.compile_graph_from_text([lg.words[w] for w in words])
    ok, afst = kaldifst.equal_align(ifst=fst, length=length, rand_seed=3, num_retries=10)
    assert ok
    ok, tids, _, _ = kaldifst.get_linear_symbol_sequence(afst)
    assert ok and len(tids) == length
    return tm, np.asarray(tids)


def _peaked(pdfs: np.ndarray, num_pdfs: int, p: float = 0.98) -> np.ndarray:
    ll = np.full((len(pdfs), num_pdfs), np.log((1 - p) / (num_pdfs - 1)), np.float32)
    ll[np.arange(len(pdfs)), pdfs] = np.log(p)
    return ll


@pytest.mark.parametrize("words", [["b", "a", "d"], ["e", "a", "b", "c"], ["c"]])
def test_known_path_decodes_exactly(tiny_graph, words):
    lg, lang_dir, model_dir, _, graph_dir, _ = tiny_graph
    tm, tids = _alignment(lg, lang_dir, model_dir, words, 45)
    g = graph.load_graph(str(graph_dir))
    ll = _peaked(tm.tid2pdf()[tids], tm.num_pdfs())
    hyp, final, gcost, acost = decode.search_utterance(g, ll, 1.0, decode.SearchConfig())
    assert g.words(hyp) == words and final
    # the acoustic cost is the path's: every frame on its own pdf
    assert acost == pytest.approx(-np.log(0.98) * len(tids), rel=1e-4)
    assert gcost > 0                                     # LM + transition costs


def test_graph_has_no_disambiguation_symbols(tiny_graph):
    _, _, model_dir, _, graph_dir, info = tiny_graph
    tm, _ = kaldi_io.read_model(str(model_dir / "final.mdl"))
    fst = graph.read_fst(str(graph_dir / "HCLG.fst"))
    ilabels = {a.ilabel for s in range(fst.num_states) for a in kaldifst.ArcIterator(fst, s)}
    assert max(ilabels) <= tm.num_transition_ids()       # fstrmsymbols removed #k tids
    disambig = [int(x) for x in (graph_dir / "disambig_tid.int").read_text().split()]
    assert disambig and not set(disambig) & ilabels
    assert info["HCLG"]["arcs"] == graph.fst_size(fst)["arcs"] > 0
    assert int((graph_dir / "num_pdfs").read_text()) == tm.num_pdfs()


def test_rebuild_is_skipped_until_an_input_changes(tiny_graph):
    _, lang_dir, model_dir, lm_text, graph_dir, _ = tiny_graph
    mtime = os.path.getmtime(graph_dir / "HCLG.fst")
    again = graph.build_graph_dir(str(lang_dir), str(model_dir), str(lm_text), str(graph_dir),
                                  {"order": 2}, {}, log=lambda m: None)
    assert again["cached"] and os.path.getmtime(graph_dir / "HCLG.fst") == mtime
    other = graph.stamp_of(str(lang_dir), str(model_dir), str(lm_text), {"order": 3}, {})
    assert other != graph.read_json(str(graph_dir / "stamp.json"))


def test_empty_lm_text_is_a_one_line_error(tiny_graph, tmp_path):
    _, lang_dir, model_dir, _, _, _ = tiny_graph
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    with pytest.raises(Exception, match="LM text is empty") as e:
        graph.build_graph_dir(str(lang_dir), str(model_dir), str(empty), str(tmp_path / "g"),
                              {"order": 3}, {}, log=lambda m: None)
    assert "\n" not in str(e.value)


def _walk(fst, max_len=400):
    """A path from the start to a final state: (input labels, output labels), no self-loops."""
    s, ins, outs, seen = fst.start, [], [], set()
    while len(ins) < max_len:
        if float(fst.final(s).value) != float("inf") and outs:
            return ins, outs
        arcs = [a for a in kaldifst.ArcIterator(fst, s) if a.nextstate != s]
        fresh = [a for a in arcs if (s, a.nextstate) not in seen] or arcs
        a = fresh[0]
        seen.add((s, a.nextstate))
        if a.ilabel:
            ins.append(a.ilabel)
        if a.olabel:
            outs.append(a.olabel)
        s = a.nextstate
    raise AssertionError("no final state reached")


def test_kaldi_built_graph_loads_and_decodes():
    g = graph.load_graph(EXTERNAL, os.path.join(EXTERNAL, "final.mdl"))
    size = graph.fst_size(g.fst)
    assert size["states"] > 100 and size["arcs"] > size["states"]
    assert g.id2word[3] == "evet" and g.num_pdfs == g.tm.num_pdfs()
    tids, words = _walk(g.fst)
    assert max(tids) <= g.tm.num_transition_ids()
    ll = _peaked(g.tm.tid2pdf()[np.repeat(tids, 2)], g.num_pdfs)
    hyp, _, _, _ = decode.search_utterance(g, ll, 1.0, decode.SearchConfig())
    assert [w for w in g.words(hyp) if w != "!SIL"] == [w for w in g.words(words) if w != "!SIL"]
    assert any(w in ("evet", "hayIr") for w in g.words(hyp))
