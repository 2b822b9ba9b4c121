"""Tests for millionhours.kaldi_io: Kaldi final.mdl / tree I/O checked against a real Kaldi
file and against kaldi-hmm-gmm's own C++ objects."""
import re
import struct
from pathlib import Path

import numpy as np
import pytest

from millionhours.toolchain import khg  # native packages first (import-order rule)
from millionhours import kaldi_io as kio

EXTERNAL_MDL = Path(__file__).parent / "data" / "kaldi_external" / "final.mdl"

# 5-state silence (phone 1) and 3-state phones 2..4, as in kaldi_toolchain.md section 3.
TOPO_TEXT = """<Topology>
<TopologyEntry>
<ForPhones>
2 3 4
</ForPhones>
<State> 0 <PdfClass> 0 <Transition> 0 0.75 <Transition> 1 0.25 </State>
<State> 1 <PdfClass> 1 <Transition> 1 0.75 <Transition> 2 0.25 </State>
<State> 2 <PdfClass> 2 <Transition> 2 0.75 <Transition> 3 0.25 </State>
<State> 3 </State>
</TopologyEntry>
<TopologyEntry>
<ForPhones>
1
</ForPhones>
<State> 0 <PdfClass> 0 <Transition> 0 0.25 <Transition> 1 0.25 <Transition> 2 0.25 <Transition> 3 0.25 </State>
<State> 1 <PdfClass> 1 <Transition> 1 0.25 <Transition> 2 0.25 <Transition> 3 0.25 <Transition> 4 0.25 </State>
<State> 2 <PdfClass> 2 <Transition> 1 0.25 <Transition> 2 0.25 <Transition> 3 0.25 <Transition> 4 0.25 </State>
<State> 3 <PdfClass> 3 <Transition> 1 0.25 <Transition> 2 0.25 <Transition> 3 0.25 <Transition> 4 0.25 </State>
<State> 4 <PdfClass> 4 <Transition> 4 0.7 <Transition> 5 0.3 </State>
<State> 5 </State>
</TopologyEntry>
</Topology>
"""


def _ext():
    if not EXTERNAL_MDL.exists():
        pytest.skip(f"{EXTERNAL_MDL} not present")
    return EXTERNAL_MDL


@pytest.fixture(scope="module")
def ext_model():
    return kio.read_model(_ext())


@pytest.fixture(scope="module")
def khg_mono():
    """A monophone model built by kaldi-hmm-gmm itself (random GMMs, 2 Gaussians, dim 4)."""
    topo = khg.HmmTopology()
    topo.read(TOPO_TEXT)
    cd = khg.monophone_context_dependency(
        phones=topo.phones, phone2num_pdf_classes=topo.get_phone_to_num_pdf_classes())
    tm = khg.TransitionModel(ctx_dep=cd, hmm_topo=topo)
    rng = np.random.default_rng(0)
    am = khg.AmDiagGmm()
    for _ in range(cd.num_pdfs):
        g = khg.DiagGmm(nmix=2, dim=4)
        w = rng.random(2).astype(np.float32)
        g.set_weights(w / w.sum())
        g.set_means(rng.normal(size=(2, 4)).astype(np.float32))
        g.set_invvars((1.0 / rng.uniform(0.5, 2.0, size=(2, 4))).astype(np.float32))
        g.compute_gconsts()
        am.add_pdf(g)
    return topo, cd, tm, am


def _declared(raw: bytes, token: bytes) -> int:
    """The int32 the file itself writes right after ``token`` (binary: size byte 4 + value)."""
    i = raw.index(token + b" ") + len(token) + 1
    if raw[i:i + 3] == b"FV ":  # a vector: its dimension follows the FV token
        i += 3
    assert raw[i] == 4
    return struct.unpack("<i", raw[i + 1:i + 5])[0]


# ----------------------------------------------------------------------------- external model


