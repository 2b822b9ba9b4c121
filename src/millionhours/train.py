"""The training loop, one for teacher and student: read `fit` top to bottom.

Criterion: frame-level cross-entropy over senones, averaged over the valid frames of a batch.
Hard targets (forced alignments) use the senone id; soft targets (the teacher's top-k) use the
distribution the batch's `soft_mode` and `temperature` make of the k stored log-probabilities
(topk.soft_targets: renormalised over the k ids, zero elsewhere, by default; or the residual
mass spread uniformly over the other senones), against the model's full softmax.

Learning rate (declared in params, `train:`):
    lr(step) = lr * epoch_scale * warmup(step) * batch.lr_scale
* warmup: linear from 0 to 1 over `warmup_steps` optimizer steps;
* epoch_scale: `schedule: newbob` multiplies it by `decay` (default 0.5) after every validation
  whose dev CE improved by less than `newbob_threshold` (relative) over the best so far, the
  classic hybrid-ASR "newbob" halving; `schedule: exp` multiplies it by `decay` after every
  validation; `schedule: const` keeps it;
* batch.lr_scale: the per-batch multiplier the data side sets (labeled vs machine-labeled
  batches in the student's scheduled learning); 1.0 for the teacher. It scales the optimizer's
  step size for that one step (with SGD momentum it scales the whole momentum step).

Optimizer: `adam` (default) or `sgd` (momentum, Nesterov optional); gradient-norm clipping.

Validation and stopping (the same rule for every run, so runs are compared at convergence):
dev CE is measured at each epoch end, or every `eval_every` optimizer steps when that is set
(an SSL student's epoch is 6x a labeled-only one's, so a step interval validates both equally
often). Training stops when the schedule has halved the LR `stop_halvings` times, when dev CE
has not improved for `patience` validations, or at the `epochs` cap (a safety net); the summary
records which (`stopped`) and after how many updates.

Crash safety: `ckpt/last.pt` is written every `ckpt_every` steps and at each epoch end with the
model, optimizer, schedule, step, position in the epoch (next batch index), epoch accumulators and
all RNG states, always to a temporary name then renamed. A rerun resumes from it; as each epoch's
batch plan is a pure function of (seed, epoch), a run killed at any point and rerun ends with the
same weights, bit for bit, as one never interrupted (on CPU; on a GPU up to cuDNN determinism).

Extension points for the student stage:
* a second stream: give `fit` a BatchSource whose dataset interleaves labeled (hard) and
  machine-labeled (soft) batches and sets `Batch.lr_scale`; the loop needs nothing else, and it
  reports train CE per batch kind;
* distributed algorithms: `sync`, an object with after_backward(model) (gradient all-reduce or
  GTC compression), after_step(model, optimizer, step) (BMUF block sync), state_dict() and
  load_state_dict() (residuals, global model, block momentum: saved in every checkpoint).
"""
from __future__ import annotations

import contextlib
import math
import os
import random
import resource
import time
from dataclasses import asdict, dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from millionhours import config, models, topk
from millionhours.data import IGNORE, Batch
from millionhours.fileio import atomic_open, atomic_path, write_json


@dataclass
class TrainConfig:
    epochs: int = 8
    optimizer: str = "adam"          # adam | sgd
    lr: float = 1e-3
    momentum: float = 0.9            # sgd
    nesterov: bool = False           # sgd
    betas: tuple = (0.9, 0.999)      # adam
    weight_decay: float = 0.0
    warmup_steps: int = 0
    schedule: str = "newbob"         # newbob | exp | const
    decay: float = 0.5
    newbob_threshold: float = 0.0
    grad_clip: float = 5.0           # max gradient L2 norm; 0 = off
    label_smoothing: float = 0.0     # hard targets only: share of each frame's mass spread evenly
    ckpt_every: int = 200            # steps between mid-epoch checkpoints; 0 = epoch ends only
    average_last: int = 1            # > 1: also try the mean weights of the last N epochs (kept if
                                     # their dev CE beats the best epoch's: icefall's --avg)
    eval_every: int = 0              # validate every N steps; 0 = at each epoch end
    stop_halvings: int = 0           # stop once the LR has been halved this often; 0 = never
    patience: int = 0                # stop after this many validations without a better dev CE
    seed: int = 0

    @classmethod
    def from_params(cls, p: dict, seed: int) -> "TrainConfig":
        known = {k: p[k] for k in cls.__dataclass_fields__ if k in p and k != "seed"}
        if "betas" in known:
            known["betas"] = tuple(known["betas"])
        return cls(seed=int(p.get("seed", seed)), **known)


