#!/usr/bin/env python
"""Acoustic-model throughput: the real training loop and labeling path against the bare model step.

Usage: python bench/bench_am.py [--profile default|paper|tiny] [--params params.yaml]
           [--role teacher] [--num-senones N] [--utts N] [--seconds S] [--out results.json]

Four measurements on one machine, in one process (labeling workers are its children):
  1. bare train step: forward + masked CE + backward + optimizer step on tensors already on the
     device, of the average batch shape the real plan produces; no data loading, no padding;
  2. real loop: `train.fit` over a synthetic data set in the project's formats, fed by the
     sources `bin/train_am.py` builds (same workers, prefetch, pinning); the first steps and the
     end-of-epoch dev evaluation / checkpoint are timed separately and left out of frames/s;
  3. bare labeling: forward + log_softmax + top-k on device tensors of the labeling batch shape;
  4. real labeling: `label.label_set` (spawned workers, sharded top-k store) over the same set;
     "steady" excludes worker start-up (process spawn, imports, model load), "end-to-end" not.
frames/s always counts valid 30 ms (LFR) frames. Goal: real >= 90% of bare for both.
Runs unchanged on CPU (fp32) and CUDA (bf16 autocast, like the loop).
"""
from __future__ import annotations

import argparse
import copy
import json
import math
import os
import platform
import sys
import tempfile
import time
from dataclasses import replace

import kaldiio
import numpy as np
import torch
import torch.nn.functional as F

from millionhours import config, data, features, label, models, train
from millionhours.bin import train_am

FBANK_DIM = 64
SENONES_BY_PROFILE = {"paper": 3000, "default": 1000, "tiny": 200}   # when params leave it null


