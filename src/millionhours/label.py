"""Teacher labeling: run a trained model over a set and store its top-k log-posteriors.

The paper's teacher labels 1M hours of unlabeled audio once; the student then reads only the k
largest posteriors per 30 ms frame. Labeling is sharded the same way the store is: worker j
labels a contiguous slice of the sorted utterance list into shard j, so finished shards of an
interrupted run are skipped on rerun and workers never share a file.
"""
import multiprocessing as mp
import os
import time
from dataclasses import dataclass, replace

import numpy as np
import torch

from millionhours import data, models, topk
from millionhours.fileio import file_sha256


@dataclass(frozen=True)
class LabelConfig:
    k: int = 20                   # posteriors kept per frame (the paper's 20)
    dense: bool = False           # keep all posteriors (small runs: the k sweep's reference)
    nj: int = 2                   # labeling workers = store shards
    threads: int = 1              # torch threads per worker
    batch_frames: int = 8192      # padded LFR frames per forward batch

    @classmethod
    def from_params(cls, p: dict) -> "LabelConfig":
        return cls(**{k: p[k] for k in cls.__dataclass_fields__ if k in p})


def shard_slices(utts: list[str], nj: int) -> list[list[str]]:
    """Contiguous, near-equal slices of the sorted utterance list (one per shard)."""
    bounds = np.linspace(0, len(utts), nj + 1).round().astype(int)
    return [utts[a:b] for a, b in zip(bounds[:-1], bounds[1:])]


def _label_shard(job) -> dict:
    """Worker: label one slice of utterances into one finished shard; returns its timing."""
    model_path, uttset, utts, shard_id, store, cfg, teacher_hash = job
    torch.set_num_threads(cfg.threads)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model, _ = models.load_final(model_path, map_location="cpu")
    model.to(device)
    sub = replace(uttset, lengths={u: uttset.lengths[u] for u in utts})
    batches = data.PlannedBatches(sub, 0, cfg.batch_frames, 10 ** 6, train=False)
    k = model.cfg.num_senones if cfg.dense else cfg.k
    t0, frames = time.time(), 0
    with topk.ShardWriter(store, shard_id, k, model.cfg.num_senones, 10.0 * uttset.skip,
                          teacher_hash, dense=cfg.dense) as writer, torch.inference_mode():
        for i in range(batches.num_batches(0)):
            batch = batches[(0, i)].to(device)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
                logits = model(batch.feats, batch.lengths)
            ids, lp = batch_topk(logits, k, cfg.dense)        # one device op and one copy per batch
            for b, utt in enumerate(batch.utts):
                n = int(batch.lengths[b])
                writer.add(utt, None if cfg.dense else ids[b, :n], lp[b, :n])
                frames += n
    return {"shard": shard_id, "frames": frames, "seconds": time.time() - t0}


def batch_topk(logits: torch.Tensor, k: int, dense: bool) -> tuple[np.ndarray | None, np.ndarray]:
    """(B, T, S) logits -> uint16 ids and float16 log-posteriors (B, T, k), sorted descending;
    dense: all log-posteriors in senone order and no ids."""
    lp = torch.log_softmax(logits.float(), dim=-1)
    if dense:
        return None, lp.to(torch.float16).cpu().numpy()
    vals, ids = lp.topk(k, dim=-1, sorted=True)
    return ids.to(torch.int32).cpu().numpy().astype(np.uint16), vals.to(torch.float16).cpu().numpy()


def label_set(model_path: str, feats_dir: str, store: str, cfg: LabelConfig, progress=None) -> dict:
    """Labels every utterance of `feats_dir` into `store`; finished shards are kept."""
    _, blob = models.load_final(model_path)
    lfr = blob.get("lfr", {"stack": 3, "skip": 3})
    uttset = data.open_uttset(feats_dir, None, blob["cmvn"], lfr["stack"], lfr["skip"])
    utts = sorted(uttset.lengths, key=str.encode)
    teacher_hash = file_sha256(model_path)
    jobs = [(model_path, uttset, part, j, store, cfg, teacher_hash)
            for j, part in enumerate(shard_slices(utts, cfg.nj)) if part]
    todo = [j for j in jobs if not topk.shard_done(store, j[3])]
    t0, done = time.time(), []
    # spawn, not fork: a forked child doing torch ops after the parent used its thread pool can hang
    with mp.get_context("spawn").Pool(min(len(todo), cfg.nj) or 1) as pool:
        for res in pool.imap_unordered(_label_shard, todo):
            done.append(res)
            if progress:
                progress(res)
    wall = time.time() - t0
    new_frames = sum(r["frames"] for r in done)
    return {"shards": len(jobs), "shards_labeled_now": len(todo), "teacher_hash": teacher_hash,
            "frames_labeled_now": new_frames, "wall_s": round(wall, 2),
            "frames_per_s": round(new_frames / wall, 1) if new_frames else None}


def oracle_agreement(store: topk.TopKStore, oracle_targets_scp: str) -> dict:
    """Analysis only: how often the teacher's top-1 senone equals the oracle alignment's."""
    import kaldiio
    agree = total = 0
    for utt, ref in kaldiio.load_scp_sequential(oracle_targets_scp):
        if utt not in store:
            continue
        ids, _ = store.get(utt, k=1)          # dense stores compute their top-1
        n = min(len(ids), len(ref))
        agree += int((ids[:n, 0].astype(np.int64) == np.asarray(ref[:n])).sum())
        total += n
    return {"frames": total, "top1_agreement": round(agree / total, 4) if total else None}
