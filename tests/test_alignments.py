"""Tests for millionhours.alignments and stage 3 (bin/import_alignments): a real Kaldi model and
small exp dirs built with kaldi-hmm-gmm, checked against hand-computed targets and bad inputs."""
import gzip
import json
import os
import shutil
from pathlib import Path

import kaldiio
import numpy as np
import pytest

from millionhours.toolchain import khg  # native packages first (import-order rule)
from millionhours import alignments as A
from millionhours import features
from millionhours import kaldi_io as kio
from millionhours.bin import import_alignments as cli
from conftest import ROOT, run_module

EXTERNAL_MDL = Path(__file__).parent / "data" / "kaldi_external" / "final.mdl"
PARAMS = os.path.join(ROOT, "params.yaml")

# 5-state silence (phone 1) and 3-state phones 2..5, Kaldi's standard topologies.
_PHONE = "<State> {s} <PdfClass> {s} <Transition> {s} 0.75 <Transition> {n} 0.25 </State>\n"
_SIL = ("<State> 0 <PdfClass> 0 <Transition> 0 0.25 <Transition> 1 0.25 <Transition> 2 0.25 <Transition> 3 0.25 </State>\n"
        + "".join(f"<State> {s} <PdfClass> {s} <Transition> 1 0.25 <Transition> 2 0.25 <Transition> 3 0.25 "
                  f"<Transition> 4 0.25 </State>\n" for s in (1, 2, 3))
        + "<State> 4 <PdfClass> 4 <Transition> 4 0.7 <Transition> 5 0.3 </State>\n<State> 5 </State>\n")


def topo_text(nonsil_phones) -> str:
    nonsil = "".join(_PHONE.format(s=s, n=s + 1) for s in range(3)) + "<State> 3 </State>\n"
    return ("<Topology>\n<TopologyEntry>\n<ForPhones>\n" + " ".join(map(str, nonsil_phones))
            + "\n</ForPhones>\n" + nonsil + "</TopologyEntry>\n<TopologyEntry>\n<ForPhones>\n1\n"
            "</ForPhones>\n" + _SIL + "</TopologyEntry>\n</Topology>\n")


PHONES = ["SIL", "a", "b", "c", "d"]          # ids 1..5


def khg_mono(nonsil=(2, 3, 4, 5)):
    """(khg ContextDependency, khg TransitionModel) of a monophone system, as Kaldi builds it."""
    topo = khg.HmmTopology()
    topo.read(topo_text(nonsil))
    ctx = khg.monophone_context_dependency(
        phones=topo.phones, phone2num_pdf_classes=topo.get_phone_to_num_pdf_classes())
    return ctx, khg.TransitionModel(ctx_dep=ctx, hmm_topo=topo)


def random_walk(tm: kio.TransitionModel, phones, rng) -> tuple[np.ndarray, list, list]:
    """A valid alignment for a phone sequence: a random path through each phone's HMM.

    Returns (transition-ids, phone per frame, pdf per frame), the last two taken from the walk
    itself (tuple + arc type), independently of the library's lookup tables.
    """
    by_phone_state = {}
    for s, (ph, hs, fwd, slp) in enumerate(tm.tuples.tolist(), start=1):
        by_phone_state.setdefault((ph, hs), []).append((s, fwd, slp))
    tids, ph_out, pdf_out = [], [], []
    for ph in phones:
        entry, hs = tm.topology.for_phone(ph), 0
        choices = {h: by_phone_state[(ph, h)][rng.integers(len(by_phone_state[(ph, h)]))]
                   for h in range(len(entry) - 1)}
        while hs != len(entry) - 1:
            s, fwd, slp = choices[hs]
            k = int(rng.integers(len(entry[hs].transitions)))
            dst = entry[hs].transitions[k][0]
            tids.append(int(tm.state2id()[s]) + k)
            ph_out.append(ph)
            pdf_out.append(slp if dst == hs else fwd)
            hs = dst
    return np.array(tids, np.int32), ph_out, pdf_out


# ----------------------------------------------------------------------------- exp dir builder