# --------------------------------------------------------------------------- settings


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--profile", default=None, help="tiny | default | paper (default: params.yaml's)")
    ap.add_argument("--role", default="teacher", help="params section of the model (default: teacher)")
    ap.add_argument("--num-senones", type=int, default=None,
                    help="output size (default: the params' model.num_senones, else 3000 for "
                         "paper, 1000 for default, 200 for tiny)")
    ap.add_argument("--utts", type=int, default=None,
                    help="utterances in the synthetic set (default: enough for --seconds of bare "
                         "labeling, within --max-gb)")
    ap.add_argument("--seconds", type=float, default=15.0, help="timing window per measurement")
    ap.add_argument("--warmup", type=int, default=None,
                    help="first steps of each measurement left out (start-up, allocator, cuDNN; "
                         "default 3 on CPU, 10 on CUDA)")
    ap.add_argument("--threads", type=int, default=None,
                    help="torch threads (default: the role's `threads`, capped at the core count)")
    ap.add_argument("--max-gb", type=float, default=2.0, help="cap on the synthetic fbank data size")
    ap.add_argument("--tmpdir", default=None, help="where the synthetic set goes (default: $TMPDIR)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=None, help="write the results as JSON here")
    return ap.parse_args(argv)


def load_settings(args) -> dict:
    params = config.load_params(args.params, args.profile)
    s = train_am.settings(params, args.role)          # the stage's own reading of params[role]
    s["profile"] = params["profile"]
    s["labels"] = label.LabelConfig.from_params(params.get("labels", {}))
    s["labels"] = replace(s["labels"], nj=config.num_jobs(s["labels"].nj))   # as bin/label.py
    s["num_senones"] = (args.num_senones or s["model"].get("num_senones")
                        or SENONES_BY_PROFILE.get(params["profile"], 1000))
    s["threads"] = args.threads or min(s["threads"], os.cpu_count() or 1)
    s["seed"] = int(params.get("seed", 0))
    return s


def device_info(device: torch.device) -> dict:
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
    else:
        name = platform.processor() or platform.machine()
        try:
            with open("/proc/cpuinfo") as f:
                name = next(ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name"))
        except (OSError, StopIteration):
            pass
        name = f"{name} ({os.cpu_count()} cores)"
    return {"device": str(device), "name": name, "torch": torch.__version__,
            "cudnn": torch.backends.cudnn.version() if device.type == "cuda" else None,
            "python": platform.python_version()}


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# --------------------------------------------------------------------------- synthetic data


def draw_lengths(n: int, rng: np.random.Generator) -> np.ndarray:
    """Utterance lengths in 10 ms frames: log-normal around 4 s, clipped to 2..8 s (read speech)."""
    seconds = np.clip(rng.lognormal(math.log(4.0), 0.35, n), 2.0, 8.0)
    return np.round(seconds * 100).astype(int)


def lfr_lengths(lengths: np.ndarray, skip: int) -> dict[str, int]:
    return {utt_id(i): features.num_lfr_frames(int(t), skip) for i, t in enumerate(lengths)}


def utt_id(i: int) -> str:
    return f"spk{i % 97:03d}-utt{i:07d}"     # zero-padded: scp order == sorted order


def fbank_like(t: int, rng: np.random.Generator) -> np.ndarray:
    """(t, 64) float32 log-mel-like values: spectral tilt + a slow energy envelope + noise."""
    tilt = np.linspace(14.0, 8.0, FBANK_DIM, dtype=np.float32)
    envelope = np.repeat(rng.normal(0.0, 2.0, t // 20 + 1).astype(np.float32), 20)[:t]
    noise = rng.standard_normal((t, FBANK_DIM), dtype=np.float32)
    return tilt[None, :] + envelope[:, None] + noise


def senone_track(n: int, num_senones: int, rng: np.random.Generator) -> np.ndarray:
    """n int32 senone ids in runs of 1..8 LFR frames, like a forced alignment."""
    runs = rng.integers(1, 9, n)
    ids = rng.integers(0, num_senones, n)
    return np.repeat(ids, runs)[:n].astype("<i4")


def write_set(root: str, lengths: np.ndarray, num_senones: int, skip: int, seed: int) -> tuple[str, str]:
    """A stage-1 feats dir (feats.scp/ark, utt2num_frames, cmvn.mat) and a stage-3 targets dir
    (targets.scp/ark int32 at the LFR rate, num_senones), as the real stages write them."""
    feats_dir, targets_dir = os.path.join(root, "fbank"), os.path.join(root, "targets")
    os.makedirs(feats_dir)
    os.makedirs(targets_dir)
    rng = np.random.default_rng(seed)
    stats = np.zeros((2, FBANK_DIM + 1))
    with kaldiio.WriteHelper(f"ark,scp:{feats_dir}/feats.ark,{feats_dir}/feats.scp") as wf, \
            kaldiio.WriteHelper(f"ark,scp:{targets_dir}/targets.ark,{targets_dir}/targets.scp") as wt, \
            open(os.path.join(feats_dir, "utt2num_frames"), "w") as nf:
        for i, t in enumerate(lengths):
            x = fbank_like(int(t), rng)
            wf(utt_id(i), x)
            wt(utt_id(i), senone_track(features.num_lfr_frames(int(t), skip), num_senones, rng))
            nf.write(f"{utt_id(i)} {t}\n")
            stats[0, :-1] += x.sum(0, dtype=np.float64)
            stats[1, :-1] += np.square(x, dtype=np.float64).sum(0)
            stats[0, -1] += t
    kaldiio.save_mat(os.path.join(feats_dir, "cmvn.mat"), stats)
    with open(os.path.join(targets_dir, "num_senones"), "w") as f:
        f.write(f"{num_senones}\n")
    return feats_dir, targets_dir


# --------------------------------------------------------------------------- batch shapes


def plan_shape(lfr: dict[str, int], batch_frames: int, batch_size: int, chunk_frames, bucket_width: int,
               train_plan: bool, seed: int, uniform: bool = False) -> dict:
    """The average batch of the real plan: rows x padded frames, and its share of valid frames."""
    plan = data.plan_batches(lfr, seed, 0, chunk_frames if train_plan else None, batch_frames,
                             batch_size, bucket_width, shuffle=train_plan, uniform=uniform)
    rows = np.array([len(b) for b in plan])
    padded_t = np.array([max(e - a for _, a, e in b) for b in plan])
    valid = sum(e - a for b in plan for _, a, e in b)
    return {"rows": max(1, round(rows.mean())), "frames": max(1, round(padded_t.mean())),
            "valid_share": valid / float((rows * padded_t).sum()), "batches": len(plan)}


def train_shape(lfr: dict[str, int], d: dict, seed: int) -> dict:
    # the same defaults as train_am.make_sources
    return plan_shape(lfr, int(d.get("batch_frames", 4096)), int(d.get("batch_size", 64)),
                      d.get("chunk_frames"), int(d.get("bucket_width", 8)), True, seed,
                      bool(d.get("uniform_batches", False)))


def label_shape(lfr: dict[str, int], cfg: label.LabelConfig) -> dict:
    return plan_shape(lfr, cfg.batch_frames, 10 ** 6, None, 1, False, 0, cfg.uniform)   # as label._label_shard


# --------------------------------------------------------------------------- bare steps


def time_steps(step, device: torch.device, seconds: float, warmup: int) -> tuple[int, float]:
    """(steps, seconds) of back-to-back calls of `step` after `warmup` calls; synchronizes only
    at the ends, so the device queue stays full as in a real training run."""
    for _ in range(max(warmup, 1)):
        step()
    sync(device)
    t0 = time.perf_counter()
    step()
    sync(device)
    one = time.perf_counter() - t0
    n = max(3, math.ceil(seconds / max(one, 1e-6)))
    t0 = time.perf_counter()
    for _ in range(n):
        step()
    sync(device)
    return n, time.perf_counter() - t0


def bare_train(model, shape: dict, num_senones: int, s: dict, device, seconds, warmup) -> dict:
    """Forward + masked CE + backward + optimizer step; the loop's autocast, model and optimizer."""
    b, t = shape["rows"], shape["frames"]
    model = model.to(device).train()
    cfg = train.TrainConfig.from_params(s["train"], s["seed"])
    opt = train.make_optimizer(model, cfg)
    x = torch.randn(b, t, model.cfg.input_dim, device=device)
    y = torch.randint(0, num_senones, (b, t), device=device)
    amp = device.type == "cuda"

    def step():
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
            logits = model(x)            # no lengths: one fused nn.LSTM call, the bare kernel
        loss = F.cross_entropy(logits.float().reshape(-1, num_senones), y.reshape(-1),
                               ignore_index=data.IGNORE, reduction="sum") / (b * t)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    n, secs = time_steps(step, device, seconds, warmup)
    return {"rows": b, "frames": t, "steps": n, "seconds": secs,
            "frames_per_s": n * b * t / secs, "optimizer": cfg.optimizer}


def bare_label(model, shape: dict, k: int, device, seconds, warmup) -> dict:
    """Forward + log_softmax + top-k on device tensors (no reading, no store writes)."""
    b, t = shape["rows"], shape["frames"]
    model = model.to(device).eval()
    x = torch.randn(b, t, model.cfg.input_dim, device=device)
    amp = device.type == "cuda"

    def step():
        with torch.inference_mode(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
            logits = model(x)
            torch.topk(torch.log_softmax(logits.float(), -1), k, dim=-1)

    n, secs = time_steps(step, device, seconds, max(2, warmup // 2))
    return {"rows": b, "frames": t, "steps": n, "seconds": secs, "frames_per_s": n * b * t / secs}


# --------------------------------------------------------------------------- the real loop


class TimedSource:
    """A BatchSource stand-in for `fit`: yields the real source's batches (epoch after epoch, so
    a small set never runs dry) and stamps the time the loop asks for each next batch."""

    def __init__(self, source, warmup: int, seconds: float, device: torch.device):
        self.source, self.warmup, self.seconds, self.device = source, warmup, seconds, device
        self.stamps, self.frames = [], []      # stamps[i]: loop asked for batch i

    def num_batches(self, epoch: int) -> int:
        return self.source.num_batches(epoch)

    def batches(self, epoch: int, start: int = 0):
        inner = 0
        while True:
            for batch in self.source.batches(inner):
                if len(self.stamps) == self.warmup:
                    sync(self.device)           # the window starts with an empty device queue
                self.stamps.append(time.perf_counter())
                if self._done():
                    sync(self.device)           # ... and ends when the device has finished
                    self.stamps[-1] = time.perf_counter()
                    return                      # `fit` sees the end of its epoch
                self.frames.append(batch.num_frames)
                yield batch
            inner += 1

    def _done(self) -> bool:
        # fit does not wait for the device every step: the host may run a few steps ahead, which
        # the sync before the last stamp takes back
        timed = len(self.stamps) - 1 - self.warmup
        return timed >= 3 and self.stamps[-1] - self.stamps[self.warmup] >= self.seconds

    def window(self) -> dict:
        """Steps warmup.. : from asking for batch `warmup` to asking for the one after the last."""
        steps = len(self.stamps) - 1 - self.warmup
        secs = self.stamps[-1] - self.stamps[self.warmup]
        frames = sum(self.frames[self.warmup:])
        return {"steps": steps, "seconds": secs, "frames": frames, "frames_per_s": frames / secs,
                "valid_frames_per_step": frames / steps}


def real_train(sets: dict, s: dict, device, seconds: float, warmup: int, work: str) -> dict:
    """`train.fit` as stage 4 runs it (sources from train_am.make_sources), one timed 'epoch'."""
    cmvn = data.load_cmvn(sets["train"][0])
    tr = data.open_uttset(*sets["train"], cmvn, s["stack"], s["skip"])
    dv = data.open_uttset(*sets["dev"], cmvn, s["stack"], s["skip"])
    cfg = replace(train.TrainConfig.from_params(s["train"], s["seed"]), epochs=1)
    train.seed_everything(cfg.seed)
    model = models.build_model(s["model"], tr.num_senones, FBANK_DIM * s["stack"])
    train_src, dev_src = train_am.make_sources(tr, dv, s["data"], cfg.seed, device.type == "cuda")
    timed = TimedSource(train_src, warmup, seconds, device)
    t0 = time.perf_counter()
    summary = train.fit(model, timed, dev_src, cfg, os.path.join(work, "exp"), "bench",
                        results_dir=None, log=lambda msg: None, device=device)
    t_end = time.perf_counter()
    out = timed.window()
    out.update({
        "startup_s": timed.stamps[0] - t0,                           # to the first batch
        "warmup_s": timed.stamps[warmup] - timed.stamps[0],
        "after_epoch_s": t_end - timed.stamps[-1],                   # dev eval + checkpoints
        "fit_frames_per_s": summary["history"][0]["frames_per_s"],   # fit's own, with warm-up
        "num_workers": int(s["data"].get("num_workers", 1)),
    })
    return out


def save_teacher(model, s: dict, cmvn: np.ndarray, work: str) -> str:
    """A final.pt as stage 4 writes it (weights, config, CMVN, LFR rule): labeling's input."""
    path = os.path.join(work, "final.pt")
    models.save_final(path, model.cpu(), role="bench", num_senones=model.cfg.num_senones,
                      cmvn=cmvn, lfr={"stack": s["stack"], "skip": s["skip"]})
    return path


def real_label(model_path: str, feats_dir: str, s: dict, work: str) -> dict:
    """`label.label_set` into a fresh store, as stage 5 runs it (params `labels:`).

    Steady rate: frames over the slowest worker's own loop time (shards run side by side; it
    starts after spawn, imports and model load). End-to-end: frames over label_set's wall time.
    """
    cfg, shards = s["labels"], []
    t0 = time.perf_counter()
    res = label.label_set(model_path, feats_dir, os.path.join(work, "store"), cfg,
                          progress=shards.append)
    wall = time.perf_counter() - t0
    frames, slowest = res["frames_labeled_now"], max(r["seconds"] for r in shards)
    return {"frames": frames, "wall_s": wall, "shard_seconds": [round(r["seconds"], 2) for r in shards],
            "startup_s": wall - slowest, "frames_per_s_steady": frames / slowest,
            "frames_per_s_end_to_end": frames / wall, "nj": cfg.nj,
            "threads_per_worker": cfg.threads, "batch_frames": cfg.batch_frames, "k": cfg.k}


def real_label_one_worker(model_path: str, feats_dir: str, s: dict, want_frames: float, work: str) -> dict:
    """One labeling worker's code (label._label_shard) in this process on a prefix of the set:
    the path's own cost without process start-up or workers competing for the machine."""
    cmvn = data.load_cmvn(feats_dir)
    u = data.open_uttset(feats_dir, None, cmvn, s["stack"], s["skip"])
    utts, total = [], 0
    for utt in sorted(u.lengths, key=str.encode):
        if total >= want_frames:
            break
        utts.append(utt)
        total += u.lengths[utt]
    threads = torch.get_num_threads()
    job = (model_path, u, utts, 0, os.path.join(work, "store1"), s["labels"], "bench")
    if os.environ.get("BENCH_PROFILE_LABEL"):      # where the in-process worker spends its time
        import cProfile
        import pstats
        prof = cProfile.Profile()
        res = prof.runcall(label._label_shard, job)
        pstats.Stats(prof, stream=sys.stderr).sort_stats("tottime").print_stats(18)
    else:
        res = label._label_shard(job)      # sets torch threads to labels.threads
    torch.set_num_threads(threads)
    return {"frames": res["frames"], "seconds": res["seconds"],
            "frames_per_s": res["frames"] / res["seconds"]}


def real_read(feats_dir: str, s: dict, device, seconds: float) -> dict:
    """Labeling's input side alone: its BatchSource (readers, CMVN + LFR, collate, pinning) and
    the copy to the device, no model. If this is below the bare labeling rate, reading bounds
    labeling whatever the model does."""
    cfg = s["labels"]
    u = data.open_uttset(feats_dir, None, data.load_cmvn(feats_dir), s["stack"], s["skip"])
    src = data.BatchSource(data.PlannedBatches(u, 0, cfg.batch_frames, 10 ** 6, train=False),
                           num_workers=cfg.readers(device), prefetch_factor=cfg.prefetch_factor,
                           pin_memory=device.type == "cuda")
    frames, t0, first = 0, time.perf_counter(), None
    for batch in src.batches(0):
        batch.feats.to(device, non_blocking=True)
        if first is None:
            first = time.perf_counter()          # readers started: steady from here
            continue
        frames += batch.num_frames
        if time.perf_counter() - first > seconds:
            break
    sync(device)
    secs = time.perf_counter() - (first or t0)
    return {"frames": frames, "seconds": secs, "frames_per_s": frames / max(secs, 1e-9),
            "readers": cfg.readers(device)}


# --------------------------------------------------------------------------- report


def set_size(pool: np.ndarray, skip: int, want_lfr_frames: float, max_gb: float, at_least: int) -> int:
    """Utterances of the pool needed for `want_lfr_frames`, within the data-size cap."""
    lfr = np.cumsum(-(-pool // skip))
    n = int(np.searchsorted(lfr, want_lfr_frames)) + 1
    cap = int(np.searchsorted(np.cumsum(pool) * FBANK_DIM * 4, max_gb * 2 ** 30)) + 1
    return int(min(max(n, at_least), cap, len(pool)))


def report(r: dict) -> str:
    bt, rt, bl, rl = r["bare_train"], r["real_train"], r["bare_label"], r["real_label"]
    rows = [
        ("train  bare step", f"{bt['rows']} x {bt['frames']}", bt["frames_per_s"], None),
        ("train  real loop (fit)", f"plan ~{bt['rows']} x {bt['frames']}", rt["frames_per_s"],
         r["ratio_train"]),
        (f"label  bare fwd+top-k {r['threads']} thr", f"{bl['rows']} x {bl['frames']}", bl["frames_per_s"], None),
    ]
    if "per_worker_frames_per_s" in bl:
        rows += [(f"label  bare, {rl['threads_per_worker']} thread", f"{bl['rows']} x {bl['frames']}",
                  bl["per_worker_frames_per_s"], None),
                 ("label  bare ceiling", f"best; {bl['workers']} x 1-worker",
                  bl["ceiling_frames_per_s"], None)]
    rows += [
        ("label  real (steady)", f"nj={rl['nj']} x {rl['threads_per_worker']} thr",
         rl["frames_per_s_steady"], r["ratio_label"]),
        ("label  real, 1 worker in-proc", f"{rl['threads_per_worker']} thr",
         rl["one_worker"]["frames_per_s"],
         rl["one_worker"]["frames_per_s"] / bl.get("per_worker_frames_per_s", bl["frames_per_s"])),
        ("label  input side only", f"{rl['read_only']['readers']} readers",
         rl["read_only"]["frames_per_s"], None),
        ("label  real (end-to-end)", f"+{rl['startup_s']:.1f} s start-up",
         rl["frames_per_s_end_to_end"], rl["frames_per_s_end_to_end"] / bl["ceiling_frames_per_s"]),
    ]
    m, d = r["model"], r["device"]
    la = r["load_average"]
    lines = [f"device: {d['name']}  torch {d['torch']}  threads {r['threads']}  load average "
             f"{la['before'][0]:.1f} -> {la['after'][0]:.1f} (1 min)",
             f"model: {m['summary']}  profile {r['profile']}",
             f"data: {r['data']['utts']} utts, {r['data']['lfr_frames']} LFR frames "
             f"({r['data']['hours']:.2f} h); train plan valid share {r['train_plan']['valid_share']:.3f}",
             "", f"{'what':26s} {'batch':>22s} {'frames/s':>12s} {'real/bare':>10s}"]
    for what, shape, fps, ratio in rows:
        lines.append(f"{what:26s} {shape:>22s} {fps:12,.0f} "
                     f"{'' if ratio is None else f'{100 * ratio:9.1f}%':>10s}")
    lines += ["", f"real loop: start-up {rt['startup_s']:.1f} s, {r['warmup']} warm-up steps "
              f"{rt['warmup_s']:.1f} s, timed {rt['steps']} steps {rt['seconds']:.1f} s, "
              f"dev eval + checkpoint {rt['after_epoch_s']:.1f} s (all excluded); "
              f"fit's own frames/s (with warm-up) {rt['fit_frames_per_s']:,.0f}",
              f"goal: real >= 90% of bare -> train {'PASS' if r['ratio_train'] >= 0.9 else 'FAIL'}, "
              f"label {'PASS' if r['ratio_label'] >= 0.9 else 'FAIL'}"]
    return "\n".join(lines)


def free(device: torch.device) -> None:
    import gc
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def main(argv=None) -> dict:
    args = parse_args(argv)
    s = load_settings(args)
    torch.set_num_threads(s["threads"])
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    args.warmup = args.warmup if args.warmup is not None else (10 if device.type == "cuda" else 3)
    load_before = os.getloadavg()     # other jobs on the machine skew CPU numbers: record them
    say = lambda msg: print(f"bench: {msg}", file=sys.stderr, flush=True)
    num_senones, k = int(s["num_senones"]), s["labels"].k

    pool = draw_lengths(200_000, np.random.default_rng(args.seed))
    # uniform (equal-length) labeling batches grow with the set: plan them over the largest set
    # the size cap allows (the set written below is that large); otherwise a sample is enough
    sample = set_size(pool[:-8], s["skip"], math.inf, args.max_gb, 1) if s["labels"].uniform else 2000
    lshape = label_shape(lfr_lengths(pool[:sample], s["skip"]), s["labels"])

    torch.manual_seed(args.seed)
    model = models.build_model(s["model"], num_senones, FBANK_DIM * s["stack"])
    say(f"{model.summary(args.role)} on {device}; bare labeling {lshape['rows']} x {lshape['frames']}")
    bl = bare_label(copy.deepcopy(model), lshape, k, device, args.seconds, args.warmup)
    bl["ceiling_frames_per_s"] = bl["frames_per_s"]
    if device.type == "cpu":
        # labeling runs nj processes x `threads` threads: the ceiling is the bare rate of one
        # worker's thread count times the workers that fit on the cores
        lc = s["labels"]
        workers = min(lc.nj, max(1, (os.cpu_count() or 1) // lc.threads))
        torch.set_num_threads(lc.threads)
        one = bare_label(copy.deepcopy(model), lshape, k, device, args.seconds, args.warmup)
        torch.set_num_threads(s["threads"])
        bl.update({"per_worker_frames_per_s": one["frames_per_s"], "workers": workers,
                   "ceiling_frames_per_s": max(bl["frames_per_s"], workers * one["frames_per_s"])})
    free(device)

    # the set lasts about --seconds of labeling at the bare rate; training cycles over it
    rows = train_shape(lfr_lengths(pool[:2000], s["skip"]), s["data"], args.seed)["rows"]
    n = args.utts or set_size(pool[:-8], s["skip"], bl["ceiling_frames_per_s"] * args.seconds, args.max_gb,
                              at_least=max(4 * (args.warmup + 3) * rows,
                                           sample if s["labels"].uniform else 0))
    # the bare step runs the average batch of the plan the real loop runs (padding shrinks as
    # the set grows: a 2,000-utterance sample would overstate it for a larger set)
    plan_seed = train.TrainConfig.from_params(s["train"], s["seed"]).seed    # as real_train's fit
    tshape = train_shape(lfr_lengths(pool[:n], s["skip"]), s["data"], plan_seed)
    say(f"bare train step {tshape['rows']} x {tshape['frames']} (valid share "
        f"{tshape['valid_share']:.3f})")
    bt = bare_train(copy.deepcopy(model), tshape, num_senones, s, device, args.seconds, args.warmup)
    free(device)
    say(f"bare train {bt['frames_per_s']:,.0f} frames/s")
    with tempfile.TemporaryDirectory(prefix="bench_am-", dir=args.tmpdir) as work:
        say(f"bare labeling {bl['frames_per_s']:,.0f} frames/s; writing {n} utterances to {work}")
        sets = {"train": write_set(os.path.join(work, "train"), pool[:n], num_senones, s["skip"], 1),
                "dev": write_set(os.path.join(work, "dev"), pool[-8:], num_senones, s["skip"], 2)}
        say("real training loop (train.fit)")
        rt = real_train(sets, s, device, args.seconds, args.warmup, work)
        free(device)
        say(f"real loop {rt['frames_per_s']:,.0f} frames/s; real labeling (label.label_set)")
        model_path = save_teacher(model, s, data.load_cmvn(sets["train"][0]), work)
        rl = real_label(model_path, sets["train"][0], s, work)
        say(f"real labeling {rl['frames_per_s_steady']:,.0f} frames/s; reading alone")
        rl["read_only"] = real_read(sets["train"][0], s, device, args.seconds)
        say(f"reading alone {rl['read_only']['frames_per_s']:,.0f} frames/s; one worker in-process")
        rl["one_worker"] = real_label_one_worker(
            model_path, sets["train"][0], s, bl.get("per_worker_frames_per_s", bl["frames_per_s"])
            * args.seconds / 2, work)

    lfr_total = sum(lfr_lengths(pool[:n], s["skip"]).values())
    result = {
        "device": device_info(device), "threads": s["threads"], "profile": s["profile"],
        "role": args.role, "warmup": args.warmup, "seconds": args.seconds,
        "model": {"summary": model.summary(args.role), "params": model.param_count,
                  "num_senones": num_senones},
        "data": {"utts": n, "lfr_frames": lfr_total, "hours": float(pool[:n].sum()) / 360000},
        "train_plan": tshape, "label_plan": lshape,
        "bare_train": bt, "real_train": rt, "bare_label": bl, "real_label": rl,
        "ratio_train": rt["frames_per_s"] / bt["frames_per_s"],
        "ratio_label": rl["frames_per_s_steady"] / bl["ceiling_frames_per_s"],
        "load_average": {"before": load_before, "after": os.getloadavg()},
        "code_version": config.code_version(),
    }
    print(report(result))
    if args.out:
        with open(args.out, "w") as f:
            json.dump(result, f, indent=2, default=float)
            f.write("\n")
    return result


if __name__ == "__main__":
    main()
