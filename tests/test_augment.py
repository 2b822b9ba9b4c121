"""Training augmentation: tempo perturbation and frame shifts with targets, SpecAugment masks,
deterministic batches."""
import numpy as np
import pytest

from millionhours import data, features
from millionhours.augment import (AugmentConfig, augment_piece, frame_shift, spec_mask, tempo, vtlp,
                                  vtlp_source_bins)
from test_train import synth  # noqa: F401  (the module fixture)


def lfr_piece(n10=60, dim=4, seed=0):
    """An LFR piece whose 10 ms frames are a ramp (frame i holds i), targets = LFR index."""
    f = np.repeat(np.arange(n10, dtype=np.float32)[:, None], dim, 1)
    x = features.lfr(f, 3, 3)
    return x, np.arange(len(x))


@pytest.mark.parametrize("r", [0.8, 0.9, 1.1, 1.25])
def test_tempo_resamples_frames_and_moves_targets_with_them(r):
    x, y = lfr_piece()
    xo, yo = tempo(x, y, r, 3, 4)
    assert len(xo) == -(-round(60 / r) // 3)                     # frames / r, restacked
    ramp = xo.reshape(-1, 4)[:, 0]
    n = round(60 / r)
    np.testing.assert_allclose(ramp[:n], np.clip((np.arange(n) + 0.5) * r - 0.5, 0, 59), atol=1e-4)
    assert (np.diff(yo) >= 0).all() and yo[0] == 0 and yo[-1] == y[-1]
    centres = ramp.reshape(-1, 3)[:, 1]                          # each new frame's centre came
    assert (np.abs(centres - (3 * yo + 1)) <= 2.0 + 1e-4).all()  # from the old frame it copies


@pytest.mark.parametrize("r", [0.85, 1.15])
def test_tempo_moves_each_window_target_with_its_own_10ms_frame(r):
    """Window targets (T, 3) label every 10 ms frame: after tempo each output frame's label is the
    label of the input frame it was read from (here the label is the frame index itself)."""
    f = np.repeat(np.arange(60, dtype=np.float32)[:, None], 4, 1)
    x, yw = features.lfr(f, 3, 3), features.lfr_window_targets(np.arange(60), 3, 3)
    xo, yo = tempo(x, yw, r, 3, 4)
    assert yo.shape == (len(xo), 3)
    np.testing.assert_allclose(xo.reshape(-1, 4)[:, 0], yo.reshape(-1), atol=0.5 + 1e-4)


@pytest.mark.parametrize("s", [0, 1, 2])
def test_frame_shift_restacks_the_10ms_frames_later_with_their_labels(s):
    """Shift s = the features of the same audio stacked from frame s on (lfr of f[s:], end padded
    like lfr); window labels move with their frames; row labels are those of the new centres' rows."""
    f = np.arange(61 * 4, dtype=np.float32).reshape(61, 4)
    x = features.lfr(f, 3, 3)                                   # 21 rows, the last padded
    n10 = 3 * len(x)
    yw = features.lfr_window_targets(np.arange(61), 3, 3)
    xo, yo = frame_shift(x, yw, s, 3, 4)
    padded = x.reshape(n10, 4)
    np.testing.assert_array_equal(xo, features.lfr(np.concatenate([padded[s:], padded[-1:].repeat(s, 0)]), 3, 3))
    assert yo.shape == yw.shape
    np.testing.assert_array_equal(yo.reshape(-1), np.minimum(np.arange(n10) + s, 60))
    _, yr = frame_shift(x, np.arange(len(x)), s, 3, 4)
    np.testing.assert_array_equal(yr, np.minimum((3 * np.arange(len(x)) + 1 + s) // 3, len(x) - 1))
    with pytest.raises(ValueError, match="shift needs lfr_stack == lfr_skip"):
        augment_piece(x, yw, AugmentConfig(shift=True), np.random.default_rng(0), 3, 2)


def test_tempo_one_is_identity_and_masks_are_consistent():
    x, y = lfr_piece(61)
    xo, yo = tempo(x, y, 1.0, 3, 4)
    np.testing.assert_array_equal(xo, x)
    np.testing.assert_array_equal(yo, y)
    rng = np.random.default_rng(3)
    x = rng.standard_normal((50, 3 * 64)).astype(np.float32)
    cfg = AugmentConfig(freq_masks=2, freq_width=10, time_masks=3, time_width=6, time_ratio=0.2)
    m = spec_mask(x.copy(), cfg, np.random.default_rng(5), 64) == 0
    sub = m.reshape(50, 3, 64)
    assert (sub == sub[:, :1]).all()                             # same bins in every sub-frame
    full_rows = m.all(1)
    assert 0 < full_rows.sum() <= 0.2 * 50                       # time spans within the budget
    bands = m[~full_rows].reshape(-1, 3, 64)[:, 0]
    assert (bands == bands[:1]).all() and 0 < bands[0].sum() <= 20


def test_vtlp_moves_a_spectral_peak_by_the_warp_factor():
    """A peak at mel bin b moves to the bin whose centre frequency is a times b's; a = 1 is exact."""
    np.testing.assert_allclose(vtlp_source_bins(1.0, 64), np.arange(64), atol=1e-9)
    centres = 700.0 * np.expm1((1127 * np.log1p(20 / 700) + np.arange(1, 65) *
                                (1127 * np.log1p(8000 / 700) - 1127 * np.log1p(20 / 700)) / 65) / 1127)
    x = np.zeros((4, 3 * 64), np.float32)
    x.reshape(4, 3, 64)[:, :, 30] = 1.0                         # a formant at bin 30, every sub-frame
    for a in (0.9, 1.1):
        y = vtlp(x, a, 64).reshape(4, 3, 64)
        assert (y == y[:1, :1]).all()                            # same warp for every sub-frame
        peak = int(y[0, 0].argmax())
        assert abs(centres[peak] - a * centres[30]) < (centres[31] - centres[29])   # within a bin
        assert (peak > 30) == (a > 1)
    np.testing.assert_array_equal(vtlp(x, 1.0, 64), x)


def test_config_from_params_checks_keys_and_ranges():
    assert AugmentConfig.from_params(None) is None
    assert AugmentConfig.from_params({"tempo": [1.0, 1.0]}) is None          # asks for nothing
    assert AugmentConfig.from_params({"tempo": [0.9, 1.1]}).tempo == (0.9, 1.1)
    assert AugmentConfig.from_params({"shift": False}) is None
    assert AugmentConfig.from_params({"shift": True}).shift
    with pytest.raises(ValueError, match="unknown keys"):
        AugmentConfig.from_params({"freq_mask": 2})
    with pytest.raises(ValueError, match="tempo"):
        AugmentConfig.from_params({"tempo": [1.2, 0.9]})
    assert AugmentConfig.from_params({"warp": [0.9, 1.1]}).warp == (0.9, 1.1)
    with pytest.raises(ValueError, match="warp"):
        AugmentConfig.from_params({"warp": [0.3, 1.1]})


def test_augmented_batches_are_a_function_of_seed_epoch_and_position(synth):  # noqa: F811
    _, (ftr, ttr), _ = synth
    u = data.open_uttset(ftr, ttr, data.load_cmvn(ftr))
    cfg = AugmentConfig(tempo=(0.9, 1.1), freq_masks=2, time_masks=2)
    kw = dict(seed=3, batch_frames=400, batch_size=8, chunk_frames=40)
    a = data.PlannedBatches(u, augment=cfg, **kw)
    b = data.PlannedBatches(u, augment=cfg, **kw)
    plain = data.PlannedBatches(u, **kw)
    for i in range(3):
        x, y = a[(0, i)], b[(0, i)]
        assert x.utts == y.utts and x.feats.equal(y.feats) and x.targets.equal(y.targets)
        assert x.utts == plain[(0, i)].utts and not x.feats.equal(plain[(0, i)].feats)
        assert (x.targets != data.IGNORE).sum(1).equal(x.lengths)   # a target per frame
    assert not a[(1, 0)].feats.equal(a[(0, 0)].feats)
    dev = data.PlannedBatches(u, augment=cfg, train=False, seed=3, batch_frames=4000, batch_size=64)
    ref = data.PlannedBatches(u, train=False, seed=3, batch_frames=4000, batch_size=64)
    assert dev[(0, 0)].feats.equal(ref[(0, 0)].feats)               # evaluation is never augmented


def test_augment_piece_keeps_fixed_width_chunks_exact():
    x, y = lfr_piece(120)
    cfg = AugmentConfig(tempo=(0.8, 0.8))
    xo, yo = augment_piece(x, y, cfg, np.random.default_rng(0), 3, 3, exact_length=True)
    np.testing.assert_array_equal(xo, x)
    xo, yo = augment_piece(x, y, cfg, np.random.default_rng(0), 3, 3)
    assert len(xo) == len(yo) == 50


def test_teacher_trains_with_augmentation_from_params(synth, tmp_path):  # noqa: F811
    """train_am reads teacher.data.augment; the augmented run learns and differs from the plain one."""
    import yaml
    from test_train import TINY, train_args, write_params
    from millionhours.bin import train_am
    out = {}
    for name, aug in (("plain", {}), ("aug", {"tempo": [0.9, 1.1], "freq_masks": 1, "time_masks": 1})):
        cfg = {**TINY, "data": {**TINY["data"], "augment": aug}, "train": {**TINY["train"], "epochs": 2}}
        params = write_params(tmp_path / name, cfg)
        train_am.main(train_args(params, synth, tmp_path / name / "exp", tmp_path / name / "res"))
        out[name] = yaml.safe_load(open(tmp_path / name / "res" / "teacher.json"))
    assert out["aug"]["params"]["teacher"]["data"]["augment"]["tempo"] == [0.9, 1.1]
    hist = out["aug"]["history"]
    assert hist[-1]["dev_ce"] < hist[0]["dev_ce"] and hist[-1]["dev_frame_acc"] > 0.3
    assert out["aug"]["history"][0]["train_ce"] != out["plain"]["history"][0]["train_ce"]
