"""Decoding end to end on the tiny profile: graph, GMM and teacher decodes, scoring, bad input.

The networks decode through the graph of their tree: the GMM's 10 ms graph (exp/graph) unless
lfr_tree.use gives them the 30 ms graph of the low-frame-rate tree (tests/test_lfr_tree.py)."""
import json
import os
import shutil

import numpy as np
import pytest

from conftest import run_module
from millionhours.toolchain import khg   # noqa: F401  (import order)
from millionhours import config, datadir, decode, kaldi_io

TINY = ["--profile", "tiny"]
pytestmark = pytest.mark.usefixtures("in_tiny_ws")     # scp paths are relative to the workspace


@pytest.fixture(scope="module")
def setup(tiny_exp, tmp_path_factory):
    """(data, exp, the GMM's graph dir, lm.json, out) with the tiny profile's graph built by
    make_graph; the networks' graph is the recipe's (:func:`nnet_graph`)."""
    data, exp, _, _ = tiny_exp
    out = tmp_path_factory.mktemp("decode")
    graph_dir, lm_json = out / "graph", out / "lm.json"
    shutil.copytree(exp / "graph", graph_dir)     # the recipe's graph: make_graph finds it current
    run_module("millionhours.bin.make_graph", *TINY, "--results", lm_json,
               "--eval-text", f"dev={data}/corpus/dev/text", data / "lang", exp / "tri",
               data / "corpus/local/lm_text.txt", graph_dir, cwd=exp.parent)
    return data, exp, graph_dir, json.loads(lm_json.read_text()), out


def _subset(src, dst, n, drop=(), edit=None):
    """The first n utterances of a data dir (files in ``drop`` left out; ``edit`` maps text)."""
    os.makedirs(dst, exist_ok=True)
    utts = sorted(datadir.read_table(os.path.join(src, "utt2spk")), key=str.encode)[:n]
    for name in ("feats.scp", "utt2spk", "text", "wav.scp", "utt2num_frames", "frame_shift"):
        if name in drop or not os.path.isfile(os.path.join(src, name)):
            continue
        table = datadir.read_table(os.path.join(src, name), required=False) \
            if name != "frame_shift" else None
        if table is None:
            open(os.path.join(dst, name), "w").write(open(os.path.join(src, name)).read())
            continue
        rows = {u: table[u] for u in utts if u in table}
        if name == "text" and edit:
            rows = edit(rows)
        datadir.write_table(os.path.join(dst, name), rows)
    u2s = datadir.read_table(os.path.join(dst, "utt2spk"))
    datadir.write_table(os.path.join(dst, "spk2utt"), datadir.spk2utt_of(u2s))
    return utts


def nnet_graph(exp):
    use = config.load_params(profile="tiny")["lfr_tree"]["use"]
    return exp / ("graph_lfr" if use else "graph")


def _teacher_args(exp):
    return ["--counts", exp / "targets/train_labeled/senone_counts", "--name", "teacher",
            exp / "teacher/final.pt"]


def test_lm_results(setup):
    _, _, graph_dir, lm, _ = setup
    dev = lm["eval"]["dev"]
    assert dev["words"] > 0 and 1 < dev["ppl"] < 1e5 and 0 <= dev["oov_rate"] < 0.5
    assert lm["hclg"]["arcs"] > 0 and lm["build_s"] >= 0 and lm["code_version"]
    assert (graph_dir / "stamp.json").is_file() and (graph_dir / "vocab.txt").is_file()
    assert lm["cached"]                # the recipe's graph, same inputs: not rebuilt


