"""How far do N workers' local Adam steps add up? A diagnostic for BMUF (and GTC's update form).

    python -m millionhours.bin.worker_steps exp/student_global64/ckpt/last.pt \\
        exp/student_bmuf_g64_b10_eta05_keep

Reads Adam's state (exp_avg m, exp_avg_sq v, step t) from the one-process run's checkpoint and from
every rank's checkpoint of a distributed run (EXP/ckpt/last.pt, EXP/rank<r>/ckpt/last.pt) and
prints the length of Adam's step direction u = (m / (1 - b1^t)) / (sqrt(v / (1 - b2^t)) + eps):
one process's |u|, a worker's mean |u_i|, and |mean_i u_i|, the direction a model average moves.
|mean u_i| / |u_i| is 1 when the workers agree and 1/sqrt(N) when their steps are independent
noise (docs/experiments.md, "BMUF and two-tier at 64 workers").
"""
from __future__ import annotations

import argparse
import glob
import os
import sys

import torch

PROG = "worker_steps"


def adam_direction(ckpt: str, betas=(0.9, 0.999), eps: float = 1e-8) -> torch.Tensor:
    """u of every parameter of a checkpoint's Adam state, flattened in state order."""
    try:
        state = torch.load(ckpt, map_location="cpu", weights_only=False)["optimizer"]["state"]
    except (OSError, KeyError, RuntimeError) as e:
        raise SystemExit(f"{PROG}: error: {ckpt}: not a training checkpoint with an optimizer "
                         f"state ({e}); pass ckpt/last.pt of a run") from None
    out = []
    for key in sorted(state):
        st = state[key]
        if "exp_avg_sq" not in st:
            raise SystemExit(f"{PROG}: error: {ckpt}: parameter {key} has no Adam state "
                             f"(exp_avg_sq); the diagnostic is for Adam runs")
        t = float(st["step"])
        m = st["exp_avg"] / (1 - betas[0] ** t)
        v = st["exp_avg_sq"] / (1 - betas[1] ** t)
        out.append((m / (v.sqrt() + eps)).flatten())
    return torch.cat(out)


def rank_checkpoints(exp_dir: str) -> list[str]:
    """Rank 0's ckpt/last.pt, then rank1, rank2, ... in rank order."""
    ranks = sorted(glob.glob(os.path.join(exp_dir, "rank*", "ckpt", "last.pt")),
                   key=lambda p: int(os.path.basename(os.path.dirname(os.path.dirname(p)))[4:]))
    return [os.path.join(exp_dir, "ckpt", "last.pt")] + ranks


def step_lengths(reference: str, workers: list[str]) -> dict:
    ref = adam_direction(reference)
    us = [adam_direction(p) for p in workers]
    if any(u.shape != ref.shape for u in us):
        raise SystemExit(f"{PROG}: error: the checkpoints hold models of different sizes; pass "
                         f"runs of the same model")
    mean, one = float(torch.stack(us).mean(0).norm()), float(ref.norm())
    worker = float(sum(u.norm() for u in us) / len(us))
    return {"workers": len(us), "one_process": one, "worker": worker, "mean_of_workers": mean,
            "mean_over_worker": mean / worker, "mean_over_one_process": mean / one,
            "noise_limit": len(us) ** -0.5}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n")[0])
    ap.add_argument("reference", help="the one-process run's checkpoint (EXP/ckpt/last.pt)")
    ap.add_argument("exp_dir", help="a distributed run's exp dir (rank 0 there, rank<r>/ below)")
    args = ap.parse_args(argv)
    workers = rank_checkpoints(args.exp_dir)
    missing = [p for p in [args.reference] + workers if not os.path.isfile(p)]
    if missing:
        sys.exit(f"{PROG}: error: {missing[0]}: no such checkpoint; train the run first (stage 6)")
    r = step_lengths(args.reference, workers)
    print(f"{PROG}: {r['workers']} workers: one process |u| {r['one_process']:.1f}, a worker "
          f"|u_i| {r['worker']:.1f}, |mean u_i| {r['mean_of_workers']:.1f}: mean / worker "
          f"{r['mean_over_worker']:.3f}, mean / one process {r['mean_over_one_process']:.3f} "
          f"(independent noise: {r['noise_limit']:.3f})")


if __name__ == "__main__":
    main()
