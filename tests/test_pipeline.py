"""The tiny profile end to end (`dvc repro` in its DVC workspace): GMM exp dir, targets, teacher,
top-k labels, students, decodes, tables."""
import json
import os
import shutil
import subprocess
import sys

import kaldiio
import numpy as np
import pytest
import yaml

from conftest import ROOT, TINY_VARIANTS, run_module
from millionhours import alignments, config, datadir, features, kaldi_io, topk

pytestmark = pytest.mark.usefixtures("in_tiny_ws")


def test_gmm_exp_dir_is_a_kaldi_exp_dir(tiny_exp):
    data, exp, results, _ = tiny_exp
    tri = exp / "tri"
    for f in ("tree", "final.mdl", "num_jobs", "phones.txt"):
        assert (tri / f).is_file(), f
    tm, am = kaldi_io.read_model(str(tri / "final.mdl"))
    tree = kaldi_io.read_tree(str(tri / "tree"))
    assert tm.num_pdfs() == tree.num_pdfs == len(am.pdfs)
    frames = {u: int(n) for u, n in datadir.read_table(str(data / "fbank" / "train_labeled" / "utt2num_frames")).items()}
    n = 0
    for path in alignments.find_ali_files(str(tri)):
        for utt, ali in alignments.read_alignments(path):
            assert len(ali) == frames[utt]
            assert ali.min() >= 1 and ali.max() <= tm.num_transition_ids()
            n += 1
    assert n >= 0.8 * len(frames)
    report = json.loads((results / "alignment.json").read_text())
    assert report["tri"]["leaves"] == tm.num_pdfs()


def test_targets_follow_the_lfr_rule_and_priors_count_frames(tiny_exp):
    data, exp, results, _ = tiny_exp
    tgt = exp / "targets" / "train_labeled"
    num_senones = int((tgt / "num_senones").read_text())
    tm, _ = kaldi_io.read_model(str(exp / "tri" / "final.mdl"))
    assert num_senones == tm.num_pdfs()
    frames = {u: int(n) for u, n in datadir.read_table(str(data / "fbank" / "train_labeled" / "utt2num_frames")).items()}
    alis = {u: a for p in alignments.find_ali_files(str(exp / "tri")) for u, a in alignments.read_alignments(p)}
    total = 0
    for utt, t in kaldiio.load_scp(str(tgt / "targets.scp")).items():
        assert len(t) == features.num_lfr_frames(frames[utt])
        np.testing.assert_array_equal(t, features.lfr_targets(tm.tid2pdf()[alis[utt]]))
        total += len(t)
    counts = alignments.read_counts(str(tgt / "senone_counts"))
    assert counts.sum() == total and len(counts) == num_senones
    assert json.loads((results / "import.json").read_text())["frames"]["lfr"] == total


def test_import_is_identical_with_a_text_final_mdl(tiny_exp, tmp_path):
    data, exp, _, _ = tiny_exp
    copy = tmp_path / "tri_text"
    shutil.copytree(exp / "tri", copy)
    tm, am = kaldi_io.read_model(str(copy / "final.mdl"))
    kaldi_io.write_model(str(copy / "final.mdl"), tm, am, binary=False)
    assert (copy / "final.mdl").read_bytes()[:2] != b"\0B"
    out = tmp_path / "targets_text"
    run_module("millionhours.bin.import_alignments", "--params", os.path.join(ROOT, "params.yaml"),
               "--profile", "tiny", copy, data / "fbank" / "train_labeled", out)
    ref = exp / "targets" / "train_labeled"
    for f in ("targets.ark", "phone_targets.ark", "senone_counts", "num_senones"):
        assert (out / f).read_bytes() == (ref / f).read_bytes(), f


def test_teacher_trained_and_reported(tiny_exp):
    _, exp, results, _ = tiny_exp
    assert (exp / "teacher" / "final.pt").is_file()
    rep = json.loads((results / "teacher.json").read_text())
    assert rep["epochs"] >= 1 and 0 <= rep["dev_frame_acc"] <= 1 and rep["dev_ce"] > 0
    assert (results / "teacher_metrics.tsv").is_file() and (results / "teacher_curve.png").is_file()


