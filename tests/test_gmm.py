"""Stage 2 on the tiny profile: the lang dir, GMM features, mono/tri training, the exp dir."""
import gzip
import os
import shutil

import kaldiio
import numpy as np
import pytest
import yaml

from conftest import ROOT, run_module
from millionhours.toolchain import khg, kaldifst
from millionhours import config, datadir, gmm, kaldi_io
from millionhours import lang as L

# Small, fast settings for the tests (the tiny profile's own values may differ).
TEST_GMM = {
    "nj": 2, "seed": 0,
    "mono": {"num_iters": 8, "tot_gauss": 250, "max_iter_inc": 6, "realign_iters": [1, 2, 4, 6]},
    "tri": {"num_iters": 5, "num_leaves": 150, "tot_gauss": 500, "max_iter_inc": 3,
            "realign_iters": [2], "thresh": 50.0},
}


@pytest.fixture(scope="module")
def setup(tiny_data, tmp_path_factory):
    data, _ = tiny_data
    tmp = tmp_path_factory.mktemp("gmm")
    lang_dir = tmp / "lang"
    run_module("millionhours.bin.prepare_lang", data / "corpus" / "local" / "lexicon.txt",
               lang_dir)
    params = config.load_params(os.path.join(ROOT, "params.yaml"), "tiny")
    params["gmm"] = config.deep_merge(params.get("gmm", {}), TEST_GMM)
    (tmp / "recipes" / "conf").mkdir(parents=True)
    (tmp / "recipes" / "conf" / "tiny.yaml").write_text("{}\n")
    (tmp / "params.yaml").write_text(yaml.safe_dump(params))
    return data, lang_dir, tmp


@pytest.fixture(scope="module")
def trained(setup):
    data, lang_dir, tmp = setup
    exp = tmp / "exp" / "tri"
    res = tmp / "alignment.json"
    proc = run_module("millionhours.bin.train_gmm", "--params", tmp / "params.yaml",
                      "--profile", "tiny", "--results", res,
                      data / "fbank" / "train_labeled", lang_dir, exp,
                      "--align-oracle", data / "fbank" / "train_unlabeled",
                      data / "corpus" / "oracle" / "train_unlabeled" / "text")
    return exp, res, proc.stdout


# ---------------------------------------------------------------------------- lang


def _accepts(lex_fst, phone_ids):
    """Output words of the best path of (linear phone acceptor) o L."""
    text = "".join(f"{i} {i + 1} {p} {p}\n" for i, p in enumerate(phone_ids))
    a = kaldifst.compile(text + f"{len(phone_ids)}\n")
    lf = lex_fst.copy()
    kaldifst.arcsort(lf, sort_type="ilabel")
    best = kaldifst.shortest_path(kaldifst.compose(a, lf))
    ok, _, words, _ = kaldifst.get_linear_symbol_sequence(best)
    return words if ok and best.num_states else None


def test_lang_files_are_consistent(setup):
    _, lang_dir, _ = setup
    la = L.load_lang(str(lang_dir))
    assert la.phones["<eps>"] == 0 and la.words["<eps>"] == 0
    assert la.phones[L.SIL] == 1 and L.OOV_PHONE in la.silence
    assert all(not p.endswith(("_B", "_I", "_E", "_S")) for p in la.phones)  # no positions
    assert list(la.words)[-3:] == ["#0", "<s>", "</s>"] and la.oov in la.words
    disambig = (lang_dir / "phones" / "disambig.int").read_text().split()
    assert [int(i) for i in disambig] == la.disambig_ids and la.disambig[0] == "#0"
    assert len(la.disambig) >= 2
    topo = khg.HmmTopology()
    topo.read((lang_dir / "topo").read_text())
    assert sorted(topo.phones) == sorted(la.real_phone_ids)
    npc = topo.get_phone_to_num_pdf_classes()
    assert npc[la.phones[L.SIL]] == 5 and npc[la.nonsilence_ids[0]] == 3
    roots = (lang_dir / "phones" / "roots.txt").read_text().splitlines()
    assert roots[0] == "not-shared not-split sil"
    assert all(r.startswith("shared split ") for r in roots[len(la.silence):])