# phone 2 ('a'), 3 frames in each of its first two states, 2 in the last. Its transition-ids
# follow silence's 18 (4+4+4+4+2 arcs): state k has self-loop 19+2k and forward 20+2k, and the
# monophone tree gives 'a' the pdfs 5, 6, 7 (after silence's 0..4).
HAND_UTT = "spk1-hand"
HAND_TIDS = [19, 19, 20, 21, 21, 22, 23, 24]
HAND_PDFS_10MS = [5, 5, 5, 6, 6, 6, 7, 7]
HAND_LFR = [5, 6, 7]                   # window centres (frames 1, 4, 7) of frames 0-2, 3-5, 6-7


def make_exp(root: Path, n_utts=6, seed=0, nj=2, frame_offsets=None, extra_ali=None):
    """A Kaldi exp dir (binary final.mdl, tree, ali.{1..nj}.gz, num_jobs, phones.txt) and a
    feature data dir (64-dim random fbank ark/scp, utt2num_frames) that match it.

    ``frame_offsets``: utt -> feature frames minus alignment length; ``extra_ali``: utt ->
    alignment written without features.
    """
    rng = np.random.default_rng(seed)
    ctx, ktm = khg_mono()
    tm, _ = kio.from_khg(ktm)
    am = kio.AmDiagGmm([kio.DiagGmm.from_means_vars(np.ones(1), rng.normal(size=(1, 4)),
                                                     np.ones((1, 4))) for _ in range(ctx.num_pdfs)])
    exp, data = root / "exp", root / "data"
    exp.mkdir(parents=True)
    data.mkdir(parents=True)
    kio.write_model(exp / "final.mdl", tm, am, binary=True)
    ctx.write(binary=True, filename=str(exp / "tree"))
    (exp / "phones.txt").write_text("<eps> 0\n" + "".join(f"{p} {i}\n" for i, p in enumerate(PHONES, 1)))
    alis = {HAND_UTT: np.array(HAND_TIDS, np.int32)}
    for i in range(n_utts):
        seq = [1] + list(rng.integers(2, 6, size=rng.integers(2, 6))) + [1]
        alis[f"spk1-u{i:02d}"] = random_walk(tm, seq, rng)[0]
    offsets = frame_offsets or {}
    with kaldiio.WriteHelper(f"ark,scp:{data / 'feats.ark'},{data / 'feats.scp'}") as w:
        for utt in sorted(alis):
            w(utt, rng.normal(size=(len(alis[utt]) + offsets.get(utt, 0), 64)).astype(np.float32))
    (data / "utt2num_frames").write_text(
        "".join(f"{u} {len(alis[u]) + offsets.get(u, 0)}\n" for u in sorted(alis)))
    alis.update(extra_ali or {})
    utts = sorted(alis)
    for j in range(nj):
        with gzip.open(exp / f"ali.{j + 1}.gz", "wb") as f:
            kaldiio.save_ark(f, {u: alis[u] for u in utts[j::nj]})
    (exp / "num_jobs").write_text(f"{nj}\n")
    return exp, data, tm, alis


def run_cli(exp, data, out, *extra):
    """The stage in-process; returns (exit message or None, info dict or None)."""
    try:
        cli.main(["--params", PARAMS, *map(str, extra), str(exp), str(data), str(out)])
    except SystemExit as e:
        return str(e.code), None
    return None, json.loads((Path(out) / "info.json").read_text())


def assert_clean_failure(msg, out: Path, *needles):
    assert msg is not None and msg.startswith("import_alignments: error: ")
    assert "\n" not in msg, msg
    for n in needles:
        assert n in msg, msg
    assert not out.exists()
    assert not list(out.parent.glob(out.name + ".*")), list(out.parent.iterdir())


# ----------------------------------------------------------------------------- a real Kaldi model


