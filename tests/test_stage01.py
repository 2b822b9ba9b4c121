"""Stages 0-1 end to end on the tiny profile: the corpus contract and its features."""
import os
import subprocess
import sys

import kaldiio
import numpy as np
import soundfile

from conftest import ROOT, run_module
from millionhours import datadir

SETS = ("train_labeled", "train_unlabeled", "dev", "test_clean", "test_noisy", "test_unseen_voice",
        "train_labeled_clean")
SENTENCE_SETS = ("train_labeled", "train_unlabeled", "dev", "test_clean", "test_unseen_voice")


def table(path):
    return datadir.read_table(str(path))


def texts(corpus, name):
    return set(table(corpus / ("oracle" if name == "train_unlabeled" else "") / name / "text").values())


def test_summary_is_printed(tiny_data):
    _, out = tiny_data
    for s in SETS:
        assert s in out
    assert "OOV" in out and "voices:" in out


def test_every_set_is_a_valid_kaldi_data_dir_with_features(tiny_data):
    data, _ = tiny_data
    for s in SETS:
        dd = datadir.validate(str(data / "corpus" / s))
        fb = data / "fbank" / s
        datadir.validate(str(fb))
        feats = kaldiio.load_scp(str(fb / "feats.scp"))
        assert list(feats) == dd.utts
        dur = {u: float(d) for u, d in table(fb / "utt2dur").items()}
        for utt, n in table(fb / "utt2num_frames").items():
            assert abs(int(n) - dur[utt] * 100) <= 1        # snip_edges=False: 100 frames per second
        assert kaldiio.load_mat(str(fb / "cmvn.mat")).shape == (2, 65)


def test_unlabeled_transcripts_are_stored_apart(tiny_data):
    corpus = tiny_data[0] / "corpus"
    assert not (corpus / "train_unlabeled" / "text").exists()
    assert not (corpus / "train_unlabeled" / "phones.ctm").exists()
    oracle = table(corpus / "oracle" / "train_unlabeled" / "text")
    assert list(oracle) == list(table(corpus / "train_unlabeled" / "utt2spk"))


def test_sets_are_disjoint_by_sentence_and_speaker(tiny_data):
    corpus = tiny_data[0] / "corpus"
    sents = {s: texts(corpus, s) for s in SENTENCE_SETS}
    names = list(sents)
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            assert not sents[a] & sents[b], f"{a} and {b} share sentences"
    spk = {s: set(table(corpus / s / "spk2utt")) for s in SETS}
    train = spk["train_labeled"] | spk["train_unlabeled"]
    assert spk["train_labeled"] & spk["train_unlabeled"]           # the train sets share the pool
    evals = ("dev", "test_clean", "test_unseen_voice")
    for i, a in enumerate(evals):
        assert not train & spk[a]
        assert all(not spk[a] & spk[b] for b in evals[i + 1:])
    lm = set((corpus / "local" / "lm_text.txt").read_text().splitlines())
    assert not lm & (sents["dev"] | sents["test_clean"] | sents["test_unseen_voice"])   # never dev/test
    assert sents["train_labeled"] <= lm


def _voices(corpus, name):
    return {dict(kv.split("=") for kv in v.split())["voice"]
            for v in table(corpus / name / "spk2info").values()}


def test_unseen_voice_is_heard_nowhere_else(tiny_data):
    """test_unseen_voice is spoken by corpus.test_only_voices alone, which no other set uses
    (nor the babble of the corrupted audio: its talkers come from the other voices)."""
    from millionhours import config
    corpus = tiny_data[0] / "corpus"
    held = set(config.load_params(profile="tiny")["corpus"]["test_only_voices"])
    assert held and _voices(corpus, "test_unseen_voice") == held
    for s in SETS:
        if s != "test_unseen_voice":
            assert not _voices(corpus, s) & held, s
    assert all(v == "clean" for v in table(corpus / "test_unseen_voice" / "utt2corruption").values())


def test_noisy_test_pairs_with_clean_test(tiny_data):
    corpus = tiny_data[0] / "corpus"
    clean, noisy = corpus / "test_clean", corpus / "test_noisy"
    for f in ("text", "utt2spk", "utt2dur", "phones.ctm"):
        assert (clean / f).read_text() == (noisy / f).read_text(), f
    cw, nw = table(clean / "wav.scp"), table(noisy / "wav.scp")
    assert list(cw) == list(nw)
    corr = table(noisy / "utt2corruption")
    assert all(v != "clean" for v in corr.values())
    assert all(v == "clean" for v in table(clean / "utt2corruption").values())
    kinds = {dict(kv.split("=") for kv in v.split())["noise"] for v in corr.values()}
    assert len(kinds) >= 2
    snrs = [float(dict(kv.split("=") for kv in v.split())["snr_db"]) for v in corr.values()]
    assert 0 <= min(snrs) and max(snrs) <= 20
    for utt in list(cw)[:5]:
        a, _ = soundfile.read(cw[utt])
        b, _ = soundfile.read(nw[utt])
        assert len(a) == len(b) and not np.array_equal(a, b)


