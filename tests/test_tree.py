"""Tests for millionhours.tree on a small synthetic problem built with real kaldi-hmm-gmm objects.

Phones: 1 = SIL (5-state topology), 2..9 speech phones (3 states). Frames are Gaussian around a
mean per (phone, pdf class); two context effects are planted:
  * phone 3 shifts its mean when its LEFT neighbour is 4 or 5;
  * phones 6 and 7 are acoustically almost identical (auto_questions must group them).
Alignments are constructed directly as Kaldi's reordered transition-id sequences.
"""
import itertools

import numpy as np
import pytest

from millionhours.toolchain import khg
from millionhours import tree as T

SIL, PHONES = 1, list(range(2, 10))
ALL = [SIL] + PHONES
DIM = 3


def topo_text():
    three = "".join(f"<State> {s} <PdfClass> {s} <Transition> {s} 0.75 <Transition> {s + 1} 0.25 "
                    "</State>\n" for s in range(3))
    five = "<State> 0 <PdfClass> 0 <Transition> 0 0.25 <Transition> 1 0.25 <Transition> 2 0.25 " \
           "<Transition> 3 0.25 </State>\n"
    for s in (1, 2, 3):
        five += f"<State> {s} <PdfClass> {s} " + "".join(
            f"<Transition> {d} 0.25 " for d in (1, 2, 3, 4)) + "</State>\n"
    five += "<State> 4 <PdfClass> 4 <Transition> 4 0.75 <Transition> 5 0.25 </State>\n"
    return ("<Topology>\n<TopologyEntry>\n<ForPhones>\n" + " ".join(map(str, PHONES)) +
            "\n</ForPhones>\n" + three + "<State> 3 </State>\n</TopologyEntry>\n"
            "<TopologyEntry>\n<ForPhones>\n1\n</ForPhones>\n" + five +
            "<State> 5 </State>\n</TopologyEntry>\n</Topology>\n")


def transition_id(tm, phone, hmm_state, dest):
    """Monophone tid for the transition hmm_state -> dest of phone."""
    for i, t in enumerate(tm.tuples):
        p, hs, _, _ = t.__getstate__()
        if (p, hs) == (phone, hmm_state):
            dests = [d for d, _ in tm.topo.topology_for_phone(phone)[hs].transitions]
            return tm.state2id[i + 1] + dests.index(dest)
    raise KeyError((phone, hmm_state))


def phone_mean(means, left, phone, pdf_class):
    m = means[(phone, pdf_class)].copy()
    if phone == 3 and left in (4, 5):
        m += 3.0                                  # planted left-context effect
    return m


@pytest.fixture(scope="module")
def problem():
    rng = np.random.default_rng(7)
    topo = khg.HmmTopology()
    topo.read(topo_text())
    mono = khg.monophone_context_dependency(
        phones=topo.phones, phone2num_pdf_classes=topo.get_phone_to_num_pdf_classes())
    tm = khg.TransitionModel(ctx_dep=mono, hmm_topo=topo)
    npc = {p: (5 if p == SIL else 3) for p in ALL}
    means = {(p, c): rng.normal(scale=6.0, size=DIM) for p in ALL for c in range(npc[p])}
    for c in range(3):
        means[(7, c)] = means[(6, c)] + 0.3      # 6 ~ 7
    tid = {(p, s, d): transition_id(tm, p, s, d) for p in ALL for s in range(npc[p])
           for d in (s, s + 1)}
    feats, alis, phone_seqs, durs = [], [], [], []
    for _ in range(160):
        seq = [SIL] + list(rng.choice(PHONES, size=rng.integers(6, 12))) + [SIL]
        x, ali, plen = [], [], []
        for i, p in enumerate(seq):
            left = seq[i - 1] if i > 0 else 0
            n0 = len(ali)
            for s in range(npc[p]):
                d = int(rng.integers(1, 5))
                ali += [tid[(p, s, s + 1)]] + [tid[(p, s, s)]] * (d - 1)   # reordered
                x += list(phone_mean(means, left, p, s) + rng.normal(size=(d, DIM)))
            plen.append(len(ali) - n0)
        feats.append(np.array(x, np.float32))
        alis.append(np.array(ali, np.int32))
        phone_seqs.append([int(p) for p in seq])
        durs.append(plen)
    stats = T.acc_tree_stats(tm, feats, alis, ci_phones=[SIL])
    return dict(topo=topo, tm=tm, npc=npc, feats=feats, alis=alis, seqs=phone_seqs, durs=durs,
                stats=stats, questions=T.auto_questions(stats, ALL))