# --------------------------------------------------------------------------- pieces of the loop


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def rng_state() -> dict:
    state = {"python": random.getstate(), "numpy": np.random.get_state(),
             "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def make_optimizer(model: torch.nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    """Call after moving the model: on CUDA the step is one fused kernel over all parameters
    (the default foreach step launches a few kernels per parameter tensor); CPU keeps the
    default implementation."""
    fused = {"fused": True} if all(p.is_cuda for p in model.parameters()) else {}
    if cfg.optimizer == "adam":
        return torch.optim.Adam(model.parameters(), lr=cfg.lr, betas=cfg.betas,
                                weight_decay=cfg.weight_decay, **fused)
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum,
                               nesterov=cfg.nesterov, weight_decay=cfg.weight_decay, **fused)
    raise ValueError(f"train.optimizer: unknown '{cfg.optimizer}'; use adam or sgd")


def warmup(step: int, cfg: TrainConfig) -> float:
    return min(1.0, (step + 1) / cfg.warmup_steps) if cfg.warmup_steps else 1.0


def next_epoch_scale(scale: float, dev_ce: float, best: float, cfg: TrainConfig) -> float:
    """The schedule's per-epoch decision (see the module docstring)."""
    if cfg.schedule == "exp":
        return scale * cfg.decay
    if cfg.schedule == "newbob" and dev_ce > best * (1.0 - cfg.newbob_threshold):
        return scale * cfg.decay
    if cfg.schedule not in ("newbob", "exp", "const"):
        raise ValueError(f"train.schedule: unknown '{cfg.schedule}'; use newbob, exp or const")
    return scale


def batch_loss(logits: torch.Tensor, batch: Batch,
               label_smoothing: float = 0.0) -> tuple[torch.Tensor, torch.Tensor]:
    """(summed CE over valid frames, number of frames whose argmax is the (top-1) target).
    label_smoothing applies to hard targets (training only: evaluation reports plain CE)."""
    logits = logits.float()          # bf16 autocast output: take the softmax in fp32
    if batch.soft_ids is None and batch.targets.dim() == 3:
        return window_loss(logits, batch.targets, label_smoothing)
    if logits.dim() == 4:
        raise ValueError("a sub-frame model (model.subframes > 1) trains on window targets; set "
                         "data.window_targets: true")
    if batch.soft_ids is None:
        flat = batch.targets.reshape(-1)
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), flat,
                               ignore_index=IGNORE, reduction="sum",
                               label_smoothing=label_smoothing)
        correct = (logits.argmax(-1).reshape(-1) == flat).sum()   # IGNORE never equals an id
        return loss, correct
    # soft: -sum_s q_s log p_s with q from the stored top-k (topk._target_weights: renorm or
    # uniform_residual, tempered); the residual term sums log p over the senones not kept
    mask = batch.mask()
    logp = torch.log_softmax(logits, -1)
    kept = logp.gather(-1, batch.soft_ids)                                 # (B, T, k)
    b, t, k = kept.shape
    w, w_other = topk._target_weights(batch.soft_logprobs.reshape(b * t, k), logits.shape[-1],
                                      batch.soft_mode, batch.temperature)
    per_frame = -(w.view(b, t, k).to(logp.dtype) * kept).sum(-1)
    if batch.soft_mode == "uniform_residual" and k < logits.shape[-1]:
        per_frame = per_frame - w_other.view(b, t).to(logp.dtype) * (logp.sum(-1) - kept.sum(-1))
    loss = torch.where(mask, per_frame, 0.0).sum()             # not [mask]: no host sync
    top1 = batch.soft_ids.gather(-1, batch.soft_logprobs.argmax(-1, keepdim=True))[..., 0]
    correct = ((logits.argmax(-1) == top1) & mask).sum()
    return loss, correct