def test_clean_copy_of_the_labeled_set(tiny_data):
    """train_labeled_clean: the same utterances before corruption (for GMM alignment)."""
    corpus = tiny_data[0] / "corpus"
    lab, cln = corpus / "train_labeled", corpus / "train_labeled_clean"
    for f in ("text", "utt2spk", "utt2dur", "phones.ctm"):
        assert (lab / f).read_text() == (cln / f).read_text(), f
    assert all(v == "clean" for v in table(cln / "utt2corruption").values())
    corr, lw, cw = table(lab / "utt2corruption"), table(lab / "wav.scp"), table(cln / "wav.scp")
    assert any(v != "clean" for v in corr.values())
    for utt, c in corr.items():
        if c == "clean":
            assert cw[utt] == lw[utt]
        else:
            a, _ = soundfile.read(lw[utt])
            b, _ = soundfile.read(cw[utt])
            assert cw[utt] != lw[utt] and len(a) == len(b) and not np.array_equal(a, b)


def test_a_share_of_training_is_corrupted(tiny_data):
    corpus = tiny_data[0] / "corpus"
    for s in ("train_labeled", "train_unlabeled"):
        corr = list(table(corpus / s / "utt2corruption").values())
        share = np.mean([v != "clean" for v in corr])
        assert 0.15 < share < 0.7, (s, share)          # param 0.4, a few dozen utterances


def test_phone_timings_cover_each_utterance(tiny_data):
    corpus = tiny_data[0] / "corpus"
    dur = {u: float(d) for u, d in table(corpus / "train_labeled" / "utt2dur").items()}
    segs = {}
    for line in (corpus / "train_labeled" / "phones.ctm").read_text().splitlines():
        utt, _, start, length, phone = line.split()
        segs.setdefault(utt, []).append((float(start), float(length), phone))
    assert set(segs) == set(dur)
    lexicon_phones = {p for line in (corpus / "local" / "lexicon.txt").read_text().splitlines()
                      for p in line.split()[1:]}
    for utt, ss in segs.items():
        assert ss[0][0] == 0 and ss[0][2] == "sil" and ss[-1][2] == "sil"
        for (s0, l0, _), (s1, _, _) in zip(ss, ss[1:]):
            assert abs(s0 + l0 - s1) < 0.0015
        assert abs(ss[-1][0] + ss[-1][1] - dur[utt]) < 0.0015
        assert {p for _, _, p in ss} - {"sil"} <= lexicon_phones


def test_corpus_is_deterministic(tiny_data, tmp_path):
    """Same params and seed, byte-identical audio and tables."""
    data, _ = tiny_data
    run_module("local.make_corpus", "--params", os.path.join(ROOT, "params.yaml"), "--profile", "tiny",
               "--out", tmp_path / "corpus")
    for s in SETS:
        for f in ("text", "utt2spk", "utt2dur", "utt2corruption", "spk2info", "phones.ctm"):
            a, b = data / "corpus" / s / f, tmp_path / "corpus" / s / f
            assert a.exists() == b.exists()
            if a.exists():
                assert a.read_text() == b.read_text(), (s, f)
        wa, wb = table(data / "corpus" / s / "wav.scp"), table(tmp_path / "corpus" / s / "wav.scp")
        assert list(wa) == list(wb)
        for utt in wa:
            assert open(wa[utt], "rb").read() == open(wb[utt], "rb").read(), utt


def test_complete_corpus_is_not_rebuilt(tiny_data):
    data, _ = tiny_data
    proc = run_module("local.make_corpus", "--params", os.path.join(ROOT, "params.yaml"), "--profile", "tiny",
                      "--out", data / "corpus")
    assert "complete for these params" in proc.stdout


def test_interrupted_corpus_resumes_to_the_same_result(tiny_data, tmp_path):
    """SIGKILL after the first finished chunk; the rerun reuses it and ends identical."""
    import signal
    import time
    out = tmp_path / "corpus"
    cmd = [sys.executable, "-m", "local.make_corpus", "--params", os.path.join(ROOT, "params.yaml"),
           "--profile", "tiny", "--out", str(out)]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    cache = tmp_path / "corpus.partial" / "cache"
    deadline = time.time() + 120
    while not (cache.is_dir() and any(cache.iterdir())) and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not out.exists()                              # nothing published yet
    rerun = run_module("local.make_corpus", *cmd[3:])
    assert "resuming" in rerun.stderr
    data, _ = tiny_data
    for s in SETS:
        assert (out / s / "text").exists() == (data / "corpus" / s / "text").exists()
        assert (out / s / "utt2dur").read_text() == (data / "corpus" / s / "utt2dur").read_text()
    assert not (tmp_path / "corpus.partial").exists()


def test_run_sh_usage_and_bad_option():
    ok = subprocess.run(["bash", "recipes/run.sh", "--help"], cwd=ROOT, capture_output=True, text=True)
    assert ok.returncode == 0 and "--stop-stage" in ok.stdout
    bad = subprocess.run(["bash", "recipes/run.sh", "--bogus"], cwd=ROOT, capture_output=True, text=True)
    assert bad.returncode != 0 and "unknown option '--bogus'" in bad.stderr
