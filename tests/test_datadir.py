"""Kaldi data dir handling and the real-data path (local/prepare_kaldi_data.py) on bad input."""
import os

import kaldiio
import numpy as np
import pytest
import soundfile

from conftest import ROOT, run_module
from millionhours import datadir


def make_dir(tmp_path, n=3, rate=16000, name="src"):
    """A small valid Kaldi data dir with real 16 kHz wavs."""
    d = tmp_path / name
    d.mkdir()
    rng = np.random.default_rng(0)
    utt2spk, wav, text = {}, {}, {}
    for i in range(n):
        spk = f"spk{i % 2}"
        utt = f"{spk}-utt{i}"
        path = tmp_path / f"{utt}.wav"
        soundfile.write(path, rng.normal(0, 0.1, rate // 2 + 100 * i).astype(np.float32), rate)
        utt2spk[utt], wav[utt], text[utt] = spk, str(path), "hello world"
    datadir.write_datadir(str(d), utt2spk, wav, text=text)
    return d


def prepare(src, out, *extra):
    return run_module("local.prepare_kaldi_data", "--params", os.path.join(ROOT, "params.yaml"),
                      "--nj", "2", *extra, src, out, check=False)


def one_line_error(proc, *needles):
    assert proc.returncode != 0
    lines = [l for l in proc.stderr.strip().splitlines() if l.strip()]
    assert len(lines) == 1, proc.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


def test_valid_dir_gets_features_matching_a_direct_computation(tmp_path):
    src = make_dir(tmp_path)
    out = tmp_path / "out"
    proc = prepare(src, out)
    assert proc.returncode == 0, proc.stderr
    feats = dict(kaldiio.load_scp(str(out / "feats.scp")))
    assert list(feats) == sorted(feats) and len(feats) == 3
    dd = datadir.load_datadir(str(src))
    from millionhours import features
    for utt in dd.utts:
        np.testing.assert_array_equal(feats[utt], features.fbank(datadir.utterance_audio(dd, utt)))
    stats = kaldiio.load_mat(str(out / "cmvn.mat"))
    assert stats.shape == (2, 65) and stats[0, -1] == sum(len(f) for f in feats.values())
    assert (out / "text").read_text() == (src / "text").read_text()
    datadir.validate(str(out))


def test_segments_cut_recordings(tmp_path):
    rec = tmp_path / "rec.wav"
    soundfile.write(rec, np.random.default_rng(0).normal(0, 0.1, 32000).astype(np.float32), 16000)
    d = tmp_path / "seg"
    datadir.write_datadir(str(d), {"a-1": "a", "a-2": "a"}, {"rec1": str(rec)}, text={"a-1": "x y", "a-2": "y"},
                          extra={"segments": {"a-1": "rec1 0.0 0.5", "a-2": "rec1 1.0 2.0"}})
    dd = datadir.validate(str(d))
    assert len(datadir.utterance_audio(dd, "a-1")) == 8000
    assert len(datadir.utterance_audio(dd, "a-2")) == 16000


def test_unsorted_ids(tmp_path):
    src = make_dir(tmp_path)
    lines = (src / "utt2spk").read_text().splitlines()
    (src / "utt2spk").write_text("\n".join(reversed(lines)) + "\n")
    line = one_line_error(prepare(src, tmp_path / "out"), "utt2spk", "not sorted", "sort")
    assert "Traceback" not in line
    assert not (tmp_path / "out" / "feats.scp").exists()


def test_duplicate_ids(tmp_path):
    src = make_dir(tmp_path)
    first = (src / "text").read_text().splitlines()[0]
    (src / "text").write_text(first + "\n" + (src / "text").read_text())
    one_line_error(prepare(src, tmp_path / "out"), "text", "duplicate key")


def test_inconsistent_ids(tmp_path):
    src = make_dir(tmp_path)
    (src / "text").write_text("".join(l for l in (src / "text").read_text().splitlines(True)[:2]))
    one_line_error(prepare(src, tmp_path / "out"), "text", "spk1-utt1", "is missing")


def test_speaker_not_prefix_of_utterance(tmp_path):
    d = tmp_path / "bad"
    datadir.write_datadir(str(d), {"a": "z", "b": "y"}, {"a": "x.wav", "b": "y.wav"})
    with pytest.raises(datadir.DataDirError, match="speaker order"):
        datadir.validate(str(d))


def test_spk2utt_mismatch(tmp_path):
    src = make_dir(tmp_path)
    (src / "spk2utt").write_text("spk0 spk0-utt0\n")
    one_line_error(prepare(src, tmp_path / "out"), "spk2utt", "does not match")


def test_missing_wav(tmp_path):
    src = make_dir(tmp_path)
    os.remove(tmp_path / "spk1-utt1.wav")
    line = one_line_error(prepare(src, tmp_path / "out"), "spk1-utt1", "cannot read audio")
    assert "wav.scp" in line
    assert not (tmp_path / "out" / "feats.scp").exists()


def test_unreadable_wav(tmp_path):
    src = make_dir(tmp_path)
    (tmp_path / "spk0-utt0.wav").write_bytes(b"RIFF not really a wav")
    one_line_error(prepare(src, tmp_path / "out"), "spk0-utt0", "cannot read audio")


def test_wrong_sample_rate(tmp_path):
    src = make_dir(tmp_path, rate=8000)
    one_line_error(prepare(src, tmp_path / "out"), "8000 Hz", "resample")


def test_pipe_entries_are_read(tmp_path):
    src = make_dir(tmp_path)
    wav = datadir.read_table(str(src / "wav.scp"))
    datadir.write_table(str(src / "wav.scp"), {u: f"cat {p} |" for u, p in wav.items()})
    assert prepare(src, tmp_path / "out").returncode == 0


def test_empty_transcript(tmp_path):
    src = make_dir(tmp_path)
    (src / "text").write_text("spk0-utt0 hello\nspk0-utt2 \nspk1-utt1 world\n")
    one_line_error(prepare(src, tmp_path / "out"), "spk0-utt2", "empty transcript")


def test_word_missing_from_lexicon(tmp_path):
    src = make_dir(tmp_path)
    lex = tmp_path / "lexicon.txt"
    lex.write_text("hello hh ah l ow\n")
    one_line_error(prepare(src, tmp_path / "out", "--lexicon", lex), "'world'", "lexicon")


def test_missing_text_is_fine_unless_needed(tmp_path):
    src = make_dir(tmp_path)
    os.remove(src / "text")
    assert prepare(src, tmp_path / "out").returncode == 0
    one_line_error(prepare(src, tmp_path / "out2", "--need-text"), "text", "missing")


def test_feature_shards_resume_only_an_interrupted_run(tmp_path):
    src = make_dir(tmp_path, n=4)
    out = tmp_path / "out"
    assert prepare(src, out).returncode == 0
    arks = sorted((out / "data").glob("raw_fbank.*.ark"))
    assert len(arks) == 2
    first = {p: p.stat().st_mtime_ns for p in arks}
    # a finished output is recomputed on rerun
    assert prepare(src, out).returncode == 0
    assert all(p.stat().st_mtime_ns != first[p] for p in arks)
    # an interrupted one (index of shard 2 and feats.scp missing) resumes: shard 1 is kept
    kept = {p: p.stat().st_mtime_ns for p in arks}
    os.remove(out / "feats.scp")
    os.remove(out / "data" / "raw_fbank.2.scp")
    assert prepare(src, out).returncode == 0
    assert arks[0].stat().st_mtime_ns == kept[arks[0]] and arks[1].stat().st_mtime_ns != kept[arks[1]]
    assert len(kaldiio.load_scp(str(out / "feats.scp"))) == 4


def test_combine_data_prefixes_copies_and_sums_stats(tmp_path):
    """Kaldi's combine_data.sh with --utt-prefix: a set and its prefixed copy side by side."""
    from fakedata import write_set
    from millionhours import alignments
    from millionhours.bin import combine_data

    protos = np.random.default_rng(0).standard_normal((4, 64)) * 4
    fdir, tdir, lfr = write_set(tmp_path, "a", 3, 1, protos, 4, "u")
    (tmp_path / "targets" / "a" / "senone_counts").write_text(" [ 1 2 3 4 ]\n")
    out_f, out_t = str(tmp_path / "mc"), str(tmp_path / "mc_targets")
    combine_data.main([out_f, fdir, f"{fdir}=clean-"])
    combine_data.main([out_t, tdir, f"{tdir}=clean-"])
    feats = dict(kaldiio.load_scp(f"{out_f}/feats.scp"))
    assert sorted(feats) == sorted(list(lfr) + [f"clean-{u}" for u in lfr])
    assert np.array_equal(feats["clean-u-0001"], feats["u-0001"])
    targets = dict(kaldiio.load_scp(f"{out_t}/targets.scp"))
    assert np.array_equal(targets["clean-u-0002"], lfr["u-0002"])
    assert np.allclose(kaldiio.load_mat(f"{out_f}/cmvn.mat"), 2 * kaldiio.load_mat(f"{fdir}/cmvn.mat"))
    assert list(alignments.read_counts(f"{out_t}/senone_counts")) == [2, 4, 6, 8]
    assert (tmp_path / "mc_targets" / "num_senones").read_text() == "4\n"
    with pytest.raises(SystemExit, match="share a prefix"):
        combine_data.main([str(tmp_path / "bad"), fdir, fdir])
    assert not (tmp_path / "bad").exists()
