"""Stage 1: 64-dim log-mel fbank for one Kaldi data dir, sharded, plus global CMVN statistics.

Usage: python -m millionhours.bin.compute_features [--params params.yaml] [--profile P] [--nj N] SRC OUT

Mirrors Kaldi's steps/make_fbank.sh + compute-cmvn-stats: OUT becomes a copy of the data dir SRC
with feats.scp (kaldiio ark/scp, one archive per job in OUT/data/), utt2num_frames, frame_shift
and cmvn.mat (global stats, Kaldi matrix 2 x (D+1)). Finished shards are kept when a run is
interrupted and rerun.
"""
import argparse
import multiprocessing as mp
import os
import shutil
import sys
from concurrent.futures import ProcessPoolExecutor, as_completed

import kaldiio
import numpy as np
from tqdm import tqdm

from millionhours import config, datadir, features
from millionhours.fileio import atomic_open

COPY_FILES = ("wav.scp", "segments", "utt2spk", "spk2utt", "text", "utt2dur", "spk2gender",
              "utt2lang", "reco2file_and_channel", "stm", "glm", "phones.ctm", "utt2corruption", "spk2info")


def shard_ranges(n: int, nj: int) -> list[tuple[int, int]]:
    """Contiguous, near-equal utterance ranges, like Kaldi's split_data.sh."""
    bounds = np.linspace(0, n, nj + 1).round().astype(int)
    return [(a, b) for a, b in zip(bounds[:-1], bounds[1:]) if b > a]


def _shard_paths(out: str, j: int) -> tuple[str, str, str, str]:
    base = os.path.join(out, "data", f"raw_fbank.{j}")
    return base + ".ark", base + ".scp", base + ".stats.npy", base + ".utt2num_frames"


def _compute_shard(job) -> int:
    """Worker: fbank for utts[a:b] into one ark; publishes scp and stats only when complete."""
    src, out, j, utts, cfg = job
    ark, scp, stats_path, frames_path = _shard_paths(out, j)
    if all(os.path.exists(p) for p in (scp, stats_path, frames_path)):
        return len(utts)                       # finished in an earlier run
    dd = datadir.load_datadir(src)
    stats, frames = np.zeros((2, cfg.num_bins + 1)), {}
    tmp_scp = scp + ".tmp"
    with kaldiio.WriteHelper(f"ark,scp:{ark},{tmp_scp}") as writer:
        for utt in utts:
            feats = features.fbank(datadir.utterance_audio(dd, utt), cfg)
            if len(feats) == 0:
                raise datadir.DataDirError(f"utterance '{utt}' in {src}: shorter than one frame; remove it")
            writer(utt, feats)
            stats += features.cmvn_stats(feats)
            frames[utt] = str(len(feats))
    datadir.write_table(frames_path, frames, sort=False)
    np.save(stats_path + ".tmp.npy", stats)
    os.replace(stats_path + ".tmp.npy", stats_path)
    os.replace(tmp_scp, scp)
    return len(utts)


def compute_features(src: str, out: str, cfg: features.FbankConfig, nj: int = 2, desc: str | None = None) -> dict:
    """Features for data dir `src` into data dir `out`; returns {utts, frames}."""
    dd = datadir.validate(src)
    if os.path.abspath(src) == os.path.abspath(out):
        raise SystemExit(f"{out}: output must differ from the source data dir")
    os.makedirs(os.path.join(out, "data"), exist_ok=True)
    for name in COPY_FILES:
        if os.path.isfile(os.path.join(src, name)):
            with atomic_open(os.path.join(out, name)) as f, open(os.path.join(src, name)) as g:
                shutil.copyfileobj(g, f)
    utts = dd.utts
    _reset_stale_shards(out, dd, nj, cfg)
    if os.path.exists(os.path.join(out, "feats.scp")):
        os.remove(os.path.join(out, "feats.scp"))       # the dir is complete again only at the end
    jobs = [(src, out, j + 1, utts[a:b], cfg) for j, (a, b) in enumerate(shard_ranges(len(utts), nj))]
    # a process pool that notices a dead worker (multiprocessing.Pool was seen to hang in
    # terminate() after a worker's error on a loaded machine)
    with ProcessPoolExecutor(min(nj, len(jobs)), mp_context=mp.get_context("fork")) as pool, \
            tqdm(total=len(utts), desc=desc or f"fbank {os.path.basename(out)}", unit="utt",
                 disable=not sys.stderr.isatty()) as bar:
        try:
            for fut in as_completed([pool.submit(_compute_shard, job) for job in jobs]):
                bar.update(fut.result())
        except BaseException:
            pool.shutdown(wait=True, cancel_futures=True)   # no new shards after an error
            raise
    return _merge_shards(out, len(jobs), cfg)