@pytest.fixture(scope="module")
def tree(problem):
    return T.build_tree(problem["stats"], ALL, problem["questions"], problem["npc"],
                        max_leaves=1000, thresh=200.0)


def frame_events(problem, utt):
    """Brute-force per-frame events (N=3, P=1, SIL context-independent)."""
    tm, seq, durs = problem["tm"], problem["seqs"][utt], problem["durs"][utt]
    rows, f = [], 0
    for i, (p, d) in enumerate(zip(seq, durs)):
        left = seq[i - 1] if i > 0 else 0
        right = seq[i + 1] if i + 1 < len(seq) else 0
        ctx = (-1, p, -1) if p == SIL else (left, p, right)
        for t in problem["alis"][utt][f:f + d]:
            hs = tm.tuples[tm.id2state[int(t)] - 1].__getstate__()[1]
            rows.append(ctx + (hs,))
        f += d
    return rows


def test_split_to_phones_matches_construction(problem):
    for ali, durs in zip(problem["alis"][:20], problem["durs"][:20]):
        starts, ends = T.split_to_phones(problem["tm"], ali)
        assert list(ends - starts + 1) == durs


def test_acc_tree_stats_matches_brute_force(problem):
    stats = problem["stats"]
    expect = {}
    for u in range(len(problem["alis"])):
        for ev, x in zip(frame_events(problem, u), problem["feats"][u].astype(np.float64)):
            c, s1, s2 = expect.get(ev, (0.0, 0.0, 0.0))
            expect[ev] = (c + 1, s1 + x, s2 + x * x)
    assert set(stats) == set(expect)
    for ev, (c, s1, s2) in expect.items():
        assert stats[ev][0] == c
        np.testing.assert_allclose(stats[ev][1], s1, rtol=1e-9, atol=1e-6)
        np.testing.assert_allclose(stats[ev][2], s2, rtol=1e-9, atol=1e-6)
    assert all(ev[0] == ev[2] == -1 for ev in stats if ev[1] == SIL)


def test_gauss_objf_matches_kaldi_gauss_clusterable():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(50, 4)) * [1, 2, 0.01, 3]        # one dim below the variance floor
    s = np.concatenate([[len(x)], x.sum(0), (x * x).sum(0)])
    g = khg.GaussClusterable(x.sum(0)[:, None], (x * x).sum(0)[:, None], 0.01, float(len(x)))
    assert T.gauss_objf(s) == pytest.approx(g.objf(), rel=1e-5)
    assert T.gauss_objf(np.zeros(9)) == 0.0


def test_auto_questions_nested_cover_and_group_similar(problem):
    qs = [set(q) for q in problem["questions"]]
    assert set(ALL) in qs and all({p} in qs for p in ALL)
    for a, b in itertools.combinations(qs, 2):
        assert not (a & b) or a <= b or b <= a              # a tree of sets
    assert {6, 7} in qs


def test_tree_finds_planted_left_context(problem, tree):
    for c in range(3):
        assert tree.map((4, 3, 2), c) == tree.map((5, 3, 8), c)
        assert tree.map((2, 3, 2), c) != tree.map((4, 3, 2), c)
        assert tree.map((2, 3, 2), c) == tree.map((9, 3, 6), c)
    left_splits = [k for _, k, _, _ in tree.split_log if k == 0]
    assert left_splits, "no split on the left phone"


def test_context_free_phone_only_split_by_pdf_class(tree):
    for p in (2, 8):
        pdfs = {c: {tree.map((l, p, r), c) for l in [0] + ALL for r in [0] + ALL}
                for c in range(3)}
        assert all(len(v) == 1 for v in pdfs.values())
        assert len(set.union(*pdfs.values())) == 3
    sil = {tree.map((l, SIL, r), c) for c in range(5) for l in (0, 2) for r in (0, 5)}
    assert len(sil) == 5


