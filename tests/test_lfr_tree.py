"""The networks' low-frame-rate tree (stage 3): Kaldi chain's build_tree.sh --frame-subsampling-factor."""
import json

import numpy as np
import pytest

from conftest import run_module
from millionhours import alignments as A, graph as graphmod, kaldi_io, lang as langmod
from millionhours import lfr_tree as L

TINY = ("--profile", "tiny")


# --------------------------------------------------------------------------- phone lengths at 30 ms


@pytest.mark.parametrize("lengths, expected", [
    ([3, 3, 3], [1, 1, 1]),            # boundaries 0 3 6 9 -> label frames 1, 4, 7: one each
    ([4, 2, 5], [1, 1, 2]),            # 0 4 6 11 -> (b + 1) // 3 = 0 1 2 4
    ([1, 1, 7], [1, 1, 1]),            # phone 0 gets none: borrows from phone 2 (phone 1 has 1)
    ([6, 1, 1, 6], [1, 1, 1, 2]),      # 0 2 2 3 5: phone 1 gets none; phone 0 (next to it)
                                       # gives one rather than phone 3 (one frame further)
])
def test_subsampled_lengths_by_hand(lengths, expected):
    new = L.subsampled_lengths(lengths, factor=3, centre=1)
    assert new.tolist() == expected
    assert new.sum() == (sum(lengths) + 1) // 3        # every LFR frame of the label rule


def test_subsampled_lengths_tie_goes_left():
    # lengths 4 1 4: boundaries 0 4 5 9 -> 0 1 2 3: no repair needed; 6 1 5 -> 0 2 2 4: the
    # middle phone has none; phones 0 and 2 both spare one at distance 0: the left one gives
    assert L.subsampled_lengths([6, 1, 5]).tolist() == [1, 1, 2]


def test_subsampled_lengths_unrepairable():
    assert L.subsampled_lengths([1, 1, 1]) is None      # 1 LFR frame for 3 phones


# --------------------------------------------------------------------------- the tree on the tiny run


@pytest.fixture(scope="module")
def tree_dirs(tiny_exp):
    data, exp, results, _ = tiny_exp
    return data, exp, results


def _alis(path):
    exp = A.load_exp_dir(str(path))
    ktm, _ = kaldi_io.to_khg(exp.tm, None)
    return exp, ktm, {u: a for f in exp.ali_files for u, a in A.read_alignments(f)}


def test_tree_dir_is_a_one_state_kaldi_dir(tree_dirs):
    data, exp, results = tree_dirs
    lfr, ktm, alis = _alis(exp / "tree_lfr")
    assert (exp / "tree_lfr" / "frame_subsampling_factor").read_text().strip() == "3"
    topo = lfr.tm.topology
    assert all(len([s for s in e if s.forward_pdf_class >= 0]) == 1 for e in topo.entries)
    assert lfr.num_pdfs == json.loads((results / "lfr_tree.json").read_text())["pdfs"]
    # the converted alignments keep every phone and its 10 ms length (convert-ali)
    tri, tri_ktm, tri_alis = _alis(exp / "tri")
    assert set(alis) == set(tri_alis)
    for u in list(alis)[:20]:
        p1, l1 = L.phone_lengths(tri_ktm, tri_alis[u])
        p2, l2 = L.phone_lengths(ktm, alis[u])
        assert p1.tolist() == p2.tolist() and l1.tolist() == l2.tolist()
    # dev and the oracle set were converted with the same tree
    for d in ("tree_lfr_ali_dev", "tree_lfr_ali_unlabeled_oracle"):
        conv = A.load_exp_dir(str(exp / d))
        assert conv.num_pdfs == lfr.num_pdfs and (exp / d / "tree").read_bytes() == \
            (exp / "tree_lfr" / "tree").read_bytes()


def test_transitions_are_estimated_at_30ms(tree_dirs):
    """The silence state's self-loop probability is what its 30 ms alignments count:
    (LFR frames - phones) / LFR frames of silence over the training alignments."""
    _, exp, _ = tree_dirs
    lfr, ktm, alis = _alis(exp / "tree_lfr")
    sil = 1                                              # phones.txt: sil is the first phone
    frames = phones = 0
    for a in alis.values():
        ph, ln = L.phone_lengths(ktm, a)
        new = L.subsampled_lengths(ln)
        frames += int(new[ph == sil].sum())
        phones += int((ph == sil).sum())
    tid_phone, loop = lfr.tm.tid2phone(), np.array([ktm.is_self_loop(t) for t in
                                                     range(1, ktm.num_transition_ids + 1)])
    sil_loops = [t for t in range(1, ktm.num_transition_ids + 1)
                 if tid_phone[t] == sil and loop[t - 1]]
    assert len(sil_loops) == 1                           # silence is context-independent
    p = float(np.exp(lfr.tm.log_probs[sil_loops[0]]))
    assert p == pytest.approx((frames - phones) / frames, rel=1e-4)