def test_lexicon_fst_accepts_pronunciations(setup):
    _, lang_dir, _ = setup
    la = L.load_lang(str(lang_dir))
    lex = kaldifst.StdVectorFst.read(str(lang_dir / "L.fst"))
    lexd = kaldifst.StdVectorFst.read(str(lang_dir / "L_disambig.fst"))
    sil = la.phones[L.SIL]
    for (word, prons), dsym in list(zip(la.lexicon, la.lex_disambig))[:200:17]:
        ids = [la.phones[p] for p in prons]
        assert _accepts(lex, ids) == [la.words[word]] or word in _homophones(la, prons)
        assert _accepts(lex, [sil] + ids + [sil]) is not None      # optional silences
        with_d = ids + ([la.phones[dsym]] if dsym else [])
        assert _accepts(lexd, with_d) == [la.words[word]]
    assert _accepts(lex, [la.phones["#0"]]) is None                 # no #k in plain L


def _homophones(la, prons):
    return {w for w, p in la.lexicon if p == prons}


def test_missing_lexicon_is_one_line_error(tmp_path):
    proc = run_module("millionhours.bin.prepare_lang", tmp_path / "nope.txt", tmp_path / "lang",
                      check=False)
    assert proc.returncode != 0
    assert "nope.txt" in proc.stderr and len(proc.stderr.strip().splitlines()) == 1


# ---------------------------------------------------------------------------- features


def test_mfcc_from_fbank():
    d = gmm.dct_matrix(13, 64)
    assert np.allclose(d @ d.T, np.eye(13), atol=1e-9)             # orthonormal DCT-II rows
    const = np.full((5, 64), 2.0, np.float32)
    c = gmm.mfcc_from_fbank(const, 13, 22.0)
    assert c.shape == (5, 13) and np.allclose(c[:, 1:], 0, atol=1e-4)
    assert np.isclose(c[0, 0], 2.0 * np.sqrt(64))                    # C0 lifter factor is 1
    rng = np.random.default_rng(0)
    fb = {"a-1": rng.normal(size=(40, 64)).astype(np.float32) + 5,
          "a-2": rng.normal(size=(30, 64)).astype(np.float32) + 5,
          "b-1": rng.normal(size=(20, 64)).astype(np.float32) - 3}
    f = gmm.gmm_features(fb, {"a-1": "a", "a-2": "a", "b-1": "b"})
    assert all(f[u].shape == (len(fb[u]), 39) for u in fb)
    spk_a = np.concatenate([f["a-1"], f["a-2"]])[:, :13]
    assert np.allclose(spk_a.mean(0), 0, atol=1e-3)                  # per-speaker CMN
    assert np.allclose(f["b-1"][:, :13].mean(0), 0, atol=1e-3)


def test_boundary_accuracy_matches_by_edit_distance():
    ref = {"u": [("sil", 0, .1), ("a", .1, .2), ("b", .2, .3), ("sil", .3, .5)]}
    hyp = {"u": [("sil", 0, .11), ("a", .11, .23), ("c", .23, .3), ("sil", .3, .5)]}
    r = gmm.boundary_accuracy(ref, hyp)
    assert r["matched_phones"] == 3 and r["boundaries_compared"] == 2
    assert r["within_10ms"] == 1.0 and r["within_20ms"] == 1.0


# ---------------------------------------------------------------------------- training


def test_mono_training_increases_likelihood(setup):
    data, lang_dir, _ = setup
    fb = str(data / "fbank" / "train_labeled")
    la = L.load_lang(str(lang_dir))
    utt2spk = datadir.read_table(os.path.join(fb, "utt2spk"))
    text = datadir.read_table(os.path.join(fb, "text"))
    utts = list(utt2spk)[:20]
    feats = gmm.load_gmm_features(fb, utts, utt2spk)
    topo = khg.HmmTopology()
    topo.read((lang_dir / "topo").read_text())
    p = gmm.merged({"mono": {"num_iters": 5, "tot_gauss": 150, "max_iter_inc": 4,
                             "realign_iters": [2, 4]}}, "mono")
    with gmm.Aligner(fb, utts, utt2spk, gmm.text_to_word_ids(text, la), la, str(lang_dir),
                     gmm.FeatConfig(), nj=1) as al:
        mono = gmm.train_mono(topo, feats, al, p)
    like = [e["like_per_frame"] for e in mono.log]
    assert len(like) == 5 and like[-1] > like[0] + 1.0
    assert mono.am.num_gauss > mono.am.num_pdfs                      # mixed up