@torch.no_grad()
def evaluate(model, source, device, amp: bool) -> dict:
    """Cross-entropy and frame accuracy over a whole set (epoch 0 of an evaluation source)."""
    model.eval()
    sums, frames = RunningSums({}, device), 0
    for batch in source.batches(0):
        lengths, frames = batch.lengths, frames + batch.num_frames     # host lengths: no sync
        batch = batch.to(device)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
            logits = model(batch.feats, lengths)
        sums.add("all", *batch_loss(logits, batch), 0)
    sums.flush()
    tot = sums.acc.get("all", {"loss": 0.0, "correct": 0})
    model.train()
    return {"ce": tot["loss"] / max(frames, 1), "frame_acc": tot["correct"] / max(frames, 1),
            "frames": frames}


def evaluate_once(model, source, device, amp: bool, sync=None) -> dict:
    """`evaluate` on the first worker only, its result broadcast to the others: inside
    `global_weights` every worker holds the same model, so this is what each would compute, at
    1/N of the work (N virtual workers would otherwise evaluate dev N times in turn)."""
    if sync is None or sync.world == 1:
        return evaluate(model, source, device, amp)
    out = torch.zeros(3, dtype=torch.float64, device=device)     # NCCL: on the device
    if sync.comm.rank == 0:
        d = evaluate(model, source, device, amp)
        out = torch.tensor([d["ce"], d["frame_acc"], d["frames"]], dtype=torch.float64,
                           device=device)
    sync.comm.broadcast_(out, 0)
    return {"ce": float(out[0]), "frame_acc": float(out[1]), "frames": int(out[2])}


def peak_memory_mb(device) -> dict:
    """Peak RSS (MiB) of this process, of its live loader workers (VmHWM) and GPU peak."""
    out = {"rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,   # KiB on Linux
           "workers_rss_mb": sum(_vm_hwm_kb(pid) for pid in _children()) / 1024}
    if device.type == "cuda":
        out["gpu_mb"] = torch.cuda.max_memory_allocated(device) / 2**20
    return out


def _children() -> list[int]:
    try:
        with open(f"/proc/{os.getpid()}/task/{os.getpid()}/children") as f:
            return [int(p) for p in f.read().split()]
    except OSError:          # not Linux: workers not counted
        return []


def _vm_hwm_kb(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/status") as f:
            return next((int(ln.split()[1]) for ln in f if ln.startswith("VmHWM:")), 0)
    except OSError:
        return 0


# --------------------------------------------------------------------------- state and files


@dataclass
class LoopState:
    """Everything besides model/optimizer/RNG that a resume needs to continue exactly."""
    epoch: int = 0
    batch: int = 0                   # next batch index inside `epoch`
    step: int = 0                    # optimizer steps so far
    epoch_scale: float = 1.0
    best_dev_ce: float = math.inf
    best_epoch: int = -1             # the validation (history row, 1-based) with the best dev CE
    halvings: int = 0                # LR decays the schedule made so far
    since_best: int = 0              # validations since the best one
    stopped: str = ""                # why training ended early: halvings | patience
    acc: dict = field(default_factory=dict)       # this epoch's running sums, per batch kind
    history: list = field(default_factory=list)   # one row per finished epoch


def save_checkpoint(path: str, model, optimizer, st: LoopState, sync=None) -> None:
    with atomic_path(path) as tmp:
        torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                    "loop": asdict(st), "rng": rng_state(),
                    "sync": sync.state_dict() if sync is not None else None}, tmp)