def test_external_counts_match_file(ext_model):
    tm, am = ext_model
    raw = _ext().read_bytes()
    assert raw[:2] == b"\0B"
    assert len(tm.tuples) == _declared(raw, b"<Triples>")
    assert len(tm.log_probs) == _declared(raw, b"<LogProbs>") == tm.num_transition_ids() + 1
    assert am is not None
    assert am.num_pdfs == _declared(raw, b"<NUMPDFS>") == int(tm.tuples[:, 2:].max()) + 1
    assert am.num_pdfs == tm.num_pdfs()
    dim = _declared(raw, b"<DIMENSION>")
    assert am.dim == dim
    assert raw.count(b"<DiagGMM> ") == am.num_pdfs
    for g in am.pdfs:
        assert g.means_invvars.shape == g.inv_vars.shape == (g.num_gauss, dim)
        assert np.isclose(g.weights.sum(), 1.0, atol=1e-4)
        assert np.all(g.inv_vars > 0)


def test_external_tid_maps_are_sane(ext_model):
    tm, _ = ext_model
    n = tm.num_transition_ids()
    pdf, phone, state = tm.tid2pdf(), tm.tid2phone(), tm.tid2state()
    assert len(pdf) == len(phone) == len(state) == n + 1 and pdf[0] == -1
    assert np.all((pdf[1:] >= 0) & (pdf[1:] < tm.num_pdfs()))
    assert set(np.unique(pdf[1:])) == set(range(tm.num_pdfs()))   # every pdf reachable
    assert set(phone[1:].tolist()) <= set(tm.topology.phones)
    # transition-ids of one transition state are contiguous and its probabilities sum to 1
    assert np.all(np.diff(state[1:]) >= 0) and state[1] == 1 and state[-1] == len(tm.tuples)
    sums = np.bincount(state[1:], weights=np.exp(tm.log_probs[1:].astype(np.float64)))
    assert np.allclose(sums[1:], 1.0, atol=1e-4)
    # each state has at most one self-loop, and it carries the self-loop pdf
    loops = tm.tid_is_self_loop()
    assert np.bincount(state[1:][loops[1:]], minlength=len(tm.tuples) + 1).max() == 1
    assert np.array_equal(pdf[loops], tm.tuples[state[loops] - 1, 3])


def test_external_binary_rewrite_is_byte_identical(ext_model, tmp_path):
    tm, am = ext_model
    out = tmp_path / "final.mdl"
    kio.write_model(out, tm, am, binary=True)
    assert out.read_bytes() == _ext().read_bytes()
    assert not Path(f"{out}.tmp").exists()
    tm2, am2 = kio.read_model(out)
    assert tm2 == tm and am2 == am


def test_external_text_round_trip(ext_model, tmp_path):
    tm, am = ext_model
    txt = tmp_path / "final.txt"
    kio.write_model(txt, tm, am, binary=False)
    assert txt.read_bytes().startswith(b"<TransitionModel> \n<Topology> \n")
    tm2, am2 = kio.read_model(txt)
    assert tm2 == tm and am2 == am
    assert kio.model_bytes(tm2, am2, binary=True) == _ext().read_bytes()
    # Kaldi's own 7-digit text is readable and close
    k7 = tmp_path / "final7.txt"
    kio.write_model(k7, tm, am, binary=False, float_digits=7)
    tm3, am3 = kio.read_model(k7)
    assert np.array_equal(tm3.tuples, tm.tuples)
    assert np.allclose(tm3.log_probs, tm.log_probs, rtol=1e-6)
    assert all(np.allclose(a.means_invvars, b.means_invvars, rtol=1e-6)
               for a, b in zip(am3.pdfs, am.pdfs))


def test_external_gconsts_recomputed_like_kaldi(ext_model):
    _, am = ext_model
    stored = np.concatenate([g.gconsts for g in am.pdfs])
    ours = np.concatenate([g.compute_gconsts() for g in am.pdfs])
    assert np.allclose(stored, ours, rtol=1e-6, atol=0)
    assert np.mean(stored == ours) > 0.99  # bit-exact for nearly all


