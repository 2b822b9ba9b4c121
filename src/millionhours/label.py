"""Teacher labeling: run a trained model over a set and store its top-k log-posteriors.

The paper's teacher labels 1M hours of unlabeled audio once; the student then reads only the k
largest posteriors per 30 ms frame. Labeling is sharded the same way the store is: worker j
labels a contiguous slice of the sorted utterance list into shard j, so finished shards of an
interrupted run are skipped on rerun and workers never share a file.
"""
import multiprocessing as mp
import time
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor, as_completed
from dataclasses import dataclass, replace

import numpy as np
import torch

from millionhours import data, models, topk
from millionhours.fileio import file_sha256


@dataclass(frozen=True)
class LabelConfig:
    k: int = 20                   # posteriors kept per frame (the paper's 20)
    dense: bool = False           # keep all posteriors (bin/label --dense: the k sweep's reference)
    nj: int = 2                   # labeling workers = store shards
    threads: int = 1              # torch threads per worker
    batch_frames: int = 8192      # padded LFR frames per forward batch
    num_workers: int | None = None  # feature readers per worker; None: 6 on a GPU, 0 on CPU
    prefetch_factor: int = 2      # batches each reader keeps ready
    uniform: bool = False         # batches of equal-length utterances only (GPU: fused BLSTM)

    @classmethod
    def from_params(cls, p: dict) -> "LabelConfig":
        return cls(**{k: p[k] for k in cls.__dataclass_fields__ if k in p})

    def readers(self, device: torch.device) -> int:
        # On a GPU, reading + CMVN + LFR of a 131k-frame batch takes longer than its forward
        # pass, so several processes read ahead. On CPU it is ~1% of a worker's time: reading
        # inline saves a process per worker on cores the model needs.
        if self.num_workers is not None:
            return int(self.num_workers)
        return 6 if device.type == "cuda" else 0


def shard_slices(utts: list[str], nj: int) -> list[list[str]]:
    """Contiguous, near-equal slices of the sorted utterance list (one per shard)."""
    bounds = np.linspace(0, len(utts), nj + 1).round().astype(int)
    return [utts[a:b] for a, b in zip(bounds[:-1], bounds[1:])]


def _label_shard(job) -> dict:
    """Worker: label one slice of utterances into one finished shard; returns its timing.

    Pipelined: loader processes read ahead; batch i+1 is queued on the device while a writer
    thread checks and writes batch i's results (numpy and file writes release the GIL), so
    reading, the device's forward and the store work all overlap. Writes stay in batch order.
    """
    model_path, uttset, utts, shard_id, store, cfg, teacher_hash = job
    torch.set_num_threads(cfg.threads)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model, _ = models.load_final(model_path, map_location="cpu")
    model.to(device)
    sub = replace(uttset, lengths={u: uttset.lengths[u] for u in utts})
    source = data.BatchSource(data.PlannedBatches(sub, 0, cfg.batch_frames, 10 ** 6, train=False,
                                                  bucket_width=1, uniform=cfg.uniform),
                              num_workers=cfg.readers(device), prefetch_factor=cfg.prefetch_factor,
                              pin_memory=device.type == "cuda")
    k = model.cfg.num_senones if cfg.dense else cfg.k
    t0, frames, pending = time.time(), 0, None
    with topk.ShardWriter(store, shard_id, k, model.cfg.num_senones, 10.0 * uttset.skip,
                          teacher_hash, dense=cfg.dense) as writer, torch.inference_mode(), \
            ThreadPoolExecutor(1, thread_name_prefix="store-writer") as write_thread:
        for batch in source.batches(0):
            launched = _launch(model, batch, device, k, cfg.dense)
            if pending is not None:
                frames += pending.result()          # the previous write; re-raises its error
            pending = write_thread.submit(_write, writer, *launched)
        if pending is not None:
            frames += pending.result()
    return {"shard": shard_id, "frames": frames, "seconds": time.time() - t0}


