"""A tiny distributed run of train.fit, to check launch, kill and resume end to end.

    torchrun --nproc-per-node 2 -m millionhours.distributed.selftest --exp /tmp/st --algorithm gtc
    torchrun --nproc-per-node 2 -m millionhours.distributed.selftest --exp /tmp/st --die-step 7
    python -m millionhours.distributed.selftest --exp /tmp/sim --algorithm gtc --simulate 2
    torchrun --nproc-per-node 2 -m millionhours.distributed.selftest --exp /tmp/u --form update

A 2-layer unidirectional LSTM (16 cells, 8 senones) learns "the senone is the argmax of the first
8 features" from in-memory batches, each rank its own (seeded by epoch, batch and rank). This is
also the wiring a training CLI needs: init, rank_exp_dir, make_sync, prepare_resume, fit with
results only on rank 0, summary() merged into the results JSON, run_main for a clean stop.
At the end it all-gathers the weights and prints whether the replicas are identical.
--die-step S makes --die-rank exit abruptly (os._exit) right after step S, like a crash.
--simulate N runs N virtual workers in this one process (distributed/simulated.py) instead: the
same run as torchrun's with N processes, ending with the same weights.
"""
from __future__ import annotations

import argparse
import os

import torch

from millionhours import distributed as D
from millionhours.distributed import simulated
from millionhours import train
from millionhours.data import Batch
from millionhours.fileio import read_json, write_json
from millionhours.models import AcousticModel, ModelConfig

DIM, SENONES = 16, 8


def make_batch(seed: int, rows: int = 4, frames: int = 12) -> Batch:
    g = torch.Generator().manual_seed(seed)
    feats = torch.randn(rows, frames, DIM, generator=g)
    lengths = torch.randint(frames // 2, frames + 1, (rows,), generator=g)
    targets = feats[..., :SENONES].argmax(-1)
    targets[torch.arange(frames)[None, :] >= lengths[:, None]] = -100      # data.IGNORE
    return Batch(feats=feats, lengths=lengths, targets=targets)


class MemorySource:
    """fit's BatchSource interface over generated batches: this rank's shard of each epoch."""

    def __init__(self, n: int, rank: int, world: int, salt: int):
        self.n, self.rank, self.world, self.salt = n, rank, world, salt

    def num_batches(self, epoch: int) -> int:
        return self.n

    def batches(self, epoch: int, start: int = 0):
        for i in range(start, self.n):
            yield make_batch(self.salt + (epoch * self.n + i) * self.world + self.rank)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--exp", required=True)
    ap.add_argument("--algorithm", default="gtc",
                    choices=["none", "sync", "gtc", "bmuf", "two_tier"])
    ap.add_argument("--group-size", type=int, default=2, help="two_tier: workers per GTC group")
    ap.add_argument("--form", default="gradient", choices=["gradient", "update", "momentum"],
                    help="gtc: what is compressed (the update and momentum forms train with Adam)")
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--batches", type=int, default=8, help="batches per epoch per worker")
    ap.add_argument("--ckpt-every", type=int, default=4)
    ap.add_argument("--block", type=int, default=4)
    ap.add_argument("--die-step", type=int, default=0)
    ap.add_argument("--die-rank", type=int, default=1)
    ap.add_argument("--timeout", type=float, default=20.0)
    ap.add_argument("--simulate", type=int, default=0,
                    help="N > 0: N virtual workers in this process (no torchrun)")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    if args.simulate:
        simulated.run_workers(run, args.simulate, args, args.simulate)
        return
    world = D.init(args.timeout)
    D.run_main(run, args, world)


def run(args, world: int) -> None:
    torch.manual_seed(0)                  # same initial model everywhere (prepare() checks)
    model = AcousticModel(ModelConfig(num_senones=SENONES, input_dim=DIM, layers=2, cells=16,
                                      bidirectional=False))
    adam = args.form != "gradient"
    gtc = {"target_fraction": 0.05, "form": args.form}
    if adam:      # the 16-worker study's options: a dense start (momentum needs it), biases dense,
        gtc.update(dense_warmup=2, dense_below=16,                  # and a refresh of Adam's v
                   refresh_every=5 if args.form == "momentum" else 0)
    sync = D.make_sync({"algorithm": args.algorithm, "gtc": gtc,
                        "bmuf": {"block": args.block},
                        "two_tier": {"group_size": args.group_size}}, world)
    if args.die_step and D.rank() == args.die_rank:
        _die_after(sync, args.die_step)
    exp = D.rank_exp_dir(args.exp)
    D.prepare_resume(os.path.join(exp, "ckpt"), sync)
    cfg = train.TrainConfig(epochs=args.epochs, optimizer="adam" if adam else "sgd",
                            lr=0.01 if adam else 0.2, momentum=0.9,
                            schedule="const", ckpt_every=args.ckpt_every, seed=0)
    results = os.path.join(args.exp, "results") if D.is_main() else None
    log = print if D.is_main() else (lambda *a: None)
    summary = train.fit(model, MemorySource(args.batches, D.rank(), world, 1000),
                        MemorySource(2, 0, 1, 7), cfg, exp, "selftest", results_dir=results,
                        sync=sync, log=log, device=torch.device("cpu"))
    extra = D.summary(sync, summary)
    w = D.flat_data(D.flat_params(model))
    same = all(torch.equal(w, x) for x in (sync.comm.all_gather(w, count=False) if sync else [w]))
    torch.save(w, os.path.join(args.exp, f"final_rank{D.rank()}.pt"))
    if results:
        path = os.path.join(results, "selftest.json")
        write_json(path, {**read_json(path), "distributed": extra})
        print(f"selftest: {args.algorithm} on {world} workers, step {summary['steps']}, "
              f"dev CE {summary['last_dev_ce']:.4f}, replicas identical: {same}, "
              f"bytes/step {extra.get('bytes_per_step', 0):.0f} "
              f"(dense {extra.get('dense_bytes_per_step', 0)})", flush=True)
    D.shutdown()


def _die_after(sync, step: int) -> None:
    """Crash injection: exit abruptly, without cleanup, right after `step` (first run only)."""
    inner = sync.after_step

    def after_step(model, optimizer, s):
        inner(model, optimizer, s)
        if s == step:
            os._exit(3)
    sync.after_step = after_step


if __name__ == "__main__":
    main()