def _surrogate_tree(tm: kio.TransitionModel) -> kio.ContextDependency:
    """A triphone-shaped tree (N=3, P=1) that yields exactly the file's (phone, hmm_state, pdf)
    tuples: centre phone -> pdf class -> (if several pdfs) left phone modulo their number."""
    pdfs = {}
    for ph, hs, fwd, _ in tm.tuples.tolist():
        pc = tm.topology.for_phone(ph)[hs].pdf_class
        pdfs.setdefault(ph, {}).setdefault(pc, []).append(fwd)
    n_left = max(tm.topology.phones) + 1
    CE, TE = kio.ConstantEventMap, kio.TableEventMap

    def leaf(lst):
        lst = sorted(set(lst))
        return CE(lst[0]) if len(lst) == 1 else TE(0, [CE(lst[v % len(lst)]) for v in range(n_left)])

    table = [None] * n_left
    for ph, by_pc in pdfs.items():
        table[ph] = TE(-1, [leaf(by_pc[c]) for c in range(len(by_pc))])
    return kio.ContextDependency(3, 1, TE(1, table))


def test_external_numbering_matches_khg_recomputation(ext_model):
    """kaldi-hmm-gmm has no model reader; instead let its C++ TransitionModel constructor
    recompute tuples and transition-id numbering from our topology and a tree that
    reproduces the file's pdfs, and compare with what we read."""
    tm, _ = ext_model
    topo = khg.HmmTopology()
    topo.read(tm.topology.to_text())
    ktm = khg.TransitionModel(ctx_dep=kio.tree_to_khg(_surrogate_tree(tm)), hmm_topo=topo)
    k = ktm.__getstate__()
    assert np.array_equal([t.__getstate__() for t in ktm.tuples], tm.tuples)
    assert np.array_equal(k[2][1:], tm.state2id()[1:])
    assert np.array_equal(k[3][1:], tm.tid2state()[1:])
    assert np.array_equal(np.asarray(ktm.transition_id_to_pdf_array())[1:], tm.tid2pdf()[1:])
    assert ktm.num_pdfs == tm.num_pdfs() and ktm.num_transition_ids == tm.num_transition_ids()


# ----------------------------------------------------------------------------- khg round trips


def test_from_khg_derived_arrays_match_khg(khg_mono):
    _, _, ktm, kam = khg_mono
    tm, am = kio.from_khg(ktm, kam)
    n = ktm.num_transition_ids
    assert tm.num_transition_ids() == n and tm.num_pdfs() == ktm.num_pdfs
    assert np.array_equal(tm.tid2pdf()[1:], np.asarray(ktm.transition_id_to_pdf_array())[1:])
    assert [int(x) for x in tm.tid2phone()[1:]] == [ktm.transition_id_to_phone(t)
                                                    for t in range(1, n + 1)]
    assert [bool(x) for x in tm.tid_is_self_loop()[1:]] == [ktm.is_self_loop(t)
                                                            for t in range(1, n + 1)]
    assert [bool(x) for x in tm.tid_is_final()[1:]] == [ktm.is_final(t) for t in range(1, n + 1)]
    k = ktm.__getstate__()
    assert np.array_equal(k[2][1:], tm.state2id()[1:])
    assert np.array_equal(k[3][1:], tm.tid2state()[1:])
    assert np.allclose(k[7][1:], tm.non_self_loop_log_probs()[1:], atol=1e-6)
    for i, g in enumerate(am.pdfs):
        assert np.array_equal(g.compute_gconsts(), np.asarray(kam.get_pdf(i).gconsts))


