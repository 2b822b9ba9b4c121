import numpy as np
import pytest

from millionhours import features


def test_fbank_shape_and_frame_count():
    x = np.random.default_rng(0).normal(0, 0.1, 16000).astype(np.float32)
    f = features.fbank(x)
    assert f.dtype == np.float32
    assert f.shape == (100, 64)                 # snip_edges=False: one frame per 10 ms
    assert np.isfinite(f).all()


def test_fbank_louder_signal_has_higher_log_energy():
    x = np.random.default_rng(0).normal(0, 0.01, 8000).astype(np.float32)
    assert (features.fbank(10 * x) - features.fbank(x)).mean() == pytest.approx(2 * np.log(10), abs=0.05)


def test_lfr_stacks_three_frames_and_keeps_every_third():
    x = np.arange(7 * 2, dtype=np.float32).reshape(7, 2)      # frames 0..6, dim 2
    y = features.lfr(x, stack=3, skip=3)
    assert y.shape == (3, 6)
    np.testing.assert_array_equal(y[0], np.concatenate([x[0], x[1], x[2]]))
    np.testing.assert_array_equal(y[1], np.concatenate([x[3], x[4], x[5]]))
    np.testing.assert_array_equal(y[2], np.concatenate([x[6], x[6], x[6]]))   # last frame repeats


@pytest.mark.parametrize("t", [1, 2, 3, 4, 5, 6, 299, 300, 301])
def test_lfr_lengths_and_targets_follow_the_same_rule(t):
    x = np.random.default_rng(t).normal(size=(t, 4)).astype(np.float32)
    labels = np.arange(t)
    y, lab = features.lfr(x), features.lfr_targets(labels)
    assert len(y) == len(lab) == features.num_lfr_frames(t) == -(-t // 3)
    # each LFR frame's label is the label of the centre frame of its stacked window
    for i, frame_label in enumerate(lab):
        assert frame_label == min(3 * i + 1, t - 1)
        assert frame_label in range(3 * i, min(3 * i + 3, t)) or frame_label == t - 1


@pytest.mark.parametrize("t", [1, 2, 3, 4, 7, 300])
def test_lfr_window_targets_hold_every_stacked_frame(t):
    labels = np.arange(t) * 10
    w = features.lfr_window_targets(labels)
    assert w.shape == (features.num_lfr_frames(t), 3)
    np.testing.assert_array_equal(w[:, 1], features.lfr_targets(labels))      # the centre column
    for i, row in enumerate(w):
        assert row.tolist() == [labels[min(j, t - 1)] for j in (3 * i, 3 * i + 1, 3 * i + 2)]


def test_lfr_paper_dims():
    assert features.lfr(np.zeros((30, 64), np.float32)).shape == (10, 192)


def test_cmvn_stats_and_apply_normalize_to_zero_mean_unit_variance():
    x = np.random.default_rng(1).normal(5, 3, (500, 8)).astype(np.float32)
    stats = features.cmvn_stats(x[:200]) + features.cmvn_stats(x[200:])    # stats add across shards
    assert stats.shape == (2, 9) and stats[0, -1] == 500
    y = features.apply_cmvn(x, stats)
    np.testing.assert_allclose(y.mean(0), 0, atol=1e-4)
    np.testing.assert_allclose(y.std(0), 1, atol=1e-3)
