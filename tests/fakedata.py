"""Synthetic speech-like training sets in the stage formats, shared by the training tests."""
import kaldiio
import numpy as np

from millionhours import features


def fake_utterance(rng, protos, max_frames: int = 450):
    """Speech-like fbank: segments of 3-15 frames around one of S prototypes ("phones")."""
    n = int(rng.integers(60, max_frames))
    labels = np.repeat(rng.integers(0, len(protos), n), rng.integers(3, 16, n))[:n]
    feats = protos[labels] + rng.standard_normal((n, protos.shape[1])) * 3.0
    return feats.astype(np.float32), labels


def write_set(root, name, n_utts, seed, protos, num_senones, prefix, max_frames=450):
    """A stage-1 feats dir (feats.scp, utt2num_frames, cmvn.mat) and a stage-3-like targets dir
    (LFR targets.scp, num_senones) of fake utterances `prefix-NNNN`; returns (feats dir,
    targets dir, {utt: LFR targets})."""
    rng = np.random.default_rng(seed)
    fdir, tdir = root / "fbank" / name, root / "targets" / name
    fdir.mkdir(parents=True)
    tdir.mkdir(parents=True)
    utts = {f"{prefix}-{i:04d}": fake_utterance(rng, protos, max_frames) for i in range(n_utts)}
    with kaldiio.WriteHelper(f"ark,scp:{fdir}/feats.ark,{fdir}/feats.scp") as w:
        for u, (m, _) in utts.items():
            w(u, m)
    (fdir / "utt2num_frames").write_text("".join(f"{u} {len(m)}\n" for u, (m, _) in utts.items()))
    kaldiio.save_mat(str(fdir / "cmvn.mat"),
                     features.cmvn_stats(np.concatenate([m for m, _ in utts.values()])))
    lfr = {u: features.lfr_targets(lab) for u, (_, lab) in utts.items()}
    with kaldiio.WriteHelper(f"ark,scp:{tdir}/targets.ark,{tdir}/targets.scp") as w:
        for u, t in lfr.items():
            w(u, t.astype(np.int32))
    with kaldiio.WriteHelper(f"ark,scp:{tdir}/window_targets.ark,{tdir}/window_targets.scp") as w:
        for u, (_, lab) in utts.items():                 # as stage 3 writes them: flattened
            w(u, features.lfr_window_targets(lab).reshape(-1).astype(np.int32))
    (tdir / "num_senones").write_text(f"{num_senones}\n")
    return str(fdir), str(tdir), lfr