def test_external_model_maps_synthetic_alignments():
    if not EXTERNAL_MDL.exists():
        pytest.skip(f"{EXTERNAL_MDL} not present")
    tm, am = kio.read_model(EXTERNAL_MDL)
    rng = np.random.default_rng(1)
    phones = [int(p) for p in rng.choice(tm.phones(), size=30)]
    tids, ph, pdf = random_walk(tm, phones, rng)
    A.check_tids(tm, tids, "synthetic", "u1")
    np.testing.assert_array_equal(A.ali_to_pdf(tm, tids), pdf)
    np.testing.assert_array_equal(A.ali_to_phones(tm, tids), ph)
    # and Kaldi's own C++ tables (kaldi-hmm-gmm) agree
    ktm, _ = kio.to_khg(tm, am)
    np.testing.assert_array_equal(A.ali_to_pdf(tm, tids),
                                  np.asarray(ktm.transition_id_to_pdf_array())[tids])
    assert A.ali_to_phones(tm, tids).tolist() == [ktm.transition_id_to_phone(int(t)) for t in tids]
    assert A.ali_to_pdf(tm, tids).max() < am.num_pdfs
    for bad in (0, tm.num_transition_ids() + 1):
        with pytest.raises(A.AlignmentError, match="utterance 'u1' has transition-id"):
            A.check_tids(tm, np.array([1, bad], np.int32), "synthetic", "u1")


# ----------------------------------------------------------------------------- the stage


def test_import_targets_lengths_and_priors(tmp_path):
    exp, data, tm, alis = make_exp(tmp_path)
    out = tmp_path / "targets"
    msg, info = run_cli(exp, data, out)
    assert msg is None, msg
    ctx, ktm = khg_mono()   # the hand computation, checked against kaldi-hmm-gmm
    assert [ktm.transition_id_to_pdf(t) for t in HAND_TIDS] == HAND_PDFS_10MS
    targets = dict(kaldiio.load_scp(str(out / "targets.scp")).items())
    phones = dict(kaldiio.load_scp(str(out / "phone_targets.scp")).items())
    assert list(targets) == sorted(alis) == list(phones)
    assert targets[HAND_UTT].dtype == np.int32 and targets[HAND_UTT].tolist() == HAND_LFR
    assert phones[HAND_UTT].tolist() == [2, 2, 2]
    windows = dict(kaldiio.load_scp(str(out / "window_targets.scp")).items())
    for utt, ali in alis.items():
        assert len(targets[utt]) == features.num_lfr_frames(len(ali))
        assert targets[utt].tolist() == tm.tid2pdf()[ali][features.lfr_frame_index(len(ali))].tolist()
        win = windows[utt].reshape(-1, 3)                 # every 10 ms pdf of each row, centre first
        np.testing.assert_array_equal(win, features.lfr_window_targets(tm.tid2pdf()[ali]))
    counts = A.read_counts(out / "senone_counts")
    assert counts.shape == (ctx.num_pdfs,) and counts.sum() == sum(map(len, targets.values()))
    assert (out / "senone_counts").read_text().startswith(" [ ")
    assert (out / "num_senones").read_text() == f"{ctx.num_pdfs}\n"
    assert info["frames"] == {"10ms": sum(map(len, alis.values())), "lfr": int(counts.sum())}
    assert info["utterances"]["imported"] == len(alis)
    assert info["senones"] == {"total": ctx.num_pdfs, "seen": int((counts > 0).sum())}
    for name in ("final.mdl", "tree", "phones.txt"):
        assert (out / name).read_bytes() == (exp / name).read_bytes()
    assert not list(tmp_path.glob("targets.*"))


def test_text_model_gives_identical_targets(tmp_path, monkeypatch):
    exp, data, tm, _ = make_exp(tmp_path / "bin")
    text_exp = tmp_path / "text" / "exp"
    shutil.copytree(exp, text_exp)
    kio.write_model(text_exp / "final.mdl", *kio.read_model(exp / "final.mdl"), binary=False)
    assert (text_exp / "final.mdl").read_bytes()[:2] != b"\0B"
    for d, e in ((tmp_path / "bin", exp), (tmp_path / "text", text_exp)):
        monkeypatch.chdir(d)          # relative OUT_DIR: the scp paths are then comparable
        msg, info = run_cli(e, data, "targets")
        assert msg is None, msg
    for name in ("targets.ark", "targets.scp", "phone_targets.ark", "phone_targets.scp", "senone_counts"):
        assert (tmp_path / "bin" / "targets" / name).read_bytes() == \
               (tmp_path / "text" / "targets" / name).read_bytes(), name
    assert info["model"]["binary"] is False