def load_checkpoint(path: str, model, optimizer, sync=None) -> LoopState:
    blob = torch.load(path, map_location="cpu", weights_only=False)
    model.load_state_dict(blob["model"])
    optimizer.load_state_dict(blob["optimizer"])
    set_rng_state(blob["rng"])
    if sync is not None and blob.get("sync") is not None:
        sync.load_state_dict(blob["sync"])
    return LoopState(**blob["loop"])


METRIC_COLUMNS = ("epoch", "step", "train_ce", "dev_ce", "dev_frame_acc", "lr", "frames_per_s")


def write_metrics(path: str, history: list) -> None:
    """TSV, one row per epoch (dvc plots show it)."""
    with atomic_open(path) as f:
        f.write("\t".join(METRIC_COLUMNS) + "\n")
        for row in history:
            f.write("\t".join(f"{row[c]:.6g}" if isinstance(row[c], float) else str(row[c])
                              for c in METRIC_COLUMNS) + "\n")


def plot_curve(path: str, history: list, title: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    ep = [r["epoch"] for r in history]
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(ep, [r["train_ce"] for r in history], "o-", label="train CE")
    ax.plot(ep, [r["dev_ce"] for r in history], "s-", label="dev CE")
    ax.set_xlabel("epoch")
    ax.set_ylabel("cross-entropy (nats/frame)")
    ax2 = ax.twinx()
    ax2.plot(ep, [100 * r["dev_frame_acc"] for r in history], "^--", color="tab:green",
             label="dev frame acc")
    ax2.set_ylabel("dev frame accuracy (%)")
    ax.legend(loc="upper center")
    ax.set_title(title)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)


class RunningSums:
    """Per-kind sums of loss / correct frames / frames into `acc` (LoopState.acc's layout).

    Loss and correct stay on the device until flush(): reading them every step (.item()) would
    make the host wait for each step to finish before it queues the next, leaving the device
    idle. The loss sum is float64, seeded with acc's value and added in step order, so a flush
    gives exactly the floats that adding loss.item() each step gives (exact resume holds).
    """

    def __init__(self, acc: dict, device):
        self.acc, self.device, self.pending = acc, device, {}

    def add(self, kind: str, loss: torch.Tensor, correct: torch.Tensor, frames: int) -> None:
        a = self.acc.setdefault(kind, {"loss": 0.0, "correct": 0, "frames": 0})
        if kind not in self.pending:
            self.pending[kind] = (torch.tensor(a["loss"], dtype=torch.float64, device=self.device),
                                  torch.tensor(a["correct"], dtype=torch.int64, device=self.device))
        loss_sum, correct_sum = self.pending[kind]
        loss_sum += loss.detach().double()
        correct_sum += correct
        a["frames"] += frames

    def flush(self) -> None:
        """Copies the device sums into acc (one host sync)."""
        for kind, (loss_sum, correct_sum) in self.pending.items():
            self.acc[kind]["loss"], self.acc[kind]["correct"] = loss_sum.item(), int(correct_sum)
        self.pending.clear()