def _launch(model, batch: data.Batch, device: torch.device, k: int, dense: bool):
    """Queues forward + top-k of one batch and the copy of its results to host memory."""
    lengths = batch.lengths                  # host copy: the writer needs it without a sync
    feats = batch.feats.to(device, non_blocking=True)
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
        logits = models.row_logits(model(feats, lengths))   # one row per 30 ms frame
    ids, lp = _device_topk(logits, k, dense)
    cuda = device.type == "cuda"
    # device->host copies into pinned buffers: only those are asynchronous (a copy into pageable
    # memory would stall the host until the forward is done); the event says when they are done
    ids = None if ids is None else _to_host(ids, cuda)
    lp = _to_host(lp, cuda)
    done = torch.cuda.Event() if cuda else None
    if done is not None:
        done.record()
    return batch.utts, lengths, ids, lp, done


def _to_host(t: torch.Tensor, cuda: bool) -> torch.Tensor:
    if not cuda:
        return t
    out = torch.empty(t.shape, dtype=t.dtype, pin_memory=True)
    return out.copy_(t, non_blocking=True)


def _write(writer: topk.ShardWriter, utts, lengths, ids, lp, done) -> int:
    if done is not None:
        done.synchronize()
    writer.add_batch(utts, lengths.numpy(), None if ids is None else ids.numpy().view(np.uint16),
                     lp.numpy())
    return int(lengths.sum())


def _device_topk(logits: torch.Tensor, k: int, dense: bool):
    """(B, T, S) logits -> int16 ids (uint16 bit patterns) and float16 log-posteriors (B, T, k),
    sorted descending, clipped to float16's range; dense: all, in senone order, no ids.
    The casts run on the device so the host receives the stored types."""
    lp = torch.log_softmax(logits.float(), dim=-1)
    if dense:
        return None, lp.clamp_min(topk._F16_MIN).to(torch.float16)
    vals, ids = lp.topk(k, dim=-1, sorted=True)
    return ids.to(torch.int16), vals.clamp_min(topk._F16_MIN).to(torch.float16)


def batch_topk(logits: torch.Tensor, k: int, dense: bool) -> tuple[np.ndarray | None, np.ndarray]:
    """(B, T, S) logits -> uint16 ids and float16 log-posteriors (B, T, k), sorted descending;
    dense: all log-posteriors in senone order and no ids."""
    ids, lp = _device_topk(logits, k, dense)
    return (None if ids is None else ids.cpu().numpy().view(np.uint16)), lp.cpu().numpy()


def _run_shards(todo: list, nj: int):
    """Yields each shard's result. One worker runs here (on a GPU a nested worker process
    measured 7x slower than in-process); several run in spawned processes: spawn, not fork,
    since a forked child doing torch ops after the parent used its thread pool can hang, and a
    process pool, not mp.Pool, whose daemonic workers may not start feature-reader processes."""
    if nj == 1:
        yield from (_label_shard(job) for job in todo)
        return
    with ProcessPoolExecutor(min(len(todo), nj) or 1, mp.get_context("spawn")) as pool:
        for fut in as_completed([pool.submit(_label_shard, job) for job in todo]):
            yield fut.result()


def label_set(model_path: str, feats_dir: str, store: str, cfg: LabelConfig, progress=None) -> dict:
    """Labels every utterance of `feats_dir` into `store`; finished shards are kept."""
    _, blob = models.load_final(model_path)
    lfr = blob.get("lfr", {"stack": 3, "skip": 3})
    uttset = data.open_uttset(feats_dir, None, blob["cmvn"], lfr["stack"], lfr["skip"],
                              blob.get("cmn", "global"))
    utts = sorted(uttset.lengths, key=str.encode)
    teacher_hash = file_sha256(model_path)
    jobs = [(model_path, uttset, part, j, store, cfg, teacher_hash)
            for j, part in enumerate(shard_slices(utts, cfg.nj)) if part]
    todo = [j for j in jobs if not topk.shard_done(store, j[3])]
    t0, done = time.time(), []
    for res in _run_shards(todo, cfg.nj):
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