def test_labels_store_covers_the_unlabeled_set(tiny_exp):
    data, exp, results, _ = tiny_exp
    from millionhours.fileio import file_sha256
    store = topk.TopKStore(str(exp / "labels"), expect_k=20,
                           expect_teacher_hash=file_sha256(str(exp / "teacher" / "final.pt")))
    frames = {u: int(n) for u, n in datadir.read_table(str(data / "fbank" / "train_unlabeled" / "utt2num_frames")).items()}
    assert set(store.utts) == set(frames)
    for utt in list(frames)[:5]:
        ids, lp = store.get(utt)
        assert ids.shape == (features.num_lfr_frames(frames[utt]), 20)
        assert np.all(np.diff(lp.astype(np.float32), axis=1) <= 0)
    rep = json.loads((results / "labels.json").read_text())
    assert rep["bytes_per_frame"] == 80 and rep["frames"] == store.total_frames
    assert rep["oracle"]["frames"] > 0


def test_dense_store_holds_every_posterior_and_the_topk_is_its_head(tiny_exp, tmp_path):
    """labels.dense: stage 5's second store keeps all posteriors (T4's full reference); its top
    20 are the top-k store's, and a student refuses a store of the other kind."""
    data, exp, results, _ = tiny_exp
    dense, top = topk.TopKStore(str(exp / "labels_dense")), topk.TopKStore(str(exp / "labels"))
    assert dense.is_dense and dense.k == dense.num_senones == top.num_senones
    assert dense.teacher_hash == top.teacher_hash and set(dense.utts) == set(top.utts)
    for utt in list(top.utts)[:5]:
        t_ids, t_lp = top.get(utt)
        np.testing.assert_array_equal(dense.get(utt, k=20)[1], t_lp)   # same values, descending
        full = dense.get(utt)[1]                                          # senone order
        # every kept id carries its dense value (ties in float16 may order ids differently)
        np.testing.assert_array_equal(np.take_along_axis(full, t_ids.astype(np.int64), 1), t_lp)
        post = np.exp(full.astype(np.float64)).sum(1)
        np.testing.assert_allclose(post, 1.0, atol=0.01)   # a whole distribution per frame
    rep = json.loads((results / "labels_dense.json").read_text())
    assert rep["dense"] and rep["bytes_per_frame"] == 2 * dense.num_senones
    st = json.loads((results / "student_dense.json").read_text())
    assert st["machine"]["store"]["dense"] and st["machine"]["k_used"] == dense.num_senones
    proc = run_module("millionhours.bin.train_student", "--params", os.path.join(ROOT, "params.yaml"),
                      "--profile", "tiny", "--variant", "dense", data / "fbank" / "train_labeled",
                      exp / "targets" / "train_labeled", data / "fbank" / "train_unlabeled",
                      exp / "labels", data / "fbank" / "dev", exp / "targets" / "dev",
                      tmp_path / "student", check=False)
    assert proc.returncode != 0 and "student.store is 'dense'" in proc.stderr
    assert not (tmp_path / "student" / "final.pt").exists()


def test_relabeling_skips_finished_shards(tiny_exp, tmp_path):
    data, exp, _, _ = tiny_exp
    store = tmp_path / "labels"
    shutil.copytree(exp / "labels", store)
    shards = sorted(p for p in store.iterdir() if p.name.startswith("shard-"))
    assert len(shards) >= 2
    shutil.rmtree(shards[0])
    res = tmp_path / "labels.json"
    run_module("millionhours.bin.label", "--params", os.path.join(ROOT, "params.yaml"), "--profile", "tiny",
               "--results", res, exp / "teacher" / "final.pt", data / "fbank" / "train_unlabeled", store)
    rep = json.loads(res.read_text())
    assert rep["shards_labeled_now"] == 1
    a, b = topk.TopKStore(str(store)), topk.TopKStore(str(exp / "labels"))
    for utt in b.utts:
        np.testing.assert_array_equal(a.get(utt)[0], b.get(utt)[0])
        np.testing.assert_array_equal(a.get(utt)[1], b.get(utt)[1])