def test_to_khg_from_khg_round_trip(khg_mono):
    _, _, ktm, kam = khg_mono
    tm, am = kio.from_khg(ktm, kam)
    ktm2, kam2 = kio.to_khg(tm, am)
    a, b = ktm.__getstate__(), ktm2.__getstate__()
    assert [t.__getstate__() for t in a[0]] == [t.__getstate__() for t in b[0]]
    assert a[1].__getstate__()[:2] == b[1].__getstate__()[:2]
    assert [[s.__getstate__() for s in e] for e in a[1].__getstate__()[2]] == \
           [[s.__getstate__() for s in e] for e in b[1].__getstate__()[2]]
    assert list(a[2:7]) == list(b[2:7])  # state2id, id2state, id2pdf, num_pdfs, log_probs
    assert np.allclose(a[7], b[7], atol=1e-6)
    for x, y in zip(kam.__getstate__(), kam2.__getstate__()):
        assert np.array_equal(x, y)
    for i in range(kam.num_pdfs):
        assert np.array_equal(kam.get_pdf(i).gconsts, kam2.get_pdf(i).gconsts)
    tm3, am3 = kio.from_khg(ktm2, kam2)
    assert tm3 == tm and am3 == am


def test_small_model_write_read_round_trips(khg_mono, tmp_path):
    _, _, ktm, kam = khg_mono
    tm, am = kio.from_khg(ktm, kam)
    b1, t1 = tmp_path / "b1.mdl", tmp_path / "t1.mdl"
    kio.write_model(b1, tm, am, binary=True)
    tmb, amb = kio.read_model(b1)
    assert tmb == tm and amb == am
    kio.write_model(t1, tmb, amb, binary=False)
    tmt, amt = kio.read_model(t1)
    assert tmt == tm and amt == am
    assert kio.model_bytes(tmt, amt, binary=True) == b1.read_bytes()
    # the topology text is what khg writes, and khg's parser reads ours
    assert tm.topology.to_text() == str(ktm.topo)
    assert kio.Topology.from_text(TOPO_TEXT) == tm.topology


def test_means_vars_constructor_matches_khg():
    rng = np.random.default_rng(1)
    w = np.array([0.3, 0.7], np.float32)
    mu = rng.normal(size=(2, 5)).astype(np.float32)
    var = rng.uniform(0.2, 3.0, size=(2, 5)).astype(np.float32)
    g = kio.DiagGmm.from_means_vars(w, mu, var)
    k = khg.DiagGmm(nmix=2, dim=5)
    k.set_weights(w); k.set_means(mu); k.set_invvars((1.0 / var).astype(np.float32))
    k.compute_gconsts()
    assert np.array_equal(g.inv_vars, k.inv_vars)
    assert np.allclose(g.means_invvars, k.means_invvars, rtol=1e-6)
    assert np.allclose(g.gconsts, k.gconsts, rtol=1e-6)
    assert np.allclose(g.means, mu, rtol=1e-5) and np.allclose(g.vars, var, rtol=1e-5)


# ----------------------------------------------------------------------------- trees


def test_tree_from_khg_file(khg_mono, tmp_path):
    topo, cd, _, _ = khg_mono
    kb, kt = tmp_path / "tree", tmp_path / "tree.txt"
    cd.write(binary=True, filename=str(kb))
    cd.write(binary=False, filename=str(kt))
    tree = kio.read_tree(kb)
    assert (tree.N, tree.P) == (cd.context_width, cd.central_position) == (1, 0)
    assert tree.num_pdfs == cd.num_pdfs
    for phone in range(0, max(topo.phones) + 2):
        for pc in range(-1, 6):
            ok, pdf = cd.compute([phone], pc)
            assert tree.map((phone,), pc) == (pdf if ok else None), (phone, pc)
    assert kio.read_tree(kt) == tree
    ours = tmp_path / "ours"
    kio.write_tree(ours, tree, binary=True)
    assert ours.read_bytes() == kb.read_bytes()
    kio.write_tree(ours, tree, binary=False)
    assert ours.read_bytes() == kt.read_bytes()
    assert kio.tree_from_khg(cd) == tree