def test_max_leaves_is_exact(problem):
    for n in (17, 40):
        t = T.build_tree(problem["stats"], ALL, problem["questions"], problem["npc"],
                         max_leaves=n, thresh=0.0, cluster_thresh=0.0)
        assert t.num_pdfs == n == t.num_leaves_before_cluster
    t = T.build_tree(problem["stats"], ALL, problem["questions"], problem["npc"],
                     max_leaves=40, thresh=0.0)
    assert t.num_leaves_before_cluster == 40 and t.num_pdfs < 40   # merging removes some


def _events_at_nodes(tree, ev):
    """For every SplitEventMap node: (node, rows reaching it), by a plain recursive walk."""
    out, stack = [], [(tree.root, np.arange(len(ev)))]
    while stack:
        n, idx = stack.pop()
        if n.kind == "split":
            out.append((n, idx))
            col = -1 if n.key == T.PDF_CLASS_KEY else n.key
            yes = np.array([v in n.yes_set for v in ev[idx, col]], bool)
            stack += [(n.yes, idx[yes]), (n.no, idx[~yes])]
        elif n.kind == "table":
            col = -1 if n.key == T.PDF_CLASS_KEY else n.key
            stack += [(c, idx[ev[idx, col] == v]) for v, c in enumerate(n.table) if c is not None]
    return out


def _kaldi_objf(rows):
    s = rows.sum(0)
    if s[0] == 0:
        return 0.0
    g = khg.GaussClusterable(s[1:1 + DIM, None], s[1 + DIM:, None], 0.01, float(s[0]))
    return g.objf()


def test_every_split_gains_more_than_thresh(problem):
    thresh = 50.0
    t = T.build_tree(problem["stats"], ALL, problem["questions"], problem["npc"],
                     max_leaves=0, thresh=thresh, cluster_thresh=0.0)
    ev, x = T.stats_to_arrays(problem["stats"])
    gains = []
    for node, idx in _events_at_nodes(t, ev):
        col = -1 if node.key == T.PDF_CLASS_KEY else node.key
        yes = np.isin(ev[idx, col], node.yes_set)
        gain = _kaldi_objf(x[idx][yes]) + _kaldi_objf(x[idx][~yes]) - _kaldi_objf(x[idx])
        assert gain > thresh
        gains.append(gain)
    assert len(gains) == len(t.split_log)
    np.testing.assert_allclose(sorted(gains), sorted(g for *_, g in t.split_log), rtol=1e-3)
    # growth stopped because of thresh: no leaf has a question left that gains more
    leaf = t.map_events(ev)
    qs = [list(range(i + 1)) for i in range(2)]
    for j in range(t.num_pdfs):
        rows, xs = ev[leaf == j], x[leaf == j]
        for col, questions in [(-1, qs)] + [(k, problem["questions"]) for k in range(3)]:
            if (rows[:, col] < 0).any():
                continue
            for q in questions:
                yes = np.isin(rows[:, col], q)
                gain = T.gauss_objf(xs[yes].sum(0)) + T.gauss_objf(xs[~yes].sum(0)) \
                    - T.gauss_objf(xs.sum(0))
                assert gain <= thresh


def test_context_dependency_agrees_and_transition_model_works(problem, tree, tmp_path):
    cd = T.to_context_dependency(tree)
    assert (cd.context_width, cd.central_position, cd.num_pdfs) == (3, 1, tree.num_pdfs)
    n = 0
    for l, p, r in itertools.product([0] + ALL, ALL, [0] + ALL):
        for c in range(problem["npc"][p]):
            ok, pdf = cd.compute([l, p, r], c)
            assert ok and pdf == tree.map((l, p, r), c)
            n += 1
    assert n == 10 * 9 * 10 * 3 + 10 * 10 * 2     # 8 speech phones x 3, SIL x 5
    cd.write(binary=True, filename=str(tmp_path / "tree"))
    assert (tmp_path / "tree").read_bytes() == tree.to_kaldi_bytes()   # Kaldi re-writes it
    tm = khg.TransitionModel(ctx_dep=cd, hmm_topo=problem["topo"])
    assert tm.num_pdfs == tree.num_pdfs