def _audio_fingerprint(dd: datadir.DataDir) -> list:
    """wav.scp/segments entries plus size and mtime of plain audio files: a changed file shows."""
    out = []
    for rec, entry in dd.wav.items():
        st = os.stat(entry) if not entry.endswith("|") and os.path.isfile(entry) else None
        out.append((rec, entry, st.st_size if st else None, st.st_mtime_ns if st else None))
    return out + sorted(dd.segments.items())


def _reset_stale_shards(out: str, dd: datadir.DataDir, nj: int, cfg: features.FbankConfig) -> None:
    """Shards are reused only to resume an interrupted run over the same audio, jobs and config;
    a finished output (feats.scp present) is always recomputed, as Kaldi's make_fbank.sh does."""
    plan = config.params_hash({"utts": dd.utts, "audio": _audio_fingerprint(dd), "nj": nj, "cfg": cfg.__dict__})
    plan_path = os.path.join(out, "data", "plan")
    if (not os.path.exists(os.path.join(out, "feats.scp")) and os.path.isfile(plan_path)
            and open(plan_path).read().strip() == plan):
        return
    shutil.rmtree(os.path.join(out, "data"))
    os.makedirs(os.path.join(out, "data"))
    with atomic_open(plan_path) as f:
        f.write(plan + "\n")


def _merge_shards(out: str, num_jobs: int, cfg: features.FbankConfig) -> dict:
    """feats.scp (sorted), utt2num_frames and the global cmvn stats from the finished shards."""
    lines, stats, frames = [], np.zeros((2, cfg.num_bins + 1)), {}
    for j in range(1, num_jobs + 1):
        _, scp, stats_path, frames_path = _shard_paths(out, j)
        with open(scp) as f:
            lines += f.readlines()
        stats += np.load(stats_path)
        frames.update(datadir.read_table(frames_path))
    lines.sort(key=lambda l: l.split(maxsplit=1)[0].encode())
    _write_lines(out, "feats.scp", lines)
    datadir.write_table(os.path.join(out, "utt2num_frames"), frames)
    with atomic_open(os.path.join(out, "frame_shift")) as f:
        f.write(f"{cfg.frame_shift_ms / 1000:g}\n")
    with atomic_open(os.path.join(out, "cmvn.mat"), "wb") as f:
        kaldiio.save_mat(f, stats)
    return {"utts": len(frames), "frames": sum(int(n) for n in frames.values())}


def _write_lines(out: str, name: str, lines: list[str]) -> None:
    with atomic_open(os.path.join(out, name)) as f:
        f.writelines(lines)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    config.add_common_args(ap)
    ap.add_argument("--nj", type=int, default=None, help="parallel jobs (default: params features.nj)")
    ap.add_argument("src", help="Kaldi data dir with wav.scp")
    ap.add_argument("out", help="output data dir (gets feats.scp, cmvn.mat)")
    args = ap.parse_args(argv)
    params = config.load_params(args.params, args.profile)
    cfg = features.FbankConfig.from_params(params["features"])
    try:
        info = compute_features(args.src, args.out, cfg, config.num_jobs(args.nj or params["features"]["nj"]))
    except datadir.DataDirError as e:
        sys.exit(f"compute_features: {e}")
    print(f"compute_features: {args.out}: {info['utts']} utterances, {info['frames']} frames")


if __name__ == "__main__":
    main()