def test_gmm_loglikes_equal_kaldis(setup):
    data, exp, _, _, _ = setup
    params = config.load_params(profile="tiny")
    scorer, tm = decode.load_scorer(str(exp / "tri"), params)
    fb_dir = str(data / "fbank/dev")
    utt2spk = datadir.read_table(os.path.join(fb_dir, "utt2spk"))
    utts = list(utt2spk)[:2]
    feats = scorer.features(decode.read_fbanks(os.path.join(fb_dir, "feats.scp"), utts), utt2spk)
    x = feats[utts[0]][:40]
    ours = scorer.pdf_loglikes(x)
    ktm, kam = kaldi_io.to_khg(*kaldi_io.read_model(str(exp / "tri/final.mdl")))
    kd = khg.DecodableAmDiagGmmScaled(am=kam, tm=ktm, feats=x, scale=1.0)
    tid2pdf = tm.tid2pdf()
    for t in (0, 17, 39):
        for tid in (1, 2, len(tid2pdf) // 2, len(tid2pdf) - 1):
            assert ours[t, tid2pdf[tid]] == pytest.approx(kd.log_likelihood(t, tid), abs=2e-3)


def test_nnet_rows_per_graph_frame(setup):
    """On the 30 ms graph the tiny teacher (the default's sub-frame output layer) scores each LFR
    frame with its centre sub-frame (what stage 5 labels with); on a 10 ms graph each 10 ms frame
    gets its own sub-frame row, and a one-row model's rows repeat onto their three frames;
    posteriors sum to one."""
    data, exp, _, _, _ = setup
    params = config.load_params(profile="tiny")
    model, counts = str(exp / "teacher/final.pt"), str(exp / "targets/train_labeled/senone_counts")
    fb_dir = str(data / "fbank/dev")
    utt = next(iter(datadir.read_table(os.path.join(fb_dir, "utt2spk"))))
    fb = decode.read_fbanks(os.path.join(fb_dir, "feats.scp"), [utt])
    lfr, _ = decode.load_scorer(model, params, counts, graph_fsf=3)
    rows = lfr.loglikes(fb)[utt]
    assert rows.shape == (-(-len(fb[utt]) // 3), lfr.num_pdfs) and lfr.frame_repeat == 1
    np.testing.assert_allclose(rows, decode.NnetScorer(model, counts, frame_repeat=1)
                               .loglikes(fb)[utt][:len(rows)], atol=1e-5)
    scorer, _ = decode.load_scorer(model, params, counts)          # a 10 ms graph
    ll = scorer.loglikes(fb)[utt]
    assert ll.shape == (len(fb[utt]), scorer.num_pdfs) and scorer.frame_repeat == 3
    n = len(ll) // 3
    np.testing.assert_allclose(ll[1:3 * n:3], rows[:n], atol=1e-4)
    assert not np.allclose(ll[0:3 * n:3], ll[1:3 * n:3])          # not one row repeated
    rep = decode.upsample_rows(rows, len(ll), 3)                    # the one-row model's path
    assert np.array_equal(rep[0:3 * n:3], rep[1:3 * n:3]) and np.array_equal(rep[0:3 * n:3], rep[2:3 * n:3])
    post = np.exp(rows[0] + lfr.log_prior)               # the network's posteriors sum to one
    assert post.sum() == pytest.approx(1.0, abs=1e-4)


def test_linear_upsampling_interpolates_between_lfr_centres():
    # rows one-hot on senones 0, 1, 2; row t was trained on 10 ms frame 3t+1
    logp = np.log(np.maximum(np.eye(3, dtype=np.float32), 1e-30))
    rep = decode.upsample_rows(logp, 8, 3, 1, "repeat")
    assert rep.argmax(1).tolist() == [0, 0, 0, 1, 1, 1, 2, 2]
    lin = np.exp(decode.upsample_rows(logp, 8, 3, 1, "linear"))
    assert np.allclose(lin.sum(1), 1.0, atol=1e-6)       # still a distribution at every frame
    want = [[1, 0, 0], [1, 0, 0], [2 / 3, 1 / 3, 0], [1 / 3, 2 / 3, 0], [0, 1, 0],
            [0, 2 / 3, 1 / 3], [0, 1 / 3, 2 / 3], [0, 0, 1]]
    assert np.allclose(lin, want, atol=1e-6)            # centres exact, edges clamp to the end rows
    with pytest.raises(decode.DecodeError, match="decode.upsample"):
        decode.NnetScorer.__init__(object.__new__(decode.NnetScorer), "x", "y", upsample="cubic")


def test_teacher_and_gmm_end_to_end(setup):
    data, exp, graph_dir, _, out = setup
    res = out / "results"
    dev_dir = out / "teacher_decode_dev"
    proc = run_module("millionhours.bin.decode", *TINY, "--results-dir", res, "--nj", 2,
                      *_teacher_args(exp), nnet_graph(exp), data / "fbank/dev", dev_dir)
    assert "teacher dev: %WER" in proc.stdout
    dev = json.loads((res / "teacher__dev.json").read_text())
    # the sweep's scales are per 10 ms: x3 on a 30 ms graph's rows
    fsf = dev["graph_fsf"]
    sweep = [round(fsf * a, 6) for a in config.load_params(profile="tiny")["decode"]["acwt_sweep"]["nnet"]]
    assert set(dev["utt_errors"]) == set(datadir.read_table(str(data / "fbank/dev/text")))
    assert dev["acwt"] in sweep and set(dev["acwt_sweep"]) == {f"{a:g}" for a in sweep}
    assert dev["acwt_sweep"][f"{dev['acwt']:g}"] == dev["wer"] == min(dev["acwt_sweep"].values())
    for key in ("wer", "substitutions", "deletions", "insertions", "ref_words", "ser", "oov_rate",
                "rtf_forward", "rtf_search", "acwt", "params", "code_version"):
        assert dev[key] is not None, key
    assert dev["errors"] == dev["substitutions"] + dev["deletions"] + dev["insertions"]
    refs = datadir.read_table(str(data / "fbank/dev/text"))
    assert dev["ref_words"] == sum(len(t.split()) for t in refs.values())
    # per_utt: Kaldi layout, its #csid lines add up to the JSON's counts
    csid = np.zeros(4, int)
    for line in (dev_dir / "per_utt").read_text().splitlines():
        if line.split()[1] == "#csid":
            csid += np.array(line.split()[2:], int)
    assert tuple(csid[1:]) == (dev["substitutions"], dev["insertions"], dev["deletions"])
    hyps = datadir.read_table(str(dev_dir / "text"), required=False)
    assert set(hyps) <= set(refs) and len((dev_dir / "text").read_text().splitlines()) == len(refs)
    # the test set reuses dev's scale unchanged
    test_dir = out / "teacher_decode_test"
    run_module("millionhours.bin.decode", *TINY, "--results-dir", res, "--tune-on", dev_dir,
               *_teacher_args(exp), nnet_graph(exp), data / "fbank/test_clean", test_dir)
    test = json.loads((res / "teacher__test_clean.json").read_text())
    assert test["acwt"] == dev["acwt"] and test["acwt_source"] == f"tuned on {dev_dir}"
    # the GMM baseline through its 10 ms graph; --tune-on a teacher decode is refused
    bad = run_module("millionhours.bin.decode", *TINY, "--tune-on", dev_dir, "--name", "gmm",
                     exp / "tri", graph_dir, data / "fbank/dev", out / "x", check=False)
    assert bad.returncode != 0 and "decoded with another model" in bad.stderr
    run_module("millionhours.bin.decode", *TINY, "--results-dir", res, "--acwt", 0.07,
               "--name", "gmm", exp / "tri", graph_dir, data / "fbank/dev", out / "gmm_dev")
    gmm = json.loads((res / "gmm__dev.json").read_text())
    assert gmm["model_kind"] == "gmm" and gmm["acwt"] == 0.07 and gmm["ref_words"] == dev["ref_words"]
    assert gmm["wer"] < 100 and gmm["graph_fsf"] == 1
    # --also: more sets in the same call, at the scale chosen on the first
    run_module("millionhours.bin.decode", *TINY, "--results-dir", res, "--name", "gmm2",
               "--also", f"{data}/fbank/test_clean={out}/gmm2_test", exp / "tri", graph_dir,
               data / "fbank/dev", out / "gmm2_dev")
    d2, t2 = (json.loads((res / f"gmm2__{s}.json").read_text()) for s in ("dev", "test_clean"))
    assert t2["acwt"] == d2["acwt"] and t2["acwt_source"] == f"tuned on {out / 'gmm2_dev'}"
    assert len(d2["acwt_sweep"]) > 1 and t2["ref_words"] > 0


def test_lattice_rescoring_matches_decoding_at_its_scale(setup):
    """With lattice_beam the sweep rescores one lattice; at the lattice's own scale the best
    path is the one a plain search finds."""
    data, exp, graph_dir, _, _ = setup
    params = config.load_params(profile="tiny")
    g = decode.Graph(str(nnet_graph(exp)))
    scorer, _ = decode.load_scorer(str(exp / "teacher/final.pt"), params,
                                   str(exp / "targets/train_labeled/senone_counts"), graph_fsf=g.fsf)
    fb_dir = str(data / "fbank/dev")
    utts = list(datadir.read_table(os.path.join(fb_dir, "utt2spk")))[:3]
    ll = scorer.loglikes(decode.read_fbanks(os.path.join(fb_dir, "feats.scp"), utts))
    # beam 12 (measured ~14 s per utterance here; beam 16 took minutes with the tiny teacher's
    # flat posteriors)
    lat = decode._Searcher(g.fst, g.tm.tid2pdf(), decode.SearchConfig(beam=12, lattice_beam=6))
    plain = decode._Searcher(g.fst, g.tm.tid2pdf(), decode.SearchConfig(beam=12, max_active=10**6))
    for u in utts:
        r = lat.decode(ll[u], [0.1, 0.2, 0.3])
        assert r[0.2][0] == plain.decode(ll[u], [0.2])[0.2][0]
        assert set(r) == {0.1, 0.2, 0.3}


def test_data_dir_without_text_or_features(setup):
    """Features computed from wav.scp; no text: hypotheses written, scoring skipped."""
    data, exp, graph_dir, _, out = setup
    src = out / "raw"
    utts = _subset(str(data / "corpus/dev"), str(src), 3, drop=("text",))
    dd = out / "raw_decode"
    proc = run_module("millionhours.bin.decode", *TINY, "--acwt", 0.1, "--results-dir",
                      out / "res_raw", *_teacher_args(exp), nnet_graph(exp), src, dd)
    assert "text missing" in proc.stdout and "scoring skipped" in proc.stdout
    assert (dd / "data/feats.scp").is_file()
    assert [ln.split()[0] for ln in (dd / "text").read_text().splitlines()] == utts
    assert not (out / "res_raw").exists()
    # tuning needs text: a one-line error naming the fix
    bad = run_module("millionhours.bin.decode", *TINY, *_teacher_args(exp), nnet_graph(exp), src,
                     out / "raw_decode2", check=False)
    assert bad.returncode != 0 and "--acwt" in bad.stderr and len(bad.stderr.strip().splitlines()) == 1


def test_words_outside_the_lexicon_count_as_errors(setup):
    data, exp, graph_dir, _, out = setup
    src = out / "oov"

    def edit(rows):
        u = next(iter(rows))
        rows[u] = "qqqnotaword " + rows[u]
        return rows
    utts = _subset(str(data / "fbank/dev"), str(src), 3, edit=edit)
    run_module("millionhours.bin.decode", *TINY, "--acwt", 0.1, "--results-dir", out / "res_oov",
               *_teacher_args(exp), nnet_graph(exp), src, out / "oov_decode")
    r = json.loads((out / "res_oov/teacher__oov.json").read_text())
    assert r["oov_lexicon_words"] == 1 and r["oov_words"] >= 1
    first = [ln for ln in (out / "oov_decode/per_utt").read_text().splitlines()
             if ln.startswith(utts[0] + " ref")][0]
    assert "qqqnotaword" in first and r["errors"] >= 1


def test_senone_count_mismatch_is_refused(setup):
    from millionhours import models
    data, exp, graph_dir, _, out = setup
    _, blob = models.load_final(str(exp / "teacher/final.pt"))
    n = blob["num_senones"] + 5
    model = models.build_model({"layers": 1, "cells": 8, "bidirectional": True}, n)
    bad_model = out / "bad" / "final.pt"
    os.makedirs(bad_model.parent)
    models.save_final(str(bad_model), model, num_senones=n, cmvn=blob["cmvn"], lfr=blob["lfr"])
    (bad_model.parent / "senone_counts").write_text(" [ " + "1 " * n + "]\n")
    proc = run_module("millionhours.bin.decode", *TINY, "--acwt", 0.1, bad_model, nnet_graph(exp),
                      data / "fbank/dev", out / "bad_decode", check=False)
    assert proc.returncode != 0
    assert f"has {n} senones but the graph" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