def test_init_model_means_are_pooled_means(problem, tree):
    cd = T.to_context_dependency(tree)
    tm, am = T.init_model_from_stats(tree, problem["stats"], cd, problem["topo"])
    assert am.num_pdfs == tree.num_pdfs == tm.num_pdfs
    sums, sq = np.zeros((tree.num_pdfs, DIM)), np.zeros((tree.num_pdfs, DIM))
    counts = np.zeros(tree.num_pdfs)
    for u in range(len(problem["alis"])):
        ev = np.array(frame_events(problem, u))
        ev[ev[:, 1] == SIL, 0] = 0                      # any context works for CI silence
        ev[ev[:, 1] == SIL, 2] = 0
        pdf = tree.map_events(ev)
        np.add.at(sums, pdf, problem["feats"][u])
        np.add.at(sq, pdf, problem["feats"][u].astype(np.float64) ** 2)
        counts += np.bincount(pdf, minlength=tree.num_pdfs)
    for j in range(tree.num_pdfs):
        gmm = am.get_pdf(j)
        assert gmm.num_gauss == 1
        mean = sums[j] / counts[j]
        np.testing.assert_allclose(gmm.means[0], mean, atol=1e-4)
        np.testing.assert_allclose(1.0 / gmm.inv_vars[0], sq[j] / counts[j] - mean ** 2,
                                   rtol=1e-3)


def test_convert_ali_keeps_phones_and_durations(problem, tree):
    cd = T.to_context_dependency(tree)
    new_tm = khg.TransitionModel(ctx_dep=cd, hmm_topo=problem["topo"])
    old_tm = problem["tm"]
    tid2pdf = np.asarray(new_tm.transition_id_to_pdf_array())
    for u in range(0, len(problem["alis"]), 7):
        old = problem["alis"][u]
        new = T.convert_ali(old_tm, new_tm, cd, old)
        s0, e0 = T.split_to_phones(old_tm, old)
        s1, e1 = T.split_to_phones(new_tm, new)
        np.testing.assert_array_equal(s0, s1)
        np.testing.assert_array_equal(e0, e1)
        assert [new_tm.transition_id_to_phone(int(t)) for t in new[s1]] == problem["seqs"][u]
        assert [bool(new_tm.is_self_loop(int(t))) for t in new] == \
            [bool(old_tm.is_self_loop(int(t))) for t in old]
        ev = np.array(frame_events(problem, u))
        ev[ev[:, 1] == SIL, 0] = 0
        ev[ev[:, 1] == SIL, 2] = 0
        np.testing.assert_array_equal(tid2pdf[new], tree.map_events(ev))


def test_roots_file_shared_sil_with_not_split(problem):
    roots = T.read_roots("not-shared not-split 1\n" +
                         "".join(f"shared split {p}\n" for p in PHONES))
    t = T.build_tree(problem["stats"], roots, problem["questions"], problem["npc"],
                     max_leaves=30, thresh=0.0, cluster_thresh=0.0)
    assert t.num_pdfs == 30
    sil = [t.map((0, SIL, 0), c) for c in range(5)]
    assert len(set(sil)) == 5                  # one stub leaf per pdf class, never split
    with pytest.raises(ValueError):
        T.read_roots("maybe split 1\n")


def test_multi_phone_root_shares_and_splits(problem):
    roots = [T.Root([SIL], True, True), [2, 3], [4], [5], [6, 7], [8, 9]]
    t = T.build_tree(problem["stats"], roots, problem["questions"], problem["npc"],
                     max_leaves=60, thresh=100.0)
    cd = T.to_context_dependency(t)
    for l, p, r in itertools.product([0] + ALL, ALL, [0] + ALL):
        for c in range(problem["npc"][p]):
            assert cd.compute([l, p, r], c) == (True, t.map((l, p, r), c))
    # 6 and 7 are acoustically the same: the shared root should not need to tell them apart
    assert all(t.map((2, 6, 2), c) == t.map((2, 7, 2), c) for c in range(3))
    assert len({t.map((2, 2, 2), c) for c in range(3)} & {t.map((2, 3, 2), c)
                                                          for c in range(3)}) == 0