@pytest.fixture(scope="module")
def lfr_graph(tree_dirs, tmp_path_factory):
    """The networks' 30 ms graph of the tiny run (the recipe builds it when lfr_tree.use)."""
    data, exp, _ = tree_dirs
    g = tmp_path_factory.mktemp("lfr") / "graph_lfr"
    run_module("millionhours.bin.make_graph", *TINY, data / "lang_lfr", exp / "tree_lfr",
               data / "corpus/local/lm_text.txt", g, cwd=exp.parent)
    return g


def test_lfr_graph_decodes_its_alignments(tree_dirs, lfr_graph):
    """The 30 ms graph is consistent with the tree, topology and stage-3 targets: scores that
    put the dev alignment's senone first on every LFR frame decode to the reference words
    (up to the tiny LM), and the same scores with the senone ids permuted do not."""
    import kaldiio
    from millionhours import datadir, decode, scoring
    data, exp, _ = tree_dirs
    g = graphmod.load_graph(str(lfr_graph))
    assert g.fsf == 3 and g.num_pdfs == A.load_exp_dir(str(exp / "tree_lfr")).num_pdfs
    assert graphmod.load_graph(str(exp / "graph")).fsf == 1
    targets = exp / "tree_lfr_targets"
    run_module("millionhours.bin.import_alignments", *TINY, exp / "tree_lfr_ali_dev",
               data / "fbank/dev", targets, cwd=exp.parent)
    tg = kaldiio.load_scp(str(targets / "targets.scp"))
    refs = datadir.read_table(str(data / "fbank/dev/text"))
    search = decode._Searcher(g.fst, g.tm.tid2pdf(), decode.SearchConfig(beam=13))
    wer = {}
    perm = {"aligned": np.arange(g.num_pdfs),
            "permuted": np.random.default_rng(0).permutation(g.num_pdfs)}
    for name, ids in perm.items():
        hyps = {}
        for u in tg:
            t = ids[np.asarray(tg[u])]
            ll = np.full((len(t), g.num_pdfs), np.log(0.1 / g.num_pdfs), np.float32)
            ll[np.arange(len(t)), t] = np.log(0.9)
            hyps[u] = " ".join(g.words(search.decode(ll, [1.0])[1.0][0]))
        wer[name] = scoring.score_set({u: refs[u] for u in tg}, hyps)[0]["wer"]
    assert wer["aligned"] < 25 and wer["permuted"] > 50


def test_gmm_refuses_the_lfr_graph(tree_dirs, lfr_graph, tmp_path):
    data, exp, _ = tree_dirs
    bad = run_module("millionhours.bin.decode", *TINY, "--acwt", 0.07, "--name", "gmm",
                     exp / "tri", lfr_graph, data / "fbank/dev", tmp_path / "y", check=False,
                     cwd=exp.parent)
    assert bad.returncode != 0 and "subsampled (LFR) graph" in bad.stderr
    assert len(bad.stderr.strip().splitlines()) == 1


def test_build_tree_lfr_refuses_a_three_state_lang(tree_dirs, tmp_path):
    data, exp, _ = tree_dirs
    proc = run_module("millionhours.bin.build_tree_lfr", *TINY, data / "fbank/train_labeled_clean",
                      data / "lang", exp / "tri", tmp_path / "t", check=False,
                      cwd=exp.parent)
    assert proc.returncode != 0 and "one-state topology" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1


def test_make_lfr_lang_copies_and_rewrites_topo(tree_dirs, tmp_path):
    data, _, _ = tree_dirs
    langmod.make_lfr_lang(str(data / "lang"), str(tmp_path / "l"))
    for f in ("L_disambig.fst", "words.txt", "phones.txt"):
        assert (tmp_path / "l" / f).read_bytes() == (data / "lang" / f).read_bytes()
    topo = (tmp_path / "l" / "topo").read_text()
    assert topo.count("<State>") == 2 and "<Transition> 0 0.5 <Transition> 1 0.5" in topo