def test_length_tolerance_pads_trims_and_drops(tmp_path, capsys):
    offsets = {"spk1-u00": 3, "spk1-u01": -3, "spk1-u02": 4, "spk1-u03": -4, "spk1-u04": 1}
    exp, data, tm, alis = make_exp(tmp_path, frame_offsets=offsets)
    out = tmp_path / "out"
    msg, info = run_cli(exp, data, out, "--results", tmp_path / "res" / "import.json")
    assert msg is None, msg
    u = info["utterances"]
    assert (u["padded"], u["trimmed"]) == (2, 1)
    assert u["dropped"]["length_mismatch"] == 2 and u["imported"] == len(alis) - 2
    assert u["features_without_alignment"] == 0        # the dropped two were aligned
    targets = dict(kaldiio.load_scp(str(out / "targets.scp")).items())
    assert "spk1-u02" not in targets and "spk1-u03" not in targets
    for utt in ("spk1-u00", "spk1-u01", "spk1-u04"):
        t = len(alis[utt]) + offsets[utt]
        assert len(targets[utt]) == features.num_lfr_frames(t)
    padded = np.concatenate([alis["spk1-u00"], np.repeat(alis["spk1-u00"][-1], 3)])
    assert targets["spk1-u00"].tolist() == features.lfr_targets(tm.tid2pdf()[padded]).tolist()
    err = capsys.readouterr().err
    assert "dropped 2 utterance(s), alignment length differs" in err and "spk1-u02" in err
    assert json.loads((tmp_path / "res" / "import.json").read_text()) == info


def test_alignments_without_features_are_dropped(tmp_path, capsys):
    extra = {"spk9-x1": np.array(HAND_TIDS, np.int32), "spk9-x2": np.array(HAND_TIDS, np.int32)}
    exp, data, _, alis = make_exp(tmp_path, extra_ali=extra)
    msg, info = run_cli(exp, data, tmp_path / "out")
    assert msg is None, msg
    assert info["utterances"]["dropped"]["no_features"] == 2
    assert info["utterances"]["imported"] == len(alis) - 2
    err = capsys.readouterr().err
    assert "dropped 2 utterance(s), aligned in" in err and "spk9-x1, spk9-x2" in err


def test_no_usable_utterance_is_an_error(tmp_path):
    exp, _, _, _ = make_exp(tmp_path)
    other = tmp_path / "other"
    other.mkdir()
    with kaldiio.WriteHelper(f"ark,scp:{other / 'feats.ark'},{other / 'feats.scp'}") as w:
        w("zz-1", np.zeros((10, 64), np.float32))
    msg, _ = run_cli(exp, other, tmp_path / "out")    # no utt2num_frames: lengths from the ark
    assert_clean_failure(msg, tmp_path / "out", "no aligned utterance is usable", "feats.scp")