def window_loss(logits: torch.Tensor, targets: torch.Tensor, label_smoothing: float = 0.0):
    """Window targets (B, T, k): the labels of all k 10 ms frames of each LFR row. A sub-frame
    model's (B, T, k, S) logits learn one label each; a one-row model's (B, T, S) learn their
    equal mix. Summed over frames and divided by k, so the loss is per row like the others;
    accuracy counts the centre frame's label (as with single targets)."""
    k = targets.shape[-1]
    per = logits if logits.dim() == 4 else logits.unsqueeze(2).expand(-1, -1, k, -1)
    loss = F.cross_entropy(per.reshape(-1, per.shape[-1]), targets.reshape(-1),
                           ignore_index=IGNORE, reduction="sum", label_smoothing=label_smoothing) / k
    correct = (models.row_logits(logits).argmax(-1) == targets[..., k // 2]).sum()    # IGNORE never equals an id
    return loss, correct


def _epoch_row(st: LoopState, dev: dict, lr: float, epoch: float) -> dict:
    kinds = {k: v for k, v in st.acc.items() if k != "_time"}
    frames = sum(v["frames"] for v in kinds.values())
    row = {"epoch": round(epoch, 4), "step": st.step,
           "train_ce": sum(v["loss"] for v in kinds.values()) / max(frames, 1),
           "dev_ce": dev["ce"], "dev_frame_acc": dev["frame_acc"], "lr": lr,
           "frames_per_s": frames / max(st.acc.get("_time", 0.0), 1e-9), "train_frames": frames}
    for k, v in kinds.items():
        row[f"train_ce_{k}"] = v["loss"] / max(v["frames"], 1)
    return row


# --------------------------------------------------------------------------- validation


def _pause(sums: RunningSums, st: LoopState, t0: float) -> float:
    """Flushes the running sums and books the training time since t0 (dev excluded)."""
    sums.flush()
    st.acc["_time"] = st.acc.get("_time", 0.0) + time.perf_counter() - t0
    return time.perf_counter()


def validate(model, optimizer, st: LoopState, cfg: TrainConfig, dev_source, device, amp, sync,
             ckpt_dir: str, results_dir, name: str, log, epoch_frac: float) -> None:
    """Dev CE, best.pt, the schedule's decision, the stopping rule, a history row, last.pt and
    the metrics files; st.acc (the train CE since the last validation) starts again."""
    best = os.path.join(ckpt_dir, "best.pt")
    # BMUF: dev and best.pt see the global model of the last block sync, not a local replica
    with sync.global_weights(model) if sync is not None else contextlib.nullcontext():
        dev = evaluate_once(model, dev_source, device, amp, sync)
        improved = dev["ce"] < st.best_dev_ce
        if improved:
            with atomic_path(best) as tmp:
                torch.save({"model": model.state_dict(), "epoch": len(st.history) + 1,
                            "step": st.step, "dev": dev}, tmp)
    row = _epoch_row(st, dev, cfg.lr * st.epoch_scale, epoch_frac)
    st.history.append(row)
    scale = next_epoch_scale(st.epoch_scale, dev["ce"], st.best_dev_ce, cfg)
    st.halvings += scale < st.epoch_scale
    st.epoch_scale = scale
    if improved:
        st.best_dev_ce, st.best_epoch, st.since_best = dev["ce"], len(st.history), 0
    else:
        st.since_best += 1
    if cfg.stop_halvings and st.halvings >= cfg.stop_halvings:
        st.stopped = "halvings"
    elif cfg.patience and st.since_best >= cfg.patience:
        st.stopped = "patience"
    log(f"{name}: epoch {row['epoch']:g} step {st.step}: train CE {row['train_ce']:.4f}, "
        f"dev CE {dev['ce']:.4f}, dev frame acc {100 * dev['frame_acc']:.2f}%, "
        f"lr {row['lr']:.3g}, {row['frames_per_s']:.0f} frames/s"
        + (f"; stop ({st.stopped})" if st.stopped else ""))
    st.acc = {}
    if cfg.average_last > 1:
        keep_epoch_weights(model, ckpt_dir, len(st.history), cfg.average_last)
    save_checkpoint(os.path.join(ckpt_dir, "last.pt"), model, optimizer, st, sync)
    if results_dir:
        write_metrics(os.path.join(results_dir, f"{name}_metrics.tsv"), st.history)
        plot_curve(os.path.join(results_dir, f"{name}_curve.png"), st.history, name)


# --------------------------------------------------------------------------- the loop


def fit(model, train_source, dev_source, cfg: TrainConfig, exp_dir: str, name: str,
        results_dir: str | None = "results", meta: dict | None = None, sync=None,
        log=print, device: torch.device | None = None) -> dict:
    """Trains `model` to cfg.epochs (resuming from exp_dir/ckpt/last.pt), returns the summary.

    Writes exp_dir/ckpt/{last,best}.pt and, under results_dir, <name>_metrics.tsv,
    <name>_curve.png and <name>.json (the summary plus `meta`, e.g. params).
    """
    device = device or torch.device("cuda" if torch.cuda.is_available() else "cpu")
    amp = device.type == "cuda"                       # bf16 on GPU; CPU stays fp32, exact
    ckpt_dir = os.path.join(exp_dir, "ckpt")
    last, best = os.path.join(ckpt_dir, "last.pt"), os.path.join(ckpt_dir, "best.pt")
    model.to(device).train()
    optimizer = make_optimizer(model, cfg)
    if os.path.isfile(last):
        st = load_checkpoint(last, model, optimizer, sync)
        log(f"{name}: resuming from {last} at epoch {st.epoch + 1}, batch {st.batch}, step {st.step}")
    else:
        st = LoopState()
    params = [p for p in model.parameters() if p.requires_grad]

    while st.epoch < cfg.epochs and not st.stopped:
        n = train_source.num_batches(st.epoch)
        bar = tqdm(total=n, initial=st.batch, desc=f"{name} epoch {st.epoch + 1}/{cfg.epochs}",
                   unit="batch", disable=None, mininterval=2.0)
        t0 = time.perf_counter()
        sums = RunningSums(st.acc, device)
        for batch in train_source.batches(st.epoch, st.batch):
            lengths, frames = batch.lengths, batch.num_frames   # on the host: no device sync
            batch = batch.to(device)
            lr = cfg.lr * st.epoch_scale * warmup(st.step, cfg) * batch.lr_scale
            for g in optimizer.param_groups:
                g["lr"] = lr
            # forward, per-frame mean loss, backward, clip, step
            optimizer.zero_grad(set_to_none=True)
            if frames:                  # a worker's empty share of a global batch: zero gradient
                with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
                    logits = model(batch.feats, lengths)
                loss_sum, correct = batch_loss(logits, batch, cfg.label_smoothing)
                (loss_sum / (batch.norm_frames or frames)).backward()
            else:
                for p in params:
                    p.grad = torch.zeros_like(p)
            if sync is not None:
                sync.after_backward(model)
            if cfg.grad_clip:
                torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
            optimizer.step()
            st.step, st.batch = st.step + 1, st.batch + 1
            if sync is not None:
                sync.after_step(model, optimizer, st.step)
            if frames:
                sums.add(batch.kind, loss_sum, correct, frames)
            bar.update(1)
            if st.batch % 50 == 0 and not bar.disable and frames:     # a sync: only for a live progress bar
                bar.set_postfix(ce=f"{loss_sum.item() / frames:.3f}", lr=f"{lr:.2e}")
            if cfg.eval_every and st.step % cfg.eval_every == 0:
                _pause(sums, st, t0)              # t0 restarts after validation
                if st.batch == n:                 # the epoch is over: the next one starts fresh
                    st.epoch, st.batch = st.epoch + 1, 0
                validate(model, optimizer, st, cfg, dev_source, device, amp, sync, ckpt_dir,
                         results_dir, name, log, epoch_frac=st.epoch + st.batch / n)
                if st.stopped:
                    break
                t0 = time.perf_counter()
                sums = RunningSums(st.acc, device)
            elif cfg.ckpt_every and st.step % cfg.ckpt_every == 0:
                t0 = _pause(sums, st, t0)
                save_checkpoint(last, model, optimizer, st, sync)
                log(f"{name}: checkpoint step {st.step} (epoch {st.epoch + 1}, batch {st.batch})")
        bar.close()
        if st.stopped or (cfg.eval_every and st.batch == 0):
            continue                              # validated (and checkpointed) at this step
        _pause(sums, st, t0)
        st.epoch, st.batch = st.epoch + 1, 0
        if cfg.eval_every:                        # the epoch ended between validations
            save_checkpoint(last, model, optimizer, st, sync)
        else:
            validate(model, optimizer, st, cfg, dev_source, device, amp, sync, ckpt_dir,
                     results_dir, name, log, epoch_frac=st.epoch)
    if not st.history or st.history[-1]["step"] != st.step:     # the cap fell between validations
        validate(model, optimizer, st, cfg, dev_source, device, amp, sync, ckpt_dir, results_dir,
                 name, log, epoch_frac=st.epoch)

    summary = summarize(model, st, cfg, device, meta)
    if cfg.average_last > 1 and st.history:
        avg = summary["average"] = average_epochs(model, ckpt_dir, st, cfg.average_last,
                                                  dev_source, device, amp, log, name)
        if avg["kept"]:                          # final.pt will hold the mean weights
            summary.update(dev_ce=avg["dev_ce"], dev_frame_acc=avg["dev_frame_acc"])
    if sync is not None:
        summary["distributed"] = sync.stats()   # bytes/step, syncs, fired fraction, tau
    if results_dir:
        write_json(os.path.join(results_dir, f"{name}.json"), summary)
    return summary


def keep_epoch_weights(model, ckpt_dir: str, epoch: int, n: int) -> None:
    """ckpt/epoch<E>.pt = this epoch's weights; only the last n epochs' are kept."""
    with atomic_path(os.path.join(ckpt_dir, f"epoch{epoch}.pt")) as tmp:
        torch.save(model.state_dict(), tmp)
    old = os.path.join(ckpt_dir, f"epoch{epoch - n}.pt")
    if os.path.exists(old):
        os.remove(old)


def average_epochs(model, ckpt_dir: str, st: LoopState, n: int, dev_source, device, amp,
                   log, name: str) -> dict:
    """Mean of the last n validations' weights (epochs, or eval_every intervals); replaces
    best.pt if its dev CE is lower."""
    last = len(st.history)
    first = max(1, last - n + 1)
    states = [torch.load(os.path.join(ckpt_dir, f"epoch{e}.pt"), map_location="cpu")
              for e in range(first, last + 1)]
    mean = {k: sum(s[k].double() for s in states).div(len(states)).to(v.dtype)
            if v.is_floating_point() else v for k, v in states[-1].items()}
    model.load_state_dict(mean)
    dev = evaluate(model, dev_source, device, amp)
    kept = dev["ce"] < st.best_dev_ce
    if kept:
        with atomic_path(os.path.join(ckpt_dir, "best.pt")) as tmp:
            torch.save({"model": model.state_dict(), "epoch": last, "dev": dev,
                        "averaged": [first, last]}, tmp)
    log(f"{name}: mean of epochs {first}-{last}: dev CE {dev['ce']:.4f}, dev frame acc "
        f"{100 * dev['frame_acc']:.2f}% ({'kept' if kept else 'not kept'}: best epoch "
        f"{st.best_epoch} {st.best_dev_ce:.4f})")
    return {"epochs": [first, last], "dev_ce": dev["ce"], "dev_frame_acc": dev["frame_acc"],
            "kept": kept}


def summarize(model, st: LoopState, cfg: TrainConfig, device, meta: dict | None) -> dict:
    best_row = st.history[st.best_epoch - 1] if st.best_epoch > 0 else {}
    frames = sum(r["train_frames"] for r in st.history)
    seconds = sum(r["train_frames"] / max(r["frames_per_s"], 1e-9) for r in st.history)
    return {
        "dev_ce": best_row.get("dev_ce"), "dev_frame_acc": best_row.get("dev_frame_acc"),
        "best_epoch": st.best_epoch, "epochs": len(st.history), "steps": st.step,
        "best_step": best_row.get("step"), "stopped": st.stopped or "epochs",
        "halvings": st.halvings,
        "last_dev_ce": st.history[-1]["dev_ce"] if st.history else None,
        "train_frames": frames, "frames_per_s": frames / max(seconds, 1e-9),
        "train_s": seconds,                      # training steps only (dev evaluation excluded)
        "param_count": sum(p.numel() for p in model.parameters()),
        "device": str(device), "torch_threads": torch.get_num_threads(),
        "peak_memory": peak_memory_mb(device), "train": asdict(cfg),
        "history": st.history, "code_version": config.code_version(), **(meta or {}),
    }