def _read_alis(exp):
    nj = int((exp / "num_jobs").read_text())
    alis = {}
    for j in range(1, nj + 1):
        with gzip.open(exp / f"ali.{j}.gz") as f:
            alis.update(kaldiio.load_ark(f))
    return alis


def test_exp_dir_reloads_and_alignments_are_valid(setup, trained):
    data, lang_dir, _ = setup
    exp, _, _ = trained
    tm, am = kaldi_io.read_model(exp / "final.mdl")
    tree = kaldi_io.read_tree(exp / "tree")
    assert tree.num_pdfs == tm.num_pdfs() == am.num_pdfs
    assert (exp / "phones.txt").read_text() == (lang_dir / "phones.txt").read_text()
    ktm, _ = kaldi_io.to_khg(tm, am)
    la = L.load_lang(str(lang_dir))
    id2phone = {i: p for p, i in la.phones.items()}
    fb = data / "fbank" / "train_labeled"
    nframes = {u: int(n) for u, n in datadir.read_table(str(fb / "utt2num_frames")).items()}
    text = datadir.read_table(str(fb / "text"))
    prons = {}
    for w, p in la.lexicon:
        prons.setdefault(w, []).append(p)
    alis = _read_alis(exp)
    assert len(alis) >= 0.9 * len(nframes)
    for u, a in alis.items():
        assert len(a) == nframes[u]
        assert a.min() >= 1 and a.max() <= tm.num_transition_ids()
        phones = [id2phone[p] for p, _, _ in gmm.phone_segments(ktm, a)]
        assert _is_pronunciation([p for p in phones if p != L.SIL], text[u].split(), prons), u
    assert (exp / "mono" / "final.mdl").is_file() and (exp / "mono" / "tree").is_file()
    oracle = exp / "ali_unlabeled_oracle"
    assert (oracle / "num_jobs").is_file() and len(_read_alis(oracle)) > 0


def _is_pronunciation(phones, words, prons):
    """True if ``phones`` is a concatenation of one pronunciation per word."""
    if not words:
        return not phones
    return any(phones[:len(p)] == p and _is_pronunciation(phones[len(p):], words[1:], prons)
               for p in prons[words[0]])


def test_final_model_round_trips(trained, tmp_path):
    exp, _, _ = trained
    tm, am = kaldi_io.read_model(exp / "final.mdl")
    ktm, kam = kaldi_io.to_khg(tm, am)
    tm2, am2 = kaldi_io.from_khg(ktm, kam)
    assert tm2 == tm and am2.pdfs == am.pdfs
    kaldi_io.write_model(tmp_path / "again.mdl", tm2, am2)
    assert (tmp_path / "again.mdl").read_bytes() == (exp / "final.mdl").read_bytes()


def test_results_json(trained):
    _, res, out = trained
    r = config_json(res)
    assert r["tri"]["leaves"] == r["tri"]["pdfs"] > r["mono"]["pdfs"] > 0
    assert len(r["mono"]["like_per_frame"]) == TEST_GMM["mono"]["num_iters"]
    assert r["align"]["boundaries"]["boundaries_compared"] > 100
    assert 0 <= r["align"]["boundaries"]["within_20ms"] <= 1
    assert r["code_version"] and "timings" in r and "boundaries" in out


def config_json(path):
    import json
    with open(path) as f:
        return json.load(f)


def test_missing_feats_is_one_line_error(setup, tmp_path):
    data, lang_dir, tmp = setup
    bad = tmp_path / "train"
    shutil.copytree(data / "fbank" / "train_labeled", bad)
    (bad / "feats.scp").unlink()
    proc = run_module("millionhours.bin.train_gmm", "--params", tmp / "params.yaml",
                      "--profile", "tiny", bad, lang_dir, tmp_path / "exp", check=False)
    assert proc.returncode != 0
    err = proc.stderr.strip().splitlines()
    assert len(err) == 1 and "feats.scp" in err[0]
    proc = run_module("millionhours.bin.train_gmm", "--params", tmp / "params.yaml",
                      "--profile", "tiny", data / "fbank" / "train_labeled",
                      tmp_path / "nolang", tmp_path / "exp", check=False)
    err = proc.stderr.strip().splitlines()
    assert proc.returncode != 0 and len(err) == 1 and "prepare_lang" in err[0]