@pytest.mark.parametrize("case,needles", [
    ("no_mdl", ["final.mdl: missing"]),
    ("no_tree", ["tree: missing"]),
    ("no_ali", ["ali.*.gz: no alignment archives"]),
    ("short_nj", ["ali.3.gz: missing but num_jobs is 3"]),
    ("bad_mdl", ["final.mdl: not a Kaldi model (expected token <TransitionModel>"]),
    ("bad_tree", ["tree: not a Kaldi tree"]),
    ("bad_tree_pdfs", ["tree: has 20 pdfs but final.mdl has 17"]),
    ("bad_tid", ["ali.1.gz: utterance 'spk1-hand' has transition-id 999", "outside 1..42"]),
    ("truncated_ali", ["ali.2.gz: cannot read"]),
    ("garbage_ali", ["ali.1.gz: cannot read as a Kaldi int32-vector archive"]),
    ("feats_as_ali", ["ali.1.gz: utterance 'u' is not an integer vector"]),
    ("no_feats", ["feats.scp: missing"]),
    ("bad_phones", ["phones.txt: lacks phone id 5"]),
])
def test_bad_inputs_give_one_line_errors(tmp_path, case, needles):
    exp, data, tm, alis = make_exp(tmp_path)
    if case == "no_mdl":
        (exp / "final.mdl").unlink()
    elif case == "no_tree":
        (exp / "tree").unlink()
    elif case == "no_ali":
        for p in exp.glob("ali.*"):
            p.unlink()
        (exp / "num_jobs").unlink()
    elif case == "short_nj":
        (exp / "num_jobs").write_text("3\n")
    elif case == "bad_mdl":
        (exp / "final.mdl").write_text("this is not a model\n")
    elif case == "bad_tree":
        (exp / "tree").write_bytes(b"\0Bgarbage ")
    elif case == "bad_tree_pdfs":
        khg_mono((2, 3, 4, 5, 6))[0].write(binary=True, filename=str(exp / "tree"))
    elif case == "bad_tid":
        alis[HAND_UTT] = np.array([19, 999], np.int32)
        with gzip.open(exp / "ali.1.gz", "wb") as f:
            kaldiio.save_ark(f, {u: alis[u] for u in sorted(alis)[0::2]})
    elif case == "truncated_ali":
        raw = (exp / "ali.2.gz").read_bytes()
        (exp / "ali.2.gz").write_bytes(raw[: len(raw) // 2])
    elif case == "garbage_ali":
        with gzip.open(exp / "ali.1.gz", "wb") as f:
            f.write(b"spk1-hand not an archive\n")
    elif case == "feats_as_ali":
        with gzip.open(exp / "ali.1.gz", "wb") as f:
            kaldiio.save_ark(f, {"u": np.zeros((3, 64), np.float32)})
    elif case == "no_feats":
        (data / "feats.scp").unlink()
    elif case == "bad_phones":
        (exp / "phones.txt").write_text("<eps> 0\nSIL 1\na 2\nb 3\nc 4\n")
    out = tmp_path / "out"
    msg, _ = run_cli(exp, data, out)
    assert_clean_failure(msg, out, *needles)


def test_failure_keeps_previous_output(tmp_path):
    exp, data, _, _ = make_exp(tmp_path)
    out = tmp_path / "out"
    assert run_cli(exp, data, out)[0] is None
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    (exp / "tree").unlink()
    msg, _ = run_cli(exp, data, out)
    assert msg and "tree: missing" in msg
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before


def test_interrupted_write_leaves_no_output(tmp_path, monkeypatch):
    exp, data, _, _ = make_exp(tmp_path)
    out = tmp_path / "out"

    def boom(*a, **k):
        raise KeyboardInterrupt
    monkeypatch.setattr(cli, "write_json", boom)      # dies after the arks are written
    with pytest.raises(KeyboardInterrupt):
        run_cli(exp, data, out)
    assert not out.exists() and not list(tmp_path.glob("out.*"))


# ----------------------------------------------------------------------------- library pieces


def test_fit_length():
    ali = np.array([5, 6, 7], np.int32)
    assert A.fit_length(ali, 3, 3).tolist() == [5, 6, 7]
    assert A.fit_length(ali, 5, 3).tolist() == [5, 6, 7, 7, 7]
    assert A.fit_length(ali, 1, 3).tolist() == [5]
    assert A.fit_length(ali, 7, 3) is None
    assert A.fit_length(np.zeros(0, np.int32), 2, 3) is None


def test_counts_round_trip_and_priors(tmp_path):
    counts = A.senone_counts([np.array([0, 2, 2]), np.array([2, 4])], 6)
    assert counts.tolist() == [1, 0, 3, 0, 1, 0]
    with open(tmp_path / "c", "w") as f:
        A.write_counts(f, counts)
    assert (tmp_path / "c").read_text() == " [ 1 0 3 0 1 0 ]\n"
    assert A.read_counts(tmp_path / "c").tolist() == counts.tolist()
    lp = A.log_priors(counts)
    assert np.isfinite(lp).all() and np.isclose(np.exp(lp).sum(), 1.0)


def test_usage_and_help():
    proc = run_module("millionhours.bin.import_alignments", check=False)
    assert proc.returncode == 2 and "usage:" in proc.stderr
    proc = run_module("millionhours.bin.import_alignments", "--help")
    assert "exp_dir" in proc.stdout and "ali-to-pdf" in proc.stdout