def test_students_and_decoding_through_the_recipe(tiny_exp):
    """Stages 6-7 of recipes/run.sh (in the tiny_exp fixture): every student variant trains (a
    streaming LSTM with the causal CMN), both graphs are built (the GMM's 10 ms one, the networks'
    30 ms one), and every model is decoded on dev (acoustic scale swept) and on every test set with
    dev's scale, each into its results JSON; stage 8 writes the tables and the run's timing."""
    _, work, results, _ = tiny_exp
    variants = TINY_VARIANTS
    for v in variants[:4]:
        rep = json.loads((results / f"student_{v}.json").read_text())
        assert rep["params"]["student"]["schedule"] == v
        blob = __import__("torch").load(work / f"student_{v}" / "final.pt", weights_only=False)
        assert blob["cmn"] == "sliding" and not blob["model_config"]["bidirectional"]
    sweeps = config.load_params(profile="tiny")["decode"]["acwt_sweep"]
    for model in ("gmm", "teacher") + tuple(f"student_{v}" for v in variants):
        dev = json.loads((results / f"{model}__dev.json").read_text())
        assert dev["scored"] and 0 <= dev["wer"] and len(dev["acwt_sweep"]) > 1
        own = sweeps["student" if model.startswith("student") else
                     "gmm" if model == "gmm" else "nnet"]      # each model's own list of scales
        lfr = config.load_params(profile="tiny")["lfr_tree"]["use"] and model != "gmm"
        fsf = 3 if lfr else 1                                  # per 10 ms: x3 on the 30 ms graph
        assert dev["graph_fsf"] == fsf
        assert set(dev["acwt_sweep"]) == {f"{round(a * fsf, 6):g}" for a in own}
        for s in config.load_params(profile="tiny")["decode"]["test_sets"]:
            rep = json.loads((results / f"{model}__{s}.json").read_text())
            assert rep["acwt"] == dev["acwt"] and rep["ref_words"] > 0
            assert (work / "decode" / model / s / "per_utt").is_file()
    assert json.loads((results / "lm.json").read_text())["eval"]["dev"]["ppl"] > 0
    dist = json.loads((results / "student_gtc_w2.json").read_text())["distributed"]
    assert dist["world"] == 2 and dist["algorithm"] == "gtc" and dist["ratio_to_dense"] < 0.05
    tables = (results / "tables.md").read_text()          # stage 8
    assert "| gtc_w2 | 2 | gtc |" in tables and "R1 (WERR > 0" in tables
    scale = json.loads((results / "scale_model.json").read_text())     # stage 8's projection
    assert scale["projection"] and scale["fired_fraction_source"] == "measured: student_gtc_w2"
    assert scale["setup"]["fired_fraction"] == pytest.approx(dist["fired_fraction_mean"])
    assert (results / "t3_gtc_bytes_wer.png").is_file() and (results / "scale_model.png").is_file()
    assert not (work / "student_bmuf_w4").exists()        # run_variants limits stages 6 and 7
    timing = json.loads((results / "timing.json").read_text())
    stages = {"corpus", "features", "gmm", "targets", "teacher", "labels", "graph", "tables"}
    assert stages | {f"student@{v}" for v in variants} <= set(timing["stages"])
    assert timing["total_s"] == pytest.approx(sum(timing["stages"].values()), abs=0.5)


def test_dvc_workspace_is_up_to_date_after_repro(tiny_exp):
    """The fixture's `dvc repro` left a complete, consistent pipeline: every stage's deps, params
    and outs are recorded in dvc.lock, so `dvc status` finds nothing to rerun; the workspace's
    params.yaml carries only the tiny profile's run_variants."""
    ws = tiny_exp[1].parent
    proc = subprocess.run([sys.executable, "-m", "dvc", "status"], cwd=ws, capture_output=True,
                          text=True)
    assert proc.returncode == 0 and "up to date" in proc.stdout, proc.stdout + proc.stderr
    lock = yaml.safe_load((ws / "dvc.lock").read_text())["stages"]
    assert {f"student@{v}" for v in TINY_VARIANTS} <= set(lock)
    assert not any(k.startswith("student@") and k[8:] not in TINY_VARIANTS for k in lock)