def test_split_tree_agrees_with_khg_compute():
    """A triphone-style tree (N=3, P=1) with SE/TE/CE nodes: our map == Kaldi's Compute."""
    CE, TE, SE = kio.ConstantEventMap, kio.TableEventMap, kio.SplitEventMap
    leaf = iter(range(100))
    per_phone = [None]
    for _phone in range(1, 5):
        per_pc = [SE(0, (1, 3), SE(2, (2,), CE(next(leaf)), CE(next(leaf))), CE(next(leaf)))
                  for _ in range(3)]
        per_phone.append(TE(-1, per_pc))
    tree = kio.ContextDependency(3, 1, TE(1, per_phone))
    cd = kio.tree_to_khg(tree)
    assert (cd.context_width, cd.central_position, cd.num_pdfs) == (3, 1, tree.num_pdfs)
    for l in range(0, 5):
        for c in range(0, 6):
            for r in range(0, 5):
                for pc in range(0, 4):
                    ok, pdf = cd.compute([l, c, r], pc)
                    assert tree.map((l, c, r), pc) == (pdf if ok else None)
    assert kio.tree_from_khg(cd) == tree
    with pytest.raises(ValueError):
        tree.map((1, 2), 0)


# ----------------------------------------------------------------------------- bad input


def _one_line_error(exc: pytest.ExceptionInfo, path) -> str:
    msg = str(exc.value)
    assert "\n" not in msg and msg.startswith(str(path)), msg
    return msg


def test_wrong_leading_token(tmp_path):
    p = tmp_path / "nnet.mdl"
    p.write_bytes(b"\0B<Nnet3> \n")
    with pytest.raises(kio.KaldiFormatError) as e:
        kio.read_model(p)
    msg = _one_line_error(e, p)
    assert "expected token <TransitionModel>, got '<Nnet3>'; is this a Kaldi final.mdl?" in msg
    p.write_text("ContextDependency 1 0 ToPdf XX EndContextDependency ")
    with pytest.raises(kio.KaldiFormatError) as e:
        kio.read_tree(p)
    assert "unknown event-map type" in _one_line_error(e, p)


def test_truncated_files_raise(ext_model, tmp_path):
    tm, am = ext_model
    for binary in (True, False):
        raw = kio.model_bytes(tm, am, binary=binary)
        boundary = len(kio.model_bytes(tm, None, binary=binary))
        p = tmp_path / f"cut_{binary}.mdl"
        cuts = sorted(set(np.linspace(0, len(raw) - 1, 30).astype(int).tolist())
                      | {3, boundary - 1, boundary + 3, len(raw) - 2})
        for cut in cuts:
            p.write_bytes(raw[:cut])
            if not binary and raw[cut:].strip() == b"":
                continue  # cutting only trailing whitespace leaves a complete text file
            if not binary and cut <= boundary and raw[cut:boundary].strip() == b"":
                assert kio.read_model(p)[1] is None  # a complete transition model alone
                continue
            with pytest.raises(kio.KaldiFormatError) as e:
                kio.read_model(p)
            _one_line_error(e, p)


def test_non_gmm_after_transition_model(ext_model, tmp_path):
    tm, _ = ext_model
    p = tmp_path / "nnet_final.mdl"
    p.write_bytes(kio.model_bytes(tm, None) + b"<Nnet3> \ninput-node name=input dim=40\n")
    tm2, am2 = kio.read_model(p)
    assert tm2 == tm and am2 is None


def test_inconsistent_sizes_are_reported(ext_model, tmp_path):
    tm, am = ext_model
    bad = kio.TransitionModel(tm.topology, tm.tuples, tm.log_probs[:-1])
    p = tmp_path / "bad.mdl"
    p.write_bytes(kio.model_bytes(bad, am))
    with pytest.raises(kio.KaldiFormatError) as e:
        kio.read_model(p)
    assert re.search(r"log-probs for \d+ transition-ids", _one_line_error(e, p))
